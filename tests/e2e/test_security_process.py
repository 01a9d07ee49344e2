"""Security with real ``tm-server`` processes: safe defaults, SIGHUP, restarts, a TLS cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.security.tokens import hash_token

from ..certs import make_certs
from ..process import ServerProcess
from .cluster_fixture import FAST, eventually


def _start_fails(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm_server", "--journal", "off", "--store", "none", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def tokens_file(path: Path, entries: dict[str, tuple[str, list[str]]]) -> Path:
    """Writes a tokens file: principal -> (token, roles)."""
    text = ""
    for name, (token, roles) in entries.items():
        quoted = ", ".join(f'"{r}"' for r in roles)
        text += f'[[principal]]\nname = "{name}"\nroles = [{quoted}]\n'
        text += f'tokens = ["{hash_token(token)}"]\n\n'
    path.write_text(text)
    return path


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def code_of(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def test_a_non_loopback_address_needs_tls_and_caller_checks_or_insecure(tmp_path: Path) -> None:
    done = _start_fails("--address", "0.0.0.0:0", "--data-dir", str(tmp_path / "a"))
    assert done.returncode == 1
    assert "refusing to serve 0.0.0.0:0 (not loopback) without TLS and caller checks" in (
        done.stderr
    )
    assert "--insecure" in done.stderr and "Traceback" not in done.stderr
    certs = make_certs(tmp_path / "pki")
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    done = _start_fails("--address", "0.0.0.0:0", *tls, "--data-dir", str(tmp_path / "b"))
    assert done.returncode == 1 and "without caller checks" in done.stderr
    # Asked for by name, it serves, with a warning.
    server = ServerProcess(
        "--address", "0.0.0.0:0", "--insecure", "--journal", "off", "--store", "none"
    )
    try:
        assert server.port and "WARNING" in server.output() and "--insecure" in server.output()
    finally:
        server.kill()
    # The test service off loopback needs caller checks even then.
    done = _start_fails("--address", "0.0.0.0:0", "--insecure", "--enable-test-service",
                        "--data-dir", str(tmp_path / "c"))  # fmt: skip
    assert done.returncode == 1 and "the test service" in done.stderr
    # The HTTP side's address is checked the same way: it reaches the same tasks.
    done = _start_fails("--http-address", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1
    assert "refusing to serve 0.0.0.0:0 (not loopback) without TLS and caller checks" in (
        done.stderr
    )


def test_bad_security_files_stop_the_start_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.toml"
    bad.write_text('[[principal]]\nname = "x"\nroles = ["admin"]\n')
    done = _start_fails("--tokens", str(bad), "--data-dir", str(tmp_path / "a"))
    assert done.returncode == 1 and "unknown role 'admin'" in done.stderr
    assert "Traceback" not in done.stderr
    certs = make_certs(tmp_path / "pki")
    done = _start_fails("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.ca_key),
                        "--data-dir", str(tmp_path / "b"))  # fmt: skip
    assert done.returncode == 1 and "do not load together" in done.stderr
    done = _start_fails("--tls-cert", str(certs.server_cert), "--data-dir", str(tmp_path / "c"))
    assert done.returncode == 2 and "--tls-cert and --tls-key go together" in done.stderr


def test_sighup_reloads_the_tokens_file(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.toml", {"ops": ("old-token", ["operator"])})
    server = ServerProcess("--tokens", str(path), "--journal", "off", "--store", "none")
    try:
        with grpc.insecure_channel(server.target) as channel:
            tm: Any = pb_grpc.TaskManagerServiceStub(channel)
            list_modules = tm.ListModules
            assert (
                code_of(lambda: list_modules(pb.ListModulesRequest(), metadata=bearer("old-token")))
                == "OK"
            )
            # Same size, same mtime: the once-a-second check cannot see it; SIGHUP does.
            stat = path.stat()
            tokens_file(path, {"ops": ("new-token", ["operator"])})
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            time.sleep(1.5)
            assert (
                code_of(lambda: list_modules(pb.ListModulesRequest(), metadata=bearer("old-token")))
                == "OK"
            )
            server.proc.send_signal(signal.SIGHUP)
            eventually(
                lambda: code_of(lambda: list_modules(pb.ListModulesRequest(),
                                                     metadata=bearer("new-token"))) == "OK" or None,
                what="the new token",
            )  # fmt: skip
            assert (
                code_of(lambda: list_modules(pb.ListModulesRequest(), metadata=bearer("old-token")))
                == "UNAUTHENTICATED"
            )
        assert "tokens file" in server.output() and "reloaded" in server.output()
    finally:
        server.kill()


def test_owners_sessions_and_abort_reasons_survive_a_restart(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.toml", {
        "agent": ("agent-token", ["producer:backup"]),
        "other": ("other-token", ["producer:backup"]),
        "ops": ("ops-token", ["operator"]),
    })  # fmt: skip
    args = ("--tokens", str(path), "--store", "none")
    server = ServerProcess(*args)
    try:
        with grpc.insecure_channel(server.target) as channel:
            rep: Any = rpb_grpc.TaskReportingServiceStub(channel)
            tm: Any = pb_grpc.TaskManagerServiceStub(channel)
            rep.RegisterModule(
                rpb.RegisterModuleRequest(module="backup"), metadata=bearer("agent-token")
            )
            stream = rep.OpenSession(rpb.OpenSessionRequest(), metadata=bearer("agent-token"))
            session_id = next(stream).opened.session_id
            task_id = rep.CreateTask(
                rpb.CreateTaskRequest(module="backup", type="dump", start=True, abortable=True,
                                      session_id=session_id),
                metadata=bearer("agent-token"),
            ).status.id  # fmt: skip
            tm.AbortTask(pb.AbortTaskRequest(task_id=task_id, reason="moving racks"),
                         metadata=bearer("ops-token"))  # fmt: skip
            stream.cancel()
        server.terminate(keep=True)
        server = server.restart(*args)
        with grpc.insecure_channel(server.target) as channel:
            rep = rpb_grpc.TaskReportingServiceStub(channel)
            tm = pb_grpc.TaskManagerServiceStub(channel)
            status = tm.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id),
                                      metadata=bearer("ops-token")).status  # fmt: skip
            assert status.owner == "agent"
            assert (status.abort.reason, status.abort.principal) == ("moving racks", "ops")
            # Still the agent's: another producer cannot finish it or resume its session.
            finish = rpb.FinishTaskRequest(task_id=task_id)
            denied = code_of(lambda: rep.FinishTask(finish, metadata=bearer("other-token")))
            assert denied == "PERMISSION_DENIED"
            resume = rpb.OpenSessionRequest(session_id=session_id)
            assert (
                code_of(lambda: next(rep.OpenSession(resume, metadata=bearer("other-token"))))
                == "PERMISSION_DENIED"
            )
            # Its producer resumes and hears the abort again, reason and all.
            stream = rep.OpenSession(resume, metadata=bearer("agent-token"))
            assert next(stream).opened.resumed
            heard = next(stream).abort_requested
            assert (heard.task_id, heard.reason, heard.principal) == (
                task_id,
                "moving racks",
                "ops",
            )
            stream.cancel()
    finally:
        server.kill()


@pytest.mark.slow
def test_a_cluster_with_tls_and_tokens_calls_its_nodes_with_the_node_token(
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path / "pki")
    path = tokens_file(tmp_path / "t.toml", {
        "agent": ("agent-token", ["producer"]),
        "other": ("other-token", ["producer"]),
        "reader": ("reader-token", ["reader"]),
        "nodes": ("node-token", ["node"]),
    })  # fmt: skip
    (tmp_path / "node-token").write_text("node-token\n")
    store = f"sqlite://{tmp_path / 'cluster.db'}"
    common = ("--store", store, *FAST, "--tls-cert", str(certs.server_cert), "--tls-key",
              str(certs.server_key), "--tls-peer-ca", str(certs.ca), "--tokens", str(path),
              "--node-token-file", str(tmp_path / "node-token"))  # fmt: skip
    a = ServerProcess("--node", "a", *common)
    b = ServerProcess("--node", "b", *common)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        with (
            grpc.secure_channel(f"localhost:{a.port}", creds) as on_a,
            grpc.secure_channel(f"localhost:{b.port}", creds) as on_b,
        ):
            rep: Any = rpb_grpc.TaskReportingServiceStub(on_a)
            rep.RegisterModule(
                rpb.RegisterModuleRequest(module="m"), metadata=bearer("agent-token")
            )
            # A regular task held by a: b answers for it by asking a, as a node.
            task_id = rep.CreateTask(rpb.CreateTaskRequest(module="m", type="t", start=True),
                                     metadata=bearer("agent-token")).status.id  # fmt: skip
            tm_b: Any = pb_grpc.TaskManagerServiceStub(on_b)
            status = eventually(
                lambda: tm_b.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id),
                                           metadata=bearer("reader-token")).status,
                what="b answering for a's task",
            )  # fmt: skip
            assert status.node == "a" and status.owner == "agent"
            # A cluster task is its creator's too, on every node.
            cluster_id = rep.CreateTask(
                rpb.CreateTaskRequest(module="m", type="c", start=True, cluster=True),
                metadata=bearer("agent-token"),
            ).status.id
            rep_b: Any = rpb_grpc.TaskReportingServiceStub(on_b)
            finish = rpb.FinishTaskRequest(task_id=cluster_id)
            assert code_of(lambda: rep_b.FinishTask(finish, metadata=bearer("other-token"))) == (
                "PERMISSION_DENIED"
            )
            rep_b.FinishTask(finish, metadata=bearer("agent-token"))
            done = tm_b.GetTaskStatus(pb.GetTaskStatusRequest(task_id=cluster_id),
                                      metadata=bearer("reader-token")).status  # fmt: skip
            assert (done.state, done.owner) == (pb.TASK_STATE_DONE, "agent")
            # The node API itself refuses a reader: only nodes call it.
            from tm_client.pb import node_pb2 as npb
            from tm_client.pb import node_pb2_grpc as npb_grpc

            node_b: Any = npb_grpc.NodeServiceStub(on_b)
            assert code_of(lambda: node_b.GetLocalStatus(
                npb.GetLocalStatusRequest(task_id=task_id), metadata=bearer("reader-token"))
            ) == "PERMISSION_DENIED"  # fmt: skip
    finally:
        a.kill()
        b.kill()


def test_tm_token_makes_a_token_and_the_entry_that_lets_it_in(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(Path(sys.executable).parent / "tm-token"), "new", "night-shift", "operator"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    token, entry = made.stdout.split("\n", 1)
    assert token not in entry  # the file holds its hash only
    path = tmp_path / "t.toml"
    path.write_text(entry)
    server = ServerProcess("--tokens", str(path), "--journal", "off", "--store", "none")
    try:
        with grpc.insecure_channel(server.target) as channel:
            tm: Any = pb_grpc.TaskManagerServiceStub(channel)
            tm.SetTtl(pb.SetTtlRequest(ttl_seconds=7), metadata=bearer(token))
            assert tm.GetTtl(pb.GetTtlRequest(), metadata=bearer(token)).ttl_seconds == 7
    finally:
        server.kill()
