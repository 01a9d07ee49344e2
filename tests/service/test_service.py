"""Service tests: every RPC against a real server on 127.0.0.1:0, through the typed client."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from uuid import UUID, uuid4

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tm_client import (
    AlreadyExistsError,
    AsyncTaskManagerClient,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    TaskKind,
    TaskManagerClient,
    TaskNotAbortableError,
    TaskNotFoundError,
    TaskState,
    TestServiceClient,
    UnimplementedError,
    UnknownModuleError,
    WaitTimeoutError,
    from_rpc_error,
)
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_manager_test_pb2 as test_pb
from tm_client.pb import task_manager_test_pb2_grpc as test_pb_grpc
from tm_server.core import TaskStatus, VirtualTaskHint
from tm_server.service import servicer as servicer_module

from ..bodies import Controlled
from ..server_fixture import ServerThread
from ..virtual_group import InMemoryGroup, Operation


class Abortable(Controlled):
    """An abortable in-server task; the test reports its progress through ``ctx``."""

    type = "repair"
    scope = "keyspace"


def start_abortable(server: ServerThread, module: str = "test") -> tuple[UUID, Abortable]:
    impl = Abortable()

    async def make() -> UUID:
        handle = await server.manager.create_task(module, impl, keyspace="ks")
        await handle.start()
        await asyncio.sleep(0)
        return handle.id

    return server.call(make), impl


# ---- modules, listing ------------------------------------------------------------------------


def test_list_modules(client: TaskManagerClient) -> None:
    assert client.list_modules() == ["test"]


def test_list_module_tasks_pages_and_filters(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    roots = [testsvc.create_task(shard=i % 3, keyspace=f"ks{i % 2}") for i in range(7)]
    child = testsvc.create_task(parent_id=roots[0], shard=2, keyspace="ks0")
    page, token = client.list_tasks_page("test", page_size=3)
    assert len(page) == 3 and token
    everything = list(client.list_tasks("test", page_size=2))
    assert {e.task_id for e in everything} == set(roots)
    assert [e.shard for e in everything] == sorted(e.shard for e in everything)
    internal = {e.task_id for e in client.list_tasks("test", internal=True)}
    assert internal == set(roots) | {child}
    ks1 = {e.task_id for e in client.list_tasks("test", keyspace="ks1")}
    assert ks1 == {roots[i] for i in (1, 3, 5)}
    entry = next(e for e in everything if e.task_id == roots[0])
    assert entry.state is TaskState.RUNNING and entry.type == "test" and entry.kind is TaskKind.NODE
    assert entry.sequence_number == 1 and entry.creation_time is not None
    assert entry.end_time is None


def test_list_module_tasks_errors(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    with pytest.raises(UnknownModuleError) as err:
        client.list_tasks_page("nope")
    assert err.value.code is grpc.StatusCode.NOT_FOUND and err.value.reason == "MODULE_NOT_FOUND"
    assert "module nope not found" in err.value.message
    with pytest.raises(InvalidArgumentError) as bad:
        client.list_tasks_page("")
    assert bad.value.field == "module"
    with pytest.raises(InvalidArgumentError) as bad:
        client.list_tasks_page("test", page_token="not-a-token")
    assert bad.value.field == "page_token"
    with pytest.raises(InvalidArgumentError) as bad:
        client.list_tasks_page("test", page_size=5000)
    assert bad.value.field == "page_size"
    with pytest.raises(InvalidArgumentError) as bad:
        client.list_tasks_page("test", keyspace="k" * 1000)
    assert bad.value.field == "keyspace"
    with pytest.raises(InvalidArgumentError):
        client.list_tasks_page("m" * 300)


# ---- status ----------------------------------------------------------------------------------


def test_get_task_status_fields(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    root = testsvc.create_task(shard=1, keyspace="ks", table="t", entity="e", user_task=True)
    child = testsvc.create_task(parent_id=root, shard=2)
    status = client.get_status(root)
    assert status.id == root and status.type == "test" and status.scope == "test"
    assert status.kind is TaskKind.NODE and status.state is TaskState.RUNNING
    assert not status.is_abortable and status.parent_id is None
    assert (status.keyspace, status.table, status.entity) == ("ks", "t", "e")
    assert status.shard == 1 and status.sequence_number == 1 and status.module == "test"
    assert status.user_task and not status.internal and not status.abort_requested
    assert status.start_time is not None and status.end_time is None
    assert status.creation_time is not None and status.expire_time is None
    assert [(c.task_id, c.node) for c in status.children] == [(child, "node-a")]
    child_status = client.get_status(child)
    assert child_status.parent_id == root and child_status.internal
    assert child_status.sequence_number == 1 and child_status.shard == 2


def test_get_task_status_errors(client: TaskManagerClient) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        client.get_status("not-a-uuid")
    assert bad.value.field == "task_id" and "not a valid UUID" in bad.value.message
    with pytest.raises(InvalidArgumentError):
        client.get_status("")
    missing = uuid4()
    with pytest.raises(TaskNotFoundError) as err:
        client.get_status(missing)
    assert err.value.metadata["task_id"] == str(missing)
    assert f"task with id {missing} not found" in err.value.message


# ---- abort -----------------------------------------------------------------------------------


def test_abort_task(server: ServerThread, client: TaskManagerClient) -> None:
    client.set_ttl(100)
    task_id, _ = start_abortable(server)
    client.abort(task_id)
    final = client.wait(task_id, timeout=10)
    assert final.state is TaskState.FAILED and "abort" in final.error


def test_abort_errors(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    task_id = testsvc.create_task()
    with pytest.raises(TaskNotAbortableError) as err:
        client.abort(task_id)
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "TASK_NOT_ABORTABLE"
    with pytest.raises(NotFoundError):
        client.abort(uuid4())
    with pytest.raises(InvalidArgumentError):
        client.abort("zzz")


# ---- wait ------------------------------------------------------------------------------------


def test_wait_ends_on_done(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    task_id = testsvc.create_task()
    threading.Timer(0.2, testsvc.finish_task, args=(task_id,)).start()
    final = client.wait(task_id, timeout=10)
    assert final.state is TaskState.DONE and final.end_time is not None


def test_wait_ends_on_failed_with_ok_status(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(60)
    task_id = testsvc.create_task()
    updates = client.watch(task_id)
    assert next(updates).state is TaskState.RUNNING
    testsvc.finish_task(task_id, "broken pipe")
    last = list(updates)[-1]
    assert last.state is TaskState.FAILED and last.error == "broken pipe"


def test_wait_streams_progress_and_children(
    server: ServerThread, client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(100)
    task_id, impl = start_abortable(server)
    updates = client.watch(task_id, timeout=20)
    first = next(updates)
    assert first.state is TaskState.RUNNING and first.progress_completed == 0

    async def report() -> None:
        assert impl.ctx is not None
        await impl.ctx.report_progress(5, 10)

    server.call(report)
    second = next(updates)
    assert (second.progress_completed, second.progress_total) == (5, 10)
    child = testsvc.create_task(parent_id=task_id, shard=2)
    third = next(updates)
    assert [c.task_id for c in third.children] == [child]
    testsvc.finish_task(child)

    async def release() -> None:
        impl.release.set()

    server.call(release)
    rest = list(updates)
    assert rest[-1].state is TaskState.DONE


def test_wait_timeout_is_deadline_exceeded_after_current_status(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    task_id = testsvc.create_task()
    seen = []
    with pytest.raises(WaitTimeoutError) as err:
        for status in client.watch(task_id, timeout=0.3):
            seen.append(status)
    assert (
        err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED and err.value.reason == "WAIT_TIMEOUT"
    )
    assert [s.state for s in seen] == [TaskState.RUNNING]
    # The timeout abandons the wait only; the task goes on.
    assert client.get_status(task_id).state is TaskState.RUNNING


def test_wait_errors(client: TaskManagerClient) -> None:
    with pytest.raises(TaskNotFoundError):
        client.wait(uuid4())
    with pytest.raises(InvalidArgumentError):
        client.wait("bad")


def test_client_cancel_releases_the_server_side_wait(
    server: ServerThread, client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    task_id = testsvc.create_task()
    stub = pb_grpc.TaskManagerServiceStub(grpc.insecure_channel(server.target))
    calls: list[Any] = [stub.WaitTask(pb.WaitTaskRequest(task_id=str(task_id))) for _ in range(5)]
    for call in calls:
        assert next(call).status.state == pb.TASK_STATE_RUNNING

    async def watchers() -> int:
        return server.manager.watcher_count()

    deadline = time.monotonic() + 5
    while server.call(watchers) != 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.call(watchers) == 5
    for call in calls:
        call.cancel()
    deadline = time.monotonic() + 5
    while server.call(watchers) != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.call(watchers) == 0
    # The server keeps serving and the task is untouched.
    assert client.get_status(task_id).state is TaskState.RUNNING


def test_wait_rejects_negative_timeout(server: ServerThread, testsvc: TestServiceClient) -> None:
    task_id = testsvc.create_task()
    stub = pb_grpc.TaskManagerServiceStub(grpc.insecure_channel(server.target))
    request = pb.WaitTaskRequest(task_id=str(task_id))
    request.timeout.seconds = -5
    with pytest.raises(grpc.RpcError) as err:
        list(stub.WaitTask(request, timeout=5))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# ---- recursive status ------------------------------------------------------------------------


def test_recursive_status_bfs_with_live_and_folded_children(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(1000)
    # As ScyllaDB's test: task0 with children task1, task2, task3 on several shards, and
    # task4 under task1; deleting task3 folds it as done, so live children come first.
    task0 = testsvc.create_task(shard=0)
    task1 = testsvc.create_task(parent_id=task0, shard=1)
    task2 = testsvc.create_task(parent_id=task0, shard=2)
    task3 = testsvc.create_task(parent_id=task0, shard=0)
    task4 = testsvc.create_task(parent_id=task1, shard=2)
    testsvc.delete_task(task3)
    tree = client.get_status_recursive(task0)
    assert [s.id for s in tree] == [task0, task1, task2, task3, task4]
    assert [s.state for s in tree] == [
        TaskState.RUNNING,
        TaskState.RUNNING,
        TaskState.RUNNING,
        TaskState.DONE,
        TaskState.RUNNING,
    ]
    assert [s.shard for s in tree] == [0, 1, 2, 0, 2]
    # A failed grandchild stays visible through folding; a successful one is forgotten.
    testsvc.finish_task(task4, "leaf failed")
    testsvc.finish_task(task1)
    testsvc.finish_task(task2)
    tree = client.get_status_recursive(task0)
    assert [s.id for s in tree] == [task0, task3, task1, task2, task4]
    assert tree[-1].state is TaskState.FAILED and tree[-1].error == "leaf failed"
    with pytest.raises(TaskNotFoundError):
        client.get_status_recursive(uuid4())
    with pytest.raises(InvalidArgumentError):
        client.get_status_recursive("nope")


def test_recursive_status_streams_a_tree_larger_than_one_encoding_batch(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    # The servicer encodes statuses a batch at a time (servicer._RECURSIVE_BATCH):
    # a tree spanning several batches must still arrive whole and in BFS order.
    root = testsvc.create_task(shard=0)
    level1 = [testsvc.create_task(parent_id=root, shard=i % 3) for i in range(30)]
    level2 = [
        testsvc.create_task(parent_id=parent, shard=(i + j) % 3)
        for i, parent in enumerate(level1)
        for j in range(20)
    ]
    assert 1 + len(level1) + len(level2) > 2 * servicer_module._RECURSIVE_BATCH
    tree = client.get_status_recursive(root)
    assert [s.id for s in tree] == [root, *level1, *level2]
    assert [s.parent_id for s in tree[1:31]] == [root] * 30
    assert all(len(s.children) == 20 for s in tree[1:31])


# ---- ttl and drain ---------------------------------------------------------------------------


def test_ttls(client: TaskManagerClient) -> None:
    assert client.get_ttl() == 0
    assert client.set_ttl(30) == 0
    assert client.get_ttl() == 30
    assert client.get_user_ttl() == 3600
    assert client.set_user_ttl(60) == 3600
    assert client.get_user_ttl() == 60
    with pytest.raises(InvalidArgumentError) as bad:
        client.set_ttl(-1)
    assert bad.value.field == "ttl_seconds"
    with pytest.raises(InvalidArgumentError) as bad:
        client.set_user_ttl(-1)
    assert bad.value.field == "user_ttl_seconds"


def test_drain(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    client.set_ttl(1000)
    finished = [testsvc.create_task(shard=i) for i in range(3)]
    running = testsvc.create_task()
    for t in finished:
        testsvc.finish_task(t)
    assert client.drain("test") == 3
    with pytest.raises(TaskNotFoundError):
        client.get_status(finished[0])
    assert client.get_status(running).state is TaskState.RUNNING
    with pytest.raises(UnknownModuleError):
        client.drain("nope")


def test_ttl_zero_unregisters_on_finish(
    client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    task_id = testsvc.create_task()
    testsvc.finish_task(task_id)
    with pytest.raises(TaskNotFoundError):
        client.get_status(task_id)


# ---- test service ----------------------------------------------------------------------------


def test_test_service_errors(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        testsvc.create_task(shard=3)
    assert bad.value.field == "shard"
    with pytest.raises(TaskNotFoundError):
        testsvc.create_task(parent_id=uuid4())
    with pytest.raises(InvalidArgumentError) as bad:
        testsvc.create_task(parent_id="xyz")
    assert bad.value.field == "parent_id"
    fixed = uuid4()
    testsvc.create_task(task_id=fixed)
    with pytest.raises(AlreadyExistsError):
        testsvc.create_task(task_id=fixed)
    with pytest.raises(TaskNotFoundError):
        testsvc.finish_task(uuid4())
    with pytest.raises(TaskNotFoundError):
        testsvc.delete_task(uuid4())
    with pytest.raises(InvalidArgumentError):
        testsvc.create_task(entity="e" * 10_000)


def test_test_module_lifecycle(client: TaskManagerClient, testsvc: TestServiceClient) -> None:
    client.set_ttl(1000)
    task_id = testsvc.create_task()
    testsvc.unregister_module()
    assert client.list_modules() == []
    with pytest.raises(TaskNotFoundError):
        client.get_status(task_id)
    with pytest.raises(UnknownModuleError):
        testsvc.create_task()
    with pytest.raises(UnknownModuleError):
        testsvc.unregister_module()
    testsvc.register_module()
    testsvc.register_module()  # idempotent
    assert client.list_modules() == ["test"]


def test_finishing_a_non_test_task_is_refused(
    server: ServerThread, testsvc: TestServiceClient
) -> None:
    task_id, _ = start_abortable(server)
    with pytest.raises(FailedPreconditionError):
        testsvc.finish_task(task_id)


def test_test_service_is_off_by_default() -> None:
    thread = ServerThread(enable_test_service=False).start()
    try:
        with TestServiceClient(thread.target) as testsvc, pytest.raises(UnimplementedError):
            testsvc.create_task()
        with TaskManagerClient(thread.target) as client:
            assert client.list_modules() == []
    finally:
        thread.stop()


# ---- faults ----------------------------------------------------------------------------------


class BrokenGroup(InMemoryGroup):
    async def get_status(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        raise RuntimeError("secret internal detail")


def install_broken_group(server: ServerThread) -> UUID:
    """A virtual task whose every status read fails with an unexpected error."""
    vid = uuid4()

    async def install() -> None:
        await server.manager.register_module("broken")
        group = BrokenGroup(server.manager, "broken")
        group.ops[vid] = Operation("x")
        await server.manager.register_virtual_group(group)

    server.call(install)
    return vid


def test_unexpected_error_is_internal_and_server_keeps_serving(
    server: ServerThread, client: TaskManagerClient, caplog: pytest.LogCaptureFixture
) -> None:
    vid = install_broken_group(server)
    with caplog.at_level("ERROR"), pytest.raises(InternalError) as err:
        client.get_status(vid)
    assert "secret" not in err.value.message and "incident" in err.value.message
    assert any("secret internal detail" in r.getMessage() or r.exc_info for r in caplog.records)
    assert client.list_modules() == ["broken", "test"]


# ---- health, async client --------------------------------------------------------------------


def test_health_service_reports_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tm.v1.TaskManagerService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_async_client(server: ServerThread, testsvc: TestServiceClient) -> None:
    task_id = testsvc.create_task(keyspace="ks")

    async def scenario() -> None:
        async with AsyncTaskManagerClient(server.target, timeout=10) as client:
            assert await client.list_modules() == ["test"]
            assert await client.set_ttl(100) == 0
            entries = [e async for e in client.list_tasks("test", page_size=1)]
            assert [e.task_id for e in entries] == [task_id]
            handle = client.task(task_id)
            assert (await handle.status()).keyspace == "ks"
            with pytest.raises(TaskNotAbortableError):
                await handle.abort()
            with pytest.raises(WaitTimeoutError):
                await handle.wait(timeout=0.2)
            await asyncio.get_running_loop().run_in_executor(None, testsvc.finish_task, task_id)
            final = await handle.wait(timeout=10)
            assert final.state is TaskState.DONE
            assert [s.id for s in await handle.tree()] == [task_id]
            assert await client.drain("test") == 1

    asyncio.run(scenario())


# ---- malformed input on every RPC ------------------------------------------------------------

_BAD_ID = "12345-not-a-uuid"


@pytest.mark.parametrize(
    ("service", "method", "request_message"),
    [
        ("svc", "GetTaskStatus", pb.GetTaskStatusRequest(task_id=_BAD_ID)),
        ("svc", "AbortTask", pb.AbortTaskRequest(task_id=_BAD_ID)),
        ("svc", "WaitTask", pb.WaitTaskRequest(task_id=_BAD_ID)),
        ("svc", "GetTaskStatusRecursive", pb.GetTaskStatusRecursiveRequest(task_id=_BAD_ID)),
        ("svc", "ListModuleTasks", pb.ListModuleTasksRequest(module="test", page_token="%%")),
        ("svc", "ListModuleTasks", pb.ListModuleTasksRequest(module="test", page_size=-3)),
        ("svc", "ListModuleTasks", pb.ListModuleTasksRequest(module="")),
        ("svc", "SetTtl", pb.SetTtlRequest(ttl_seconds=-10)),
        ("svc", "SetUserTtl", pb.SetUserTtlRequest(user_ttl_seconds=-10)),
        ("svc", "DrainModuleTasks", pb.DrainModuleTasksRequest(module="")),
        ("svc", "DrainModuleTasks", pb.DrainModuleTasksRequest(module="x" * 1000)),
        ("test", "CreateTestTask", test_pb.CreateTestTaskRequest(task_id=_BAD_ID)),
        ("test", "CreateTestTask", test_pb.CreateTestTaskRequest(table="t" * 1000)),
        ("test", "FinishTestTask", test_pb.FinishTestTaskRequest(task_id=_BAD_ID)),
        ("test", "FinishTestTask", test_pb.FinishTestTaskRequest(task_id="", error="x")),
        ("test", "DeleteTestTask", test_pb.DeleteTestTaskRequest(task_id=_BAD_ID)),
    ],
)
def test_every_rpc_rejects_malformed_input_with_invalid_argument(
    server: ServerThread, service: str, method: str, request_message: Any
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub: Any = (
            pb_grpc.TaskManagerServiceStub(channel)
            if service == "svc"
            else test_pb_grpc.TaskManagerTestServiceStub(channel)
        )
        call = getattr(stub, method)
        with pytest.raises(grpc.RpcError) as err:
            result = call(request_message, timeout=10)
            if method in ("WaitTask", "GetTaskStatusRecursive"):
                list(result)
        error = from_rpc_error(err.value)
        assert isinstance(error, InvalidArgumentError), error
        assert error.field and error.field in error.message
        # The server keeps serving.
        ping = pb_grpc.TaskManagerServiceStub(channel).ListModules(
            pb.ListModulesRequest(), timeout=10
        )
        assert list(ping.modules) == ["test"]


def test_a_node_without_a_store_lists_itself_at_the_port_it_bound(
    server: ServerThread, client: TaskManagerClient
) -> None:
    (node,) = client.list_nodes()
    # Asked for port 0: the address says the one it bound, where it is reached.
    assert node.name == "node-a" and node.address == server.target and node.alive
    assert node.started_time is not None and node.last_heartbeat_time is not None
    assert node.started_time <= node.last_heartbeat_time
