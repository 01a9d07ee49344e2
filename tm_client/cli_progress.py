"""Progress as the ``tm`` command line shows it: percent, rate, elapsed time, ETA, bars.

The formatting is pure functions of a task's numbers and the time now, so
what a bar shows is tested without a terminal; the rich pieces (a column
that draws a bar, or a spinner for a task whose total is unknown, and the
``tm tasks wait`` bar) are built on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.progress import Task as ProgressTask
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ._types import TaskState, TaskStats, TaskStatus
from .cli_output import Output, number_text

_SUFFIXES = ("", "k", "M", "G", "T", "P")


def human_number(value: float) -> str:
    """A number in at most 3 significant digits, with k, M, G... past 999 ("12.3k")."""
    if not math.isfinite(value):
        return str(value)
    for suffix in _SUFFIXES:
        if abs(value) < 999.5 or suffix == _SUFFIXES[-1]:
            text = f"{value:.3g}"
            if "e" in text:  # tiny values: .3g turns to exponents below 1e-4
                text = f"{value:.4f}".rstrip("0").rstrip(".") or "0"
            return text + suffix
        value /= 1000
    raise AssertionError("unreachable")


def format_rate(rate: float | None, units: str = "") -> str:
    """A rate of progress in units per second, as "12.5 ranges/s" ("" without one).

    Slow rates read better per minute or per hour: 0.02/s is "1.2 ranges/min".
    """
    if rate is None or not math.isfinite(rate):
        return ""
    unit = f" {units}" if units else ""
    if rate <= 0:
        return f"0{unit}/s"
    for per, scale in (("s", 1), ("min", 60), ("h", 3600)):
        if rate * scale >= 0.1:
            return f"{human_number(rate * scale)}{unit}/{per}"
    return f"{human_number(rate * 3600)}{unit}/h"


def format_duration(seconds: float | None) -> str:
    """A duration as "45s", "3m05s", "2h03m" or "4d07h" ("" for ``None``; 0s at least)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def percent(completed: float, total: float) -> float | None:
    """How much of the total is done, 0 to 100; ``None`` when the total is unknown (0)."""
    if not total > 0 or not math.isfinite(total) or not math.isfinite(completed):
        return None
    return min(100.0, max(0.0, completed * 100.0 / total))


def format_percent(value: float | None) -> str:
    """A percentage, rounded down ("99%" until it is all done); "" for ``None``."""
    return "" if value is None else f"{math.floor(value)}%"


def elapsed_seconds(start: datetime | None, end: datetime | None, now: datetime) -> float | None:
    """How long a task has run: from its start to its end, or to now while it runs."""
    if start is None:
        return None
    return max(0.0, ((end or now) - start).total_seconds())


def eta_seconds(estimated_end: datetime | None, now: datetime) -> float | None:
    """How long until the estimated end (0 once it passed); ``None`` without an estimate."""
    if estimated_end is None:
        return None
    return max(0.0, (estimated_end - now).total_seconds())


@dataclass(frozen=True, slots=True)
class ProgressView:
    """What a bar shows of a task's progress at one moment, each part as text.

    Attributes:
        percent: 0 to 100, or ``None`` when the total is unknown.
        amount: "completed/total units", "completed units" without a total, or "".
        rate: "12.5 ranges/s", or "" without a rate.
        elapsed: time since the start ("" before it), to the end once finished.
        eta: time left at the current rate ("" without an estimate).
        spinner: the total is unknown and the task has not finished: show a
            spinner, not a bar that would sit still.
    """

    percent: float | None
    amount: str
    rate: str
    elapsed: str
    eta: str
    spinner: bool

    def parts(self) -> list[str]:
        """The non-empty texts, in the order shown: percent, amount, rate, elapsed, ETA."""
        texts = [
            format_percent(self.percent),
            self.amount,
            self.rate,
            f"elapsed {self.elapsed}" if self.elapsed else "",
            f"ETA {self.eta}" if self.eta else "",
        ]
        return [t for t in texts if t]


def progress_view(
    *,
    state: TaskState,
    completed: float,
    total: float,
    units: str = "",
    rate: float | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    estimated_end_time: datetime | None = None,
    now: datetime,
) -> ProgressView:
    """What a bar shows of these numbers at ``now`` (see ``ProgressView``)."""
    unit = f" {units}" if units else ""
    if total > 0:
        amount = f"{number_text(completed)}/{number_text(total)}{unit}"
    elif completed:
        amount = f"{number_text(completed)}{unit}"
    else:
        amount = ""
    running = not state.is_final
    return ProgressView(
        percent=percent(completed, total),
        amount=amount,
        rate=format_rate(rate, units) if running else "",
        elapsed=format_duration(elapsed_seconds(start_time, end_time, now)),
        eta=format_duration(eta_seconds(estimated_end_time, now)) if running else "",
        spinner=running and not total > 0,
    )


def status_view(status: TaskStatus, now: datetime) -> ProgressView:
    """A status's ``progress_view``."""
    return progress_view(
        state=status.state,
        completed=status.progress_completed,
        total=status.progress_total,
        units=status.progress_units,
        rate=status.progress_rate,
        start_time=status.start_time,
        end_time=status.end_time,
        estimated_end_time=status.estimated_end_time,
        now=now,
    )


def entry_view(task: TaskStats, status: TaskStatus | None, now: datetime) -> ProgressView:
    """A watch event's ``progress_view``: from its status when it has one, else its entry."""
    if status is not None:
        return status_view(status, now)
    return progress_view(
        state=task.state,
        completed=task.progress_completed,
        total=task.progress_total,
        start_time=task.start_time,
        end_time=task.end_time,
        now=now,
    )


def now_utc() -> datetime:
    """The time now, in UTC (what elapsed times and ETAs count from)."""
    return datetime.now(UTC)


def bar_or_spinner(view: ProgressView, spinner: Spinner, width: int | None = 30) -> RenderableType:
    """A bar for a known total, ``spinner`` (kept by the caller, so it turns) otherwise."""
    if view.spinner:
        return spinner
    if view.percent is None:
        return Text("")
    return ProgressBar(total=100.0, completed=view.percent, width=width)


class _ViewColumn(ProgressColumn):
    """A ``tm tasks wait`` column drawn from the waited task's status at each refresh."""

    def __init__(self, bar: bool) -> None:
        super().__init__()
        self._bar = BarColumn(bar_width=40) if bar else None
        self._spinner = Spinner("dots")

    def render(self, task: ProgressTask) -> RenderableType:
        status: TaskStatus | None = task.fields.get("status")
        if status is None:
            return self._spinner if self._bar is not None else Text("")
        view = status_view(status, now_utc())
        if self._bar is None:
            return Text("  ".join(view.parts()))
        if view.spinner:
            return self._spinner
        return self._bar.render(task) if view.percent is not None else Text("")


def wait_with_bar(updates: Iterable[TaskStatus], out: Output) -> TaskStatus | None:
    """Draws ``tm tasks wait``'s live bar from the statuses; returns the last one.

    The bar shows the state, the bar itself (a spinner while the total is
    unknown), the percent, completed/total, the rate, the elapsed time and the
    ETA; it is redrawn a few times a second, so the times and the spinner move
    between updates.
    """
    progress = Progress(
        TextColumn("[bold]{task.fields[state]}"),
        _ViewColumn(bar=True),
        _ViewColumn(bar=False),
        console=out.console,
        auto_refresh=True,
        refresh_per_second=4,
        transient=False,
    )
    last = None
    with progress:
        bar = progress.add_task("wait", total=None, state="", status=None)
        for last in updates:
            progress.update(
                bar,
                total=last.progress_total or None,
                completed=last.progress_completed,
                state=last.state.value,
                status=last,
            )
            progress.refresh()
    return last


def print_status_progress(status: TaskStatus, out: Output) -> None:
    """On a terminal, after a status: a ``progress:`` line with a bar and what it means."""
    view = status_view(status, now_utc())
    parts = view.parts()
    if not parts:
        return
    cells: list[RenderableType] = ["progress:"]
    if view.percent is not None:
        cells.append(ProgressBar(total=100.0, completed=view.percent, width=30))
    cells.append("  ".join(parts))
    line = Table.grid(padding=(0, 1))
    line.add_row(*cells)
    out.console.print(line)
