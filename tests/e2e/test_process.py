"""The server as a process: flags, SIGTERM/SIGINT with open streams, and the real grpcurl."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tm_client import (
    TaskManagerClient,
    TaskState,
    TestServiceClient,
    UnavailableError,
)

from ..process import BIN, ServerProcess

GRPCURL = str(BIN / "grpcurl")


@pytest.fixture
def proc() -> Iterator[ServerProcess]:
    server = ServerProcess("--enable-test-service", "--shards", "2", "--node", "n1")
    yield server
    server.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_open_streams_cleanly_and_exits_zero(sig: int) -> None:
    server = ServerProcess("--enable-test-service")
    try:
        # resume_seconds=0: the stream's own end is under test, not the client's resume.
        with (
            TestServiceClient(server.target) as testsvc,
            TaskManagerClient(server.target, resume_seconds=0) as c,
        ):
            task_id = testsvc.create_task()
            errors: list[BaseException] = []
            started = threading.Barrier(4)

            def watch() -> None:
                updates = c.watch(task_id)
                next(updates)
                started.wait(10)
                try:
                    list(updates)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=watch) for _ in range(3)]
            for t in threads:
                t.start()
            started.wait(10)
            assert server.terminate(sig) == 0
            for t in threads:
                t.join(10)
            assert len(errors) == 3
            assert all(isinstance(e, UnavailableError) for e in errors), errors
            assert all(e.reason == "SHUTTING_DOWN" for e in errors)  # type: ignore[attr-defined]
        assert "stopped" in server.output()
    finally:
        server.kill()


def test_bad_flags_fail_with_a_message() -> None:
    result = subprocess.run(
        [str(BIN / "tm-server"), "--shards", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    result = subprocess.run(
        [str(BIN / "tm-server"), "--task-ttl-in-seconds", "-3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "must not be negative" in result.stderr
    result = subprocess.run(
        [str(BIN / "tm-server"), "--user-task-ttl-in-seconds", str(10**12)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "must be at most 10000000000" in result.stderr
    result = subprocess.run(
        [str(BIN / "tm-server"), "--log-level", "chatty"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "tm-server: error: argument --log-level: unknown level 'chatty': "
        "use DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )


def grpcurl(target: str, *args: str, data: dict[str, Any] | None = None) -> tuple[int, str]:
    cmd = [GRPCURL, "-plaintext", "-max-time", "20"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [target, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


def call(target: str, method: str, data: dict[str, Any] | None = None) -> Any:
    rc, out = grpcurl(target, method, data=data or {})
    assert rc == 0, out
    return json.loads(out) if out.strip() else {}


def test_grpcurl_drives_every_rpc_through_reflection(proc: ServerProcess) -> None:
    target = proc.target
    svc = "tm.v1.TaskManagerService/"
    test = "tm.v1.TaskManagerTestService/"
    rc, out = grpcurl(target, "list")
    assert rc == 0
    assert {"tm.v1.TaskManagerService", "tm.v1.TaskManagerTestService"} <= set(out.split())
    rc, out = grpcurl(target, "describe", "tm.v1.TaskManagerService")
    assert rc == 0 and "rpc WaitTask" in out and "stream .tm.v1.WaitTaskResponse" in out
    # The error details are known to reflection, so they decode by name.
    rc, out = grpcurl(target, "describe", "google.rpc.ErrorInfo")
    assert rc == 0 and "string reason = 1;" in out
    rc, out = grpcurl(target, "describe", "tm.v1.ErrorReason")
    assert rc == 0 and "ERROR_REASON_TASK_NOT_FOUND = 1;" in out

    assert call(target, svc + "SetTtl", {"ttl_seconds": 600}) == {}  # previous 0 is the default
    assert call(target, svc + "GetTtl") == {"ttl_seconds": "600"}
    assert call(target, svc + "SetUserTtl", {"user_ttl_seconds": 7}) == {
        "previous_user_ttl_seconds": "3600"
    }
    assert call(target, svc + "GetUserTtl") == {"user_ttl_seconds": "7"}
    assert call(target, svc + "ListModules") == {"modules": ["test"]}

    root = call(target, test + "CreateTestTask", {"keyspace": "ks", "shard": 1})["task_id"]
    child = call(target, test + "CreateTestTask", {"parent_id": root})["task_id"]
    status = call(target, svc + "GetTaskStatus", {"task_id": root})["status"]
    assert status["state"] == "TASK_STATE_RUNNING" and status["shard"] == 1
    assert status["children_ids"] == [{"task_id": child, "node": "n1"}]
    listed = call(target, svc + "ListModuleTasks", {"module": "test", "internal": True})
    assert {t["task_id"] for t in listed["tasks"]} == {root, child}
    assert call(target, svc + "ListTaskChildren", {"task_id": root}) == {
        "children": [{"task_id": child, "node": "n1"}],
        "children_count": 1,
    }

    rc, out = grpcurl(target, svc + "WaitTask", data={"task_id": root, "timeout": "0.3s"})
    assert rc != 0 and "DeadlineExceeded" in out and "WAIT_TIMEOUT" in out
    assert "TASK_STATE_RUNNING" in out  # the current status came first

    rc, out = grpcurl(target, svc + "AbortTask", data={"task_id": root})
    assert rc != 0 and "FailedPrecondition" in out and "TASK_NOT_ABORTABLE" in out

    call(target, test + "FinishTestTask", {"task_id": child, "error": "bad sector"})
    call(target, test + "FinishTestTask", {"task_id": root})
    rc, out = grpcurl(target, svc + "WaitTask", data={"task_id": root})
    assert rc == 0 and "TASK_STATE_DONE" in out
    rc, out = grpcurl(target, svc + "GetTaskStatusRecursive", data={"task_id": root})
    assert rc == 0
    messages = [json.loads(m) for m in _split_json(out)]
    assert [m["status"]["id"] for m in messages] == [root, child]
    assert messages[1]["status"]["error"] == "bad sector"

    assert call(target, svc + "DrainModuleTasks", {"module": "test"}) == {"drained_count": "1"}
    rc, out = grpcurl(target, svc + "GetTaskStatus", data={"task_id": root})
    assert rc != 0 and "NotFound" in out and "TASK_NOT_FOUND" in out
    rc, out = grpcurl(target, svc + "GetTaskStatus", data={"task_id": "nope"})
    assert rc != 0 and "InvalidArgument" in out and "task_id" in out
    call(
        target,
        test + "DeleteTestTask",
        {"task_id": call(target, test + "CreateTestTask")["task_id"]},
    )
    call(target, test + "UnregisterTestModule")
    call(target, test + "RegisterTestModule")
    rc, out = grpcurl(target, "grpc.health.v1.Health/Check")
    assert rc == 0 and "SERVING" in out
    # The server is still healthy after all the bad input.
    assert proc.proc.poll() is None
    with TaskManagerClient(target) as client:
        task = TestServiceClient(target).create_task()
        assert client.get_status(task).state is TaskState.RUNNING


def _split_json(text: str) -> list[str]:
    """Splits grpcurl's stream output (pretty-printed JSON objects one after another)."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(json.dumps(obj))
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def test_a_data_directory_serves_one_server_at_a_time(tmp_path: Path) -> None:
    first = ServerProcess("--data-dir", str(tmp_path / "node"))
    try:
        second = subprocess.run(
            [str(BIN / "tm-server"), "--address", "127.0.0.1:0", "--data-dir",
             str(tmp_path / "node"), "--node", "other"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"the data directory {tmp_path / 'node'} is in use by another tm-server " in (
            second.stderr
        )
        assert f"(pid {first.proc.pid})" in second.stderr and "Traceback" not in second.stderr
        first.kill()  # SIGKILL: the kernel lets the lock go with the process
        again = ServerProcess("--data-dir", str(tmp_path / "node"))
        assert again.port
        again.kill()
    finally:
        first.kill()
