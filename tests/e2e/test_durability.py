"""Restarts lose nothing: a real tm-server is SIGKILLed and restarted on its data directory.

No mocks of the disk: the journal is real files, a torn or damaged journal is
made by writing those files, a read-only data directory by permissions, and a
full disk by the kernel's file size limit (``RLIMIT_FSIZE``, raised again
with ``prlimit`` while the server runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tm_client import (
    JournalUnavailableError,
    Producer,
    TaskManagerClient,
    TaskState,
    TmError,
    UnavailableError,
)
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.journal import FileJournal, JournalConfig
from tm_server.journal_files import compact, compaction_lock, frame

from ..process import ServerProcess, start_producer_script
from .cluster_fixture import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

README = Path(__file__).resolve().parents[2] / "README.md"
WINDOW = 0.2
ARGS = ("--node", "n1", "--store", "none", "--user-task-ttl-in-seconds", "3600",
        "--task-ttl-in-seconds", "600",
        "--progress-window-seconds", str(WINDOW), "--producer-lease-seconds", "5")  # fmt: skip


def journal_of(server: ServerProcess) -> Path:
    return Path(server.home) / "tm" / "n1" / "journal"


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(*ARGS)
    yield proc
    proc.kill()


def restart(server: ServerProcess) -> ServerProcess:
    server.kill(keep=True)
    return server.restart(*ARGS)


def retrying(call: Any, request: object) -> Any:
    # grpc shares a failed connection's backoff between channels: right after
    # a restart the first calls may still see the old refusal.
    deadline = time.monotonic() + 15
    while True:
        try:
            return call(request, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Acks:
    """What the server acknowledged to one producer thread, by task id."""

    created: list[str] = field(default_factory=list)
    finished: dict[str, int] = field(default_factory=dict)  # a pb.TaskState value
    aborted: list[str] = field(default_factory=list)
    # task -> [(completed, monotonic time of the reply)]
    progress: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _load(target: str, number: int, stop: threading.Event, acks: Acks) -> None:
    channel = grpc.insecure_channel(target)
    reporting = rpb_grpc.TaskReportingServiceStub(channel)
    public = pb_grpc.TaskManagerServiceStub(channel)
    i = 0
    try:
        reporting.RegisterModule(rpb.RegisterModuleRequest(module="load"), timeout=5)
        while not stop.is_set():
            i += 1
            task_id = str(uuid.uuid4())
            reporting.CreateTask(
                rpb.CreateTaskRequest(module="load", type=f"w{number}", task_id=task_id,
                                      user_task=True, abortable=True, start=True),
                timeout=5,
            )  # fmt: skip
            acks.created.append(task_id)
            for done in range(1, 4):
                reporting.ReportProgress(
                    rpb.ReportProgressRequest(task_id=task_id, completed=done, total=3), timeout=5
                )
                acks.progress.setdefault(task_id, []).append((done, time.monotonic()))
            if i % 5 == 0:
                public.AbortTask(pb.AbortTaskRequest(task_id=task_id), timeout=5)
                acks.aborted.append(task_id)
            elif i % 3 != 0:  # a third stay running
                reply = reporting.FinishTask(
                    rpb.FinishTaskRequest(task_id=task_id, error="" if i % 2 else "bad"),
                    timeout=5,
                )
                acks.finished[task_id] = reply.status.state
    except grpc.RpcError:
        pass  # the server was killed: what was acknowledged so far is what counts
    finally:
        channel.close()


def test_sigkill_under_load_loses_nothing_acknowledged(server: ServerProcess) -> None:
    # A session-bound task and a waiter that must both carry on across the restart.
    producer = Producer(server.target, module="backup")
    session_task = producer.create_task("backup", total=10, user_task=True)
    session_task.progress(4)
    client = TaskManagerClient(server.target)
    waited: list[object] = []
    waiter = threading.Thread(target=lambda: waited.append(client.wait(session_task.id)))
    waiter.start()

    stop = threading.Event()
    acks = [Acks() for _ in range(4)]
    threads = [
        threading.Thread(target=_load, args=(server.target, n, stop, acks[n])) for n in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    server.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(10)
    server.proc.wait(10)
    server = restart(server)
    try:
        log = server.output()
        assert re.search(r"journal: recovered .*\d+ running", log), log
        channel = grpc.insecure_channel(server.target)
        public = pb_grpc.TaskManagerServiceStub(channel)
        total = sum(len(a.created) for a in acks)
        assert total > 20, "the load made too few calls to prove anything"
        for ack in acks:
            for task_id in ack.created:
                reply = retrying(public.GetTaskStatus, pb.GetTaskStatusRequest(task_id=task_id))
                status = reply.status
                if task_id in ack.finished:
                    assert status.state == ack.finished[task_id]
                if task_id in ack.aborted:
                    assert status.abort_requested
                # Progress acknowledged a window (and the write) before the kill is there.
                durable = [
                    c for c, at in ack.progress.get(task_id, []) if at < killed_at - WINDOW - 0.5
                ]
                if durable:
                    assert status.progress_completed >= max(durable), task_id
        # The producer's session resumed: its task is still running after the lease...
        time.sleep(6)
        assert client.get_status(session_task.id).state is TaskState.RUNNING
        session_task.progress(10)
        # ...and its finish ends the wait that started before the kill.
        assert session_task.finish() is not None
        waiter.join(30)
        assert waited and getattr(waited[0], "state", None) is TaskState.DONE
        assert client.get_status(session_task.id).progress_completed == 10
        channel.close()
    finally:
        producer.close()
        client.close()
        server.kill()


def test_a_producer_gone_with_the_server_has_its_tasks_failed_after_the_fresh_lease(
    server: ServerProcess,
) -> None:
    # The server dies first, then its producer (so no stream end is seen by
    # any server): the recovered session gets a fresh lease, its tasks come
    # back running with their progress, and, no producer coming back, they
    # fail with "producer lost" once the lease runs out.
    proc, root_id, child_id = start_producer_script(server.target)
    try:
        time.sleep(WINDOW + 0.5)  # the child's progress is past its window
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        proc.kill()
        proc.wait(10)
    restarted_at = time.monotonic()
    server = restart(server)
    try:
        assert re.search(r"journal: recovered .*\b2 running", server.output()), server.output()
        with TaskManagerClient(server.target) as client:
            child = client.get_status(child_id)
            assert client.get_status(root_id).state is TaskState.RUNNING
            assert child.state is TaskState.RUNNING and child.progress_completed == 3
            # The fresh lease (5 s) starts at recovery, not at the kill.
            assert time.monotonic() - restarted_at < 5
            # The child first: a finished child is kept only in its parent's record.
            for task_id in (child_id, root_id):
                final = client.wait(task_id, timeout=30)
                assert final.state is TaskState.FAILED and "producer lost" in final.error
            assert time.monotonic() - restarted_at >= 5
    finally:
        server.kill()


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(
        r"```python\n(from tm_client import Producer, TaskAbortedError\n.*?)```", text, re.S
    )
    assert match, "the README's producer example is gone"
    return match.group(1)


def test_the_readme_producer_example_survives_a_restart(server: ServerProcess) -> None:
    uploaded: list[str] = []
    restarted = threading.Event()
    servers = [server]

    def upload(table: str) -> None:
        uploaded.append(table)
        if table == "orders":
            # tm goes down in the middle of the backup, and comes back (a SIGKILL).
            servers.append(restart(servers[-1]))
            restarted.set()
        time.sleep(0.3)

    code = _readme_example().replace("127.0.0.1:50051", server.target)
    scope: dict[str, object] = {"upload": upload}
    try:
        exec(compile(code, "README.md", "exec"), scope)  # the example, as a user runs it
        assert restarted.is_set() and uploaded == ["users", "orders", "events"]
        with TaskManagerClient(servers[-1].target) as client:
            [root] = [t for t in client.list_tasks("backup") if t.scope == "keyspace"]
            status = client.get_status(root.task_id)
            assert status.state is TaskState.DONE
            tree = client.get_status_recursive(root.task_id)
            assert [s.table for s in tree[1:]] == ["users", "orders", "events"]
            assert all(s.state is TaskState.DONE for s in tree)
    finally:
        servers[-1].kill()


def _one_task(server: ServerProcess) -> str:
    with Producer(server.target, module="backup", session=False) as producer:
        task = producer.create_task("backup", user_task=True)
        task.progress(1, 2)
        task.finish()
        return str(task.id)


def _log_file(server: ServerProcess) -> Path:
    return sorted(journal_of(server).glob("log-*"))[-1]


def test_a_torn_last_record_is_dropped_and_logged(server: ServerProcess) -> None:
    task_id = _one_task(server)
    server.kill(keep=True)
    with _log_file(server).open("ab") as f:
        f.write(b"#0badc0de 500\nt" + b"0" * 32 + b" [1,0,")  # a write the crash cut short
    server = server.restart(*ARGS)
    try:
        assert "dropped a torn last record" in server.output()
        with TaskManagerClient(server.target) as client:
            assert eventually(lambda: client.get_status(task_id).state is TaskState.DONE)
    finally:
        server.kill()


def _start_fails(*args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), sys.executable, "-m", "tm_server", "--address", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_damaged_journal_stops_the_server_with_one_clear_line(server: ServerProcess) -> None:
    _one_task(server)
    _one_task(server)
    server.kill(keep=True)
    log_file = _log_file(server)
    data = bytearray(log_file.read_bytes())
    first = len(frame(b""))  # the start's own write, an empty frame, comes first
    data[first + 12] ^= 0x01  # a bit flipped in the first record, with records after it
    log_file.write_bytes(bytes(data))
    try:
        result = _start_fails(*ARGS, "--data-dir", str(journal_of(server).parent))
        assert result.returncode == 1
        assert f"is damaged at byte {first}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        server.kill()


def test_a_damaged_length_is_not_taken_for_a_torn_end(server: ServerProcess) -> None:
    # A frame whose length points past the end of the file, with whole frames
    # after it, is damage: cutting the file there would throw those away.
    _one_task(server)
    _one_task(server)
    server.kill(keep=True)
    log_file = _log_file(server)
    data = log_file.read_bytes()
    header = data[: data.index(b"\n")]
    crc = header.split(b" ")[0]
    damaged = crc + b" " + str(len(data) * 10).encode() + data[len(header) :]
    log_file.write_bytes(damaged)
    try:
        result = _start_fails(*ARGS, "--data-dir", str(journal_of(server).parent))
        assert result.returncode == 1, result.stderr
        assert "is damaged at byte 0" in result.stderr
        assert "Traceback" not in result.stderr
        assert log_file.read_bytes() == damaged  # nothing cut off
    finally:
        server.kill()


def test_a_read_only_data_directory_stops_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "n1"
    data_dir.mkdir()
    if os.geteuid() == 0:
        # Root writes through permissions: run the server as nobody instead.
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        tmp_path.chmod(0o755)
        data_dir.chmod(0o755)
    else:
        user = []
        data_dir.chmod(0o555)
    try:
        result = _start_fails("--node", "n1", "--store", "none", "--data-dir", str(data_dir),
                              user=user)  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "Permission denied" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        data_dir.chmod(0o755)


def _small_files() -> None:
    # In the server's process: files may grow to 64 KiB, the way a full disk stops them.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))


def test_a_full_disk_at_start_stops_the_server_with_one_clear_line(
    server: ServerProcess,
) -> None:
    # Recovery used to give a traceback when it had something to write (an
    # expired root, a body failed) and, with nothing to write, to start and
    # refuse every change: the start's write now tells.
    with Producer(server.target, module="backup", session=False) as producer:
        producer.create_task("backup", user_task=True)  # running: nothing for recovery to write
    server.kill(keep=True)
    data_dir = journal_of(server).parent
    result = subprocess.run(
        [sys.executable, "-m", "tm_server", "--address", "127.0.0.1:0", "--http-address",
         "127.0.0.1:0", "--node", "n1", "--store", "none", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY)),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot write the journal" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was lost: with room again, the node starts with its task.
    server = server.restart(*ARGS)
    try:
        assert re.search(r"journal: recovered .*1 running", server.output()), server.output()
    finally:
        server.kill()


def test_a_server_whose_disk_is_full_still_stops_on_sigterm() -> None:
    # Its flusher holds the batch the disk refused: the shutdown tries it once
    # more, says what is lost, and exits; it used to wait for the disk forever.
    server = ServerProcess(*ARGS, preexec_fn=_small_files)
    try:
        producer = Producer(server.target, module="fill", session=False, outage_seconds=0)
        with pytest.raises(JournalUnavailableError):
            for _ in range(2000):
                producer.create_task("fill", user_task=True)
        producer.close()
        assert server.terminate(timeout=20, keep=True) == 0
        assert re.search(r"stopping with \d+ bytes of changes unwritten", server.output())
    finally:
        server.kill()


def test_a_full_disk_refuses_durable_calls_and_keeps_reads_working() -> None:
    server = ServerProcess(*ARGS, preexec_fn=_small_files)
    try:
        client = TaskManagerClient(server.target)
        producer = Producer(server.target, module="fill", session=False, outage_seconds=0)
        first = producer.create_task("fill", user_task=True)
        refused: TmError | None = None
        for _ in range(2000):
            try:
                producer.create_task("fill", user_task=True)
            except TmError as exc:
                refused = exc
                break
        assert isinstance(refused, JournalUnavailableError), refused
        assert "cannot be written" in str(refused)
        # Reads go on, and so does every durable call's refusal.
        assert client.get_status(first.id).state is TaskState.RUNNING
        assert client.list_tasks("fill")
        with pytest.raises(JournalUnavailableError):
            producer.create_task("fill")
        # The disk has room again: the next durable call goes through, by itself.
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # fmt: skip
        later = producer.create_task("fill", user_task=True)
        assert first.finish() is not None
        server.kill(keep=True)
        server = server.restart(*ARGS)
        with TaskManagerClient(server.target) as after:
            assert eventually(lambda: after.get_status(first.id).state is TaskState.DONE)
            assert after.get_status(later.id).state is TaskState.RUNNING
        producer.close()
        client.close()
    finally:
        server.kill()


def test_a_data_directory_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    path = tmp_path / "n1"
    path.write_text("not a directory")
    result = _start_fails("--node", "n1", "--store", "none", "--data-dir", str(path))
    assert result.returncode == 1
    assert f"cannot use the data directory {path}: it is a file, not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_start_waits_for_a_compaction_an_earlier_server_left_running(
    server: ServerProcess,
) -> None:
    # A compaction outlives a SIGKILLed server only if its parent-death signal
    # failed; the next server must then load what it leaves, not race it (it
    # once started from the logs, the compaction deleted them under it, and a
    # later compaction of its own dropped what they held).
    task_id = _one_task(server)
    server.kill(keep=True)
    folder = journal_of(server)
    held, release = threading.Event(), threading.Event()

    def compaction() -> None:
        with compaction_lock(folder):
            held.set()
            release.wait(10)
            compact(folder, 0, 1)

    thread = threading.Thread(target=compaction)
    thread.start()
    assert held.wait(10)
    journal = FileJournal(JournalConfig(folder))
    loading = threading.Thread(target=journal.load)
    loading.start()
    loading.join(0.5)
    assert loading.is_alive()  # waiting for the lock
    release.set()
    loading.join(10)
    thread.join(10)
    assert sorted(p.name for p in folder.glob("*-*")) == ["snap-00000001"]
    server = server.restart(*ARGS)
    try:
        assert "waited for a compaction an earlier server left running" not in server.output()
        with TaskManagerClient(server.target) as client:
            assert eventually(lambda: client.get_status(task_id).state is TaskState.DONE)
    finally:
        server.kill()


def test_a_compaction_dies_with_its_server() -> None:
    # The compaction process asks the kernel to kill it when its parent ends.
    child = (
        "import os, sys, time\n"
        "from tm_server.journal_files import die_with_parent\n"
        "die_with_parent(os.getppid())\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        proc.kill()
        proc.wait(10)
        assert eventually(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid))
    finally:
        proc.kill()


def _zombie(pid: int) -> bool:
    # A child killed but not yet reaped by init is gone but for its entry.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def test_a_client_sees_tm_back_within_seconds_of_a_long_outage(server: ServerProcess) -> None:
    # gRPC's reconnect backoff grows to 120 s: after 17 s of calls failing (as
    # a producer's retries fail) its next try came ~8 s after tm was back.
    # retry_seconds=0: each call fails at once, so the test sees when tm is back.
    client = TaskManagerClient(server.target, retry_seconds=0)
    try:
        client.list_modules()
        server.kill(keep=True)
        down = time.monotonic()
        while time.monotonic() - down < 17:
            with contextlib.suppress(UnavailableError):
                client.list_modules()
            time.sleep(0.2)
        server = server.restart(*ARGS)
        back = time.monotonic()
        while True:
            try:
                client.list_modules()
                break
            except UnavailableError:
                time.sleep(0.05)
        assert time.monotonic() - back < 4
    finally:
        client.close()
        server.kill()
