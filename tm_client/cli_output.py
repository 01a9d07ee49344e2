"""What the ``tm`` commands print: JSON documents, ``name: value`` lines, tables, colours."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._types import TaskState, TaskStats, TaskStatus

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


def text_time(value: datetime | None) -> str:
    """A time as nodetool prints it: ISO 8601 UTC to the second; unset is ""."""
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def json_time(value: datetime | None) -> str | None:
    """A time in JSON: ISO 8601 UTC with its fraction ("...Z"); unset is null."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def number_text(value: float) -> str:
    """A progress amount: integers without ".0", others as short as they go."""
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
        "creation_time": json_time(status.creation_time),
        "start_time": json_time(status.start_time),
        "end_time": json_time(status.end_time),
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
        "expire_time": json_time(status.expire_time),
        "children_count": status.children_count,
        "node": status.node,
        "unreachable_nodes": list(status.unreachable_nodes),
        "abort": None
        if status.abort is None
        else {
            "request_time": json_time(status.abort.request_time),
            "reason": status.abort.reason,
            "principal": status.abort.principal,
            "origin_task_id": None
            if status.abort.origin_task_id is None
            else str(status.abort.origin_task_id),
        },
        "owner": status.owner,
        "last_progress_time": json_time(status.last_progress_time),
        "progress_rate": status.progress_rate,
        "estimated_end_time": json_time(status.estimated_end_time),
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
        "creation_time": json_time(stats.creation_time),
        "start_time": json_time(stats.start_time),
        "end_time": json_time(stats.end_time),
        "progress_completed": stats.progress_completed,
        "progress_total": stats.progress_total,
        "module": stats.module,
        "internal": stats.internal,
    }


def status_lines(status: TaskStatus) -> list[str]:
    """A status as nodetool prints it: one ``name: value`` line per field."""
    out = []
    for name, value in status_json(status).items():
        if name.endswith("_time"):
            text = text_time(getattr(status, name))
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
            text = f"requested{by} at {text_time(abort.request_time)}{via}{why}"
        elif value is None:  # progress_rate, before two reports give one
            text = ""
        elif isinstance(value, list):
            text = ", ".join(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = number_text(value)
        else:
            text = str(value)
        out.append(f"{name}: {text}")
    return out


def stats_cells(stats: TaskStats) -> dict[str, str]:
    """A list entry as table cells, by column name."""
    cells = {k: ("" if v is None else str(v)) for k, v in stats_json(stats).items()}
    for name in ("creation_time", "start_time", "end_time"):
        cells[name] = text_time(getattr(stats, name))
    return cells


def progress_text(status: TaskStatus) -> str:
    """Progress as "completed/total units" ("" when there is none)."""
    if not status.progress_total and not status.progress_completed:
        return ""
    units = f" {status.progress_units}" if status.progress_units else ""
    return f"{number_text(status.progress_completed)}/{number_text(status.progress_total)}{units}"


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
