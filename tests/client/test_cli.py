"""The real ``tm`` CLI as a subprocess against a live server: every command, both formats."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tm_client import Credentials, Producer, TaskManagerClient, TestServiceClient
from tm_client.cli import ConnectionOptions, build_parser

from ..certs import make_certs
from ..process import TM, run_tm
from ..server_fixture import ServerThread

Cli = Callable[..., subprocess.CompletedProcess[str]]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    def call(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = run_tm(server.target, *args, timeout=timeout)
        no_traceback(result)
        return result

    return call


@pytest.fixture
def tree(client: TaskManagerClient, testsvc: TestServiceClient) -> Iterator[dict[str, UUID]]:
    client.set_ttl(600)
    root = testsvc.create_task(keyspace="ks1", table="t1")
    child = testsvc.create_task(parent_id=root, shard=1, keyspace="ks1", table="t2")
    failed = testsvc.create_task(parent_id=root, shard=2, entity="e")
    testsvc.finish_task(failed, "disk gone")
    other = testsvc.create_task(keyspace="ks2", shard=2)
    yield {"root": root, "child": child, "failed": failed, "other": other}


def test_modules(cli: Cli) -> None:
    result = cli("tasks", "modules")
    assert result.returncode == 0 and result.stdout == "test\n"
    result = cli("tasks", "modules", "--format", "json")
    assert json.loads(result.stdout) == ["test"]


def test_list(cli: Cli, tree: dict[str, UUID]) -> None:
    result = cli("tasks", "list", "test")
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "task_id", "type", "kind", "scope", "state", "sequence_number", "keyspace", "table",
        "entity", "shard", "creation_time", "start_time", "end_time",
    ]  # fmt: skip
    assert {row.split()[0] for row in rows} == {str(tree["root"]), str(tree["other"])}
    assert all(" running " in row for row in rows)

    result = cli("tasks", "list", "test", "--internal", "--keyspace", "ks1", "--format", "json")
    entries = json.loads(result.stdout)
    assert {e["task_id"] for e in entries} == {str(tree["root"]), str(tree["child"])}
    assert {e["table"] for e in entries} == {"t1", "t2"}
    result = cli("tasks", "list", "test", "--internal", "-t", "t2", "--format", "json")
    assert [e["task_id"] for e in json.loads(result.stdout)] == [str(tree["child"])]

    result = cli("tasks", "list", "test", "--interval", "0", "--iterations", "1")
    assert result.returncode == 0 and len(result.stdout.split("\n\n")) == 2
    result = cli("tasks", "list", "test", "--interval", "0", "-i", "2", "--format", "json")
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(len(json.loads(line)) == 2 for line in lines)

    result = cli("tasks", "list", "nope")
    assert result.returncode == 1 and result.stderr == "tm: module nope not found\n"


def test_status(cli: Cli, tree: dict[str, UUID]) -> None:
    result = cli("tasks", "status", str(tree["root"]))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    assert [line.split(":")[0] for line in lines[:6]] == [
        "id", "type", "kind", "scope", "state", "is_abortable",
    ]  # fmt: skip
    assert fields["state"] == "running" and fields["parent_id"] == "none"
    assert fields["keyspace"] == "ks1" and fields["is_abortable"] == "false"
    assert "end_time: " in result.stdout.replace("end_time: \n", "end_time: ")
    assert fields["children_ids"] == (
        f"[{{task_id: {tree['child']}, node: node-a }}, "
        f"{{task_id: {tree['failed']}, node: node-a }}]"
    )
    result = cli("tasks", "status", str(tree["child"]), "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["parent_id"] == str(tree["root"]) and doc["internal"] is True
    assert doc["end_time"] is None and doc["shard"] == 1

    result = cli("tasks", "status", "not-a-uuid")
    assert result.returncode == 1
    assert result.stderr == "tm: invalid task_id: not a valid UUID: 'not-a-uuid'\n"
    result = cli("tasks", "status", "01a209fe-56c6-7e17-8547-b3cdde076deb")
    assert result.returncode == 1 and "not found" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_tree(cli: Cli, tree: dict[str, UUID]) -> None:
    result = cli("tasks", "tree", str(tree["root"]))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(tree["root"])) and "running" in lines[0]
    assert lines[1].startswith("├── " + str(tree["child"]))
    assert lines[2].startswith("└── " + str(tree["failed"])) and "error: disk gone" in lines[2]
    result = cli("tasks", "tree", str(tree["root"]), "--format", "json")
    ids = [s["id"] for s in json.loads(result.stdout)]
    assert ids == [str(tree["root"]), str(tree["child"]), str(tree["failed"])]

    # Without an id: every non-internal task's tree.
    result = cli("tasks", "tree", "--format", "json")
    ids = [s["id"] for s in json.loads(result.stdout)]
    assert set(ids) == {str(t) for t in tree.values()}
    result = cli("tasks", "tree")
    assert result.returncode == 0 and len(result.stdout.split("\n\n")) == 2


def test_wait_exit_codes_and_formats(
    server: ServerThread,
    cli: Cli,
    testsvc: TestServiceClient,
    client: TaskManagerClient,
) -> None:
    client.set_ttl(600)
    done = testsvc.create_task()
    threading.Timer(0.3, testsvc.finish_task, args=(done,)).start()
    result = cli("tasks", "wait", str(done))
    assert result.returncode == 0 and "state: done" in result.stdout

    failed = testsvc.create_task()
    threading.Timer(0.3, testsvc.finish_task, args=(failed, "boom")).start()
    result = cli("tasks", "wait", str(failed), "--quiet")
    assert result.returncode == 123 and result.stdout == "" and result.stderr == ""

    running = testsvc.create_task()
    result = cli("tasks", "wait", str(running), "--timeout", "0.3")
    assert result.returncode == 124 and result.stderr == "Operation timed out\n"
    result = cli("tasks", "wait", str(running), "--timeout", "0.3", "-q")
    assert result.returncode == 124 and result.stderr == ""
    result = cli("tasks", "wait", "01a209fe-56c6-7e17-8547-b3cdde076deb")
    assert result.returncode == 125 and "not found" in result.stderr

    # JSON lines: the current status at once, then every change, the last one final.
    proc = subprocess.Popen(
        [TM, "--target", server.target, "tasks", "wait", str(running), "--format", "json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["state"] == "running"
    testsvc.finish_task(running)
    rest = [json.loads(line) for line in proc.stdout.read().splitlines()]
    assert proc.wait(30) == 0
    assert rest[-1]["state"] == "done" and rest[-1]["id"] == str(running)


def test_abort(
    server: ServerThread,
    cli: Cli,
    tree: dict[str, UUID],
) -> None:
    # As nodetool: a message on stdout, and exit 0.
    result = cli("tasks", "abort", str(tree["root"]))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"Task with id {tree['root']} is not abortable\n"
    with Producer(server.target, module="jobs") as producer:
        task = producer.task("job", abortable=True)
        result = cli("tasks", "abort", str(task.id))
        assert result.returncode == 0 and result.stdout == ""
        assert task.wait_abort(10)
        other = producer.task("job", abortable=True)
        result = cli("tasks", "abort", str(other.id), "--format", "json")
        assert json.loads(result.stdout) == {"task_id": str(other.id), "abort_requested": True}
        task.finish()
        other.finish()


def test_ttls(cli: Cli) -> None:
    assert cli("tasks", "ttl").stdout == "Current ttl: 0\n"
    result = cli("tasks", "ttl", "--set", "30")
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(cli("tasks", "ttl", "--format", "json").stdout) == {"ttl": 30}
    assert json.loads(cli("tasks", "ttl", "--set", "40", "--format", "json").stdout) == {
        "ttl": 40, "previous": 30,
    }  # fmt: skip
    assert cli("tasks", "user-ttl").stdout == "Current user ttl: 3600\n"
    assert json.loads(cli("tasks", "user-ttl", "--set", "5", "--format", "json").stdout) == {
        "user_ttl": 5, "previous": 3600,
    }  # fmt: skip
    result = cli("tasks", "ttl", "--set", "-1")
    assert result.returncode == 1 and "must not be negative" in result.stderr


def test_drain(
    cli: Cli,
    tree: dict[str, UUID],
    testsvc: TestServiceClient,
    server: ServerThread,
) -> None:
    testsvc.finish_task(tree["other"])
    result = cli("tasks", "drain", "--module", "test", "--format", "json")
    assert json.loads(result.stdout) == {"drained": {"test": 1}}
    with Producer(server.target, module="jobs") as producer:
        producer.task("job").finish()
    result = cli("tasks", "drain")
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(cli("tasks", "drain", "--format", "json").stdout) == {
        "drained": {"jobs": 0, "test": 0}
    }
    result = cli("tasks", "drain", "--module", "nope")
    assert result.returncode == 1 and result.stderr == "tm: module nope not found\n"


def test_unreachable_server_is_one_line_not_a_traceback() -> None:
    for args in (["tasks", "modules"], ["tasks", "status", "x"]):
        result = run_tm("127.0.0.1:1", *args)
        no_traceback(result)
        assert result.returncode == 1
        assert result.stderr.startswith("tm: cannot reach the tm server at 127.0.0.1:1")
        assert len(result.stderr.splitlines()) == 1
    result = run_tm("127.0.0.1:1", "tasks", "wait", "x")
    assert result.returncode == 125
    result = subprocess.run([TM, "tasks", "bogus"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_wait_on_a_terminal_shows_a_live_progress_bar(server: ServerThread) -> None:
    with Producer(server.target, module="copy") as producer:
        task = producer.task("copy", progress_units="files", total=10)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        proc = subprocess.Popen(
            [TM, "--target", server.target, "tasks", "wait", str(task.id)],
            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        chunks: list[bytes] = []

        def read() -> None:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=read)
        reader.start()

        def seen(text: str) -> bool:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if text in b"".join(chunks).decode(errors="replace"):
                    return True
                time.sleep(0.02)
            return False

        try:
            assert seen("0/10 files")
            task.progress(3)
            assert seen("3/10 files")
            task.progress(7)
            assert seen("7/10 files")
            task.progress(10)
            task.finish()
            assert proc.wait(15) == 0
        finally:
            proc.kill()
            reader.join(5)
            os.close(master)
        screen = b"".join(chunks).decode(errors="replace")
        assert "running" in screen and "━" in screen  # the bar itself
        assert "\x1b[" in screen  # drawn with terminal control codes
        after_bar = screen[screen.rindex("10/10 files") :]
        assert "state: done" in after_bar  # then the final status


def run_on_pty(target: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs ``tm`` on a terminal (a pty); returns what it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    full_env.update({"TERM": "xterm-256color", "COLUMNS": "200", **(env or {})})
    proc = subprocess.Popen(
        [TM, "--target", target, *args], stdin=slave, stdout=slave, stderr=slave, env=full_env
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(30) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_host_and_port_after_the_verb_and_help_on_help_only(server: ServerThread) -> None:
    host, port = server.target.rsplit(":", 1)
    for args in (
        ["tasks", "modules", "-h", host, "-p", port],
        ["tasks", "modules", "--host", host, "--port", port],
        ["-h", host, "-p", port, "tasks", "modules"],
        ["-p", "1", "tasks", "modules", "-p", port, "-h", host],  # after the verb wins
    ):
        result = subprocess.run([TM, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout == "test\n", (args, result.stderr)
    for args in (["--help"], ["tasks", "--help"], ["tasks", "list", "--help"]):
        result = subprocess.run([TM, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.startswith("usage: tm"), args
    assert "-h HOST" in result.stdout or "--host HOST" in result.stdout


def test_version() -> None:
    result = subprocess.run([TM, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "tm 0.1.0\n"


def test_colours_on_a_terminal_and_no_color(server: ServerThread, tree: dict[str, UUID]) -> None:
    coloured = run_on_pty(server.target, "tasks", "list", "test")
    assert "\x1b[33m" in coloured  # running, in yellow
    plain = run_on_pty(server.target, "tasks", "list", "test", env={"NO_COLOR": "1"})
    assert "running" in plain
    assert not any(f"\x1b[{c}" in plain for c in ("30", "31", "32", "33", "34", "35", "36", "9"))


def test_the_tree_on_a_terminal_dims_only_the_ids(
    server: ServerThread, tree: dict[str, UUID]
) -> None:
    screen = run_on_pty(server.target, "tasks", "tree", str(tree["root"]))
    root = str(tree["root"])
    start = screen.index(root)
    assert screen[start - 4 : start] == "\x1b[2m"  # the id is dim...
    after = screen[start + len(root) :]
    assert after.startswith("\x1b[0m")  # ...and the dimming ends with it
    label = after[: after.index("\n")]
    assert "test/test" in label and "\x1b[2m" not in label.split("test/test")[0][4:]


def options(*argv: str, env: dict[str, str] | None = None) -> ConnectionOptions:
    return ConnectionOptions.from_args(build_parser().parse_args(argv), env or {})


def test_credential_flags_default_to_the_environment_and_win_over_it(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    cert, key = certs.client("ops")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    modules = ("tasks", "modules")
    assert options(*modules) == ConnectionOptions("127.0.0.1:50051", Credentials())
    env = {"TM_TOKEN": "from-env", "TM_TLS_CA": str(certs.ca), "TM_TLS_SERVER_NAME": "n1"}
    assert options(*modules, env=env).credentials == Credentials(
        token="from-env", ca=certs.ca, server_name="n1"
    )
    # Each flag given replaces its variable; the others stand.
    got = options(
        "--token-file", str(token_file), "--tls-server-name", "n2", *modules, env=env
    ).credentials
    assert got == Credentials(token="from-file", ca=certs.ca, server_name="n2")
    # Flags after the verb too, and they win over the same flags before it.
    got = options(
        "--token", "before", *modules, "--token", "after",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(certs.other_ca),
        env=env,
    ).credentials  # fmt: skip
    assert got == Credentials(
        token="after", ca=certs.other_ca, cert=cert, key=key, server_name="n1"
    )
    assert options("--tls", *modules).credentials == Credentials(tls=True)
    assert options(*modules, "--tls").credentials == Credentials(tls=True)
    assert options(*modules, env={"TM_TLS": "1"}).credentials == Credentials(tls=True)
    # A token flag stands even where the environment's token file cannot be read.
    missing = {"TM_TOKEN_FILE": str(tmp_path / "missing")}
    assert options("--token", "t", *modules, env=missing).credentials.token == "t"
    with pytest.raises(ValueError, match="cannot read the token file"):
        options(*modules, env=missing)
    with pytest.raises(ValueError, match="--token or --token-file, not both"):
        options("--token", "t", *modules, "--token-file", str(token_file))
    # The whole setup is checked up front, not at the first call.
    with pytest.raises(ValueError, match="needs the TLS client key"):
        options("--tls-cert", str(cert), *modules)


def test_abort_takes_a_reason() -> None:
    args = build_parser().parse_args(["tasks", "abort", "x", "--reason", "disk swap"])
    assert args.reason == "disk swap"
    assert build_parser().parse_args(["tasks", "abort", "x"]).reason == ""


def test_abort_with_a_reason_reaches_the_producer_s_task(server: ServerThread, cli: Cli) -> None:
    with Producer(server.target, module="jobs") as producer:
        task = producer.task("job", abortable=True)
        result = cli("tasks", "abort", str(task.id), "--reason", "maintenance")
        assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
        assert task.wait_abort(10)
        task.finish()
