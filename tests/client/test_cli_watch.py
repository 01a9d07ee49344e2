"""``tm tasks watch``, the list filters and the progress shown by ``wait``/``status``: the real CLI.

Each runs ``tm`` as a subprocess against a live server: JSON lines and plain
lines through a pipe, the live table and bars on a terminal (a pty).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import signal
import struct
import subprocess
import termios
import threading
import time
from argparse import Namespace
from typing import Any, TextIO

import pytest

from tm_client import CursorExpiredError, Producer, TaskManagerClient, TestServiceClient
from tm_client.cli_connection import message

from ..process import TM, run_tm
from ..server_fixture import ServerThread

pytestmark = pytest.mark.timeout(60)

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots"


class Lines:
    """A ``tm`` subprocess whose stdout is read a line at a time, with a deadline."""

    def __init__(self, target: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TM, "--target", target, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float = 15) -> str:
        line = self._lines.get(timeout=timeout)
        assert line is not None, "tm ended: " + (self.stop() or "")
        return line.rstrip("\n")

    def json_until(self, done: Any) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        while not docs or not done(docs[-1]):
            docs.append(json.loads(self.next()))
        return docs

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signals tm, waits for it; returns its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(15)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def test_watch_json_lines_resume_from_a_line_s_cursor(
    server: ServerThread, client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(600)
    a = testsvc.create_task(keyspace="ks1")
    watch = Lines(server.target, "tasks", "watch", "test", "--format", "json")
    try:
        existing, complete = watch.json_until(lambda d: d["type"] == "snapshot_complete")
        assert existing["type"] == "existing" and existing["cursor"] == ""
        assert existing["task"]["task_id"] == str(a) and existing["task"]["keyspace"] == "ks1"
        assert existing["task"]["module"] == "test" and "status" not in existing
        assert complete["cursor"]
        testsvc.finish_task(a)
        (finished,) = watch.json_until(lambda d: d["task"]["task_id"] == str(a))
        assert finished["type"] == "finished" and finished["task"]["state"] == "done"
        assert finished["task"]["end_time"] and finished["cursor"]
    finally:
        stderr = watch.stop()
    # Ctrl-C is how a watch ends: the CLI's interrupt convention, and no traceback.
    assert watch.proc.returncode == 130 and stderr == "tm: interrupted\n"

    b = testsvc.create_task()  # while nobody watched
    again = Lines(
        server.target, "tasks", "watch", "test", "--cursor", finished["cursor"], "--format", "json"
    )
    try:
        (created,) = again.json_until(lambda d: d["type"] != "snapshot_complete")
        # Right after the line the cursor came from: nothing again, nothing missed.
        assert created["type"] == "created" and created["task"]["task_id"] == str(b)
    finally:
        stderr = again.stop(signal.SIGTERM)
    assert again.proc.returncode == 143 and "Traceback" not in stderr


def test_watch_full_status_in_json(server: ServerThread, testsvc: TestServiceClient) -> None:
    a = testsvc.create_task()
    watch = Lines(server.target, "tasks", "watch", "--full-status", "--format", "json")
    try:
        (existing,) = watch.json_until(lambda d: d["type"] == "existing")
        assert existing["status"]["id"] == str(a) and "progress_rate" in existing["status"]
    finally:
        watch.stop()


def test_watch_plain_lines_off_a_terminal(
    server: ServerThread, client: TaskManagerClient, testsvc: TestServiceClient
) -> None:
    client.set_ttl(600)
    a = testsvc.create_task()
    watch = Lines(server.target, "tasks", "watch", "test", "--state", "running")
    try:
        assert watch.next() == f"existing {a} test test running"
        assert watch.next() == "snapshot_complete"
        testsvc.finish_task(a)
        assert watch.next() == f"finished {a} test test done"
    finally:
        stderr = watch.stop()
    assert "\x1b[" not in stderr and "Traceback" not in stderr


def test_watch_usage_and_errors_are_one_line(server: ServerThread) -> None:
    result = run_tm(server.target, "tasks", "watch", "--snapshot", "--cursor", "x")
    assert result.returncode == 2 and result.stderr.startswith("tm: --snapshot does not go")
    result = run_tm(server.target, "tasks", "watch", "--cursor", "garbage")
    assert result.returncode == 1 and "cursor" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    result = run_tm(server.target, "tasks", "watch", "nope")
    assert result.returncode == 1 and result.stderr == "tm: module nope not found\n"
    result = run_tm(server.target, "tasks", "watch", "--state", "sleeping")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    expired = CursorExpiredError("the watch cursor has expired", reason="CURSOR_EXPIRED")
    assert message(expired, Namespace()).endswith("(watch again with a snapshot: without --cursor)")


def test_list_filters_by_state_and_type(server: ServerThread, client: TaskManagerClient) -> None:
    client.set_ttl(600)
    with Producer(server.target, module="jobs") as producer:
        repair = producer.create_task("repair")
        backup = producer.create_task("backup")
        done = producer.create_task("repair")
        done.finish()
        result = run_tm(
            server.target, "tasks", "list", "jobs", "--state", "running", "--type", "repair",
            "--format", "json",
        )  # fmt: skip
        assert [e["task_id"] for e in json.loads(result.stdout)] == [str(repair.id)]
        result = run_tm(
            server.target, "tasks", "list", "jobs", "--state", "done", "--state", "running",
            "--type", "repair", "--type", "backup",
        )  # fmt: skip
        rows = result.stdout.splitlines()[1:]
        assert {r.split()[0] for r in rows} == {str(repair.id), str(backup.id), str(done.id)}
        repair.finish()
        backup.finish()


class Terminal:
    """``tm`` on a pty: what it drew so far, and signals."""

    def __init__(self, target: str, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update({"TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"})
        self.proc = subprocess.Popen(
            [TM, "--target", target, *args], stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def screen(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def seen(self, *texts: str, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in self.screen for t in texts):
                return True
            time.sleep(0.02)
        return False

    def spins(self, timeout: float = 10) -> bool:
        """Whether a spinner turns: new frames of it drawn from now on, without updates."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len({c for c in SPINNER if c in self.screen[start:]}) >= 2:
                return True
            time.sleep(0.05)
        return False

    def end(self, sig: int | None = signal.SIGINT) -> int:
        """Signals tm (unless ``sig`` is None), waits for it; its exit status. Idempotent."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            self.proc.kill()
            self._reader.join(5)
            if self._master >= 0:
                os.close(self._master)
                self._master = -1


def test_watch_on_a_terminal_draws_a_live_table(
    server: ServerThread, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    with Producer(server.target, module="copy") as producer:
        sized = producer.create_task("copy", total=10, progress_units="files")
        unsized = producer.create_task("scan", progress_units="dirs")
        sized.progress(2)
        term = Terminal(server.target, "tasks", "watch")
        try:
            assert term.seen(str(sized.id), str(unsized.id), "20%", "2/10 files", "━")
            assert term.seen("2 tasks: 2 running")
            unsized.progress(3)
            assert term.seen("3 dirs")
            assert term.spins()  # a spinner that turns, not a frozen bar
            sized.progress(7)
            assert term.seen("70%", "7/10 files")
            sized.finish()
            assert term.seen("1 done")
        finally:
            code = term.end()
        unsized.finish()
    assert code == 130
    assert "\x1b[33m" in term.screen  # running, in yellow
    assert term.screen.rstrip().endswith("tm: interrupted")
    assert "Traceback" not in term.screen


def test_wait_on_a_terminal_shows_percent_elapsed_and_a_spinner_without_a_total(
    server: ServerThread,
) -> None:
    with Producer(server.target, module="copy") as producer:
        unsized = producer.create_task("scan", progress_units="dirs")
        term = Terminal(server.target, "tasks", "wait", str(unsized.id))
        try:
            assert term.seen("running", "elapsed")
            unsized.progress(4)
            assert term.seen("4 dirs")
            assert term.spins()  # between updates too
            unsized.finish()
            assert term.end(None) == 0
        finally:
            term.end(None)
        assert "state: done" in term.screen

        sized = producer.create_task("copy", total=8, progress_units="files")
        term = Terminal(server.target, "tasks", "wait", str(sized.id))
        try:
            sized.progress(2)
            assert term.seen("25%", "2/8 files")
            time.sleep(0.3)
            sized.progress(6)
            assert term.seen("75%", "6/8 files", "files/s", "ETA")
            sized.progress(8)
            sized.finish()
            assert term.end(None) == 0
        finally:
            term.end(None)
        assert "100%" in term.screen


def test_status_shows_the_progress_line_on_a_terminal_only(
    server: ServerThread, client: TaskManagerClient
) -> None:
    with Producer(server.target, module="copy") as producer:
        task = producer.create_task("copy", total=40, progress_units="files")
        task.progress(10)
        time.sleep(0.3)
        task.progress(20)
        plain = run_tm(server.target, "tasks", "status", str(task.id))
        fields = dict(line.split(": ", 1) for line in plain.stdout.splitlines() if ": " in line)
        assert float(fields["progress_rate"]) > 0 and fields["estimated_end_time"]
        assert fields["last_progress_time"] and "progress: " not in plain.stdout
        doc = json.loads(run_tm(server.target, "tasks", "status", str(task.id), "--format",
                                "json").stdout)  # fmt: skip
        assert doc["progress_rate"] > 0 and doc["estimated_end_time"].endswith("Z")
        term = Terminal(server.target, "tasks", "status", str(task.id))
        try:
            assert term.end(None) == 0
        finally:
            term.end(None)
        line = next(x for x in term.screen.splitlines() if x.startswith("progress:"))
        assert "50%" in line and "20/40 files" in line and "files/s" in line
        assert "elapsed" in line and "ETA" in line and "━" in line
        task.finish()
