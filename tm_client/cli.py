"""The ``tm`` command line: ``nodetool tasks`` verbs against a tm server."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ._client import TaskManagerClient
from ._credentials import (
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    Credentials,
    check_token,
    read_token_file,
)
from ._errors import (
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    TaskNotAbortableError,
    TmError,
    UnauthenticatedError,
    UnavailableError,
)
from ._types import Node, TaskState, TaskStats, TaskStatus
from .argtypes import non_negative_int, non_negative_seconds

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051

#: ``tm tasks wait`` exit codes, as ScyllaDB's ``nodetool tasks wait --quiet``.
EXIT_DONE, EXIT_FAILED, EXIT_TIMEOUT, EXIT_WAIT_ERROR = 0, 123, 124, 125
EXIT_ERROR = 1

STATE_STYLES = {
    TaskState.CREATED: "cyan",
    TaskState.RUNNING: "yellow",
    TaskState.DONE: "green",
    TaskState.FAILED: "bold red",
    TaskState.SUSPENDED: "magenta",
}

#: List columns in ScyllaDB's order, and the order they are dropped in when the
#: terminal is too narrow (task_id and state always stay).
LIST_COLUMNS = (
    "task_id",
    "type",
    "kind",
    "scope",
    "state",
    "sequence_number",
    "keyspace",
    "table",
    "entity",
    "shard",
    "creation_time",
    "start_time",
    "end_time",
)
DROP_ORDER = (
    "entity",
    "creation_time",
    "end_time",
    "sequence_number",
    "kind",
    "shard",
    "start_time",
    "table",
    "scope",
    "keyspace",
    "type",
)


class CliError(Exception):
    """A failure to report as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ---- connection ------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> str:
    return str(args.target) if args.target else f"{args.host}:{args.port}"


@dataclass(frozen=True)
class ConnectionOptions:
    """Where and how to reach the server: the target, TLS and the token."""

    target: str
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ
    ) -> ConnectionOptions:
        """Builds the options from the flags, and from the environment for those not given.

        The target is ``--target`` or ``--host``/``--port``; the credentials
        are ``Credentials.from_env`` with each ``--token``/``--tls-*`` flag
        given in place of its variable.

        Raises:
            ValueError: the credentials do not go together, or a file cannot be read.
        """
        if args.token is not None and args.token_file is not None:
            raise ValueError("give --token or --token-file, not both")
        token: str | None = None
        if args.token is not None:
            check_token(args.token, "--token")
            token = args.token
        elif args.token_file is not None:
            token = read_token_file(args.token_file, "--token-file")
        if token is not None:
            # A token flag replaces the environment's token altogether: a
            # TM_TOKEN_FILE that cannot be read must not stop it.
            environ = {k: v for k, v in environ.items() if k not in (ENV_TOKEN, ENV_TOKEN_FILE)}
        flags = Credentials(
            token=token,
            ca=args.tls_ca,
            cert=args.tls_cert,
            key=args.tls_key,
            server_name=args.tls_server_name,
            tls=bool(args.tls),
        )
        credentials = Credentials.from_env(environ).merged(flags)
        credentials.check()
        return cls(_target(args), credentials)

    def client(self, channel: grpc.Channel | None = None) -> TaskManagerClient:
        """Opens a client with these options (on ``channel``, as it is, if one is given)."""
        if channel is None:
            channel = self.credentials.channel(self.target)
        return TaskManagerClient(channel=channel, timeout=30.0)


# ---- formatting ------------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    # As nodetool: seconds resolution, ISO 8601 UTC; unset prints empty.
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _number(value: float) -> str:
    return f"{value:g}"


def status_json(status: TaskStatus) -> dict[str, Any]:
    """A status as a JSON object (field names as the API's)."""
    return {
        "id": str(status.id),
        "type": status.type,
        "kind": status.kind.value,
        "scope": status.scope,
        "state": status.state.value,
        "is_abortable": status.is_abortable,
        "creation_time": _json_time(status.creation_time),
        "start_time": _json_time(status.start_time),
        "end_time": _json_time(status.end_time),
        "error": status.error,
        "parent_id": None if status.parent_id is None else str(status.parent_id),
        "sequence_number": status.sequence_number,
        "shard": status.shard,
        "keyspace": status.keyspace,
        "table": status.table,
        "entity": status.entity,
        "progress_units": status.progress_units,
        "progress_total": status.progress_total,
        "progress_completed": status.progress_completed,
        "children_ids": [{"task_id": str(c.task_id), "node": c.node} for c in status.children],
        "module": status.module,
        "internal": status.internal,
        "user_task": status.user_task,
        "abort_requested": status.abort_requested,
        "expire_time": _json_time(status.expire_time),
        "children_count": status.children_count,
        "node": status.node,
        "unreachable_nodes": list(status.unreachable_nodes),
        "abort": None
        if status.abort is None
        else {
            "request_time": _json_time(status.abort.request_time),
            "reason": status.abort.reason,
            "principal": status.abort.principal,
            "origin_task_id": None
            if status.abort.origin_task_id is None
            else str(status.abort.origin_task_id),
        },
        "owner": status.owner,
    }


def stats_json(stats: TaskStats) -> dict[str, Any]:
    """A list entry as a JSON object."""
    return {
        "task_id": str(stats.task_id),
        "type": stats.type,
        "kind": stats.kind.value,
        "scope": stats.scope,
        "state": stats.state.value,
        "sequence_number": stats.sequence_number,
        "keyspace": stats.keyspace,
        "table": stats.table,
        "entity": stats.entity,
        "shard": stats.shard,
        "creation_time": _json_time(stats.creation_time),
        "start_time": _json_time(stats.start_time),
        "end_time": _json_time(stats.end_time),
    }


def status_lines(status: TaskStatus) -> list[str]:
    """A status as nodetool prints it: one ``name: value`` line per field."""
    out = []
    for name, value in status_json(status).items():
        if name.endswith("_time"):
            text = _time(getattr(status, name))
        elif name == "parent_id":
            text = value or "none"
        elif name == "children_ids":
            text = (
                "["
                + ", ".join(f"{{task_id: {c['task_id']}, node: {c['node']} }}" for c in value)
                + "]"
            )
        elif name == "abort":
            if value is None:
                continue
            abort = status.abort
            assert abort is not None
            by = f" by {abort.principal}" if abort.principal else ""
            why = f": {abort.reason}" if abort.reason else ""
            via = f" (through {abort.origin_task_id})" if abort.origin_task_id else ""
            text = f"requested{by} at {_time(abort.request_time)}{via}{why}"
        elif isinstance(value, list):
            text = ", ".join(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = _number(value)
        else:
            text = str(value)
        out.append(f"{name}: {text}")
    return out


def _stats_cells(stats: TaskStats) -> dict[str, str]:
    cells = {k: ("" if v is None else str(v)) for k, v in stats_json(stats).items()}
    for name in ("creation_time", "start_time", "end_time"):
        cells[name] = _time(getattr(stats, name))
    return cells


def _progress_text(status: TaskStatus) -> str:
    if not status.progress_total and not status.progress_completed:
        return ""
    units = f" {status.progress_units}" if status.progress_units else ""
    return f"{_number(status.progress_completed)}/{_number(status.progress_total)}{units}"


class Output:
    """Where results go: a rich console on a terminal, plain text elsewhere, or JSON."""

    def __init__(self, fmt: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json = fmt == "json"
        self.tty = self.stream.isatty()
        width = shutil.get_terminal_size().columns if self.tty else 1_000_000
        self.console = Console(
            file=self.stream,
            width=width,
            highlight=False,
            soft_wrap=not self.tty,
            force_terminal=self.tty,
            # https://no-color.org: set and not empty means no colour.
            no_color=not self.tty or bool(os.environ.get("NO_COLOR")),
        )

    def line(self, text: str = "") -> None:
        """Prints one plain line."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def document(self, value: Any) -> None:
        """Prints one JSON document on one line."""
        self.line(json.dumps(value))

    def table(self, rows: Sequence[dict[str, str]], columns: Sequence[str]) -> None:
        """Prints rows as a table that fits the terminal (all columns when not a terminal)."""
        shown = list(columns)
        if self.tty:
            width = self.console.width

            def needed(cols: list[str]) -> int:
                return sum(max([len(c)] + [len(r[c]) for r in rows]) + 2 for c in cols)

            for name in DROP_ORDER:
                if needed(shown) <= width:
                    break
                if name in shown:
                    shown.remove(name)
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for name in shown:
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        for row in rows:
            table.add_row(*[self._cell(name, row[name]) for name in shown])
        self.console.print(table)

    def _cell(self, name: str, value: str) -> Text:
        style = STATE_STYLES.get(TaskState(value), "") if name == "state" and value else ""
        return Text(value, style=style if self.tty else "")

    def state(self, state: TaskState) -> Text:
        """A state, coloured on a terminal."""
        return Text(state.value, style=STATE_STYLES[state] if self.tty else "")


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
                args.module, internal=args.internal, keyspace=args.keyspace, table=args.table
            )
        )
        if out.json:
            out.document([stats_json(e) for e in entries])
        else:
            out.table([_stats_cells(e) for e in entries], LIST_COLUMNS)
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
    """``tm tasks status ID``."""
    status = _all_children(client, client.get_status(args.id))
    if out.json:
        out.document(status_json(status))
    else:
        for line in status_lines(status):
            out.line(line)
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
    progress = _progress_text(status)
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
            last = _wait_with_bar(updates, out)
        else:
            last = None
            for last in updates:  # noqa: B007
                pass
    except DeadlineExceededError as exc:
        if not args.quiet:
            print("Operation timed out", file=sys.stderr)
        raise CliError("", EXIT_TIMEOUT) from exc
    except TmError as exc:
        raise CliError(_message(exc, args), EXIT_WAIT_ERROR) from exc
    if last is None:
        raise CliError("the server ended the wait without a status", EXIT_WAIT_ERROR)
    if not args.quiet and not out.json:
        for line in status_lines(_all_children(client, last)):
            out.line(line)
    return _wait_exit(last)


def _wait_with_bar(updates: Iterable[TaskStatus], out: Output) -> TaskStatus | None:
    progress = Progress(
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        console=out.console,
        auto_refresh=False,
        transient=False,
    )
    last = None
    with progress:
        bar = progress.add_task("wait", total=None, state="", amount="")
        for last in updates:
            total = last.progress_total or None
            progress.update(
                bar,
                total=total,
                completed=last.progress_completed,
                state=last.state.value,
                amount=_progress_text(last),
            )
            progress.refresh()
    return last


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
        "started_time": _json_time(node.started_time),
        "last_heartbeat_time": _json_time(node.last_heartbeat_time),
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
            "started_time": _time(n.started_time),
            "last_heartbeat_time": _time(n.last_heartbeat_time),
            "version": n.version,
        }
        for n in nodes
    ]
    out.table(rows, NODE_COLUMNS)
    return 0


# ---- parsing and running ---------------------------------------------------------------------


def _version() -> str:
    try:
        return importlib.metadata.version("tm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _credential_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """Adds the TLS and token flags; ``default`` is what each takes when not given."""
    parser.add_argument(
        "--token",
        default=default,
        help=f"bearer token sent on every call (default ${ENV_TOKEN}); "
        "a command line is visible to other users: prefer --token-file",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default,
        metavar="FILE",
        help=f"file whose first line is the bearer token (default ${ENV_TOKEN_FILE})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="use TLS, trusting the system's CAs (default $TM_TLS); --tls-ca, "
        "--tls-cert and --tls-key turn it on too",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM file of the CA to trust for the server's certificate (default $TM_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM client certificate, for mutual TLS (default $TM_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM private key of --tls-cert (default $TM_TLS_KEY)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=default,
        metavar="NAME",
        help="name to check the server's certificate for, in place of the host "
        "(default $TM_TLS_SERVER_NAME)",
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
    _credential_flags(common, argparse.SUPPRESS)
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
    _credential_flags(parser, None)
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
    p.add_argument("--internal", action="store_true", help="include internal tasks")
    p.add_argument("--keyspace", "-ks", default="", help="only this keyspace's tasks")
    p.add_argument("--table", "-t", default="", help="only this table's tasks")
    p.add_argument(
        "--interval", type=non_negative_seconds, default=10.0, help="seconds between listings"
    )
    p.add_argument(
        "--iterations", "-i", type=non_negative_int, default=0, help="repeat this many more times"
    )
    p.set_defaults(func=cmd_list)

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


#: What grpc says when TLS does not come together, and what to do about it.
_TLS_HINTS = (
    ("WRONG_VERSION_NUMBER", "the server does not seem to use TLS: try without --tls and --tls-ca"),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not signed by a CA trusted here: give its CA with --tls-ca",
    ),
    (
        "Hostname Verification Check failed",
        "the server's certificate does not name the host: see --tls-server-name",
    ),
    (
        "Socket closed",
        "if the server wants TLS, or a client certificate: see --tls-ca, --tls-cert and --tls-key",
    ),
)


def _message(exc: TmError, args: argparse.Namespace) -> str:
    if isinstance(exc, UnavailableError):
        message = f"cannot reach the tm server at {_target(args)}: {exc.message}"
        hint = next((h for marker, h in _TLS_HINTS if marker in exc.message), None)
        return message if hint is None else f"{message} ({hint})"
    if isinstance(exc, UnauthenticatedError):
        return (
            f"not authenticated by the tm server at {_target(args)}: {exc.message} "
            "(give a token with --token-file, --token, $TM_TOKEN_FILE or $TM_TOKEN, "
            "or a client certificate with --tls-cert and --tls-key)"
        )
    if isinstance(exc, PermissionDeniedError):
        message = exc.message
        role = exc.metadata.get("role", "")
        if role and role not in message:
            message += f" (it needs role {role})"
        return f"permission denied by the tm server at {_target(args)}: {message}"
    return exc.message


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
        _fail(_message(exc, args), EXIT_WAIT_ERROR if is_wait else EXIT_ERROR)
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
