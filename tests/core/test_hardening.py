"""Hardening in the core (manual clock): final statuses owed to slow watchers, ids that
trees still name, implausible times, bounded TTLs and progress."""

from __future__ import annotations

import asyncio
import math
import time
import tracemalloc
from collections.abc import AsyncIterator
from uuid import UUID, uuid1, uuid4

import pytest

from tm_server.core import (
    InvalidArgumentError,
    ListFilter,
    ManualClock,
    Progress,
    TaskAlreadyExistsError,
    TaskManager,
    TaskState,
    creation_time_of,
)
from tm_server.core.producers import Producers, TaskSpec
from tm_server.core.validation import MAX_PROGRESS, MAX_TTL_SECONDS

from ..bodies import Controlled


@pytest.fixture
async def producers(clock: ManualClock) -> AsyncIterator[Producers]:
    manager = TaskManager(shards=3, node="n", clock=clock, task_ttl=0)
    yield Producers(manager, lease_seconds=30)
    await manager.close()


async def make(p: Producers, **fields: object) -> UUID:
    spec = TaskSpec(**{"module": "backup", "type": "backup", **fields})  # type: ignore[arg-type]
    status, created = await p.create_task(spec, start=True)
    assert created
    return status.id


async def settle() -> None:
    """Lets the background work of a shard run (releasing a dropped parent's children)."""
    for _ in range(5):
        await asyncio.sleep(0)


def v7_at(seconds: float) -> UUID:
    """A version-7 UUID whose time field says ``seconds`` since the epoch."""
    ms = int(seconds * 1000) & 0xFFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (0b10 << 62) | (uuid4().int & ((1 << 62) - 1))
    return UUID(int=value)


# ---- a watch owes its final status to a slow reader ------------------------------------------


async def test_watch_read_late_still_ends_on_the_final_status(producers: Producers) -> None:
    tm = producers.manager
    task = await make(producers, entity="x" * 4096)
    watch = await tm.open_watch(task)
    first = await anext(watch)
    assert first.state is TaskState.RUNNING
    # The reader is slow: everything happens before it asks again.
    for i in range(1500):
        await producers.report_progress(task, i, None)
    await producers.finish_task(task, None)
    rest = [status async for status in watch]
    assert rest, "the final status was never sent"
    assert rest[-1].state is TaskState.DONE
    assert all(s.state is TaskState.RUNNING for s in rest[:-1])


async def test_watch_reader_between_progress_and_finish_gets_the_final(
    producers: Producers,
) -> None:
    tm = producers.manager
    task = await make(producers)
    watches = [await tm.open_watch(task) for _ in range(20)]
    for watch in watches:
        await anext(watch)
    await producers.report_progress(task, 1, 2)
    for watch in watches:
        assert (await anext(watch)).progress == Progress(1, 2)
    await producers.report_progress(task, 2, 2)
    await producers.finish_task(task, None)
    for watch in watches:
        statuses = [s async for s in watch]
        assert statuses[-1].state is TaskState.DONE


# ---- ids a registered tree still names -------------------------------------------------------


async def test_an_id_that_is_a_parent_of_a_live_task_cannot_be_reused(
    producers: Producers,
) -> None:
    tm = producers.manager
    a = await make(producers)
    b = await make(producers, parent_id=a)
    await producers.finish_task(a, None)  # TTL 0: a leaves the registry, b still points to it
    with pytest.raises(TaskAlreadyExistsError, match="still refers to it"):
        await make(producers, task_id=a, parent_id=b)
    with pytest.raises(TaskAlreadyExistsError):
        await make(producers, task_id=a)
    # Nothing was broken on the way: the tree still answers and finishes.
    assert (await tm.get_status(b)).parent_id == a
    assert [s.id async for s in tm.get_status_recursive(b)] == [b]
    await producers.finish_task(b, None)
    await settle()
    # Once nothing names it any more, the id is free again.
    assert await make(producers, task_id=a) == a


async def test_ids_of_folded_and_held_children_cannot_be_reused(producers: Producers) -> None:
    tm = producers.manager
    root = await make(producers)
    folded = await make(producers, parent_id=root)  # internal: folds into root when done
    held = await make(producers, parent_id=root, internal=False)  # kept by root when done
    await producers.finish_task(folded, None)
    await producers.finish_task(held, None)
    for taken in (folded, held):
        with pytest.raises(TaskAlreadyExistsError, match="still refers to it"):
            await make(producers, task_id=taken)
        with pytest.raises(TaskAlreadyExistsError):
            await make(producers, task_id=taken, parent_id=root)
    children = [c.task_id for c in (await tm.get_status(root)).children]
    assert sorted(children) == sorted([folded, held])  # no duplicate slipped in
    await producers.finish_task(root, None)  # TTL 0: the whole tree goes
    await settle()
    assert await make(producers, task_id=folded) == folded
    assert await make(producers, task_id=held) == held


async def test_failed_descendants_kept_by_folding_stay_taken(producers: Producers) -> None:
    root = await make(producers)
    mid = await make(producers, parent_id=root)
    leaf = await make(producers, parent_id=mid)
    await producers.finish_task(leaf, "disk full")  # folds into mid
    await producers.finish_task(mid, None)  # folds into root, keeping the failed leaf
    for taken in (mid, leaf):
        with pytest.raises(TaskAlreadyExistsError):
            await make(producers, task_id=taken)
    tree = [s async for s in producers.manager.get_status_recursive(root)]
    assert [s.id for s in tree] == [root, mid, leaf]


# ---- creation times only from plausible ids --------------------------------------------------


@pytest.mark.parametrize(
    "task_id",
    [
        UUID("ffffffff-ffff-7fff-bfff-ffffffffffff"),  # version 7, year 10889
        v7_at(time.time() + 3 * 86_400),  # three days ahead of the clock
    ],
)
async def test_ids_from_the_future_give_no_creation_time(
    producers: Producers, task_id: UUID
) -> None:
    assert creation_time_of(task_id) is None
    await make(producers, task_id=task_id)
    status = await producers.manager.get_status(task_id)
    assert status.creation_time is None
    entries, _ = await producers.manager.list_module_tasks("backup", ListFilter(internal=True))
    assert [e.creation_time for e in entries] == [None]


def test_plausible_ids_give_their_creation_time() -> None:
    now = time.time()
    assert creation_time_of(v7_at(now)) == pytest.approx(now, abs=0.002)
    assert creation_time_of(v7_at(now + 3600)) == pytest.approx(now + 3600, abs=0.002)
    assert creation_time_of(uuid1()) == pytest.approx(now, abs=5)
    assert creation_time_of(v7_at(0)) == 0.0


# ---- bounded TTLs and progress ---------------------------------------------------------------


@pytest.mark.parametrize("ttl", [10**12, 2**63 - 1, MAX_TTL_SECONDS + 1])
async def test_ttls_above_the_maximum_are_refused(tm: TaskManager, ttl: int) -> None:
    with pytest.raises(InvalidArgumentError, match="at most") as err:
        await tm.set_task_ttl(ttl)
    assert err.value.field == "ttl_seconds"
    with pytest.raises(InvalidArgumentError) as err:
        await tm.set_user_task_ttl(ttl)
    assert err.value.field == "user_ttl_seconds"
    assert (tm.task_ttl, tm.user_task_ttl) == (0, 3600)


async def test_the_largest_ttl_still_gives_every_status_a_time(
    tm: TaskManager, clock: ManualClock
) -> None:
    assert await tm.set_task_ttl(MAX_TTL_SECONDS) == 0
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.start()
    impl.finish()
    final = await handle.wait()
    assert final.state is TaskState.DONE
    assert final.expire_time == clock.now() + MAX_TTL_SECONDS
    assert (await tm.get_status(handle.id)).expire_time == final.expire_time


def test_a_task_manager_refuses_ttls_out_of_range() -> None:
    with pytest.raises(InvalidArgumentError):
        TaskManager(task_ttl=-1)
    with pytest.raises(InvalidArgumentError):
        TaskManager(user_task_ttl=MAX_TTL_SECONDS + 1)


@pytest.mark.parametrize("value", [1e308, MAX_PROGRESS * 2, math.inf, math.nan, -1.0])
async def test_progress_out_of_range_is_refused(producers: Producers, value: float) -> None:
    task = await make(producers)
    with pytest.raises(InvalidArgumentError) as err:
        await producers.report_progress(task, value, None)
    assert err.value.field == "completed"
    with pytest.raises(InvalidArgumentError) as err:
        await producers.report_progress(task, 0, value)
    assert err.value.field == "total"
    with pytest.raises(InvalidArgumentError) as err:
        await make(producers, progress_total=value)
    assert err.value.field == "progress_total"


async def test_roll_up_of_the_largest_progress_stays_finite(producers: Producers) -> None:
    root = await make(producers)
    children = [await make(producers, parent_id=root) for _ in range(2)]
    for child in children:
        await producers.report_progress(child, MAX_PROGRESS, MAX_PROGRESS)
    progress = (await producers.manager.get_status(root)).progress
    assert progress == Progress(2 * MAX_PROGRESS, 2 * MAX_PROGRESS)
    assert math.isfinite(progress.completed) and math.isfinite(progress.total)


async def test_a_body_cannot_report_progress_that_is_not_finite(tm: TaskManager) -> None:
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.start()
    await settle()
    ctx = impl.ctx
    assert ctx is not None
    with pytest.raises(InvalidArgumentError):
        await ctx.report_progress(math.inf)
    impl.finish()
    assert (await handle.wait()).progress == Progress(0, 0)


# ---- nothing per type outlives its tasks -----------------------------------------------------


async def test_distinct_task_types_leave_nothing_behind(clock: ManualClock) -> None:
    # The watch window keeps the records of the last tasks removed (a watch
    # that resumes is told of them): a small one, filled by the warm-up, so
    # what the second churn adds is what outlives the window.
    manager = TaskManager(shards=3, node="n", clock=clock, watch_window=1024)
    producers = Producers(manager, lease_seconds=30)

    async def churn(prefix: str) -> None:
        for i in range(2000):
            task = await make(producers, type=f"{prefix}-{i}", scope=f"s{i}", progress_units="u")
            await producers.finish_task(task, None)  # TTL 0: gone at once

    # Traced from the start: the warm-up's records the window lets go count as freed.
    tracemalloc.start()
    try:
        await churn("warm-up")
        before = tracemalloc.get_traced_memory()[0]
        await churn("type")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 2,000 distinct types kept ~1.4 KB each (2.8 MB) before; now they go with their tasks.
    assert grown < 200_000, f"{grown} bytes kept after 2,000 finished tasks of distinct types"
    await manager.close()


# ---- rate-limited logging --------------------------------------------------------------------


def test_rate_limited_log_writes_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from tm_server.core.logs import RateLimitedLog

    now = [100.0]
    limited = RateLimitedLog(
        logging.getLogger("t"), interval=10, max_keys=2, monotonic=lambda: now[0]
    )
    error = ValueError("boom")
    with caplog.at_level(logging.INFO, "t"):
        assert limited.log(logging.ERROR, "k", "failed %s", 1, exc_info=error)
        for _ in range(5):
            assert not limited.log(logging.ERROR, "k", "failed %s", 2, exc_info=error)
        now[0] += 10
        assert limited.log(logging.ERROR, "k", "failed %s", 3, exc_info=error)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["failed 1", "failed 3 (5 more like it in the last 10s, not logged)"]
    assert caplog.records[0].exc_info and not caplog.records[1].exc_info
    # Keys are bounded (two here): the oldest is forgotten, and logged in full again.
    with caplog.at_level(logging.INFO, "t"):
        assert limited.log(logging.INFO, "a", "a")
        assert limited.log(logging.INFO, "b", "b")
        assert not limited.log(logging.INFO, "b", "b")
        assert limited.log(logging.ERROR, "k", "failed %s", 4, exc_info=error)
    assert caplog.records[-1].getMessage() == "failed 4" and caplog.records[-1].exc_info
