"""WatchTasks, list filters by state and type, and progress pace, over the wire (a real server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest

from tm_client import Producer, TaskManagerClient, TaskState
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc

from ..error_info import reason_of
from ..server_fixture import ServerThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    # Finished tasks stay listed for a while, as in production.
    thread = ServerThread(task_ttl=600).start()
    yield thread
    thread.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.TaskManagerServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.TaskManagerServiceStub(channel)


class Producers:
    """One producer per module, made on first use."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.by_module: dict[str, Producer] = {}

    def __call__(self, module: str) -> Producer:
        if module not in self.by_module:
            self.by_module[module] = Producer(self.target, module=module)
        return self.by_module[module]

    def close(self) -> None:
        for p in self.by_module.values():
            p.close()


@pytest.fixture
def produce(server: ServerThread) -> Iterator[Producers]:
    p = Producers(server.target)
    yield p
    p.close()


class Stream:
    """Reads a WatchTasks stream in a thread; keeps every response."""

    def __init__(self, stub: pb_grpc.TaskManagerServiceStub, **request: Any) -> None:
        self.call: Any = stub.WatchTasks(pb.WatchTasksRequest(**request), timeout=50)
        self.responses: list[pb.WatchTasksResponse] = []
        self.error: grpc.RpcError | None = None
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self._lock:
                    self.responses.append(response)
                    self._lock.notify_all()
        except grpc.RpcError as exc:
            with self._lock:
                self.error = exc
                self._lock.notify_all()

    def wait_for(self, check: Any, timeout: float = 10) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: check(self) or self.error is not None, timeout)

    def events(self) -> list[pb.TaskEvent]:
        with self._lock:
            return [e for r in self.responses for e in r.events]

    def latest(self) -> dict[str, pb.TaskEvent]:
        return {e.task.task_id: e for e in self.events()}

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)


def test_watch_streams_a_modules_changes_with_cursors(
    stub: pb_grpc.TaskManagerServiceStub, produce: Producers
) -> None:
    produce("backup").create_task("copy").finish()  # registers the module, then done
    watch = Stream(stub, module="backup", snapshot=True)
    watch.wait_for(lambda s: any(r.snapshot_complete for r in s.responses))
    (existing,) = watch.events()
    assert existing.type == pb.TASK_EVENT_TYPE_EXISTING
    assert existing.task.state == pb.TASK_STATE_DONE and existing.task.module == "backup"
    task = produce("backup").create_task("copy", total=10)
    task.progress(4)
    watch.wait_for(
        lambda s: (
            s.latest().get(str(task.id)) is not None
            and s.latest()[str(task.id)].task.progress_completed == 4
        )
    )
    task.finish()
    watch.wait_for(lambda s: s.latest()[str(task.id)].type == pb.TASK_EVENT_TYPE_FINISHED)
    entry = watch.latest()[str(task.id)].task
    assert entry.state == pb.TASK_STATE_DONE and entry.progress_total == 10
    # Snapshot responses carry no cursor (a snapshot cannot resume midway); the rest do.
    for response in watch.responses:
        snapshot = any(e.type == pb.TASK_EVENT_TYPE_EXISTING for e in response.events)
        assert bool(response.cursor) is not snapshot
    cursor = watch.responses[-1].cursor
    watch.close()

    # Resumed from the last cursor: exactly what happened since.
    later = produce("backup").create_task("verify")
    resumed = Stream(stub, module="backup", cursor=cursor)
    resumed.wait_for(lambda s: str(later.id) in s.latest())
    assert [e.task.task_id for e in resumed.events()] == [str(later.id)]
    assert resumed.events()[0].type == pb.TASK_EVENT_TYPE_CREATED
    resumed.close()
    later.finish()


def test_full_status_carries_the_pace(
    stub: pb_grpc.TaskManagerServiceStub, produce: Producers, client: TaskManagerClient
) -> None:
    task = produce("backup").create_task("copy", total=100)
    watch = Stream(stub, module="backup", full_status=True)
    watch.wait_for(lambda s: len(s.responses) >= 1)
    time.sleep(0.2)
    task.progress(50)
    watch.wait_for(lambda s: str(task.id) in s.latest())
    status = watch.latest()[str(task.id)].status
    assert status.id == str(task.id) and status.progress_completed == 50
    assert status.HasField("last_progress_time") and status.HasField("progress_rate")
    assert status.progress_rate > 0 and status.HasField("estimated_end_time")
    reply = stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=str(task.id)))
    assert reply.status.progress_rate == pytest.approx(status.progress_rate)
    task.finish()
    watch.wait_for(lambda s: s.latest()[str(task.id)].type == pb.TASK_EVENT_TYPE_FINISHED)
    final = watch.latest()[str(task.id)].status
    assert final.state == pb.TASK_STATE_DONE
    assert not final.HasField("progress_rate") and not final.HasField("estimated_end_time")
    watch.close()


def test_every_module_and_filters(stub: pb_grpc.TaskManagerServiceStub, produce: Producers) -> None:
    watch = Stream(stub, states=[pb.TASK_STATE_RUNNING], types=["copy"])
    watch.wait_for(lambda s: len(s.responses) >= 1)
    copy = produce("backup").create_task("copy")
    produce("backup").create_task("verify")
    other = produce("restore").create_task("copy")
    watch.wait_for(lambda s: {str(copy.id), str(other.id)} <= set(s.latest()))
    assert set(watch.latest()) == {str(copy.id), str(other.id)}
    copy.finish("disk full")
    watch.wait_for(lambda s: s.latest()[str(copy.id)].task.state == pb.TASK_STATE_FAILED)
    watch.close()
    # The same filters on a listing.
    page = stub.ListModuleTasks(
        pb.ListModuleTasksRequest(module="backup", states=[pb.TASK_STATE_FAILED])
    )
    assert [t.task_id for t in page.tasks] == [str(copy.id)]
    page = stub.ListModuleTasks(pb.ListModuleTasksRequest(module="backup", types=["verify"]))
    assert [t.type for t in page.tasks] == ["verify"]


def test_bad_requests_get_clear_errors(
    stub: pb_grpc.TaskManagerServiceStub, produce: Producers, server: ServerThread
) -> None:
    produce("backup").create_task("copy").finish()

    def refused(**request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stub.WatchTasks(pb.WatchTasksRequest(**request), timeout=10)))
        return caught.value

    error: Any = refused(module="backup", cursor="w1.garbage")
    assert (
        error.code() is grpc.StatusCode.INVALID_ARGUMENT and reason_of(error) == "INVALID_ARGUMENT"
    )
    error = refused(module="nope")
    assert error.code() is grpc.StatusCode.NOT_FOUND and reason_of(error) == "MODULE_NOT_FOUND"
    first = next(iter(stub.WatchTasks(pb.WatchTasksRequest(module="backup"), timeout=10)))
    error = refused(module="backup", cursor=first.cursor, snapshot=True)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A cursor of another server (or of this one before a restart) has expired.
    other = ServerThread().start()
    try:
        with grpc.insecure_channel(other.target) as channel:
            other_stub = pb_grpc.TaskManagerServiceStub(channel)
            with Producer(other.target, module="backup") as p:
                p.create_task("copy").finish()
            with pytest.raises(grpc.RpcError) as caught:
                next(
                    iter(
                        other_stub.WatchTasks(
                            pb.WatchTasksRequest(module="backup", cursor=first.cursor), timeout=10
                        )
                    )
                )
    finally:
        other.stop()
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(error) == "CURSOR_EXPIRED" and "list the tasks again" in error.details()
    with pytest.raises(grpc.RpcError) as listing:
        stub.ListModuleTasks(pb.ListModuleTasksRequest(module="backup", states=[cast(Any, 42)]))
    assert listing.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_slow_reader_is_ended_clearly_and_others_go_on() -> None:
    server = ServerThread(watch_window=1024, shards=1, task_ttl=600).start()
    try:
        # The slow reader's channel takes what flow control lets through and no
        # more (its window stays at 64 KB without BDP probing), as a reader on a
        # slow link would; the fast reader's channel is a default one.
        slow_options = [("grpc.http2.bdp_probe", 0)]
        with (
            grpc.insecure_channel(server.target) as channel,
            grpc.insecure_channel(server.target, options=slow_options) as slow_channel,
        ):
            stub = pb_grpc.TaskManagerServiceStub(channel)
            with Producer(server.target, module="backup") as producer:
                ids = [producer.create_task("copy").id for _ in range(300)]
                # Full statuses: big batches, that fill the slow reader's buffers soon.
                slow: Any = pb_grpc.TaskManagerServiceStub(slow_channel).WatchTasks(
                    pb.WatchTasksRequest(module="backup", full_status=True), timeout=30
                )
                next(slow)  # then it stops reading
                fast = Stream(stub, module="backup")
                fast.wait_for(lambda s: len(s.responses) >= 1)

                async def churn() -> None:
                    # Many distinct tasks a batch: no coalescing can save the slow reader.
                    producers = server.server.producers  # type: ignore[union-attr]
                    for round_ in range(1, 61):
                        for task_id in ids:
                            await producers.report_progress(task_id, round_, None)
                        await asyncio.sleep(0.02)  # the watches write their batches
                    for task_id in ids:
                        await producers.finish_task(task_id, None)

                server.call(churn, timeout=60)
                fast.wait_for(
                    lambda s: all(
                        str(t) in s.latest() and s.latest()[str(t)].task.state == pb.TASK_STATE_DONE
                        for t in ids
                    ),
                    timeout=20,
                )
                assert fast.error is None
                fast.close()
                with pytest.raises(grpc.RpcError) as caught:
                    for _ in slow:
                        pass
                error: Any = caught.value
                assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                assert reason_of(error) == "WATCH_FELL_BEHIND"
                assert "watch again with a snapshot" in error.details()
    finally:
        server.stop()


def test_state_filter_on_the_client_listing(client: TaskManagerClient, produce: Producers) -> None:
    task = produce("backup").create_task("copy")
    assert client.get_status(task.id).state is TaskState.RUNNING
    task.finish()


def test_reconnect_in_the_middle_of_a_burst_misses_nothing_and_doubles_nothing(
    stub: pb_grpc.TaskManagerServiceStub, server: ServerThread
) -> None:
    rounds, count = 20, 100
    with Producer(server.target, module="burst") as producer:
        tasks = [producer.create_task("copy", total=rounds) for _ in range(count)]
        first = Stream(stub, module="burst")
        first.wait_for(lambda s: len(s.responses) >= 1)

        def burst() -> None:
            for value in range(1, rounds + 1):
                for task in tasks:
                    task.progress(value)
            for task in tasks:
                task.finish()

        writer = threading.Thread(target=burst)
        writer.start()
        # Cut the first stream in the middle of the burst, at a response boundary.
        first.wait_for(lambda s: len(s.events()) >= count, timeout=20)
        first.close()
        with first._lock:
            received = list(first.responses)
        resumed = Stream(stub, module="burst", cursor=received[-1].cursor)
        writer.join(60)
        resumed.wait_for(
            lambda s: sum(e.type == pb.TASK_EVENT_TYPE_FINISHED for e in s.events()) >= count,
            timeout=30,
        )
        resumed.close()
    events = [e for r in received for e in r.events] + resumed.events()
    by_task: dict[str, list[pb.TaskEvent]] = {}
    for event in events:
        by_task.setdefault(event.task.task_id, []).append(event)
    assert set(by_task) == {str(t.id) for t in tasks}
    for task_id, seen in by_task.items():
        # The last event is the end, with the final progress: nothing missed.
        assert seen[-1].type == pb.TASK_EVENT_TYPE_FINISHED, task_id
        assert seen[-1].task.state == pb.TASK_STATE_DONE
        assert seen[-1].task.progress_completed == rounds
        assert sum(e.type == pb.TASK_EVENT_TYPE_FINISHED for e in seen) == 1
        # Progress only ever moves on: an event sent twice would repeat a value.
        values = [e.task.progress_completed for e in seen if e.type == pb.TASK_EVENT_TYPE_CHANGED]
        assert values == sorted(set(values)), (task_id, values)
