"""The ``tm`` command line: ``nodetool tasks`` verbs against a tm server."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from rich.text import Text
from rich.tree import Tree

from ._client import TaskManagerClient
from ._errors import DeadlineExceededError, NotFoundError, TaskNotAbortableError, TmError
from ._types import Node, TaskState, TaskStatus
from .argtypes import non_negative_int, non_negative_seconds
from .cli_connection import ConnectionOptions, credential_flags, message
from .cli_output import (
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_WAIT_ERROR,
    LIST_COLUMNS,
    CliError,
    Output,
    json_time,
    progress_text,
    stats_cells,
    stats_json,
    status_json,
    status_lines,
    text_time,
)
from .cli_progress import print_status_progress, wait_with_bar
from .cli_watch import cmd_watch, watch_flags

__all__ = ["CliError", "ConnectionOptions", "Output", "build_parser", "main", "run"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051


# ---- commands --------------------------------------------------------------------------------


def cmd_modules(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks modules``."""
    modules = client.list_modules()
    if out.json:
        out.document(modules)
    else:
        for module in modules:
            out.line(module)
    return 0


def cmd_list(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks list MODULE``."""
    for iteration in range(args.iterations + 1):
        if iteration:
            time.sleep(args.interval)
            if not out.json:
                out.line()
        entries = list(
            client.list_tasks(
                args.module,
                internal=args.internal,
                keyspace=args.keyspace,
                table=args.table,
                states=args.state or (),
                types=args.type or (),
            )
        )
        if out.json:
            out.document([stats_json(e) for e in entries])
        else:
            out.table([stats_cells(e) for e in entries], LIST_COLUMNS)
    return 0


def _all_children(client: TaskManagerClient, status: TaskStatus) -> TaskStatus:
    # A status lists at most the server's --max-status-children children; the
    # rest come page by page from ListTaskChildren.
    if not status.children_truncated:
        return status
    try:
        children = tuple(client.list_children(status.id))
    except NotFoundError:
        return status  # unregistered since: the status as it was is all there is
    return dataclasses.replace(status, children=children, children_count=len(children))


def cmd_status(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks status ID``; on a terminal, then a bar with percent, rate, elapsed and ETA."""
    status = _all_children(client, client.get_status(args.id))
    if out.json:
        out.document(status_json(status))
        return 0
    for line in status_lines(status):
        out.line(line)
    if out.tty:
        print_status_progress(status, out)
    return 0


def _tree_label(status: TaskStatus, out: Output) -> Text:
    # The id alone is dim: a style given to Text() itself would dim the whole label.
    label = Text()
    label.append(str(status.id), style="dim" if out.tty else "")
    label.append(f"  {status.type}")
    if status.scope:
        label.append(f"/{status.scope}")
    where = ".".join(x for x in (status.keyspace, status.table) if x)
    if where:
        label.append(f"  {where}")
    if status.entity:
        label.append(f"  {status.entity}")
    label.append("  ")
    label.append_text(out.state(status.state))
    progress = progress_text(status)
    if progress:
        label.append(f"  {progress}")
    if status.error:
        label.append(f"  error: {status.error}", style="red" if out.tty else "")
    return label


def _print_tree(statuses: list[TaskStatus], out: Output) -> None:
    # The statuses come in BFS order; each is drawn under its parent, children in
    # that order (live before folded).
    root = Tree(_tree_label(statuses[0], out), guide_style="dim" if out.tty else "")
    nodes = {statuses[0].id: root}
    for status in statuses[1:]:
        parent = nodes.get(status.parent_id) if status.parent_id is not None else None
        nodes[status.id] = (parent or root).add(_tree_label(status, out))
    out.console.print(root)


def cmd_tree(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks tree [ID]``: one task's tree, or every non-internal task's."""
    trees: list[list[TaskStatus]] = []
    if args.id:
        trees.append(client.get_status_recursive(args.id))
    else:
        for module in client.list_modules():
            for entry in client.list_tasks(module):
                try:
                    trees.append(client.get_status_recursive(entry.task_id))
                except NotFoundError:
                    continue  # unregistered since it was listed
    if out.json:
        out.document([status_json(_all_children(client, s)) for tree in trees for s in tree])
        return 0
    for i, tree in enumerate(trees):
        if i:
            out.line()
        _print_tree(tree, out)
    return 0


def _wait_exit(status: TaskStatus) -> int:
    return EXIT_DONE if status.state is TaskState.DONE else EXIT_FAILED


def cmd_wait(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks wait ID``: 0 done, 123 failed, 124 timed out, 125 other errors."""
    try:
        updates = client.watch(args.id, timeout=args.timeout)
        if args.quiet:
            last = None
            for last in updates:  # noqa: B007
                pass
        elif out.json:
            last = None
            for last in updates:
                out.document(status_json(last))
        elif out.tty:
            last = wait_with_bar(updates, out)
        else:
            last = None
            for last in updates:  # noqa: B007
                pass
    except DeadlineExceededError as exc:
        if not args.quiet:
            print("Operation timed out", file=sys.stderr)
        raise CliError("", EXIT_TIMEOUT) from exc
    except TmError as exc:
        raise CliError(message(exc, args), EXIT_WAIT_ERROR) from exc
    if last is None:
        raise CliError("the server ended the wait without a status", EXIT_WAIT_ERROR)
    if not args.quiet and not out.json:
        for line in status_lines(_all_children(client, last)):
            out.line(line)
    return _wait_exit(last)


def cmd_abort(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks abort ID [--reason TEXT]``."""
    try:
        client.abort(args.id, args.reason)
    except TaskNotAbortableError:
        # As nodetool: a message, not a failure (exit 0).
        if out.json:
            out.document({"task_id": args.id, "abort_requested": False, "abortable": False})
        else:
            out.line(f"Task with id {args.id} is not abortable")
        return 0
    if out.json:
        out.document({"task_id": args.id, "abort_requested": True})
    return 0


def _ttl_command(name: str, label: str, get: str, set_: str) -> Callable[..., int]:
    def command(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
        if args.set is not None:
            previous = getattr(client, set_)(args.set)
            if out.json:
                out.document({name: args.set, "previous": previous})
            return 0
        value = getattr(client, get)()
        if out.json:
            out.document({name: value})
        else:
            out.line(f"Current {label}: {value}")
        return 0

    command.__doc__ = f"``tm tasks {name.replace('_', '-')} [--set N]``."
    return command


cmd_ttl = _ttl_command("ttl", "ttl", "get_ttl", "set_ttl")
cmd_user_ttl = _ttl_command("user_ttl", "user ttl", "get_user_ttl", "set_user_ttl")


def cmd_drain(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks drain [--module M]``: one module, or every module."""
    modules = [args.module] if args.module else client.list_modules()
    drained = {module: client.drain(module) for module in modules}
    if out.json:
        out.document({"drained": drained})
    return 0


NODE_COLUMNS = ("name", "address", "status", "started_time", "last_heartbeat_time", "version")


def node_json(node: Node) -> dict[str, Any]:
    """A cluster node as the CLI prints it with ``--format json``."""
    return {
        "name": node.name,
        "address": node.address,
        "alive": node.alive,
        "left": node.left,
        "started_time": json_time(node.started_time),
        "last_heartbeat_time": json_time(node.last_heartbeat_time),
        "version": node.version,
    }


def _node_state(node: Node) -> str:
    # A node that left said goodbye; one that is down stopped heartbeating.
    if node.alive:
        return "up"
    return "left" if node.left else "down"


def cmd_nodes(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm cluster nodes``: the cluster's nodes, as its store has them."""
    nodes = client.list_nodes()
    if out.json:
        out.document([node_json(n) for n in nodes])
        return 0
    rows = [
        {
            "name": n.name,
            "address": n.address,
            "status": _node_state(n),
            "started_time": text_time(n.started_time),
            "last_heartbeat_time": text_time(n.last_heartbeat_time),
            "version": n.version,
        }
        for n in nodes
    ]
    out.table(rows, NODE_COLUMNS)
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("tm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _filter_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the task filters of ``list`` and ``watch``."""
    parser.add_argument("--internal", action="store_true", help="include internal tasks")
    parser.add_argument("--keyspace", "-ks", default="", help="only this keyspace's tasks")
    parser.add_argument("--table", "-t", default="", help="only this table's tasks")
    parser.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in TaskState],
        metavar="STATE",
        help="only tasks in this state (created, running, done, failed, suspended); "
        "repeat for several",
    )
    parser.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only tasks of this type; repeat for several",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tm`` argument parser.

    As with nodetool, ``-h``/``--host`` and ``-p``/``--port`` name the server,
    before the verb or after it; help is ``--help`` only. So do the TLS and
    token flags, which default to their ``TM_*`` environment variables.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--help", action="help", help="show this help and exit")
    common.add_argument(
        "--format",
        choices=("table", "json"),
        default=argparse.SUPPRESS,
        help="output: a human table (default) or JSON (JSON lines for streams)",
    )
    # Given after the verb they win; not given there, the ones before it stand.
    common.add_argument("--host", "-h", "-H", default=argparse.SUPPRESS, help="server host")
    common.add_argument("--port", "-p", type=int, default=argparse.SUPPRESS, help="server port")
    credential_flags(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="tm",
        description="Inspect, wait for and abort the tasks of a tm server.",
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--version", action="version", version=f"tm {_version()}")
    parser.add_argument(
        "--target", default=os.environ.get("TM_TARGET"), help="host:port (or $TM_TARGET)"
    )
    parser.add_argument(
        "--host", "-h", "-H", default=DEFAULT_HOST, help=f"server host (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", "-p", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    credential_flags(parser, None)
    groups = parser.add_subparsers(dest="group", required=True, metavar="{tasks,cluster}")
    tasks = groups.add_parser("tasks", help="task manager commands", add_help=False)
    tasks.add_argument("--help", action="help", help="show this help and exit")
    sub = tasks.add_subparsers(dest="command", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], add_help=False, help=help)

    p = verb("modules", "list module names")
    p.set_defaults(func=cmd_modules)

    p = verb("list", "list a module's tasks")
    p.add_argument("module")
    _filter_flags(p)
    p.add_argument(
        "--interval", type=non_negative_seconds, default=10.0, help="seconds between listings"
    )
    p.add_argument(
        "--iterations", "-i", type=non_negative_int, default=0, help="repeat this many more times"
    )
    p.set_defaults(func=cmd_list)

    p = verb("watch", "follow the changes of a module's tasks (or every module's) live")
    p.add_argument("module", nargs="?", help="the module (default: every module)")
    _filter_flags(p)
    watch_flags(p)
    p.set_defaults(func=cmd_watch)

    p = verb("status", "a task's status")
    p.add_argument("id")
    p.set_defaults(func=cmd_status)

    p = verb("tree", "a task's tree, or every task's")
    p.add_argument("id", nargs="?")
    p.set_defaults(func=cmd_tree)

    p = verb("wait", "wait for a task to finish")
    p.add_argument("id")
    p.add_argument("--timeout", type=non_negative_seconds, default=None, help="seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing; exit code only")
    p.set_defaults(func=cmd_wait)

    p = verb("abort", "abort a task and its descendants")
    p.add_argument("id")
    p.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        help="why: shown in the task's status and sent to its producer",
    )
    p.set_defaults(func=cmd_abort)

    p = verb("ttl", "show or set task_ttl")
    p.add_argument("--set", type=int, metavar="N")
    p.set_defaults(func=cmd_ttl)

    p = verb("user-ttl", "show or set user_task_ttl")
    p.add_argument("--set", type=int, metavar="N")
    p.set_defaults(func=cmd_user_ttl)

    p = verb("drain", "unregister finished tasks")
    p.add_argument("--module", help="one module (default: every module)")
    p.set_defaults(func=cmd_drain)

    cluster = groups.add_parser("cluster", help="cluster commands", add_help=False)
    cluster.add_argument("--help", action="help", help="show this help and exit")
    csub = cluster.add_subparsers(dest="command", required=True)
    p = csub.add_parser("nodes", parents=[common], add_help=False, help="list the cluster's nodes")
    p.set_defaults(func=cmd_nodes)
    return parser


def _fail(message: str, code: int) -> NoReturn:
    if message:
        print(f"tm: {message}", file=sys.stderr)
    sys.exit(code)


def run(argv: Sequence[str] | None = None, *, channel: grpc.Channel | None = None) -> int:
    """Runs the CLI and returns its exit code (never raises for server errors).

    ``channel`` replaces the connection the options name (tests pass an
    in-process channel double).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.format)
    is_wait = args.func is cmd_wait
    try:
        client = ConnectionOptions.from_args(args).client(channel)
    except ValueError as exc:  # the credentials: one line that says what to fix
        _fail(str(exc), EXIT_WAIT_ERROR if is_wait else EXIT_ERROR)
    try:
        with client:
            return int(args.func(client, args, out))
    except CliError as exc:
        _fail(str(exc), exc.code)
    except TmError as exc:
        _fail(message(exc, args), EXIT_WAIT_ERROR if is_wait else EXIT_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (`tm ... | head`); that is not an error of ours.
        sys.stderr.close()
        return 0


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tm`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
