"""Module watches, list filters by state and type, and progress pace, in the core (manual clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from tm_server.core import (
    CursorExpiredError,
    InvalidArgumentError,
    ListFilter,
    ManualClock,
    ShuttingDownError,
    TaskManager,
    TaskState,
    UnknownModuleError,
    WatchFellBehindError,
)
from tm_server.core.module_watch import WatchBatch, WatchEventKind
from tm_server.core.observe import TaskObserver
from tm_server.core.producers import Producers, TaskSpec

pytestmark = pytest.mark.timeout(30)


class Seen(TaskObserver):
    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str, TaskState, float]] = []
        self.expired: list[tuple[str, int]] = []

    def task_created(self, module: str, task_type: str) -> None:
        self.created.append((module, task_type))

    def task_finished(self, module: str, task_type: str, state: TaskState, duration: float) -> None:
        self.finished.append((module, task_type, state, duration))

    def tasks_expired(self, module: str, count: int) -> None:
        self.expired.append((module, count))


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def producers(clock: ManualClock, seen: Seen) -> AsyncIterator[Producers]:
    # No ticks between batches: every change is read as soon as it is there.
    manager = TaskManager(
        shards=3, node="n", clock=clock, task_ttl=60, watch_interval=0, observer=seen
    )
    yield Producers(manager, lease_seconds=30)
    await manager.close()


async def make(p: Producers, module: str = "backup", **fields: object) -> UUID:
    start = bool(fields.pop("start", True))
    spec = TaskSpec(module=module, type=str(fields.pop("type", "copy")), **fields)  # type: ignore[arg-type]
    status, _ = await p.create_task(spec, start=start)
    return status.id


class Reader:
    """Reads a watch in the background, batch by batch."""

    def __init__(self, stream: AsyncIterator[WatchBatch]) -> None:
        self.stream = stream
        self.batches: asyncio.Queue[WatchBatch] = asyncio.Queue()
        self.error: BaseException | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for batch in self.stream:
                await self.batches.put(batch)
        except BaseException as exc:
            self.error = exc

    async def next(self) -> WatchBatch:
        return await asyncio.wait_for(self.batches.get(), 5)

    async def events_until(self, done: int) -> list[tuple[WatchEventKind, UUID, TaskState]]:
        out: list[tuple[WatchEventKind, UUID, TaskState]] = []
        while len(out) < done:
            batch = await self.next()
            out += [(e.kind, e.task.task_id, e.task.state) for e in batch.events]
        return out

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_events_of_a_module_in_order_with_entries(producers: Producers) -> None:
    tm = producers.manager
    await tm.register_module("backup")
    await tm.register_module("other")
    reader = Reader(tm.watch_tasks("backup", ListFilter()))
    first = await reader.next()
    assert first.events == () and first.cursor  # "now", at once
    task = await make(producers)
    await make(producers, "other")
    got = await reader.events_until(1)
    assert got == [(WatchEventKind.CREATED, task, TaskState.RUNNING)]  # coalesced: created, started
    await producers.report_progress(task, 5, 10)
    batch = await reader.next()
    (event,) = batch.events
    assert event.kind is WatchEventKind.CHANGED
    assert (event.task.progress_completed, event.task.progress_total) == (5, 10)
    assert event.task.module == "backup" and not event.task.internal
    await producers.finish_task(task, None)
    (event,) = (await reader.next()).events
    assert event.kind is WatchEventKind.FINISHED and event.task.state is TaskState.DONE
    await tm.drain("backup")
    (event,) = (await reader.next()).events
    assert event.kind is WatchEventKind.REMOVED and event.task.state is TaskState.DONE
    await reader.close()


async def test_resume_from_a_cursor_gets_exactly_what_was_missed(producers: Producers) -> None:
    tm = producers.manager
    await tm.register_module("backup")
    stream = tm.watch_tasks("backup", ListFilter())
    cursor = (await anext(stream)).cursor
    tasks = [await make(producers) for _ in range(30)]
    first = await anext(stream)
    assert {e.task.task_id for e in first.events} == set(tasks)
    await stream.aclose()  # the reader goes away after the first burst
    for task in tasks[:10]:
        await producers.finish_task(task, None)
    more = [await make(producers) for _ in range(5)]
    resumed = tm.watch_tasks("backup", ListFilter(), cursor=first.cursor)
    batch = await anext(resumed)
    kinds = {e.task.task_id: e.kind for e in batch.events}
    assert kinds == {
        **{t: WatchEventKind.FINISHED for t in tasks[:10]},
        **{t: WatchEventKind.CREATED for t in more},
    }
    await resumed.aclose()
    # From the very first cursor: every task once, each in its latest state.
    again = tm.watch_tasks("backup", ListFilter(), cursor=cursor)
    batch = await anext(again)
    ids = [e.task.task_id for e in batch.events]
    assert sorted(ids) == sorted(tasks + more) and len(ids) == len(set(ids))
    done = {e.task.task_id for e in batch.events if e.task.state is TaskState.DONE}
    assert done == set(tasks[:10])
    await again.aclose()


async def test_snapshot_then_changes(producers: Producers) -> None:
    tm = producers.manager
    before = [await make(producers) for _ in range(3)]
    stream = tm.watch_tasks("backup", ListFilter(), snapshot=True)
    batch = await anext(stream)
    assert {e.task.task_id for e in batch.events} == set(before)
    assert {e.kind for e in batch.events} == {WatchEventKind.EXISTING} and not batch.cursor
    end = await anext(stream)
    assert end.snapshot_complete and end.events == () and end.cursor
    after = await make(producers)
    (event,) = (await anext(stream)).events
    assert event.task.task_id == after
    await stream.aclose()


async def test_state_and_type_filters_tell_a_task_leaving_them(producers: Producers) -> None:
    tm = producers.manager
    await tm.register_module("backup")
    flt = ListFilter(states=frozenset({TaskState.RUNNING}), types=frozenset({"copy"}))
    stream = tm.watch_tasks("backup", flt)
    await anext(stream)
    copy = await make(producers, type="copy")
    await make(producers, type="verify")
    (event,) = (await anext(stream)).events
    assert event.task.task_id == copy
    await producers.finish_task(copy, "disk full")
    (event,) = (await anext(stream)).events
    # No longer running, told once more so the reader knows it left.
    assert event.kind is WatchEventKind.FINISHED and event.task.state is TaskState.FAILED
    await stream.aclose()
    page, _ = await tm.list_module_tasks("backup", ListFilter(types=frozenset({"verify"})))
    assert [e.type for e in page] == ["verify"]
    page, _ = await tm.list_module_tasks("backup", ListFilter(states=frozenset({TaskState.FAILED})))
    assert [e.task_id for e in page] == [copy]


async def test_internal_children_only_with_internal(producers: Producers) -> None:
    tm = producers.manager
    parent = await make(producers)
    stream = tm.watch_tasks("backup", ListFilter(internal=True))
    await anext(stream)
    child = await make(producers, parent_id=parent)
    batch = await anext(stream)
    by_id = {e.task.task_id: e for e in batch.events}
    assert by_id[child].task.internal and by_id[child].kind is WatchEventKind.CREATED
    assert by_id[parent].kind is WatchEventKind.CHANGED  # its children changed
    await stream.aclose()
    hidden = tm.watch_tasks("backup", ListFilter())
    await anext(hidden)
    await producers.finish_task(child, None)  # folds into the parent: removed
    (event,) = (await anext(hidden)).events
    assert event.task.task_id == parent
    await hidden.aclose()


async def test_bad_cursors_and_arguments(producers: Producers) -> None:
    tm = producers.manager
    await tm.register_module("backup")
    with pytest.raises(InvalidArgumentError, match="cursor"):
        await anext(tm.watch_tasks("backup", ListFilter(), cursor="nonsense"))
    with pytest.raises(UnknownModuleError):
        await anext(tm.watch_tasks("nope", ListFilter()))
    stream = tm.watch_tasks("backup", ListFilter())
    cursor = (await anext(stream)).cursor
    await stream.aclose()
    with pytest.raises(InvalidArgumentError, match="snapshot"):
        await anext(tm.watch_tasks("backup", ListFilter(), snapshot=True, cursor=cursor))
    other = TaskManager(shards=3, node="n2", clock=ManualClock(), watch_interval=0)
    await other.register_module("backup")
    # A cursor of another incarnation (as after a restart) has expired.
    with pytest.raises(CursorExpiredError):
        await anext(other.watch_tasks("backup", ListFilter(), cursor=cursor))
    await other.close()


async def test_a_cursor_past_the_window_has_expired(clock: ManualClock) -> None:
    tm = TaskManager(shards=1, node="n", clock=clock, watch_window=1024, watch_interval=0)
    producers = Producers(tm, lease_seconds=30)
    await tm.register_module("backup")
    stream = tm.watch_tasks("backup", ListFilter())
    cursor = (await anext(stream)).cursor
    await stream.aclose()
    task = await make(producers)
    for i in range(1100):
        await producers.report_progress(task, i, None)
    with pytest.raises(CursorExpiredError):
        await anext(tm.watch_tasks("backup", ListFilter(), cursor=cursor))
    await tm.close()


async def test_a_reader_that_falls_behind_the_window_is_ended(clock: ManualClock) -> None:
    tm = TaskManager(shards=1, node="n", clock=clock, watch_window=1024, watch_interval=0)
    producers = Producers(tm, lease_seconds=30)
    await tm.register_module("backup")
    stream = tm.watch_tasks("backup", ListFilter())
    await anext(stream)
    task = await make(producers)
    await anext(stream)
    # The reader does not come back for its next batch while 1,100 changes go by.
    for i in range(1100):
        await producers.report_progress(task, i, None)
    with pytest.raises(WatchFellBehindError):
        await anext(stream)
    await tm.close()


async def test_watchers_at_one_cursor_share_their_batches(producers: Producers) -> None:
    tm = producers.manager
    await tm.register_module("backup")
    streams = [tm.watch_tasks("backup", ListFilter()) for _ in range(3)]
    firsts = [await anext(s) for s in streams]
    await make(producers)
    batches = [await anext(s) for s in streams]
    assert firsts[0].cursor == firsts[1].cursor
    assert batches[0] is batches[1] is batches[2]
    for s in streams:
        await s.aclose()


async def test_ticks_coalesce_a_burst_into_one_batch(clock: ManualClock) -> None:
    tm = TaskManager(shards=2, node="n", clock=clock, watch_interval=1.0)
    producers = Producers(tm, lease_seconds=30)
    task = await make(producers)
    reader = Reader(tm.watch_tasks("backup", ListFilter()))
    await reader.next()
    await producers.report_progress(task, 1, 100)
    (event,) = (await reader.next()).events  # the first change goes at once
    assert event.task.progress_completed == 1
    for i in range(2, 50):
        await producers.report_progress(task, i, 100)
    await asyncio.sleep(0.05)
    assert reader.batches.empty()  # held until the next tick
    clock.advance(1.0)
    (event,) = (await reader.next()).events
    assert event.task.progress_completed == 49
    tm.stop_watches()
    await asyncio.sleep(0.05)
    assert isinstance(reader.error, ShuttingDownError)
    await reader.close()
    await tm.close()


async def test_pace_rate_and_estimated_end(producers: Producers, clock: ManualClock) -> None:
    tm = producers.manager
    task = await make(producers)
    status = await tm.get_status(task)
    assert status.progress_rate is None and status.estimated_end_time is None
    clock.advance(10)
    await producers.report_progress(task, 20, 100)  # 2 a second since the start
    status = await tm.get_status(task)
    assert status.last_progress_time == clock.now()
    assert status.progress_rate == pytest.approx(2.0)
    assert status.estimated_end_time == pytest.approx(clock.now() + 40)
    clock.advance(10)
    await producers.report_progress(task, 80, 100)  # 6 a second now: the rate moves towards it
    rate = (await tm.get_status(task)).progress_rate
    assert rate is not None and 2.0 < rate < 6.0
    clock.advance(5)  # no report: the last progress time says how long it has stalled
    assert (await tm.get_status(task)).last_progress_time == clock.now() - 5
    # A parent's pace comes from its rolled-up progress.
    parent = await make(producers, progress_total=None)
    child = await make(producers, parent_id=parent)
    await tm.get_status(parent)
    clock.advance(4)
    await producers.report_progress(child, 8, 16)
    status = await tm.get_status(parent)
    assert status.progress_rate == pytest.approx(2.0)
    assert status.estimated_end_time == pytest.approx(clock.now() + 4)
    await producers.finish_task(task, None)
    final = await tm.get_status(task)
    assert final.progress_rate is None and final.last_progress_time is None


async def test_a_burst_weighs_as_long_as_it_lasted(
    producers: Producers, clock: ManualClock
) -> None:
    # 10 units a few milliseconds after the start, then a steady 10 a second:
    # the burst's interval is milliseconds long, and weighs as much.
    task = await make(producers)
    clock.advance(0.003)
    await producers.report_progress(task, 10, 1000)
    for second in range(1, 4):
        clock.advance(1)
        await producers.report_progress(task, 10 + 10 * second, 1000)
    rate = (await producers.manager.get_status(task)).progress_rate
    assert rate is not None and 10 <= rate < 14


async def test_observer_and_counts(producers: Producers, seen: Seen, clock: ManualClock) -> None:
    tm = producers.manager
    ok = await make(producers)
    bad = await make(producers, type="verify")
    await make(producers, "other")
    clock.advance(3)
    await producers.finish_task(ok, None)
    await producers.finish_task(bad, "no space")
    assert sorted(seen.created) == [("backup", "copy"), ("backup", "verify"), ("other", "copy")]
    assert sorted(seen.finished) == [
        ("backup", "copy", TaskState.DONE, 3.0),
        ("backup", "verify", TaskState.FAILED, 3.0),
    ]
    assert await tm.task_counts() == {
        ("backup", "done"): 1,
        ("backup", "failed"): 1,
        ("other", "running"): 1,
    }
    clock.advance(61)  # the TTL
    await asyncio.sleep(0)
    assert seen.expired == [("backup", 2)] or sorted(seen.expired) == [("backup", 1), ("backup", 1)]
    assert await tm.task_counts() == {("other", "running"): 1}


async def test_ticks_stretch_while_every_batch_finds_changes(clock: ManualClock) -> None:
    assert clock.now() % 4 == 0  # ticks fall on multiples of their interval
    tm = TaskManager(shards=1, node="n", clock=clock, watch_interval=1.0, watch_max_interval=4.0)
    producers = Producers(tm, lease_seconds=30)
    task = await make(producers)
    reader = Reader(tm.watch_tasks("backup", ListFilter()))
    await reader.next()
    value = 0

    async def change() -> None:
        nonlocal value
        value += 1
        await producers.report_progress(task, value, 100)

    async def batch_after(seconds: float) -> float:
        await change()
        clock.advance(seconds)
        (event,) = (await reader.next()).events
        return event.task.progress_completed

    assert await batch_after(0) == 1  # after a quiet spell, at once
    assert await batch_after(1) == 2  # then a tick later
    assert await batch_after(1) == 3  # the wait doubled to 2: the next even second
    await change()
    clock.advance(1)
    await asyncio.sleep(0.05)
    assert reader.batches.empty()  # doubled to 4: nothing at the next second
    assert await batch_after(1) == 5
    clock.advance(8)  # quiet: a tick that finds nothing
    await asyncio.sleep(0.05)
    assert reader.batches.empty()
    assert await batch_after(0) == 6  # the waits start over: at once
    await reader.close()
    await tm.close()


async def test_a_task_that_fails_unstarted_lasted_from_its_creation(
    producers: Producers, seen: Seen, clock: ManualClock
) -> None:
    # An id made at the manual clock's time (version 7: milliseconds since the epoch first).
    millis = int(clock.now() * 1000)
    task_id = UUID(int=millis << 80 | 7 << 76 | 0x123 << 64 | 2 << 62 | 0x1234)
    task = await make(producers, start=False, task_id=task_id)
    clock.advance(5)
    assert await producers.manager.fail_task(task, "producer lost")
    ((module, task_type, state, duration),) = seen.finished
    assert (module, task_type, state) == ("backup", "copy", TaskState.FAILED)
    assert duration == pytest.approx(5.0, abs=0.01)
