"""Deep trees, a zero wait timeout and a taken port, against real servers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tm_client import TaskManagerClient, TaskState, WaitTimeoutError
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc

from ..process import BIN, ServerProcess
from ..server_fixture import ServerThread


@pytest.fixture
def stub(server: ServerThread) -> Iterator[rpb_grpc.TaskReportingServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield rpb_grpc.TaskReportingServiceStub(channel)


def make_chain(stub: rpb_grpc.TaskReportingServiceStub, depth: int) -> list[str]:
    ids: list[str] = []
    for level in range(depth):
        reply = stub.CreateTask(
            rpb.CreateTaskRequest(
                module="deep",
                type="step",
                parent_id=ids[-1] if ids else "",
                shard=level % 3,
                abortable=True,
                start=True,
            )
        )
        ids.append(reply.status.id)
    return ids


def check_chain(
    stub: rpb_grpc.TaskReportingServiceStub, client: TaskManagerClient, ids: list[str]
) -> None:
    root, leaf = ids[0], ids[-1]
    stub.ReportProgress(rpb.ReportProgressRequest(task_id=leaf, completed=4, total=8))
    status = client.get_status(root)
    assert (status.progress_completed, status.progress_total) == (4, 8)
    client.abort(root)
    assert client.get_status(leaf).abort_requested
    tree = client.get_status_recursive(root)
    assert [str(s.id) for s in tree] == ids


def test_a_chain_of_hundreds_created_over_grpc_works(
    stub: rpb_grpc.TaskReportingServiceStub, client: TaskManagerClient
) -> None:
    # Each of these calls failed with INTERNAL (a RecursionError) past a few hundred levels.
    client.set_ttl(600)
    ids = make_chain(stub, 600)
    check_chain(stub, client, ids)
    # Finished from the root down: the rest finish under a parent already done.
    for task_id in ids:
        stub.FinishTask(rpb.FinishTaskRequest(task_id=task_id))
    assert client.wait(ids[0]).state is TaskState.FAILED  # it was aborted


@pytest.mark.slow
def test_a_chain_ten_thousand_deep_works_over_grpc(
    stub: rpb_grpc.TaskReportingServiceStub, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    ids = make_chain(stub, 10_000)
    check_chain(stub, client, ids)
    for task_id in reversed(ids):  # from the leaf up
        stub.FinishTask(rpb.FinishTaskRequest(task_id=task_id))
    tree = client.get_status_recursive(ids[0])
    assert len(tree) == 10_000 and {s.state for s in tree} == {TaskState.FAILED}


def test_a_zero_timeout_sends_the_status_then_deadline_exceeded(
    stub: rpb_grpc.TaskReportingServiceStub, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    running = stub.CreateTask(rpb.CreateTaskRequest(module="m", type="t", start=True)).status.id
    seen = []
    with pytest.raises(WaitTimeoutError) as err:
        for status in client.watch(running, timeout=0):
            seen.append(status)
    assert [s.state for s in seen] == [TaskState.RUNNING]
    assert err.value.reason == "WAIT_TIMEOUT" and "within 0s" in err.value.message
    stub.FinishTask(rpb.FinishTaskRequest(task_id=running))
    assert client.wait(running, timeout=0).state is TaskState.DONE
    # Unset: no timeout at all (the old meaning of zero).
    assert client.wait(running).state is TaskState.DONE


def test_a_second_server_on_a_taken_port_fails_to_start(tmp_path: Path) -> None:
    first = ServerProcess()
    try:
        result = subprocess.run(
            [str(BIN / "tm-server"), "--address", first.target, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert f"cannot listen on {first.target}: Address already in use" in result.stderr
        assert "Traceback" not in result.stderr
        with TaskManagerClient(first.target) as client:
            assert client.list_modules() == []  # the first one still serves, alone
    finally:
        first.kill()
