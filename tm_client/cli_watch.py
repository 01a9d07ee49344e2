"""``tm tasks watch``: a live table of tasks on a terminal, an event a line elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Console, ConsoleOptions, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ._client import TaskManagerClient
from ._types import TaskEvent, TaskEventType, TaskState, TaskStats, TaskStatus, WatchBatch
from ._watch import TaskWatch
from .cli_output import STATE_STYLES, CliError, Output, stats_json, status_json
from .cli_progress import bar_or_spinner, entry_view, format_percent, now_utc

#: Bad usage, as argparse's.
EXIT_USAGE = 2
#: How a watch ends on SIGTERM: 128 + the signal, once the terminal is restored.
EXIT_TERMINATED = 128 + signal.SIGTERM

WATCH_COLUMNS = ("task_id", "module", "type", "state", "progress", "%", "done", "rate")
WATCH_TIME_COLUMNS = ("elapsed", "eta")


def watch_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``tm tasks watch``'s own flags (the filters are ``list``'s)."""
    parser.add_argument(
        "--snapshot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start with the matching tasks as they are (default: on, off with --cursor)",
    )
    parser.add_argument(
        "--cursor",
        default="",
        help="resume after this cursor (from a --format json line), without a snapshot",
    )
    parser.add_argument(
        "--full-status",
        action="store_true",
        help="with --format json: each event carries the task's full status too",
    )


# ---- lines: JSON for scripts, plain text off a terminal --------------------------------------


def event_json(event: TaskEvent, cursor: str) -> dict[str, Any]:
    """A watch event as ``--format json`` prints it: type, cursor, entry (and status)."""
    doc: dict[str, Any] = {
        "type": event.type.value,
        "cursor": cursor,
        "task": stats_json(event.task),
    }
    if event.status is not None:
        doc["status"] = status_json(event.status)
    return doc


def line_cursors(batch: WatchBatch, previous: str, in_snapshot: bool) -> list[str]:
    """The cursor printed with each event of a batch: resuming from it misses nothing after it.

    The server's cursor resumes after a whole batch, so only the batch's last
    event gets it; the ones before get the previous batch's (resuming from
    one of them may repeat the rest of its batch, never skip an event).
    Within a snapshot there is nothing to resume: "" (watch again with a
    snapshot), up to the snapshot's last event.
    """
    count = len(batch.events)
    if not count:
        return []
    before = "" if in_snapshot else previous
    last = batch.cursor if (batch.snapshot_complete or not in_snapshot) else ""
    return [before] * (count - 1) + [last]


def event_line(event: TaskEvent) -> str:
    """A watch event as one plain line: event, id, module, type, state, completed/total."""
    task = event.task
    fields = [event.type.value, str(task.task_id), task.module or "-", task.type or "-"]
    fields.append(task.state.value)
    if task.progress_total or task.progress_completed:
        fields.append(f"{task.progress_completed:g}/{task.progress_total:g}")
    return " ".join(fields)


def _watch_json(watch: TaskWatch, snapshot: bool, out: Output) -> None:
    previous = watch.cursor
    in_snapshot = snapshot
    for batch in watch:
        if batch.restarted:
            out.document({"type": "restarted", "reason": batch.restart_reason})
            in_snapshot, previous = True, ""
        for event, cursor in zip(batch, line_cursors(batch, previous, in_snapshot), strict=True):
            out.document(event_json(event, cursor))
        if batch.snapshot_complete:
            out.document({"type": "snapshot_complete", "cursor": batch.cursor})
            in_snapshot = False
        previous = batch.cursor


def _watch_lines(watch: TaskWatch, out: Output) -> None:
    for batch in watch:
        if batch.restarted:
            out.line(f"restarted {batch.restart_reason}")
        for event in batch:
            out.line(event_line(event))
        if batch.snapshot_complete:
            out.line("snapshot_complete")


# ---- the live table --------------------------------------------------------------------------


@dataclass
class _Row:
    task: TaskStats
    status: TaskStatus | None
    spinner: Spinner  # one per task, kept, so that it turns between refreshes


class WatchBoard:
    """The watched tasks as the live table shows them, kept up to date from the batches.

    Removed tasks drop out; finished ones stay, with their end state; a
    restarted snapshot starts the board over. It renders (``__rich__``) from
    another thread than the one that applies batches, hence the lock.
    """

    def __init__(
        self,
        *,
        show_module: bool,
        snapshot: bool = True,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self._rows: dict[UUID, _Row] = {}
        self._lock = threading.Lock()
        self._show_module = show_module
        self._clock = clock
        # Without a snapshot there is none to wait for.
        self.snapshot_complete = not snapshot

    def apply(self, batch: WatchBatch) -> None:
        """Applies a batch's events in order."""
        with self._lock:
            if batch.restarted:
                self._rows.clear()
                self.snapshot_complete = False
            for event in batch:
                task_id = event.task.task_id
                if event.type is TaskEventType.REMOVED:
                    self._rows.pop(task_id, None)
                    continue
                row = self._rows.get(task_id)
                if row is None:
                    self._rows[task_id] = _Row(event.task, event.status, Spinner("dots"))
                else:
                    row.task, row.status = event.task, event.status
            if batch.snapshot_complete:
                self.snapshot_complete = True

    def cells(self) -> list[dict[str, RenderableType]]:
        """The rows as cells by column name, oldest task first."""
        now = self._clock()
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: r.task.task_id.int)
            out: list[dict[str, RenderableType]] = []
            for row in rows:
                view = entry_view(row.task, row.status, now)
                state = row.task.state
                out.append(
                    {
                        "task_id": Text(str(row.task.task_id), style="dim"),
                        "module": row.task.module,
                        "type": row.task.type,
                        "state": Text(state.value, style=STATE_STYLES[state]),
                        "progress": bar_or_spinner(view, row.spinner, width=24),
                        "%": format_percent(view.percent),
                        "done": view.amount,
                        "rate": view.rate,
                        "elapsed": view.elapsed,
                        "eta": view.eta,
                    }
                )
            return out

    def summary(self) -> str:
        """The line above the table: how many tasks, by state."""
        with self._lock:
            states = [r.task.state for r in self._rows.values()]
            loading = not self.snapshot_complete
        counts = ", ".join(f"{states.count(s)} {s.value}" for s in TaskState if s in states)
        text = f"{len(states)} task{'s' if len(states) != 1 else ''}"
        text += f": {counts}" if counts else ""
        return text + (" (loading the snapshot...)" if loading else "")

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        columns = [c for c in WATCH_COLUMNS + WATCH_TIME_COLUMNS if c != "module"]
        if self._show_module:
            columns.insert(1, "module")
        for name in columns:
            right = name in ("%", "rate", "elapsed", "eta")
            table.add_column(
                name, no_wrap=True, overflow="ellipsis", justify="right" if right else "left"
            )
        cells = self.cells()
        # The newest tasks that fit the screen (the summary, the header, the note).
        fits = max(1, options.size.height - 3)
        hidden = max(0, len(cells) - fits)
        for row in cells[hidden:]:
            table.add_row(*[row[name] for name in columns])
        yield Text(self.summary(), style="bold")
        yield table
        if hidden:
            yield Text(f"({hidden} older not shown)", style="dim")


def _watch_live(watch: TaskWatch, board: WatchBoard, out: Output) -> None:
    with Live(board, console=out.console, refresh_per_second=4, transient=False) as live:
        for batch in watch:
            board.apply(batch)
            live.refresh()


# ---- the command -----------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_exits() -> Iterator[None]:
    # SIGTERM ends the watch as Ctrl-C does: through the `with` blocks, so the
    # stream is cancelled and the terminal restored (the main thread only can
    # take signals; tests run the CLI in other threads too).
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_watch(client: TaskManagerClient, args: argparse.Namespace, out: Output) -> int:
    """``tm tasks watch [MODULE]``: runs until interrupted (Ctrl-C: 130, SIGTERM: 143).

    On a terminal, a live table (restarting with a snapshot by itself when the
    server cannot resume it); with ``--format json``, one JSON object per
    event; otherwise one plain line per event.
    """
    if args.cursor and args.snapshot:
        raise CliError("--snapshot does not go with --cursor (a cursor resumes)", EXIT_USAGE)
    snapshot = not args.cursor if args.snapshot is None else bool(args.snapshot)
    live = out.tty and not out.json
    watch = client.watch_tasks(
        args.module,
        internal=args.internal,
        keyspace=args.keyspace,
        table=args.table,
        states=args.state or (),
        types=args.type or (),
        snapshot=snapshot,
        full_status=live or args.full_status,
        cursor=args.cursor or None,
        # A view heals itself; a script that asked for a snapshot is told
        # ("restarted") and gets a new one; one that resumes gets the error.
        resnapshot=live or snapshot,
    )
    with _terminate_exits(), watch:
        if live:
            _watch_live(watch, WatchBoard(show_module=not args.module, snapshot=snapshot), out)
        elif out.json:
            _watch_json(watch, snapshot, out)
        else:
            _watch_lines(watch, out)
    return 0
