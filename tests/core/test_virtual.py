"""Virtual task groups wired into lookup, listing, status, wait, abort and recursive status."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

from tm_server.core import (
    ListFilter,
    ManualClock,
    TaskContext,
    TaskImpl,
    TaskKind,
    TaskManager,
    TaskNotAbortableError,
    TaskNotFoundError,
    TaskState,
)
from tm_server.testing import create_test_task, finish_test_task

from ..virtual_group import InMemoryGroup, Operation


@pytest.fixture
async def group(tm: TaskManager) -> InMemoryGroup:
    await tm.register_module("node_ops")
    g = InMemoryGroup(tm, "node_ops")
    await tm.register_virtual_group(g)
    return g


async def test_virtual_status_is_normalized(tm: TaskManager, group: InMemoryGroup) -> None:
    vid = uuid4()
    group.ops[vid] = Operation(type="bootstrap")
    status = await tm.get_status(vid)
    assert status.kind is TaskKind.CLUSTER
    assert (status.shard, status.sequence_number, status.module) == (0, 0, "node_ops")
    assert status.type == "bootstrap" and status.state is TaskState.RUNNING


async def test_regular_tasks_win_over_virtual_ones(tm: TaskManager, group: InMemoryGroup) -> None:
    shared = uuid4()
    group.ops[shared] = Operation(type="bootstrap")
    await create_test_task(tm, task_id=shared, shard=1)
    status = await tm.get_status(shared)
    assert status.kind is TaskKind.NODE and status.type == "test"


async def test_untracked_virtual_task_is_not_found(tm: TaskManager, group: InMemoryGroup) -> None:
    vid = uuid4()
    group.ops[vid] = Operation(type="bootstrap", tracked=False)
    with pytest.raises(TaskNotFoundError):
        await tm.get_status(vid)
    with pytest.raises(TaskNotFoundError):
        await tm.wait_task(vid)


async def test_children_of_virtual_parents(
    tm: TaskManager, group: InMemoryGroup, clock: ManualClock
) -> None:
    await tm.set_task_ttl(50)
    vid = uuid4()
    group.ops[vid] = Operation(type="bootstrap")
    await create_test_task(tm, shard=1)  # takes sequence number 1 of shard 1
    a = await create_test_task(tm, parent_id=vid, shard=1)
    b = await create_test_task(tm, parent_id=vid, shard=2)
    sa, sb = await tm.get_status(a), await tm.get_status(b)
    # Not internal, fresh sequence numbers from their own shard.
    assert not sa.internal and not sb.internal
    assert (sa.sequence_number, sb.sequence_number) == (2, 1)
    assert sa.parent_id == vid
    status = await tm.get_status(vid)
    assert {c.task_id for c in status.children} == {a, b}
    tree = [s.id async for s in tm.get_status_recursive(vid)]
    assert tree[0] == vid and set(tree[1:]) == {a, b}
    # Kept for task_ttl after finishing, as roots are.
    await finish_test_task(tm, a)
    assert (await tm.get_status(a)).state is TaskState.DONE
    clock.advance(51)
    with pytest.raises(TaskNotFoundError):
        await tm.get_status(a)


async def test_listing_order_and_filters(tm: TaskManager, group: InMemoryGroup) -> None:
    v1, v2 = sorted([uuid4(), uuid4()])
    group.ops[v1] = Operation(type="bootstrap", keyspace="ks1")
    group.ops[v2] = Operation(type="decommission", keyspace="ks2")
    r0 = await tm.create_task("node_ops", _Noop(), shard=0)
    r1 = await tm.create_task("node_ops", _Noop(), shard=1)
    entries, _ = await tm.list_module_tasks("node_ops", ListFilter())
    # After every shard's regular tasks (the cluster issue's order; ScyllaDB's own
    # puts them after shard 0's).
    assert [e.task_id for e in entries] == [r0.id, r1.id, v1, v2]
    assert entries[2].kind is TaskKind.CLUSTER
    # The internal filter never hides virtual tasks; keyspace does filter them.
    entries, _ = await tm.list_module_tasks("node_ops", ListFilter(keyspace="ks2"))
    assert [e.task_id for e in entries] == [v2]
    # Paging walks through the virtual phase too.
    ids: list[UUID] = []
    token = ""
    while True:
        page, token = await tm.list_module_tasks(
            "node_ops", ListFilter(), page_size=1, page_token=token
        )
        ids.extend(e.task_id for e in page)
        if not token:
            break
    assert ids == [r0.id, r1.id, v1, v2]


async def test_virtual_abort_and_wait(tm: TaskManager, group: InMemoryGroup) -> None:
    fixed, abortable = uuid4(), uuid4()
    group.ops[fixed] = Operation(type="bootstrap")
    group.ops[abortable] = Operation(type="user_repair", abortable=True)
    with pytest.raises(TaskNotAbortableError):
        await tm.abort_task(fixed)
    seen = []

    async def watch() -> None:
        async for status in tm.watch_task(abortable):
            seen.append(status)

    watcher = asyncio.ensure_future(watch())
    await asyncio.sleep(0)
    await tm.abort_task(abortable)
    await asyncio.wait_for(watcher, 5)
    assert group.ops[abortable].aborted
    assert [s.state for s in seen] == [TaskState.RUNNING, TaskState.FAILED]
    assert seen[-1].error == "aborted by user"


async def test_unregistering_the_module_drops_its_groups(
    tm: TaskManager, group: InMemoryGroup
) -> None:
    vid = uuid4()
    group.ops[vid] = Operation(type="bootstrap")
    await tm.unregister_module("node_ops")
    with pytest.raises(TaskNotFoundError):
        await tm.get_status(vid)


class _Noop(TaskImpl):
    type = "noop"

    async def run(self, ctx: TaskContext) -> None:
        await ctx.aborted()
