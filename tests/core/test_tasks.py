"""Core unit tests: every rule of ScyllaDB's task manager, on a manual clock."""

from __future__ import annotations

import asyncio
import itertools
import time
from uuid import RFC_4122, UUID, uuid4

import pytest

from tm_server.core import (
    InvalidArgumentError,
    InvalidStateError,
    ListFilter,
    ManualClock,
    Progress,
    ShuttingDownError,
    TaskAlreadyExistsError,
    TaskKind,
    TaskManager,
    TaskNotAbortableError,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
    UnknownModuleError,
    creation_time_of,
    new_task_id,
)
from tm_server.testing import (
    create_test_task,
    delete_test_task,
    finish_test_task,
    unregister_test_module,
)

from ..bodies import Controlled


async def settle() -> None:
    """Lets background callbacks (task bodies, releases) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def status_or_none(tm: TaskManager, task_id: UUID) -> TaskStatus | None:
    try:
        return await tm.get_status(task_id)
    except TaskNotFoundError:
        return None


# ---- modules ---------------------------------------------------------------------------------


async def test_modules_are_registered_on_every_shard(tm: TaskManager) -> None:
    assert await tm.register_module("repair") is True
    assert await tm.register_module("repair") is False
    assert await tm.list_modules() == ["repair", "test"]
    for shard in tm.shards:
        assert await shard.has_module("repair")


async def test_unknown_module_is_rejected(tm: TaskManager) -> None:
    with pytest.raises(UnknownModuleError, match="module nope not found"):
        await tm.list_module_tasks("nope", ListFilter())
    with pytest.raises(UnknownModuleError):
        await tm.drain("nope")
    with pytest.raises(UnknownModuleError):
        await tm.create_task("nope", Controlled())


async def test_module_names_are_validated(tm: TaskManager) -> None:
    with pytest.raises(InvalidArgumentError, match="module"):
        await tm.register_module("")
    with pytest.raises(InvalidArgumentError, match="at most 256"):
        await tm.register_module("m" * 257)


# ---- creation, ids, start, finish ------------------------------------------------------------


async def test_new_task_is_created_then_running_then_done(
    tm: TaskManager, clock: ManualClock
) -> None:
    await tm.set_task_ttl(100)
    impl = Controlled()
    handle = await tm.create_task("test", impl, keyspace="ks", table="t", entity="e")
    status = await handle.status()
    assert status.state is TaskState.CREATED
    assert status.start_time is None and status.end_time is None
    assert status.kind is TaskKind.NODE and status.type == "ctl" and status.scope == "node"
    assert (status.keyspace, status.table, status.entity) == ("ks", "t", "e")
    assert status.parent_id is None and status.module == "test" and not status.internal
    assert handle.id.version == 7
    created = creation_time_of(handle.id)
    assert created is not None and status.creation_time == created

    clock.advance(5)
    await handle.start()
    status = await handle.status()
    assert status.state is TaskState.RUNNING and status.start_time == clock.now()
    with pytest.raises(InvalidStateError, match="already started"):
        await handle.start()

    clock.advance(5)
    impl.finish()
    final = await handle.wait()
    assert final.state is TaskState.DONE and final.error == ""
    assert final.end_time == clock.now()
    assert final.expire_time == clock.now() + 100


async def test_a_status_gives_each_field_of_its_task(tm: TaskManager, clock: ManualClock) -> None:
    # Every field with a value of its own, so that a status built with two
    # fields swapped (statuses are built positionally, for speed) fails here.
    await tm.set_task_ttl(100)
    parent_impl = Controlled(user_task=True)
    parent = await tm.create_task("test", parent_impl, shard=2)
    await parent.start()
    clock.advance(3)
    impl = Controlled(abortable=False)
    child = await tm.create_task(
        "test", impl, shard=2, parent_id=parent.id, keyspace="ks", table="tb", entity="en"
    )
    clock.advance(2)
    await child.start()
    await settle()
    assert impl.ctx is not None
    await impl.ctx.report_progress(4, 10)
    clock.advance(1)
    impl.finish(RuntimeError("boom"))
    final = await child.wait()
    started = clock.now() - 1
    assert final._asdict() == {
        "id": child.id,
        "type": "ctl",
        "kind": TaskKind.NODE,
        "scope": "node",
        "state": TaskState.FAILED,
        "is_abortable": False,
        "creation_time": creation_time_of(child.id),
        "start_time": started,
        "end_time": clock.now(),
        "error": final.error,
        "parent_id": parent.id,
        "sequence_number": (await parent.status()).sequence_number,
        "shard": 2,
        "keyspace": "ks",
        "table": "tb",
        "entity": "en",
        "progress_units": "ranges",
        "progress": final.progress,
        "children": (),
        "module": "test",
        "internal": True,
        "user_task": False,
        "abort_requested": False,
        "expire_time": clock.now(),  # a child goes with its parent, or at once
        "children_count": 0,
        "node": "node-a",
        "extras": final.extras,
    }
    assert "boom" in final.error and final.progress == Progress(4, 10)
    assert final.sequence_number not in (0, 2)
    # A running parent lists its child, by count and by id.
    status = await parent.status()
    assert (status.children_count, [c.task_id for c in status.children]) == (1, [child.id])
    assert (status.state, status.is_abortable, status.parent_id) == (TaskState.RUNNING, True, None)
    assert (status.internal, status.user_task, status.abort_requested) == (False, True, False)
    clock.advance(7)
    parent_impl.finish()
    done = await parent.wait()
    # A user task stays for the user TTL (3600 s here), not the task TTL.
    assert (done.end_time, done.expire_time) == (clock.now(), clock.now() + 3600)


async def test_body_exception_fails_the_task_with_its_text(tm: TaskManager) -> None:
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.start()
    impl.finish(RuntimeError("disk on fire"))
    final = await handle.wait()
    assert final.state is TaskState.FAILED
    assert "disk on fire" in final.error and "RuntimeError" in final.error


async def test_explicit_task_id_and_duplicates(tm: TaskManager) -> None:
    task_id = uuid4()
    got = await create_test_task(tm, task_id=task_id, shard=2)
    assert got == task_id
    assert (await tm.get_status(task_id)).shard == 2
    # Not time-based: no creation time can be derived.
    assert (await tm.get_status(task_id)).creation_time is None
    with pytest.raises(TaskAlreadyExistsError):
        await create_test_task(tm, task_id=task_id)


async def test_bad_shard_and_long_strings(tm: TaskManager) -> None:
    with pytest.raises(InvalidArgumentError, match="shard"):
        await create_test_task(tm, shard=3)
    with pytest.raises(InvalidArgumentError, match="keyspace"):
        await create_test_task(tm, keyspace="k" * 300)
    with pytest.raises(InvalidArgumentError, match="entity"):
        await create_test_task(tm, entity="e" * 5000)


async def test_unknown_parent_is_not_found(tm: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError, match="parent task"):
        await create_test_task(tm, parent_id=uuid4())


async def test_child_under_finished_parent_is_refused(tm: TaskManager) -> None:
    await tm.set_task_ttl(100)
    parent = await create_test_task(tm)
    await finish_test_task(tm, parent)
    with pytest.raises(InvalidStateError, match="done"):
        await create_test_task(tm, parent_id=parent)


# ---- sequence numbers and internal flag ------------------------------------------------------


async def test_sequence_numbers_per_module_per_shard_inherited_by_children(tm: TaskManager) -> None:
    a = await create_test_task(tm, shard=0)
    b = await create_test_task(tm, shard=0)
    c = await create_test_task(tm, shard=1)
    child = await create_test_task(tm, shard=2, parent_id=b)
    await tm.register_module("other")
    d = await tm.create_task("other", Controlled(), shard=0)
    seq = {t: (await tm.get_status(t)).sequence_number for t in (a, b, c, child, d.id)}
    assert seq == {a: 1, b: 2, c: 1, child: 2, d.id: 1}


async def test_internal_flag_follows_the_parent_kind(tm: TaskManager) -> None:
    root = await create_test_task(tm)
    child = await create_test_task(tm, parent_id=root, shard=1)
    assert not (await tm.get_status(root)).internal
    assert (await tm.get_status(child)).internal
    # An implementation may override the default.
    explicit = await tm.create_task("test", Controlled(internal=False), parent_id=root)
    assert not (await explicit.status()).internal
    rooted_internal = await tm.create_task("test", Controlled(internal=True))
    assert (await rooted_internal.status()).internal


async def test_list_filters_internal_keyspace_table(tm: TaskManager) -> None:
    root = await create_test_task(tm, keyspace="ks1", table="t1")
    child = await create_test_task(tm, parent_id=root, keyspace="ks1", table="t2", shard=1)
    other = await create_test_task(tm, keyspace="ks2", table="t1", shard=2)

    async def ids(flt: ListFilter) -> set[UUID]:
        entries, token = await tm.list_module_tasks("test", flt)
        assert token == ""
        return {e.task_id for e in entries}

    assert await ids(ListFilter()) == {root, other}
    assert await ids(ListFilter(internal=True)) == {root, child, other}
    assert await ids(ListFilter(internal=True, keyspace="ks1")) == {root, child}
    assert await ids(ListFilter(internal=True, table="t1")) == {root, other}
    assert await ids(ListFilter(keyspace="ks1", table="t2")) == set()
    entries, _ = await tm.list_module_tasks("test", ListFilter(internal=True, table="t2"))
    (entry,) = entries
    assert entry.shard == 1 and entry.sequence_number == 1 and entry.state is TaskState.RUNNING


# ---- paging ----------------------------------------------------------------------------------


async def test_paging_is_stable_and_complete(tm: TaskManager) -> None:
    made = set()
    for i in range(25):
        made.add(await create_test_task(tm, shard=i % 3))
    seen: list[UUID] = []
    token = ""
    pages = 0
    while True:
        entries, token = await tm.list_module_tasks(
            "test", ListFilter(), page_size=7, page_token=token
        )
        pages += 1
        assert len(entries) <= 7
        seen.extend(e.task_id for e in entries)
        if not token:
            break
    assert pages == 4
    assert len(seen) == 25 and set(seen) == made
    shards = [(await tm.get_status(t)).shard for t in seen]
    assert shards == sorted(shards)  # shard order, then id order within a shard


async def test_paging_rejects_bad_tokens_and_sizes(tm: TaskManager) -> None:
    for i in range(3):
        await create_test_task(tm, shard=i)
    _, token = await tm.list_module_tasks("test", ListFilter(), page_size=1)
    assert token
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await tm.list_module_tasks("test", ListFilter(), page_token="garbage!")
    with pytest.raises(InvalidArgumentError, match="another module or filters"):
        await tm.list_module_tasks("test", ListFilter(keyspace="x"), page_token=token)
    with pytest.raises(InvalidArgumentError, match="page_size"):
        await tm.list_module_tasks("test", ListFilter(), page_size=-1)
    with pytest.raises(InvalidArgumentError, match="page_size"):
        await tm.list_module_tasks("test", ListFilter(), page_size=1001)


# ---- abort -----------------------------------------------------------------------------------


async def test_abort_reaches_descendants_on_every_shard_regardless_of_flag(
    tm: TaskManager,
) -> None:
    await tm.set_task_ttl(100)
    root_impl = Controlled(abortable=True)
    root = await tm.create_task("test", root_impl, shard=0)
    await root.start()
    child = await create_test_task(tm, parent_id=root.id, shard=1)  # not abortable itself
    grandchild = await create_test_task(tm, parent_id=child, shard=2)
    await tm.abort_task(root.id)
    await settle()
    # The abort request reached every descendant; the bodies noticed and failed.
    final = await root.wait()
    assert final.state is TaskState.FAILED and "abort" in final.error
    recursive = [s async for s in tm.get_status_recursive(root.id)]
    by_id = {s.id: s for s in recursive}
    assert by_id[child].state is TaskState.FAILED and "abort requested" in by_id[child].error
    assert by_id[grandchild].state is TaskState.FAILED


async def test_abort_of_non_abortable_task_is_refused(tm: TaskManager) -> None:
    task = await create_test_task(tm)
    with pytest.raises(TaskNotAbortableError, match="cannot be aborted"):
        await tm.abort_task(task)
    with pytest.raises(TaskNotFoundError):
        await tm.abort_task(uuid4())


async def test_abort_before_start_fails_without_running(tm: TaskManager) -> None:
    await tm.set_task_ttl(60)
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.abort()
    assert (await handle.status()).abort_requested
    await handle.start()
    final = await handle.status()
    assert final.state is TaskState.FAILED and final.error == "abort requested"
    assert final.start_time is not None
    await settle()
    assert not impl.ran


async def test_task_that_succeeds_after_abort_is_failed(tm: TaskManager) -> None:
    impl = Controlled(ignore_abort=True)
    handle = await tm.create_task("test", impl)
    await handle.start()
    await settle()
    await handle.abort()
    await handle.abort()  # a second abort is a no-op
    impl.finish()
    final = await handle.wait()
    assert final.state is TaskState.FAILED and "abort" in final.error


async def test_child_created_under_aborting_parent_is_aborted(tm: TaskManager) -> None:
    impl = Controlled(ignore_abort=True)
    parent = await tm.create_task("test", impl)
    await parent.start()
    await parent.abort()
    child = await tm.create_task("test", Controlled(), parent_id=parent.id, shard=1)
    assert (await child.status()).abort_requested
    await child.start()
    status = await child.status() if await status_or_none(tm, child.id) else None
    # An internal child is unregistered once finished; its parent still reports it failed.
    assert status is None or status.state is TaskState.FAILED
    tree = [s async for s in tm.get_status_recursive(parent.id)]
    assert tree[1].id == child.id and tree[1].state is TaskState.FAILED


async def test_abort_of_finished_task_changes_nothing(tm: TaskManager) -> None:
    await tm.set_task_ttl(60)
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.start()
    impl.finish()
    await handle.wait()
    await handle.abort()
    status = await handle.status()
    assert status.state is TaskState.DONE and not status.abort_requested


# ---- folding and retention -------------------------------------------------------------------


async def test_folding_keeps_failed_paths_and_forgets_successes(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm)
    ok = await create_test_task(tm, parent_id=root, shard=1)
    bad = await create_test_task(tm, parent_id=root, shard=2)
    ok_leaf = await create_test_task(tm, parent_id=ok, shard=0)
    bad_leaf = await create_test_task(tm, parent_id=bad, shard=1)
    good_leaf = await create_test_task(tm, parent_id=bad, shard=0)

    await finish_test_task(tm, ok_leaf)
    await finish_test_task(tm, ok)
    await finish_test_task(tm, good_leaf)
    await finish_test_task(tm, bad_leaf, "leaf broke")
    await finish_test_task(tm, bad)
    await settle()

    # Internal tasks vanish from direct lookup as soon as they finish.
    for t in (ok, bad, ok_leaf, bad_leaf, good_leaf):
        assert await status_or_none(tm, t) is None
    status = await tm.get_status(root)
    # A root lists every child, folded ones included.
    assert [c.task_id for c in status.children] == [ok, bad]
    assert all(c.node == "node-a" for c in status.children)

    tree = [s async for s in tm.get_status_recursive(root)]
    assert [s.id for s in tree] == [root, ok, bad, bad_leaf]
    by_id = {s.id: s for s in tree}
    assert by_id[ok].children == ()  # successful descendants are forgotten
    assert [c.task_id for c in by_id[bad].children] == [bad_leaf]
    assert by_id[bad_leaf].state is TaskState.FAILED and by_id[bad_leaf].error == "leaf broke"


async def test_child_finishing_before_its_children_does_not_fold(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm)
    mid = await create_test_task(tm, parent_id=root, shard=1)
    leaf = await create_test_task(tm, parent_id=mid, shard=2)
    await finish_test_task(tm, mid)
    assert await status_or_none(tm, mid) is None  # unregistered at once
    tree = [s async for s in tm.get_status_recursive(root)]
    assert [s.id for s in tree] == [root, mid, leaf]
    assert tree[1].state is TaskState.DONE and tree[2].state is TaskState.RUNNING
    await finish_test_task(tm, leaf)
    tree = [s async for s in tm.get_status_recursive(root)]
    assert [s.id for s in tree] == [root, mid, leaf]
    assert tree[2].state is TaskState.DONE


async def test_recursive_order_live_before_folded_in_finishing_order(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm)
    kids = [await create_test_task(tm, parent_id=root, shard=i % 3) for i in range(4)]
    await finish_test_task(tm, kids[2])
    await finish_test_task(tm, kids[0])
    tree = [s.id async for s in tm.get_status_recursive(root)]
    assert tree == [root, kids[1], kids[3], kids[2], kids[0]]


async def test_root_ttl_is_read_when_the_task_finishes(tm: TaskManager, clock: ManualClock) -> None:
    await tm.set_task_ttl(10)
    first = await create_test_task(tm)
    await finish_test_task(tm, first)
    await tm.set_task_ttl(100)  # does not change a task that already finished
    second = await create_test_task(tm, shard=1)
    await finish_test_task(tm, second)
    clock.advance(9.5)
    assert await status_or_none(tm, first) is not None
    clock.advance(1)
    assert await status_or_none(tm, first) is None
    assert await status_or_none(tm, second) is not None
    clock.advance(100)
    assert await status_or_none(tm, second) is None


async def test_user_tasks_use_user_ttl(tm: TaskManager, clock: ManualClock) -> None:
    await tm.set_task_ttl(0)
    user = await create_test_task(tm, user_task=True)
    plain = await create_test_task(tm)
    await finish_test_task(tm, user)
    await finish_test_task(tm, plain)
    assert await status_or_none(tm, plain) is None  # ttl 0: gone at once
    status = await tm.get_status(user)
    assert status.user_task and status.expire_time == status.end_time + 3600  # type: ignore[operator]
    clock.advance(3599)
    assert await status_or_none(tm, user) is not None
    clock.advance(2)
    assert await status_or_none(tm, user) is None


async def test_ttl_setters_return_previous_and_reject_negative(tm: TaskManager) -> None:
    assert await tm.set_task_ttl(5) == 0
    assert await tm.set_task_ttl(7) == 5
    assert tm.task_ttl == 7
    assert await tm.set_user_task_ttl(10) == 3600
    assert tm.user_task_ttl == 10
    with pytest.raises(InvalidArgumentError, match="ttl_seconds"):
        await tm.set_task_ttl(-1)
    with pytest.raises(InvalidArgumentError, match="user_ttl_seconds"):
        await tm.set_user_task_ttl(-1)


async def test_drain_unregisters_only_finished_tasks_of_the_module(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    await tm.register_module("other")
    done = [await create_test_task(tm, shard=i) for i in range(3)]
    running = await create_test_task(tm, shard=1)
    for t in done:
        await finish_test_task(tm, t)
    other = await tm.create_task("other", Controlled())
    await other.start()
    assert await tm.drain("test") == 3
    for t in done:
        assert await status_or_none(tm, t) is None
    assert (await tm.get_status(running)).state is TaskState.RUNNING
    assert await tm.drain("test") == 0


async def test_internal_root_is_unregistered_at_once(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    impl = Controlled(internal=True)
    handle = await tm.create_task("test", impl)
    await handle.start()
    impl.finish()
    final = await handle.wait()
    assert final.state is TaskState.DONE
    assert await status_or_none(tm, handle.id) is None


async def test_released_subtree_frees_held_children(tm: TaskManager, clock: ManualClock) -> None:
    await tm.set_task_ttl(10)
    root = await create_test_task(tm)
    mid = await create_test_task(tm, parent_id=root, shard=1)
    leaf = await create_test_task(tm, parent_id=mid, shard=2)
    await finish_test_task(tm, mid)  # mid is held by root, leaf still running
    await finish_test_task(tm, leaf)
    await finish_test_task(tm, root)
    assert tm.stats_counts()[1]["held"] == 1
    clock.advance(11)
    await settle()
    counts = [s.stats_counts() for s in tm.shards]
    assert all(c == {"registered": 0, "held": 0} for c in counts), counts


# ---- progress --------------------------------------------------------------------------------


async def test_progress_rolls_up_from_children(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    parent_impl = Controlled()
    parent = await tm.create_task("test", parent_impl)
    await parent.start()
    assert (await parent.status()).progress == Progress(0, 0)  # no children, unknown total
    a_impl, b_impl = Controlled(), Controlled()
    a = await tm.create_task("test", a_impl, parent_id=parent.id, shard=1)
    b = await tm.create_task("test", b_impl, parent_id=parent.id, shard=2)
    await a.start()
    await b.start()
    await settle()
    assert a_impl.ctx is not None and b_impl.ctx is not None
    await a_impl.ctx.report_progress(3, 10)
    await b_impl.ctx.report_progress(1, 5)
    assert (await parent.status()).progress == Progress(4, 15)
    parent_impl.expected = 100
    assert (await parent.status()).progress == Progress(4, 100)
    await a_impl.ctx.report_progress(10)
    a_impl.finish()
    await a.wait()
    # The folded child contributes the progress stored when it folded.
    assert (await parent.status()).progress == Progress(11, 100)
    b_impl.finish()
    await b.wait()
    parent_impl.finish()
    final = await parent.wait()
    assert final.progress == Progress(11, 15)  # complete: the plain sum of children


# ---- waiting ---------------------------------------------------------------------------------


async def test_watch_sends_current_then_changes_then_final(tm: TaskManager) -> None:
    await tm.set_task_ttl(0)
    impl = Controlled()
    handle = await tm.create_task("test", impl)
    await handle.start()
    await settle()
    seen: list[TaskStatus] = []

    async def watcher() -> None:
        async for status in tm.watch_task(handle.id):
            seen.append(status)

    w = asyncio.ensure_future(watcher())
    await settle()
    assert impl.ctx is not None
    await impl.ctx.report_progress(1, 4)
    await settle()
    child = await create_test_task(tm, parent_id=handle.id, shard=1)
    await settle()
    await finish_test_task(tm, child)
    await settle()
    impl.finish()
    await asyncio.wait_for(w, 5)
    assert seen[0].state is TaskState.RUNNING and seen[0].progress == Progress(0, 0)
    assert seen[1].progress == Progress(1, 4)
    assert any(s.children for s in seen)
    assert seen[-1].state is TaskState.DONE
    # The task was unregistered at once (ttl 0), yet the watch still ended on its final status.
    assert await status_or_none(tm, handle.id) is None
    assert tm.watcher_count() == 0


async def test_cancelled_watch_releases_its_waiter(tm: TaskManager) -> None:
    task = await create_test_task(tm)
    gen = tm.watch_task(task)
    first = await gen.__anext__()
    assert first.state is TaskState.RUNNING
    pending = asyncio.ensure_future(gen.__anext__())
    await settle()
    assert tm.watcher_count() == 1
    pending.cancel()
    await settle()
    await gen.aclose()
    assert tm.watcher_count() == 0


@pytest.mark.parametrize("parked", [True, False])
async def test_shutdown_ends_every_watch_parked_or_not(tm: TaskManager, parked: bool) -> None:
    task = await create_test_task(tm)
    updates = await tm.open_watch(task)
    assert (await anext(updates)).state is TaskState.RUNNING
    pending = asyncio.ensure_future(anext(updates))
    if parked:
        await settle()  # waiting for a change
    # Otherwise the watch is still between its first status and parking (its
    # status being written out): shutdown must end it all the same.
    tm.stop_watches()
    with pytest.raises(ShuttingDownError):
        await asyncio.wait_for(pending, 5)
    assert tm.watcher_count() == 0
    with pytest.raises(ShuttingDownError):  # and a new one fails at once
        await anext(await tm.open_watch(task))


async def test_wait_on_unknown_id_is_not_found(tm: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError):
        await tm.wait_task(uuid4())


# ---- test module -----------------------------------------------------------------------------


async def test_test_task_shape_and_delete(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm, keyspace="ks", user_task=True)
    status = await tm.get_status(root)
    assert (status.type, status.scope, status.is_abortable) == ("test", "test", False)
    assert status.state is TaskState.RUNNING and status.user_task
    await delete_test_task(tm, root)
    assert await status_or_none(tm, root) is None
    with pytest.raises(TaskNotFoundError):
        await finish_test_task(tm, root)


async def test_delete_keeps_folded_child_visible_as_done(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm)
    child = await create_test_task(tm, parent_id=root)
    await delete_test_task(tm, child)
    tree = [s async for s in tm.get_status_recursive(root)]
    assert [(s.id, s.state) for s in tree] == [(root, TaskState.RUNNING), (child, TaskState.DONE)]


async def test_finish_is_idempotent_and_error_is_kept(tm: TaskManager) -> None:
    await tm.set_task_ttl(1000)
    task = await create_test_task(tm)
    await finish_test_task(tm, task, "boom")
    await finish_test_task(tm, task)  # already finished: nothing changes
    status = await tm.get_status(task)
    assert status.state is TaskState.FAILED and status.error == "boom"


async def test_unregistering_the_module_aborts_and_removes_everything(
    tm: TaskManager, clock: ManualClock
) -> None:
    await tm.set_task_ttl(1000)
    root = await create_test_task(tm)
    child = await create_test_task(tm, parent_id=root, shard=2)
    finished = await create_test_task(tm, shard=1)
    await finish_test_task(tm, finished)
    waiter = asyncio.ensure_future(tm.wait_task(root))
    await unregister_test_module(tm)
    final = await asyncio.wait_for(waiter, 5)
    assert final.state is TaskState.FAILED and "abort" in final.error
    assert await tm.list_modules() == []
    for t in (root, child, finished):
        assert await status_or_none(tm, t) is None
    await settle()
    assert all(s.stats_counts() == {"registered": 0, "held": 0} for s in tm.shards)


def test_task_ids_made_in_a_burst_keep_to_the_clock() -> None:
    # Ids are made far faster than one a millisecond; each must still read
    # back the time it was made at (not run ahead a millisecond an id), and
    # each must be greater than the one before (listings page by id).
    before = time.time()
    ids = [new_task_id() for _ in range(20_000)]
    after = time.time()
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))
    assert {i.version for i in ids} == {7} and {i.variant for i in ids} == {RFC_4122}
    times = [creation_time_of(i) for i in ids]
    assert all(t is not None and before - 0.001 <= t <= after for t in times)
    assert len({i.int & (1 << 62) - 1 for i in ids}) == len(ids)  # the random bits differ
