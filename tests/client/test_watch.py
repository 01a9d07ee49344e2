"""``watch_tasks`` and the list filters against a real tm server.

A snapshot then live events, resuming from a cursor in the middle of a
burst, riding out a network outage, the typed errors of cursors (garbage,
from before a restart), the filters, full statuses with rates and ETAs, and
the asyncio client.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from uuid import UUID

import pytest

from tm_client import (
    AsyncTaskManagerClient,
    CursorExpiredError,
    FailedPreconditionError,
    InvalidArgumentError,
    Producer,
    TaskEvent,
    TaskEventType,
    TaskManagerClient,
    TaskState,
    TaskWatch,
    TestServiceClient,
    UnknownModuleError,
)

from ..netcut import NetCut
from ..process import ServerProcess
from ..server_fixture import ServerThread

pytestmark = pytest.mark.timeout(60)

E = TaskEventType


def until_snapshot(watch: TaskWatch) -> list[TaskEvent]:
    """The snapshot's events, up to and with the batch that completes it."""
    events: list[TaskEvent] = []
    for batch in watch:
        events += batch.events
        if batch.snapshot_complete:
            return events
    raise AssertionError("the watch ended")


def until(watch: TaskWatch, done: Callable[[list[TaskEvent]], bool]) -> list[TaskEvent]:
    """Events until ``done(events so far)`` holds (the test's timeout bounds the wait)."""
    events: list[TaskEvent] = []
    for batch in watch:
        events += batch.events
        if done(events):
            return events
    raise AssertionError("the watch ended")


def about(task_id: UUID) -> Callable[[list[TaskEvent]], bool]:
    return lambda events: any(e.task.task_id == task_id for e in events)


def test_a_snapshot_then_each_change_as_it_happens(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(600)
    a = testsvc.create_task(keyspace="ks1")
    b = testsvc.create_task(keyspace="ks2")
    testsvc.finish_task(b)
    with client.watch_tasks("test", snapshot=True) as watch:
        snapshot = until_snapshot(watch)
        assert {e.task.task_id: e.task.state for e in snapshot} == {
            a: TaskState.RUNNING, b: TaskState.DONE,
        }  # fmt: skip
        assert {e.type for e in snapshot} == {E.EXISTING}
        assert all(e.task.module == "test" and e.status is None for e in snapshot)
        assert watch.cursor  # the snapshot's end carries the cursor

        c = testsvc.create_task()
        (created,) = until(watch, about(c))
        assert created.type is E.CREATED and created.task.state is TaskState.RUNNING

        testsvc.finish_task(a, "boom")
        (finished,) = until(watch, about(a))
        assert finished.type is E.FINISHED and finished.task.state is TaskState.FAILED
        assert finished.task.end_time is not None

        assert client.drain("test") == 2
        removed = until(watch, lambda events: len(events) >= 2)
        assert {(e.type, e.task.task_id) for e in removed} == {(E.REMOVED, a), (E.REMOVED, b)}
        assert {e.task.state for e in removed} == {TaskState.FAILED, TaskState.DONE}


def test_a_watch_from_now_has_a_cursor_at_once(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    with client.watch_tasks() as watch:
        first = next(watch)
        assert not first.events and first.cursor and watch.cursor == first.cursor
    a = testsvc.create_task()  # after the watch closed: resuming from its cursor finds it
    with client.watch_tasks(cursor=first.cursor) as watch:
        (created,) = until(watch, about(a))
        assert created.type is E.CREATED and created.task.module == "test"


def _copy_burst(producer: Producer, count: int, ids: list[UUID], halfway: threading.Event) -> None:
    # Half the burst while the first watch reads, the rest once it has stopped.
    for n in range(count):
        if n == count // 2:
            assert halfway.wait(30)
        task = producer.create_task("copy", total=4, progress_units="files")
        ids.append(task.id)
        for done in range(1, 5):
            task.progress(done)
        task.finish()


def _check_nothing_missed_nothing_doubled(events: list[TaskEvent], ids: list[UUID]) -> None:
    assert len(set(events)) == len(events), "an event came twice"
    by_task: dict[UUID, list[TaskEvent]] = defaultdict(list)
    for event in events:
        by_task[event.task.task_id].append(event)
    assert set(by_task) == set(ids)
    for task_id, seen in by_task.items():
        # In order, never going back: a replayed event would show an older state.
        progress = [e.task.progress_completed for e in seen]
        assert progress == sorted(progress), (task_id, progress)
        assert [e.type for e in seen].count(E.CREATED) <= 1
        assert seen[-1].type is E.FINISHED and seen[-1].task.state is TaskState.DONE
        assert seen[-1].task.progress_completed == 4
        assert all(e.task.state is TaskState.RUNNING for e in seen[:-1])


def test_resuming_from_a_cursor_mid_burst_misses_nothing_and_repeats_nothing(
    server: ServerThread, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    ids: list[UUID] = []
    with Producer(server.target, module="burst") as producer:
        first = client.watch_tasks(types=["copy"])
        next(first)  # the cursor of now
        stopped = threading.Event()
        burst = threading.Thread(target=_copy_burst, args=(producer, 30, ids, stopped))
        burst.start()
        events: list[TaskEvent] = []
        for batch in first:  # stop reading in the middle of the burst
            events += batch.events
            if len({e.task.task_id for e in events}) >= 5:
                break
        cursor = first.cursor
        first.close()
        stopped.set()
        burst.join(30)
        assert len(ids) == 30
        with client.watch_tasks(types=["copy"], cursor=cursor) as second:
            # Resumed after the burst ended: every task's final state is there to read.
            def all_final(more: list[TaskEvent]) -> bool:
                final = {e.task.task_id for e in events + more if e.task.state.is_final}
                return final >= set(ids)

            events += until(second, all_final)
    _check_nothing_missed_nothing_doubled(events, ids)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_watch_rides_out_a_network_outage_without_a_gap_or_a_repeat(
    server: ServerThread, testsvc: TestServiceClient, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    link = NetCut(server.target)
    try:
        with (
            TaskManagerClient(link.target, resume_seconds=30) as through,
            through.watch_tasks("test", snapshot=True) as watch,
        ):
            until_snapshot(watch)
            a = testsvc.create_task()
            until(watch, about(a))
            link.cut()  # every connection closed, new ones refused: UNAVAILABLE
            b = testsvc.create_task()
            testsvc.finish_task(a)
            threading.Timer(1.0, link.restore).start()
            events = until(watch, lambda ev: about(b)(ev) and about(a)(ev))
            assert sorted((e.type.value, e.task.task_id) for e in events) == sorted(
                [("created", b), ("finished", a)]
            )
            c = testsvc.create_task()  # and it goes on live
            assert [e.type for e in until(watch, about(c))] == [E.CREATED]
    finally:
        link.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_async_watch_rides_out_a_network_outage(
    server: ServerThread, testsvc: TestServiceClient, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    link = NetCut(server.target)
    try:
        async with (
            AsyncTaskManagerClient(link.target, resume_seconds=30) as through,
            through.watch_tasks("test") as watch,
        ):
            now = await anext(watch)
            link.cut()
            a = testsvc.create_task()
            testsvc.finish_task(a)
            threading.Timer(1.0, link.restore).start()
            events: list[TaskEvent] = []
            async for batch in watch:
                events += batch.events
                if any(e.task.state.is_final for e in events):
                    break
            # Created and finished while cut: one event, its final state, from the cursor.
            assert [(e.type, e.task.task_id) for e in events] == [(E.FINISHED, a)]
            assert watch.cursor != now.cursor
    finally:
        link.close()


@pytest.fixture
def process() -> Iterator[ServerProcess]:
    proc = ServerProcess("--store", "none", "--task-ttl-in-seconds", "600")
    yield proc
    proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cursors_from_before_a_restart_expire_and_resnapshot_heals(
    process: ServerProcess,
) -> None:
    with Producer(process.target, module="jobs") as producer:
        task = producer.create_task("job")
        task.finish()
    plain = TaskManagerClient(process.target, resume_seconds=60)
    healing = TaskManagerClient(process.target, resume_seconds=60)
    try:
        strict = plain.watch_tasks("jobs")
        old = next(strict).cursor
        heals = healing.watch_tasks("jobs", snapshot=True, resnapshot=True)
        until_snapshot(heals)
        process.terminate(keep=True)
        restarted = process.restart("--store", "none")
        try:
            # The reconnect goes through (UNAVAILABLE is retried); the cursor does not.
            with pytest.raises(CursorExpiredError) as err:
                next(strict)
            assert isinstance(err.value, FailedPreconditionError)
            assert err.value.reason == "CURSOR_EXPIRED"
            batch = next(heals)
            assert batch.restarted and batch.restart_reason == "CURSOR_EXPIRED"
            rest = [batch]
            while not rest[-1].snapshot_complete:
                rest.append(next(heals))
            assert heals.cursor and all(e.type is E.EXISTING for b in rest for e in b)
            # A watch opened with a stale cursor: the same typed error, at once.
            with TaskManagerClient(restarted.target) as fresh:
                with pytest.raises(CursorExpiredError):
                    next(fresh.watch_tasks(cursor=old))
                assert fresh.get_status(task.id).state is TaskState.DONE  # the journal kept it
        finally:
            strict.close()
            heals.close()
            restarted.kill()
    finally:
        plain.close()
        healing.close()


def test_bad_watches_raise_typed_errors(client: TaskManagerClient) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        next(client.watch_tasks(cursor="not-a-cursor"))
    assert err.value.field == "cursor"
    cursor = next(client.watch_tasks()).cursor
    with pytest.raises(InvalidArgumentError) as err:
        next(client.watch_tasks(snapshot=True, cursor=cursor))
    assert err.value.field == "snapshot"
    with pytest.raises(UnknownModuleError):
        next(client.watch_tasks("nope"))


def test_watch_filters(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    client.set_ttl(600)
    with client.watch_tasks("test", states=["running"], keyspace="ks1") as watch:
        next(watch)
        other = testsvc.create_task(keyspace="ks2")  # another keyspace: never told
        a = testsvc.create_task(keyspace="ks1")
        child = testsvc.create_task(parent_id=a, shard=1, keyspace="ks1")  # internal
        assert [e.type for e in until(watch, about(a))] == [E.CREATED]
        testsvc.finish_task(other)
        testsvc.finish_task(a)
        # a left the states watched: told once more, with the state it moved to.
        (left,) = until(watch, about(a))
        assert left.type is E.FINISHED and left.task.state is TaskState.DONE
    with client.watch_tasks("test", internal=True, snapshot=True) as watch:
        seen = {e.task.task_id: e.task.internal for e in until_snapshot(watch)}
        assert seen[child] is True and seen[a] is False


def test_list_filters_by_state_and_type(server: ServerThread, client: TaskManagerClient) -> None:
    client.set_ttl(600)
    with Producer(server.target, module="jobs") as producer:
        repair = producer.create_task("repair")
        backup = producer.create_task("backup")
        done = producer.create_task("repair")
        done.finish()
        entries = client.list_tasks("jobs", states=["running"])
        assert {e.task_id for e in entries} == {repair.id, backup.id}
        entries = client.list_tasks("jobs", types="repair")
        assert {e.task_id for e in entries} == {repair.id, done.id}
        page, token = client.list_tasks_page(
            "jobs", states=[TaskState.DONE, TaskState.FAILED], types=["repair", "backup"]
        )
        assert [e.task_id for e in page] == [done.id] and token == ""
        assert page[0].module == "jobs" and page[0].internal is False
        repair.finish()
        backup.finish()


def test_full_status_events_carry_rate_and_eta(
    server: ServerThread, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    with Producer(server.target, module="copy") as producer:
        task = producer.create_task("copy", total=100, progress_units="files")
        with client.watch_tasks("copy", full_status=True) as watch:
            next(watch)
            task.progress(10)
            time.sleep(0.3)
            task.progress(20)

            def rated(events: list[TaskEvent]) -> bool:
                return any(e.status and e.status.progress_rate for e in events)

            event = [e for e in until(watch, rated) if e.status and e.status.progress_rate][-1]
        assert event.status is not None and event.task.progress_total == 100
        assert event.status.progress_rate is not None and event.status.progress_rate > 0
        assert event.status.estimated_end_time is not None
        assert event.status.last_progress_time is not None
        status = client.get_status(task.id)
        assert status.progress_rate is not None and status.estimated_end_time is not None
        task.finish()
        final = client.get_status(task.id)
        assert final.progress_rate is None and final.estimated_end_time is None


async def test_the_async_watch(server: ServerThread, testsvc: TestServiceClient) -> None:
    a = testsvc.create_task()
    async with AsyncTaskManagerClient(server.target) as client:
        async with client.watch_tasks("test", snapshot=True) as watch:
            batch = await anext(watch)
            assert [(e.type, e.task.task_id) for e in batch] == [(E.EXISTING, a)]
            complete = await anext(watch)
            assert complete.snapshot_complete and watch.cursor == complete.cursor
        b = testsvc.create_task()
        async with client.watch_tasks("test", cursor=complete.cursor) as watch:
            async for batch in watch:
                if batch.events:
                    assert [(e.type, e.task.task_id) for e in batch] == [(E.CREATED, b)]
                    break
        with pytest.raises(InvalidArgumentError):
            await anext(client.watch_tasks(cursor="garbage"))
        assert [e.task_id async for e in client.list_tasks("test", states=["running"])] == [
            a, b,
        ]  # fmt: skip
