"""Trees of any depth in the core (manual clock): every walk is a loop, none nests calls."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from tm_server.core import (
    ManualClock,
    Progress,
    TaskManager,
    TaskState,
    WaitTimeoutError,
)
from tm_server.core.producers import Producers, TaskSpec

DEPTH = 10_000


@pytest.fixture
async def producers(clock: ManualClock) -> AsyncIterator[Producers]:
    manager = TaskManager(shards=3, node="n", clock=clock, task_ttl=600)
    yield Producers(manager, lease_seconds=30)
    await manager.close()


async def chain(p: Producers, depth: int, **fields: object) -> list[UUID]:
    """Root first: each task the parent of the next, spread over the shards."""
    ids: list[UUID] = []
    for level in range(depth):
        spec = TaskSpec(
            **{  # type: ignore[arg-type]
                "module": "deep",
                "type": "step",
                "progress_units": "units",
                "abortable": True,
                "parent_id": ids[-1] if ids else None,
                "shard": level % 3,
                **fields,
            }
        )
        status, _ = await p.create_task(spec, start=True)
        ids.append(status.id)
    return ids


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_chain_ten_thousand_deep_works_end_to_end(producers: Producers) -> None:
    # Far deeper than the interpreter's recursion limit: nothing may recurse per level.
    assert sys.getrecursionlimit() < DEPTH
    tm = producers.manager
    ids = await chain(producers, DEPTH)
    root, leaf = ids[0], ids[-1]
    assert (await tm.get_status(root)).state is TaskState.RUNNING
    await producers.report_progress(leaf, 3, 10)
    assert (await tm.get_status(root)).progress == Progress(3, 10)
    await producers.report_progress(leaf, 7, 10)  # the cached sums above are refreshed
    assert (await tm.get_status(root)).progress == Progress(7, 10)
    assert (await tm.get_status(ids[DEPTH // 2])).progress == Progress(7, 10)
    order = [s.id async for s in tm.get_status_recursive(root)]
    assert order == ids
    await tm.abort_task(root)
    assert (await tm.get_status(leaf)).abort_requested
    # Finished from the leaf up, each folding into its parent.
    for task_id in reversed(ids):
        await producers.finish_task(task_id, None)
    final = await tm.get_status(root)
    assert final.state is TaskState.FAILED and final.error == "abort requested"
    tree = [s async for s in tm.get_status_recursive(root)]
    assert [s.id for s in tree] == ids  # failed children are kept through folding
    assert all(s.state is TaskState.FAILED for s in tree)


async def test_a_deep_chain_finished_from_the_root_down(producers: Producers) -> None:
    tm = producers.manager
    await tm.set_task_ttl(0)
    ids = await chain(producers, DEPTH)
    for task_id in ids:
        await producers.finish_task(task_id, None)
    await settle()
    assert all(c == {"registered": 0, "held": 0} for c in tm.stats_counts())
    # Every id is free again: nothing keeps a reference to the tree.
    assert await chain(producers, 3, parent_id=None, shard=0) != []


async def test_a_deep_subtree_goes_away_with_its_root(
    producers: Producers, clock: ManualClock
) -> None:
    tm = producers.manager
    await tm.set_task_ttl(5)
    ids = await chain(producers, DEPTH)
    half = DEPTH // 2
    for task_id in reversed(ids[half + 1 :]):
        await producers.finish_task(task_id, "lost")  # failed: kept through folding
    for task_id in ids[: half + 1]:
        await producers.finish_task(task_id, None)  # root first: the rest are held
    tree = [s async for s in tm.get_status_recursive(ids[0])]
    assert [s.id for s in tree] == ids
    assert [s.state for s in tree[half + 1 :]] == [TaskState.FAILED] * (DEPTH - half - 1)
    clock.advance(6)  # the root expires; releasing it frees the whole chain
    await settle()
    assert all(c == {"registered": 0, "held": 0} for c in tm.stats_counts())


async def test_unregistering_a_module_aborts_a_deep_chain(producers: Producers) -> None:
    tm = producers.manager
    ids = await chain(producers, DEPTH)
    watch = await tm.open_watch(ids[-1])
    assert (await anext(watch)).state is TaskState.RUNNING
    await producers.unregister_module("deep")
    final = [s async for s in watch][-1]
    assert final.state is TaskState.FAILED and "unregistered" in final.error


async def test_a_wait_times_out_on_the_injected_clock(
    producers: Producers, clock: ManualClock
) -> None:
    tm = producers.manager
    (task,) = await chain(producers, 1)
    watch = tm.watch_task(task, timeout=30)
    assert (await anext(watch)).state is TaskState.RUNNING
    waiting = asyncio.ensure_future(anext(watch))
    await settle()
    assert not waiting.done()
    clock.advance(29)
    await settle()
    assert not waiting.done()
    clock.advance(1)  # no real time passes: the clock is the test's
    with pytest.raises(WaitTimeoutError, match="did not finish within 30s"):
        await asyncio.wait_for(waiting, 1)
    assert tm.watcher_count() == 0


async def test_a_zero_timeout_tells_the_status_now(producers: Producers) -> None:
    tm = producers.manager
    running, finished = await chain(producers, 1), await chain(producers, 1)
    await producers.finish_task(finished[0], None)
    watch = tm.watch_task(running[0], timeout=0)
    assert (await anext(watch)).state is TaskState.RUNNING
    with pytest.raises(WaitTimeoutError):
        await anext(watch)
    statuses = [s async for s in tm.watch_task(finished[0], timeout=0)]
    assert [s.state for s in statuses] == [TaskState.DONE]
    # Changes that never stop still end at the deadline.
    watch = tm.watch_task(running[0], timeout=0)
    await anext(watch)
    await producers.report_progress(running[0], 1, None)
    with pytest.raises(WaitTimeoutError):
        await anext(watch)
