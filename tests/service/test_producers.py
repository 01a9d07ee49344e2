"""The producer API over gRPC: TaskReportingService and tm_client.Producer against a real server."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from uuid import uuid4

import grpc
import pytest

from tm_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Producer,
    TaskAbortedError,
    TaskManagerClient,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
)
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc

from ..process import start_producer_script
from ..server_fixture import ServerThread


@pytest.fixture
def lease_server() -> Iterator[ServerThread]:
    thread = ServerThread(producer_lease_seconds=1.0, task_ttl=600).start()
    yield thread
    thread.stop()


@pytest.fixture
def producer(server: ServerThread) -> Iterator[Producer]:
    with Producer(server.target, module="backup") as p:
        yield p


def test_block_reports_a_tree(producer: Producer, client: TaskManagerClient) -> None:
    client.set_ttl(600)
    with producer.task(
        "backup", scope="keyspace", keyspace="ks", progress_units="tables", total=2, user_task=True
    ) as task:
        for i, table in enumerate(["a", "b"]):
            with task.child(
                "backup", scope="table", table=table, progress_units="tables", total=1
            ) as child:
                child.progress(1)
            task.progress(i + 1)
        status = client.get_status(task.id)
        assert status.state is TaskState.RUNNING and status.module == "backup"
    final = client.get_status(task.id)
    assert final.state is TaskState.DONE and final.user_task
    assert (final.progress_completed, final.progress_total) == (2, 2)
    tree = client.get_status_recursive(task.id)
    assert [s.table for s in tree] == ["", "a", "b"]
    assert all(s.state is TaskState.DONE for s in tree)
    assert client.list_modules() == ["backup", "test"]


def test_exception_in_block_fails_the_task(producer: Producer, client: TaskManagerClient) -> None:
    client.set_ttl(600)
    with pytest.raises(OSError), producer.task("backup") as task:
        raise OSError("no space left on device")
    final = client.get_status(task.id)
    assert final.state is TaskState.FAILED and "no space left on device" in final.error
    assert "OSError" in final.error


def test_abort_is_pushed_to_the_block(producer: Producer, client: TaskManagerClient) -> None:
    client.set_ttl(600)
    with pytest.raises(TaskAbortedError), producer.task("backup", abortable=True) as task:
        child = task.child("backup", scope="table")
        threading.Timer(0.1, client.abort, args=(task.id,)).start()
        assert task.wait_abort(10)  # pushed down the session stream, no polling
        assert child.wait_abort(10)  # descendants too, whatever their own flag
        child.finish()
        task.check_abort()
    final = client.get_status(task.id)
    assert final.state is TaskState.FAILED and "abort" in final.error
    # Flags the encoder writes only when set (defaults are skipped) still arrive.
    assert final.is_abortable and final.abort_requested
    assert final.end_time is not None and final.expire_time is not None
    tree = client.get_status_recursive(task.id)
    assert tree[1].state is TaskState.FAILED and tree[1].error == "abort requested"


def test_without_a_session_abort_shows_in_progress_replies(
    server: ServerThread, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    with Producer(server.target, module="scripts", session=False) as producer:
        assert producer.session_id == ""
        with pytest.raises(TaskAbortedError), producer.task("reindex", abortable=True) as task:
            client.abort(task.id)
            assert client.get_status(task.id).abort_requested
            task.progress(1)  # the reply says an abort is pending
    assert client.get_status(task.id).state is TaskState.FAILED


def test_idempotent_create_over_the_wire(producer: Producer, client: TaskManagerClient) -> None:
    task_id = uuid4()
    first = producer.create_task("backup", task_id=task_id, keyspace="ks")
    again = producer.create_task("backup", task_id=task_id, keyspace="ks")
    assert first.id == again.id == task_id
    assert len([e for e in client.list_tasks("backup") if e.task_id == task_id]) == 1
    with pytest.raises(AlreadyExistsError):
        producer.create_task("restore", task_id=task_id)


def test_bad_input_and_transitions(
    server: ServerThread, producer: Producer, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    task = producer.create_task("backup", total=10, start=False)
    stub = rpb_grpc.TaskReportingServiceStub(grpc.insecure_channel(server.target))
    with pytest.raises(FailedPreconditionError, match="created: start it first"):
        task.progress(1)
    producer._unary(stub.StartTask, rpb.StartTaskRequest(task_id=str(task.id)))
    with pytest.raises(FailedPreconditionError, match="already started"):
        producer._unary(stub.StartTask, rpb.StartTaskRequest(task_id=str(task.id)))
    for completed, total, field in [
        (-1.0, None, "completed"),
        (math.nan, None, "completed"),
        (11.0, None, "completed"),
        (1.0, math.inf, "total"),
    ]:
        with pytest.raises(InvalidArgumentError) as err:
            task.progress(completed, total)
        assert err.value.field == field
    task.finish()
    with pytest.raises(FailedPreconditionError, match="it is done"):
        task.finish()
    with pytest.raises(FailedPreconditionError, match="it is done"):
        task.progress(1)
    with pytest.raises(FailedPreconditionError, match="done"):
        producer.create_task("backup", parent=task)
    with pytest.raises(InvalidArgumentError) as err:
        producer.create_task("t" * 300)
    assert err.value.field == "type"
    with pytest.raises(InvalidArgumentError):
        producer.create_task("")
    with pytest.raises(TaskNotFoundError):
        producer.create_task("backup", parent=uuid4())
    with pytest.raises(TaskNotFoundError):
        producer._unary(stub.FinishTask, rpb.FinishTaskRequest(task_id=str(uuid4())))
    with pytest.raises(InvalidArgumentError):
        producer._unary(stub.FinishTask, rpb.FinishTaskRequest(task_id="nope"))
    with pytest.raises(NotFoundError) as nf:
        producer._unary(
            stub.CreateTask,
            rpb.CreateTaskRequest(module="m", type="t", session_id=str(uuid4())),
        )
    assert nf.value.reason == "SESSION_NOT_FOUND"
    with pytest.raises(InvalidArgumentError):
        producer._unary(
            stub.CreateTask, rpb.CreateTaskRequest(module="m", type="t", session_id="x")
        )
    with pytest.raises(InvalidArgumentError):
        producer._unary(stub.RegisterModule, rpb.RegisterModuleRequest(module=""))
    with pytest.raises(NotFoundError):
        producer._unary(stub.UnregisterModule, rpb.UnregisterModuleRequest(module="nope"))
    with pytest.raises(grpc.RpcError) as raw:
        list(stub.OpenSession(rpb.OpenSessionRequest(session_id=str(uuid4())), timeout=5))
    assert raw.value.code() is grpc.StatusCode.NOT_FOUND


def test_unregister_module_aborts_and_fails_reported_tasks(
    server: ServerThread, producer: Producer, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    task = producer.task("backup", abortable=True)
    updates = client.watch(task.id, timeout=10)
    assert next(updates).state is TaskState.RUNNING  # the wait holds the task from here on
    stub = rpb_grpc.TaskReportingServiceStub(grpc.insecure_channel(server.target))
    producer._unary(stub.UnregisterModule, rpb.UnregisterModuleRequest(module="backup"))
    assert task.wait_abort(5)
    assert list(updates)[-1].state is TaskState.FAILED
    assert "backup" not in client.list_modules()


def test_sigkilled_producer_fails_after_the_lease(lease_server: ServerThread) -> None:
    proc, root_id, child_id = start_producer_script(lease_server.target)
    try:
        with (
            TaskManagerClient(lease_server.target) as client,
            Producer(lease_server.target, module="import") as bystander,
        ):
            survivor = bystander.task("import")
            assert client.get_status(root_id).state is TaskState.RUNNING
            watch = client.watch(root_id, timeout=20)
            assert next(watch).state is TaskState.RUNNING
            proc.kill()
            proc.wait(10)
            final = list(watch)[-1]
            assert final.state is TaskState.FAILED and "producer lost" in final.error
            tree = client.get_status_recursive(root_id)
            assert [s.id for s in tree] == [final.id, tree[1].id]
            assert str(tree[1].id) == child_id and tree[1].state is TaskState.FAILED
            # Nothing else is affected.
            assert client.get_status(survivor.id).state is TaskState.RUNNING
            survivor.finish()
    finally:
        proc.kill()


def test_progress_flood_coalesces_and_ends_on_the_latest(
    server: ServerThread, producer: Producer, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    task = producer.task("backup", total=3000)
    seen: list[TaskStatus] = []
    watcher = threading.Thread(target=lambda: seen.extend(client.watch(task.id, timeout=60)))
    watcher.start()
    reporters = []
    for part in range(3):

        def report(part: int = part) -> None:
            with Producer(server.target, module="backup", session=False) as p:
                stub = p._stub
                for i in range(1, 501):
                    p._unary(
                        stub.ReportProgress,
                        rpb.ReportProgressRequest(task_id=str(task.id), completed=part * 500 + i),
                    )

        reporters.append(threading.Thread(target=report))
    for r in reporters:
        r.start()
    # Other calls are served during the flood.
    assert client.list_modules() == ["backup", "test"]
    for r in reporters:
        r.join(60)
    task.progress(3000)
    task.finish()
    watcher.join(60)
    assert seen[-1].state is TaskState.DONE and seen[-1].progress_completed == 3000
    running = [s for s in seen if s.state is TaskState.RUNNING]
    assert running[-1].progress_completed == 3000  # the latest report reached the watcher
    assert len(seen) <= 3002  # at most one message per change, often far fewer


def test_a_frozen_producer_is_noticed_after_keepalive_and_its_timeout() -> None:
    # A producer whose host froze (SIGSTOP: the kernel still acknowledges TCP, only
    # the pings go unanswered). The server notices after keepalive + timeout, then
    # the lease runs: about 1 + 1 + 1 s here. grpc-core used to wait 60 s for a
    # ping's answer whatever keepalive_timeout said.
    server = ServerThread(
        producer_lease_seconds=1.0,
        task_ttl=600,
        keepalive_seconds=1.0,
        keepalive_timeout_seconds=1.0,
    ).start()
    proc, root_id, _ = start_producer_script(server.target)
    try:
        with TaskManagerClient(server.target) as client:
            watch = client.watch(root_id, timeout=30)
            assert next(watch).state is TaskState.RUNNING
            proc.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            final = list(watch)[-1]
            noticed = time.monotonic() - frozen
        assert final.state is TaskState.FAILED and "producer lost" in final.error
        # Expected ~3 s; well under the ~60 s it took before, with room for a slow host.
        assert noticed < 20, f"the frozen producer was noticed after {noticed:.1f}s"
    finally:
        proc.kill()
        server.stop()


def test_closing_a_producer_ends_its_session_at_once(
    lease_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with TaskManagerClient(lease_server.target) as client:
        with caplog.at_level("INFO"):
            producer = Producer(lease_server.target, module="backup")
            with producer.task("backup") as task:
                pass
            left = producer.task("backup")
            producer.close()
            status = client.get_status(left.id)
            assert status.state is TaskState.FAILED and "closed its session" in status.error
            assert client.get_status(task.id).state is TaskState.DONE
            time.sleep(1.5)  # past the 1 s lease: nothing more happens
        assert lease_server.call(lambda: _count(lease_server)) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def _count(server: ServerThread) -> int:
    assert server.server is not None
    return server.server.producers.session_count()
