"""Producer rules in the core: reported tasks, sessions, leases and abort push (manual clock)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from tm_server.core import (
    InvalidArgumentError,
    InvalidStateError,
    ManualClock,
    Progress,
    SessionNotFoundError,
    TaskAlreadyExistsError,
    TaskManager,
    TaskNotFoundError,
    TaskState,
)
from tm_server.core.producers import Producers, TaskSpec


@pytest.fixture
async def producers(clock: ManualClock) -> AsyncIterator[Producers]:
    manager = TaskManager(shards=3, node="n", clock=clock, task_ttl=100)
    yield Producers(manager, lease_seconds=30)
    await manager.close()


async def make(
    p: Producers, *, start: bool = True, session: UUID | None = None, **fields: object
) -> UUID:
    spec = TaskSpec(**{"module": "backup", "type": "backup", **fields})  # type: ignore[arg-type]
    status, created = await p.create_task(spec, session_id=session, start=start)
    assert created
    return status.id


async def test_reported_task_lifecycle(producers: Producers) -> None:
    tm = producers.manager
    task = await make(
        producers,
        start=False,
        scope="node",
        progress_units="bytes",
        progress_total=1000,
        keyspace="ks",
        abortable=True,
    )
    assert await tm.list_modules() == ["backup"]  # registered on first use
    status = await tm.get_status(task)
    assert status.state is TaskState.CREATED and status.progress == Progress(0, 1000)
    assert status.is_abortable and status.progress_units == "bytes"
    with pytest.raises(InvalidStateError, match="created: start it first"):
        await producers.report_progress(task, 1, None)
    started = await producers.start_task(task)
    assert started.state is TaskState.RUNNING
    with pytest.raises(InvalidStateError, match="already started"):
        await producers.start_task(task)
    assert await producers.report_progress(task, 250, None) is False
    assert (await tm.get_status(task)).progress == Progress(250, 1000)
    final = await producers.finish_task(task, None)
    assert final.state is TaskState.DONE
    with pytest.raises(InvalidStateError, match="it is done"):
        await producers.finish_task(task, None)
    with pytest.raises(InvalidStateError, match="it is done"):
        await producers.report_progress(task, 1, None)


@pytest.mark.parametrize(
    ("completed", "total", "field"),
    [
        (-1, None, "completed"),
        (math.nan, None, "completed"),
        (math.inf, None, "completed"),
        (1, -5, "total"),
        (1, math.inf, "total"),
        (11, 10, "completed"),
        (101, None, "completed"),
    ],
)
async def test_bad_progress_is_rejected(
    producers: Producers, completed: float, total: float | None, field: str
) -> None:
    task = await make(producers, progress_total=100)
    with pytest.raises(InvalidArgumentError) as err:
        await producers.report_progress(task, completed, total)
    assert err.value.field == field


async def test_bad_specs_are_rejected(producers: Producers) -> None:
    with pytest.raises(InvalidArgumentError, match="type"):
        await make(producers, type="")
    with pytest.raises(InvalidArgumentError, match="module"):
        await make(producers, module="")
    with pytest.raises(InvalidArgumentError, match="scope"):
        await make(producers, scope="s" * 300)
    with pytest.raises(InvalidArgumentError, match="total"):
        await make(producers, progress_total=-1)
    with pytest.raises(InvalidArgumentError, match="shard"):
        await make(producers, shard=7)
    with pytest.raises(TaskNotFoundError):
        await make(producers, parent_id=uuid4())


async def test_transitions_on_finished_parent_and_failures(producers: Producers) -> None:
    parent = await make(producers)
    await producers.finish_task(parent, None)
    with pytest.raises(InvalidStateError, match="done"):
        await make(producers, parent_id=parent)
    failing = await make(producers)
    final = await producers.finish_task(failing, "upload refused")
    assert final.state is TaskState.FAILED and final.error == "upload refused"


async def test_idempotent_create(producers: Producers) -> None:
    task_id = uuid4()
    spec = TaskSpec(module="backup", type="backup", keyspace="ks", task_id=task_id)
    first, created = await producers.create_task(spec)
    assert created and first.state is TaskState.CREATED
    again, created = await producers.create_task(spec, start=True)
    assert not created and again.id == task_id and again.state is TaskState.RUNNING
    with pytest.raises(TaskAlreadyExistsError):
        await producers.create_task(TaskSpec(module="backup", type="other", task_id=task_id))


async def test_remote_trees_follow_every_core_rule(producers: Producers) -> None:
    tm = producers.manager
    root = await make(producers, progress_units="tables", shard=0)
    kids = [
        await make(producers, parent_id=root, progress_units="tables", shard=i, progress_total=10)
        for i in (1, 2)
    ]
    statuses = [await tm.get_status(k) for k in kids]
    assert all(s.internal for s in statuses)
    assert {s.sequence_number for s in statuses} == {(await tm.get_status(root)).sequence_number}
    await producers.report_progress(kids[0], 4, None)
    assert (await tm.get_status(root)).progress == Progress(4, 20)
    await producers.finish_task(kids[0], None)
    await producers.finish_task(kids[1], "bad table")
    tree = [s async for s in tm.get_status_recursive(root)]
    assert [s.id for s in tree] == [root, kids[0], kids[1]]
    assert tree[2].state is TaskState.FAILED
    with pytest.raises(TaskNotFoundError):
        await tm.get_status(kids[0])  # internal: gone from lookup once finished


async def test_abort_without_session_is_visible_in_status(
    producers: Producers, clock: ManualClock
) -> None:
    tm = producers.manager
    task = await make(producers, abortable=True)
    await tm.abort_task(task)
    assert (await tm.get_status(task)).abort_requested
    assert await producers.report_progress(task, 1, None) is True
    clock.advance(10_000)  # no session: never expires on its own
    assert (await tm.get_status(task)).state is TaskState.RUNNING
    final = await producers.finish_task(task, None)
    assert final.state is TaskState.FAILED and final.error == "abort requested"


async def test_session_pushes_aborts_to_descendants(producers: Producers) -> None:
    tm = producers.manager
    stream = producers.open_session()
    sid = stream.session.id
    root = await make(producers, session=sid, abortable=True)
    child = await make(producers, session=sid, parent_id=root, shard=2)
    await tm.abort_task(root)
    got = {await asyncio.wait_for(stream.next_abort(), 1) for _ in range(2)}
    assert got == {root, child}
    # A child created under the aborting parent is told at once too.
    late = await make(producers, session=sid, parent_id=root)
    assert await asyncio.wait_for(stream.next_abort(), 1) == late


async def test_lost_producer_fails_its_tasks_after_the_lease(
    producers: Producers, clock: ManualClock
) -> None:
    tm = producers.manager
    stream = producers.open_session()
    sid = stream.session.id
    task = await make(producers, session=sid)
    pending = await make(producers, session=sid, start=False)
    other = await make(producers)  # not in the session
    waiter = asyncio.ensure_future(tm.wait_task(task))
    producers.close_stream(stream)
    clock.advance(29)
    await producers.settle()
    assert (await tm.get_status(task)).state is TaskState.RUNNING
    clock.advance(2)
    await producers.settle()
    final = await asyncio.wait_for(waiter, 1)
    assert final.state is TaskState.FAILED and "producer lost" in final.error
    assert (await tm.get_status(pending)).state is TaskState.FAILED
    assert (await tm.get_status(other)).state is TaskState.RUNNING
    with pytest.raises(SessionNotFoundError):
        producers.open_session(sid)
    with pytest.raises(SessionNotFoundError):
        await make(producers, session=sid)


async def test_resume_within_lease_keeps_tasks_and_resends_aborts(
    producers: Producers, clock: ManualClock
) -> None:
    tm = producers.manager
    stream = producers.open_session()
    sid = stream.session.id
    task = await make(producers, session=sid, abortable=True)
    producers.close_stream(stream)
    clock.advance(20)
    await tm.abort_task(task)  # requested while the producer is away
    resumed = producers.open_session(sid)
    assert resumed.resumed
    clock.advance(60)
    await producers.settle()
    assert (await tm.get_status(task)).state is TaskState.RUNNING
    assert await asyncio.wait_for(resumed.next_abort(), 1) == task
    # A newer stream takes over; the old one is told it was superseded.
    newest = producers.open_session(sid)
    assert await asyncio.wait_for(resumed.next_abort(), 1) is None
    producers.close_stream(resumed)  # the superseded stream closing starts no lease
    clock.advance(60)
    await producers.settle()
    assert (await tm.get_status(task)).state is TaskState.RUNNING
    await producers.finish_task(task, None)
    assert producers.session_count() == 1
    producers.close_stream(newest)
    clock.advance(31)
    assert producers.session_count() == 0


async def test_unregistering_a_module_fails_its_reported_tasks(producers: Producers) -> None:
    tm = producers.manager
    stream = producers.open_session()
    task = await make(producers, session=stream.session.id, abortable=True)
    waiter = asyncio.ensure_future(tm.wait_task(task))
    await asyncio.sleep(0)  # the wait holds the task from here on
    await producers.unregister_module("backup")
    assert await asyncio.wait_for(stream.next_abort(), 1) == task
    final = await asyncio.wait_for(waiter, 1)
    assert final.state is TaskState.FAILED and "unregistered" in final.error
    assert await tm.list_modules() == []


async def test_server_run_tasks_are_not_reported_ones(producers: Producers) -> None:
    from tm_server.testing import create_test_task, register_test_module

    await register_test_module(producers.manager)
    task = await create_test_task(producers.manager)
    with pytest.raises(InvalidStateError, match="run by the server"):
        await producers.finish_task(task, None)


async def test_stopping_ends_session_streams(producers: Producers) -> None:
    from tm_server.core import ShuttingDownError

    stream = producers.open_session()
    waiting = asyncio.ensure_future(stream.next_abort())
    await asyncio.sleep(0)
    producers.stop_streams()
    with pytest.raises(ShuttingDownError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(ShuttingDownError):
        producers.open_session()


async def test_a_clean_close_ends_the_session_without_a_lease_or_a_warning(
    producers: Producers, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    tm = producers.manager
    stream = producers.open_session()
    session = stream.session.id
    done = await make(producers, session=session)
    left = await make(producers, session=session)
    await producers.finish_task(done, None)
    reading = asyncio.ensure_future(stream.next_abort())
    with caplog.at_level("INFO"):
        assert await producers.close_session(session) == 1
        assert await asyncio.wait_for(reading, 1) is None  # the open stream ends, with OK
        producers.close_stream(stream)  # as the servicer does when it ends: starts nothing
        clock.advance(31)  # past the lease
        await producers.settle()
    assert producers.session_count() == 0
    final = await tm.get_status(left)
    assert final.state is TaskState.FAILED and "closed its session" in final.error
    assert (await tm.get_status(done)).state is TaskState.DONE
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not [r for r in caplog.records if "expired" in r.getMessage()]
    with pytest.raises(SessionNotFoundError):
        await producers.close_session(session)


async def test_a_session_that_expires_with_no_tasks_is_no_warning(
    producers: Producers, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    stream = producers.open_session()
    producers.close_stream(stream)
    with caplog.at_level("INFO"):
        clock.advance(31)
        await producers.settle()
    assert producers.session_count() == 0
    assert [r.levelname for r in caplog.records if "expired" in r.getMessage()] == ["INFO"]


async def test_progress_reaches_a_task_placed_off_its_home_shard(producers: Producers) -> None:
    # Reports ask the id's home shard first (id number modulo the shards);
    # a task whose creator chose another shard must be found all the same.
    tm = producers.manager
    homeless = [UUID(int=(i + 1) * 3 << 64) for i in range(3)]  # every home is shard 0
    for shard, task_id in enumerate(homeless):
        await make(producers, task_id=task_id, shard=shard, progress_total=10, abortable=True)
    for count, task_id in enumerate(homeless, start=1):
        assert await producers.report_progress(task_id, count, None) is False
        status = await tm.get_status(task_id)
        assert status.progress == Progress(count, 10)
    assert [(await tm.get_status(t)).shard for t in homeless] == [0, 1, 2]
    await tm.abort_task(homeless[2])
    assert await producers.report_progress(homeless[2], 5, None) is True
    with pytest.raises(TaskNotFoundError):
        await producers.report_progress(UUID(int=3 << 64 | 1), 1, None)
