"""What the CLI's bars and the watch table show: pure functions of a task's numbers and now."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner

from tm_client import (
    TaskEvent,
    TaskEventType,
    TaskKind,
    TaskState,
    TaskStats,
    TaskStatus,
    WatchBatch,
)
from tm_client.cli_output import status_lines
from tm_client.cli_progress import (
    ProgressView,
    bar_or_spinner,
    format_duration,
    format_percent,
    format_rate,
    human_number,
    percent,
    progress_view,
)
from tm_client.cli_watch import WatchBoard, event_json, event_line, line_cursors

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"), (7, "7"), (12.34, "12.3"), (999.4, "999"), (999.6, "1k"), (12_345, "12.3k"),
        (1.5e6, "1.5M"), (2e18, "2000P"), (0.0123, "0.0123"), (0.00012, "0.00012"),
        (0.00001, "0"), (-42.5, "-42.5"), (float("inf"), "inf"),
    ],
)  # fmt: skip
def test_human_number(value: float, text: str) -> None:
    assert human_number(value) == text


@pytest.mark.parametrize(
    ("rate", "units", "text"),
    [
        (None, "ranges", ""), (12.5, "ranges", "12.5 ranges/s"), (3, "", "3/s"),
        (15_000, "files", "15k files/s"), (0.1, "files", "0.1 files/s"),
        (0.02, "ranges", "1.2 ranges/min"), (0.0001, "ranges", "0.36 ranges/h"),
        (1e-9, "", "0/h"), (0, "ranges", "0 ranges/s"), (float("nan"), "x", ""),
    ],
)  # fmt: skip
def test_format_rate(rate: float | None, units: str, text: str) -> None:
    assert format_rate(rate, units) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""), (0, "0s"), (-3, "0s"), (44.6, "45s"), (59.6, "1m00s"), (185, "3m05s"),
        (3599.4, "59m59s"), (7380, "2h03m"), (4 * 86400 + 7 * 3600 + 59, "4d07h"),
        (float("inf"), ""),
    ],
)  # fmt: skip
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_percent_is_none_without_a_total_and_rounds_down() -> None:
    assert percent(5, 0) is None and percent(5, -1) is None
    assert percent(5, 10) == 50.0 and percent(12, 10) == 100.0 and percent(-1, 10) == 0.0
    assert format_percent(percent(9999, 10000)) == "99%"  # not 100% before it is all done
    assert format_percent(100.0) == "100%" and format_percent(None) == ""


def test_a_running_task_with_a_total_shows_a_bar_rate_elapsed_and_eta() -> None:
    view = progress_view(
        state=TaskState.RUNNING, completed=30, total=120, units="ranges", rate=2.5,
        start_time=NOW - timedelta(seconds=75), estimated_end_time=NOW + timedelta(seconds=36),
        now=NOW,
    )  # fmt: skip
    assert view == ProgressView(
        percent=25.0, amount="30/120 ranges", rate="2.5 ranges/s", elapsed="1m15s",
        eta="36s", spinner=False,
    )  # fmt: skip
    assert view.parts() == ["25%", "30/120 ranges", "2.5 ranges/s", "elapsed 1m15s", "ETA 36s"]
    later = progress_view(
        state=TaskState.RUNNING, completed=30, total=120,
        estimated_end_time=NOW + timedelta(seconds=36), now=NOW + timedelta(seconds=50),
    )  # fmt: skip
    assert later.eta == "0s" and later.elapsed == "" and later.rate == ""  # overdue; no start


def test_an_unknown_total_spins_until_the_task_finishes() -> None:
    running = progress_view(
        state=TaskState.RUNNING, completed=7, total=0, units="files", rate=0.5, now=NOW
    )
    assert running.spinner and running.percent is None and running.amount == "7 files"
    assert running.parts() == ["7 files", "0.5 files/s"]
    finished = progress_view(
        state=TaskState.DONE, completed=9, total=0, rate=0.5,
        start_time=NOW - timedelta(seconds=10), end_time=NOW - timedelta(seconds=4),
        estimated_end_time=NOW, now=NOW,
    )  # fmt: skip
    # Finished: no spinner, no rate or ETA; elapsed is start to end, not to now.
    assert not finished.spinner and finished.rate == "" and finished.eta == ""
    assert finished.elapsed == "6s" and finished.amount == "9"
    nothing = progress_view(state=TaskState.CREATED, completed=0, total=0, now=NOW)
    assert nothing.parts() == [] and nothing.spinner


def test_bar_or_spinner() -> None:
    spinner = Spinner("dots")
    spinning = progress_view(state=TaskState.RUNNING, completed=1, total=0, now=NOW)
    assert bar_or_spinner(spinning, spinner) is spinner
    bar = bar_or_spinner(
        progress_view(state=TaskState.RUNNING, completed=1, total=4, now=NOW), spinner
    )
    assert isinstance(bar, ProgressBar) and bar.completed == 25.0
    done = progress_view(state=TaskState.DONE, completed=1, total=0, now=NOW)
    assert str(bar_or_spinner(done, spinner)) == ""


def stats(task_id: UUID, state: TaskState = TaskState.RUNNING, **fields: object) -> TaskStats:
    base: dict[str, object] = {
        "task_id": task_id, "state": state, "type": "repair", "kind": TaskKind.NODE,
        "scope": "", "keyspace": "", "table": "", "entity": "", "sequence_number": 1,
        "shard": 0, "creation_time": NOW, "start_time": NOW - timedelta(seconds=5),
        "end_time": None, "module": "repair",
    }  # fmt: skip
    base.update(fields)
    return TaskStats(**base)  # type: ignore[arg-type]


def ev(kind: TaskEventType, task: TaskStats) -> TaskEvent:
    return TaskEvent(kind, task)


def test_line_cursors_never_skip_an_event() -> None:
    a, b, c = (ev(TaskEventType.CHANGED, stats(uuid4())) for _ in range(3))
    batch = WatchBatch((a, b, c), cursor="c2")
    # Only the last event of a batch has a cursor that resumes right after it.
    assert line_cursors(batch, "c1", in_snapshot=False) == ["c1", "c1", "c2"]
    snapshot = WatchBatch((a, b), cursor="")
    assert line_cursors(snapshot, "", in_snapshot=True) == ["", ""]
    ending = WatchBatch((a,), cursor="c1", snapshot_complete=True)
    assert line_cursors(ending, "", in_snapshot=True) == ["c1"]
    assert line_cursors(WatchBatch((), cursor="c3"), "c2", in_snapshot=False) == []


def test_event_lines_and_json() -> None:
    task_id = uuid4()
    event = ev(
        TaskEventType.FINISHED,
        stats(task_id, TaskState.DONE, progress_completed=4, progress_total=4, end_time=NOW),
    )
    assert event_line(event) == f"finished {task_id} repair repair done 4/4"
    bare = ev(TaskEventType.CREATED, stats(task_id, module="", type=""))
    assert event_line(bare) == f"created {task_id} - - running"
    doc = event_json(event, "c9")
    assert doc["type"] == "finished" and doc["cursor"] == "c9" and "status" not in doc
    task = doc["task"]
    assert task["task_id"] == str(task_id) and task["state"] == "done"
    assert task["progress_completed"] == 4 and task["module"] == "repair"
    assert task["end_time"] == "2026-01-02T03:04:05Z" and task["internal"] is False


def test_the_board_follows_the_events() -> None:
    a, b, c = sorted((uuid4() for _ in range(3)), key=lambda u: u.int)
    board = WatchBoard(show_module=True, clock=lambda: NOW)
    board.apply(WatchBatch((ev(TaskEventType.EXISTING, stats(a, progress_total=10)),), ""))
    assert board.summary() == "1 task: 1 running (loading the snapshot...)"
    board.apply(WatchBatch((), "c1", snapshot_complete=True))
    board.apply(
        WatchBatch(
            (
                ev(TaskEventType.CREATED, stats(b)),
                ev(TaskEventType.CHANGED, stats(a, progress_completed=5, progress_total=10)),
            ),
            "c2",
        )
    )
    cells = board.cells()
    assert [str(r["task_id"]) for r in cells] == [str(a), str(b)]
    assert cells[0]["%"] == "50%" and cells[0]["done"] == "5/10" and cells[0]["elapsed"] == "5s"
    spinner = cells[1]["progress"]
    assert isinstance(spinner, Spinner)  # no total: it spins...
    board.apply(WatchBatch((ev(TaskEventType.CHANGED, stats(b, progress_completed=2)),), "c3"))
    assert board.cells()[1]["progress"] is spinner  # ...the same one, so it keeps turning
    board.apply(
        WatchBatch(
            (
                ev(TaskEventType.FINISHED, stats(a, TaskState.FAILED, end_time=NOW)),
                ev(TaskEventType.REMOVED, stats(b, TaskState.DONE)),
            ),
            "c4",
        )
    )
    cells = board.cells()  # removed: gone; finished: stays, with its end state
    assert [(str(r["task_id"]), str(r["state"])) for r in cells] == [(str(a), "failed")]
    assert board.summary() == "1 task: 1 failed"
    board.apply(
        WatchBatch((ev(TaskEventType.EXISTING, stats(c)),), "", restarted=True, restart_reason="x")
    )
    assert [str(r["task_id"]) for r in board.cells()] == [str(c)]  # a new snapshot starts over
    assert board.summary().endswith("(loading the snapshot...)")


def test_status_lines_show_the_rate_fields() -> None:
    status = TaskStatus(
        id=uuid4(), type="t", kind=TaskKind.NODE, scope="", state=TaskState.RUNNING,
        is_abortable=False, creation_time=NOW, start_time=NOW, end_time=None, error="",
        parent_id=None, sequence_number=1, shard=0, keyspace="", table="", entity="",
        progress_units="", progress_total=0, progress_completed=0, children=(), module="m",
        internal=False, user_task=False, abort_requested=False, expire_time=None,
    )  # fmt: skip
    lines = status_lines(status)
    assert lines[-3:] == ["last_progress_time: ", "progress_rate: ", "estimated_end_time: "]
    rated = replace(status, progress_rate=2.5, estimated_end_time=NOW, last_progress_time=NOW)
    assert status_lines(rated)[-3:] == [
        "last_progress_time: 2026-01-02T03:04:05Z", "progress_rate: 2.5",
        "estimated_end_time: 2026-01-02T03:04:05Z",
    ]  # fmt: skip


def test_a_board_without_a_snapshot_waits_for_none() -> None:
    board = WatchBoard(show_module=False, snapshot=False, clock=lambda: NOW)
    assert board.summary() == "0 tasks"
    board.apply(WatchBatch((ev(TaskEventType.CREATED, stats(uuid4())),), "c1"))
    assert board.summary() == "1 task: 1 running"


def test_the_board_shows_the_newest_tasks_that_fit_the_screen() -> None:
    ids = sorted((uuid4() for _ in range(10)), key=lambda u: u.int)
    board = WatchBoard(show_module=False, clock=lambda: NOW)
    board.apply(WatchBatch(tuple(ev(TaskEventType.EXISTING, stats(i)) for i in ids), "c"))
    out = io.StringIO()
    Console(file=out, width=200, height=6, color_system=None).print(board)
    text = out.getvalue()
    assert [str(i) in text for i in ids] == [False] * 7 + [True] * 3
    assert "(7 older not shown)" in text and "module" not in text.splitlines()[1]
