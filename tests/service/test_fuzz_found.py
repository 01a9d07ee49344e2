"""What the fuzzer found, reduced: each a bug it caught, as a test of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from tm_client.pb import task_manager_pb2, task_manager_test_pb2, task_reporting_pb2
from tm_server.security.tokens import hash_token

from ..fuzzing.calls import Metadata, _serialize, problems_of
from ..fuzzing.messages import SESSION
from ..fuzzing.run import Run, metadata_for, rpc

# ---- what the fuzzer found, reduced ----------------------------------------------------------
# Each asserts the behaviour the API documents (they fail until the server is fixed).


def _running_root(run: Run, metadata: Metadata = (), **fields: Any) -> str:
    fields.setdefault("module", "fuzz")
    fields.setdefault("type", "t")
    request = task_reporting_pb2.CreateTaskRequest(start=True, **fields)
    reply: Any = run.must(rpc("CreateTask"), request, metadata)
    return str(reply.status.id)


def test_stopping_the_test_module_ends_with_a_test_task_under_another_modules_task(
    make_run: Callable[..., Run],
) -> None:
    # UnregisterTestModule (and UnregisterModule "test") aborted only the
    # module's roots, then waited for all its tasks: a test task whose parent
    # is a running task of another module is never aborted, so the call never
    # answered, and the module was left half stopped.
    run = make_run()
    tp = task_manager_test_pb2
    parent = _running_root(run)
    run.must(rpc("CreateTestTask"), tp.CreateTestTaskRequest(parent_id=parent))
    outcome = run.call(rpc("UnregisterTestModule"), tp.UnregisterTestModuleRequest())
    assert problems_of(rpc("UnregisterTestModule"), outcome) == [], run.log[-1]
    assert outcome.code is grpc.StatusCode.OK, run.log[-1]
    modules: Any = run.must(rpc("ListModules"), task_manager_pb2.ListModulesRequest())
    assert "test" not in modules.modules
    assert run.violations() == []


def test_a_waiter_that_gives_up_leaves_the_task_to_the_other_waiters(
    make_run: Callable[..., Run],
) -> None:
    # A task's completion future was shared by every waiter: one waiter
    # cancelled (a client's deadline, asyncio.wait_for) cancelled it for all,
    # and every later wait on the task raised CancelledError. Over gRPC the
    # handler then ends without a status: FinishTestTask and DeleteTestTask
    # on the task never answer.
    from tm_server.testing import create_test_task
    from tm_server.testing.module import finish_test_task

    run = make_run()
    manager = run.thread.manager

    async def give_up_then_finish() -> str:
        task_id = await create_test_task(manager)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(manager.wait_done(task_id), 0.05)
        try:
            await asyncio.wait_for(finish_test_task(manager, task_id), 5)
        except asyncio.CancelledError:
            return "finish_test_task raised CancelledError"
        return str((await manager.wait_done(task_id)).state.value)

    assert run.thread.call(give_up_then_finish) == "done"


def test_a_test_task_under_a_stopping_module_can_still_be_deleted(
    make_run: Callable[..., Run],
) -> None:
    # The same over gRPC: the client of a module stop that waits gives up, and
    # the task's completion future goes with its call.
    run = make_run()
    tp = task_manager_test_pb2
    parent = _running_root(run)
    created: Any = run.must(rpc("CreateTestTask"), tp.CreateTestTaskRequest(parent_id=parent))
    stop = run.channel.unary_unary(
        rpc("UnregisterTestModule").path,
        request_serializer=_serialize,
        response_deserializer=tp.UnregisterTestModuleResponse.FromString,
    )
    with contextlib.suppress(grpc.RpcError):  # it answers, or the client gives up
        stop(tp.UnregisterTestModuleRequest(), timeout=0.5)
    delete = rpc("DeleteTestTask")
    outcome = run.call(delete, tp.DeleteTestTaskRequest(task_id=created.task_id))
    assert problems_of(delete, outcome) == [], run.log[-1]


def test_the_test_service_leaves_a_producers_task_alone(make_run: Callable[..., Run]) -> None:
    # FinishTestTask and DeleteTestTask took a reported task of module "test"
    # and type "test" for a finished test task: FinishTestTask answered OK
    # without finishing it, and DeleteTestTask unregistered it while it ran
    # (its producer could no longer finish it, its session kept it).
    run = make_run()
    tr, tp, pb = task_reporting_pb2, task_manager_test_pb2, task_manager_pb2
    opened: Any = run.must(rpc(SESSION), tr.OpenSessionRequest())
    task_id = _running_root(run, module="test", type="test", session_id=opened.opened.session_id)
    for method, request in (
        ("FinishTestTask", tp.FinishTestTaskRequest(task_id=task_id)),
        ("DeleteTestTask", tp.DeleteTestTaskRequest(task_id=task_id)),
    ):
        outcome = run.call(rpc(method), request)
        assert outcome.code is grpc.StatusCode.FAILED_PRECONDITION, run.log[-1]
    status: Any = run.must(rpc("GetTaskStatus"), pb.GetTaskStatusRequest(task_id=task_id))
    assert status.status.state == pb.TASK_STATE_RUNNING
    run.must(rpc("FinishTask"), tr.FinishTaskRequest(task_id=task_id))
    assert run.violations() == []


def test_a_refusal_naming_a_long_module_reaches_the_client(
    make_run: Callable[..., Run], tmp_path: Path
) -> None:
    # The access check ran before the module name's length was checked, and
    # echoed the name (up to the 64 KiB request limit) into the status
    # message and the ErrorInfo metadata: past the client's 16 KiB metadata
    # limit, the client saw RESOURCE_EXHAUSTED ("received metadata size
    # exceeds hard limit") instead of the refusal.
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        '[[principal]]\nname = "reader"\nroles = ["reader:fuzz"]\n'
        f'tokens = ["{hash_token("token-of-reader")}"]\n'
    )
    run = make_run(tokens=tokens)
    method = rpc("ListModuleTasks")
    for module in ("x" * 300, "\u00e9" * 4097, "\U0001f600" * 1000):
        request = task_manager_pb2.ListModuleTasksRequest(module=module)
        outcome = run.call(method, request, metadata_for("reader"))
        assert problems_of(method, outcome) == [], run.log[-1]
        assert outcome.code in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), run.log[-1]
