"""Access control against a real server: tokens, roles, owners, TLS, mTLS, audit and quotas."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tm_client.pb import node_pb2 as npb
from tm_client.pb import node_pb2_grpc as npb_grpc
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_manager_test_pb2 as tpb
from tm_client.pb import task_manager_test_pb2_grpc as tpb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.core.quotas import TaskQuotas
from tm_server.security.tls import TlsConfig
from tm_server.security.tokens import hash_token
from tm_server.service.access import ACCESS
from tm_server.service.auth import StreamQuotas

from ..certs import Certs, make_certs
from ..error_info import metadata_of, reason_of
from ..server_fixture import ServerThread

OK = "OK"
U, D, NO = "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_OWNER"

# Callers of the matrix: their tokens file entries.
PRINCIPALS: dict[str, list[str]] = {
    "reader": ["reader"],
    "repairer": ["producer:repair"],  # a producer of another module
    "producer": ["producer:backup"],
    "peer": ["producer:backup"],  # another producer of the same module
    "operator": ["operator"],
    "tester": ["test"],
    "node": ["node"],
}
CALLERS = ["none", "reader", "repairer", "producer", "peer", "operator"]


def token_of(name: str) -> str:
    return f"token-of-{name}"


def write_tokens(path: Path, principals: dict[str, list[str]]) -> None:
    entries = []
    for name, roles in principals.items():
        quoted = ", ".join(f'"{r}"' for r in roles)
        entries.append(
            f'[[principal]]\nname = "{name}"\nroles = [{quoted}]\n'
            f'tokens = ["{hash_token(token_of(name))}"]\n'
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(entries))
    tmp.replace(path)  # whole or not at all: the server may read it any moment


def md(caller: str) -> tuple[tuple[str, str], ...]:
    return () if caller == "none" else (("authorization", f"Bearer {token_of(caller)}"),)


def stub(cls: Any, channel: grpc.Channel) -> Any:
    """A stub, typed loosely: the calls below pass metadata and read streams freely."""
    return cls(channel)


def outcome(call: Callable[[], Any]) -> str:
    """OK, or the reason of the error (the code where the status has no ErrorInfo)."""
    try:
        call()
    except grpc.RpcError as exc:
        return reason_of(exc) or exc.code().name
    return OK


def details(exc: Any) -> str:
    return str(exc.details())


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.tm = stub(pb_grpc.TaskManagerServiceStub, channel)
        self.rep = stub(rpb_grpc.TaskReportingServiceStub, channel)
        self.node = stub(npb_grpc.NodeServiceStub, channel)
        self.test = stub(tpb_grpc.TaskManagerTestServiceStub, channel)
        self.health = stub(health_pb2_grpc.HealthStub, channel)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    write_tokens(path, PRINCIPALS)
    return path


@pytest.fixture
def secured(tokens_file: Path) -> Iterator[ServerThread]:
    thread = ServerThread(tokens=tokens_file, task_ttl=60).start()
    yield thread
    thread.stop()


@pytest.fixture
def stubs(secured: ServerThread) -> Iterator[Stubs]:
    channel = grpc.insecure_channel(secured.target)
    yield Stubs(channel)
    channel.close()


class Targets:
    """Fresh things for each call to touch, made by their rightful owners."""

    def __init__(self, s: Stubs) -> None:
        self.s = s
        s.rep.RegisterModule(rpb.RegisterModuleRequest(module="backup"), metadata=md("producer"))

    def task(self, *, start: bool = True, finished: bool = False) -> str:
        reply = self.s.rep.CreateTask(
            rpb.CreateTaskRequest(module="backup", type="dump", start=start, abortable=True),
            metadata=md("producer"),
        )
        task_id = str(reply.status.id)
        if finished:
            self.s.rep.FinishTask(rpb.FinishTaskRequest(task_id=task_id), metadata=md("producer"))
        return task_id

    def session(self) -> str:
        call = self.s.rep.OpenSession(rpb.OpenSessionRequest(), metadata=md("producer"))
        first = next(call)
        self._open = call  # kept open: the session stays connected
        return str(first.opened.session_id)


def _stream(call: Any, first_only: bool = False) -> None:
    for _ in call:
        if first_only:
            call.cancel()
            return


def calls(t: Targets) -> dict[str, Callable[[str], Callable[[], Any]]]:
    """For each method, a call of it for a caller (targets made before the call)."""
    s = t.s

    def call(fn: Any, make: Callable[[], Any], stream: bool = False, first: bool = False):  # type: ignore[no-untyped-def]
        def for_caller(caller: str) -> Callable[[], Any]:
            request = make()

            def run() -> Any:
                result = fn(request, metadata=md(caller), timeout=10)
                if stream:
                    _stream(result, first)
                return result

            return run

        return for_caller

    TM, REP = "/tm.v1.TaskManagerService/", "/tm.v1.TaskReportingService/"
    return {
        TM + "ListModules": call(s.tm.ListModules, pb.ListModulesRequest),
        TM + "ListModuleTasks": call(
            s.tm.ListModuleTasks, lambda: pb.ListModuleTasksRequest(module="backup")
        ),
        TM + "GetTaskStatus": call(
            s.tm.GetTaskStatus, lambda: pb.GetTaskStatusRequest(task_id=t.task())
        ),
        TM + "AbortTask": call(s.tm.AbortTask, lambda: pb.AbortTaskRequest(task_id=t.task())),
        TM + "WaitTask": call(
            s.tm.WaitTask, lambda: pb.WaitTaskRequest(task_id=t.task(finished=True)), stream=True
        ),
        TM + "GetTaskStatusRecursive": call(
            s.tm.GetTaskStatusRecursive,
            lambda: pb.GetTaskStatusRecursiveRequest(task_id=t.task()),
            stream=True,
        ),
        TM + "GetTtl": call(s.tm.GetTtl, pb.GetTtlRequest),
        TM + "SetTtl": call(s.tm.SetTtl, lambda: pb.SetTtlRequest(ttl_seconds=0)),
        TM + "GetUserTtl": call(s.tm.GetUserTtl, pb.GetUserTtlRequest),
        TM + "SetUserTtl": call(
            s.tm.SetUserTtl, lambda: pb.SetUserTtlRequest(user_ttl_seconds=3600)
        ),
        TM + "DrainModuleTasks": call(
            s.tm.DrainModuleTasks, lambda: pb.DrainModuleTasksRequest(module="backup")
        ),
        TM + "ListTaskChildren": call(
            s.tm.ListTaskChildren, lambda: pb.ListTaskChildrenRequest(task_id=t.task())
        ),
        TM + "ListNodes": call(s.tm.ListNodes, pb.ListNodesRequest),
        TM + "WatchTasks": call(
            s.tm.WatchTasks, lambda: pb.WatchTasksRequest(module="backup"), stream=True, first=True
        ),
        TM + "WatchTasks/every-module": call(
            s.tm.WatchTasks, lambda: pb.WatchTasksRequest(), stream=True, first=True
        ),
        REP + "RegisterModule": call(
            s.rep.RegisterModule, lambda: rpb.RegisterModuleRequest(module="backup")
        ),
        REP + "UnregisterModule": call(
            s.rep.UnregisterModule, lambda: rpb.UnregisterModuleRequest(module="backup")
        ),
        REP + "CreateTask": call(
            s.rep.CreateTask,
            lambda: rpb.CreateTaskRequest(module="backup", type="dump", parent_id=t.task()),
        ),
        REP + "StartTask": call(
            s.rep.StartTask, lambda: rpb.StartTaskRequest(task_id=t.task(start=False))
        ),
        REP + "ReportProgress": call(
            s.rep.ReportProgress, lambda: rpb.ReportProgressRequest(task_id=t.task(), completed=1)
        ),
        REP + "FinishTask": call(s.rep.FinishTask, lambda: rpb.FinishTaskRequest(task_id=t.task())),
        REP + "OpenSession": call(
            s.rep.OpenSession, rpb.OpenSessionRequest, stream=True, first=True
        ),
        REP + "CloseSession": call(
            s.rep.CloseSession, lambda: rpb.CloseSessionRequest(session_id=t.session())
        ),
    }


# Method -> expected outcome for: none, reader, repairer, producer, peer, operator.
R = (U, OK, OK, OK, OK, OK)  # any reader, wherever its role applies
R_MOD = (U, OK, D, OK, OK, OK)  # a reader of the task's (or listed) module
OPS = (U, D, D, D, D, OK)
P_MOD = (U, D, D, OK, OK, OK)
P_OWN = (U, D, D, OK, NO, OK)  # the task's own producer (or an operator)
EXPECTED: dict[str, tuple[str, ...]] = {
    "ListModules": R,
    "ListModuleTasks": R_MOD,
    "GetTaskStatus": R_MOD,
    "AbortTask": OPS,
    "WaitTask": R_MOD,
    "GetTaskStatusRecursive": R_MOD,
    "GetTtl": R,
    "SetTtl": OPS,
    "GetUserTtl": R,
    "SetUserTtl": OPS,
    "DrainModuleTasks": OPS,
    "ListTaskChildren": R_MOD,
    "ListNodes": R,
    "WatchTasks": R_MOD,
    # Every module's changes: a reader of every module (not one limited to some).
    "every-module": (U, OK, D, D, D, OK),
    "RegisterModule": P_MOD,
    "UnregisterModule": OPS,
    "CreateTask": P_OWN,  # a child: under the caller's own parent only
    "StartTask": P_OWN,
    "ReportProgress": P_OWN,
    "FinishTask": P_OWN,
    "OpenSession": (U, D, OK, OK, OK, OK),
    "CloseSession": (U, D, NO, OK, NO, NO),  # a session is its opener's alone
}


def test_every_rpc_of_every_service_is_in_the_access_table() -> None:
    pool = descriptor_pool.Default()
    names = ["tm.v1.TaskManagerService", "tm.v1.TaskReportingService", "tm.v1.NodeService",
             "tm.v1.TaskManagerTestService", "grpc.health.v1.Health",
             "grpc.reflection.v1alpha.ServerReflection"]  # fmt: skip
    from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401  # its descriptor

    methods = {f"/{name}/{m.name}" for name in names for m in pool.FindServiceByName(name).methods}
    assert methods == set(ACCESS)


def test_every_rpc_answers_each_caller_as_the_table_says(stubs: Stubs) -> None:
    targets = Targets(stubs)
    table = calls(targets)
    assert {m.rsplit("/", 1)[1] for m in table} == set(EXPECTED)
    got: dict[str, tuple[str, ...]] = {}
    for method, make in table.items():
        got[method.rsplit("/", 1)[1]] = tuple(outcome(make(caller)) for caller in CALLERS)
        # RegisterModule again: UnregisterModule took the module away.
        targets = Targets(stubs)
        table = calls(targets)
    assert got == EXPECTED


def test_node_and_test_services_need_their_own_roles(stubs: Stubs) -> None:
    targets = Targets(stubs)
    task_id = targets.task()

    def node_call(caller: str) -> Callable[[], Any]:
        request = npb.GetLocalStatusRequest(task_id=task_id)
        return lambda: stubs.node.GetLocalStatus(request, metadata=md(caller), timeout=10)

    def test_call(caller: str) -> Callable[[], Any]:
        request = tpb.RegisterTestModuleRequest()
        return lambda: stubs.test.RegisterTestModule(request, metadata=md(caller), timeout=10)

    for caller in CALLERS:
        assert outcome(node_call(caller)) == (U if caller == "none" else D), caller
        assert outcome(test_call(caller)) == (U if caller == "none" else D), caller
    assert outcome(node_call("node")) == OK
    assert outcome(test_call("tester")) == OK
    assert outcome(node_call("tester")) == D and outcome(test_call("node")) == D


def test_health_and_reflection_are_open_to_anyone(stubs: Stubs, secured: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reply = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(secured.target) as channel:
        reflect = stub(reflection_pb2_grpc.ServerReflectionStub, channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert "tm.v1.TaskManagerService" in names


def test_a_refusal_names_the_role_needed_and_the_caller(stubs: Stubs) -> None:
    Targets(stubs)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.rep.RegisterModule(rpb.RegisterModuleRequest(module="backup"), metadata=md("reader"))
    exc: Any = caught.value
    assert exc.code() is grpc.StatusCode.PERMISSION_DENIED
    assert metadata_of(exc) == {"role": "producer", "module": "backup", "principal": "reader"}
    assert "needs the producer role on module 'backup'" in exc.details()
    with pytest.raises(grpc.RpcError) as caught:
        stubs.tm.ListModules(pb.ListModulesRequest(), metadata=[("authorization", "Basic x")])
    exc = caught.value
    assert exc.code() is grpc.StatusCode.UNAUTHENTICATED and "Bearer TOKEN" in exc.details()


def test_a_task_records_its_owner_and_only_its_owner_drives_it(stubs: Stubs) -> None:
    targets = Targets(stubs)
    task_id = targets.task()
    status = stubs.tm.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), metadata=md("peer"))
    assert status.status.owner == "producer"
    with pytest.raises(grpc.RpcError) as caught:
        stubs.rep.FinishTask(
            rpb.FinishTaskRequest(task_id=task_id, error="not mine"), metadata=md("peer")
        )
    assert reason_of(caught.value) == NO and "you are peer" in details(caught.value)
    # Untouched by the refusal: still running, and its owner finishes it.
    stubs.rep.FinishTask(rpb.FinishTaskRequest(task_id=task_id), metadata=md("producer"))
    final = stubs.tm.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), metadata=md("reader"))
    assert final.status.state == pb.TASK_STATE_DONE


def test_a_session_is_its_openers_alone(stubs: Stubs) -> None:
    targets = Targets(stubs)
    session_id = targets.session()
    # Another principal can neither resume it, nor create tasks in it, nor close it.
    for attempt in (
        lambda: _stream(
            stubs.rep.OpenSession(
                rpb.OpenSessionRequest(session_id=session_id), metadata=md("peer"), timeout=10
            )
        ),
        lambda: stubs.rep.CreateTask(
            rpb.CreateTaskRequest(module="backup", type="x", session_id=session_id),
            metadata=md("peer"),
        ),
        lambda: stubs.rep.CloseSession(
            rpb.CloseSessionRequest(session_id=session_id), metadata=md("peer")
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            attempt()
        assert reason_of(caught.value) == NO
        # The error tells nothing of the session but that it is not the caller's.
        assert session_id not in details(caught.value)
    # Its owner still has it.
    reply = stubs.rep.CreateTask(
        rpb.CreateTaskRequest(module="backup", type="x", session_id=session_id),
        metadata=md("producer"),
    )
    assert reply.status.owner == "producer"
    stubs.rep.CloseSession(rpb.CloseSessionRequest(session_id=session_id), metadata=md("producer"))


def test_abort_says_who_when_and_why_down_the_tree_and_to_the_producer(
    stubs: Stubs, caplog: pytest.LogCaptureFixture
) -> None:
    targets = Targets(stubs)
    call = stubs.rep.OpenSession(rpb.OpenSessionRequest(), metadata=md("producer"), timeout=30)
    session_id = next(call).opened.session_id
    root = stubs.rep.CreateTask(
        rpb.CreateTaskRequest(module="backup", type="dump", abortable=True, start=True,
                              session_id=session_id),
        metadata=md("producer"),
    ).status.id  # fmt: skip
    child = stubs.rep.CreateTask(
        rpb.CreateTaskRequest(module="backup", type="part", parent_id=root, start=True,
                              session_id=session_id),
        metadata=md("producer"),
    ).status.id  # fmt: skip
    before = time.time()
    with caplog.at_level(logging.INFO, logger="tm.audit"):
        stubs.tm.AbortTask(
            pb.AbortTaskRequest(task_id=root, reason="disk replaced"), metadata=md("operator")
        )
    # The producer hears of both, with the reason and who asked.
    heard = {}
    for _ in range(2):
        message = next(call).abort_requested
        heard[message.task_id] = (message.reason, message.principal)
    assert heard == {root: ("disk replaced", "operator"), child: ("disk replaced", "operator")}
    call.cancel()
    root_status = stubs.tm.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=root), metadata=md("reader")
    )
    abort = root_status.status.abort
    assert (abort.reason, abort.principal, abort.origin_task_id) == (
        "disk replaced",
        "operator",
        "",
    )
    assert before - 1 <= abort.request_time.seconds <= time.time() + 1
    child_abort = stubs.tm.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=child), metadata=md("reader")
    ).status.abort
    assert (child_abort.reason, child_abort.origin_task_id) == ("disk replaced", root)
    # One audit line: who, what, which task, the reason and the outcome.
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tm.audit"]
    assert [(a["principal"], a["action"], a["task_id"], a["reason"], a["outcome"])
            for a in lines] == [("operator", "AbortTask", root, "disk replaced", "OK")]  # fmt: skip
    del targets


def test_operator_actions_are_audited_with_their_outcome(
    stubs: Stubs, caplog: pytest.LogCaptureFixture
) -> None:
    Targets(stubs)
    with caplog.at_level(logging.INFO, logger="tm.audit"):
        stubs.tm.SetTtl(pb.SetTtlRequest(ttl_seconds=60), metadata=md("operator"))
        outcome(lambda: stubs.tm.SetTtl(pb.SetTtlRequest(ttl_seconds=1), metadata=md("producer")))
        stubs.tm.DrainModuleTasks(
            pb.DrainModuleTasksRequest(module="backup"), metadata=md("operator")
        )
        outcome(
            lambda: stubs.tm.AbortTask(
                pb.AbortTaskRequest(task_id=str(uuid4())), metadata=md("operator")
            )
        )
        stubs.rep.UnregisterModule(
            rpb.UnregisterModuleRequest(module="backup"), metadata=md("operator")
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tm.audit"]
    assert [(a["principal"], a["action"], a["outcome"]) for a in lines] == [
        ("operator", "SetTtl", "OK"),
        ("producer", "SetTtl", "PERMISSION_DENIED"),
        ("operator", "DrainModuleTasks", "OK"),
        ("operator", "AbortTask", "NOT_FOUND"),
        ("operator", "UnregisterModule", "OK"),
    ]
    assert lines[0]["ttl_seconds"] == 60 and lines[2]["module"] == "backup"
    assert all(a["time"].endswith("Z") and a["peer"] for a in lines)


def _wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_token_removed_from_the_file_stops_working_without_a_restart(
    stubs: Stubs, tokens_file: Path
) -> None:
    targets = Targets(stubs)
    watched = targets.task()
    # Two open watches: the reader's loses its token, the producer's keeps it.
    losing = stubs.tm.WaitTask(pb.WaitTaskRequest(task_id=watched), metadata=md("reader"))
    keeping = stubs.tm.WaitTask(pb.WaitTaskRequest(task_id=watched), metadata=md("producer"))
    next(losing), next(keeping)
    write_tokens(tokens_file, {k: v for k, v in PRINCIPALS.items() if k != "reader"})
    _wait_until(
        lambda: (
            outcome(lambda: stubs.tm.ListModules(pb.ListModulesRequest(), metadata=md("reader")))
            == U
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        next(losing)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # The other stream is still open and ends on the final state.
    stubs.rep.FinishTask(rpb.FinishTaskRequest(task_id=watched), metadata=md("producer"))
    assert [r.status.state for r in keeping][-1] == pb.TASK_STATE_DONE
    # A role taken away ends the streams that needed it; a new token works at once.
    write_tokens(tokens_file, {**PRINCIPALS, "reader": ["reader:other"], "late": ["reader"]})
    _wait_until(
        lambda: (
            outcome(lambda: stubs.tm.ListModules(pb.ListModulesRequest(), metadata=md("late")))
            == OK
        )
    )
    assert outcome(lambda: stubs.tm.ListModuleTasks(
        pb.ListModuleTasksRequest(module="backup"), metadata=md("reader"))) == D  # fmt: skip


def test_a_broken_tokens_file_keeps_the_last_good_one(
    stubs: Stubs, tokens_file: Path, secured: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        tokens_file.write_text("[[principal]]\nname = 'x'\ntokens = ['plain-token']\n")
        assert secured.server is not None and secured.server.tokens is not None
        assert secured.call(_async(secured.server.tokens.check)) is False
    assert "never as the token itself" in caplog.text
    assert (
        outcome(lambda: stubs.tm.ListModules(pb.ListModulesRequest(), metadata=md("reader"))) == OK
    )


def _async(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return fn()

    return run


# ---- TLS and mTLS ----------------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "pki")


def _tls_channel(port: int, ca: Path, pair: tuple[Path, Path] | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=None if pair is None else pair[1].read_bytes(),
        certificate_chain=None if pair is None else pair[0].read_bytes(),
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


def _modules(channel: grpc.Channel, caller: str = "none", timeout: float = 5) -> str:
    tm = stub(pb_grpc.TaskManagerServiceStub, channel)
    return outcome(lambda: tm.ListModules(pb.ListModulesRequest(), metadata=md(caller),
                                          timeout=timeout))  # fmt: skip


def test_tls_serves_tls_only_and_checks_tokens(certs: Certs, tokens_file: Path) -> None:
    server = ServerThread(tls=TlsConfig(certs.server_cert, certs.server_key), tokens=tokens_file)
    server.start()
    try:
        with _tls_channel(server.port, certs.ca) as channel:
            assert _modules(channel, "reader") == OK
            assert _modules(channel) == U
        with grpc.insecure_channel(server.target) as plain:
            assert _modules(plain, "reader", timeout=2) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        with _tls_channel(server.port, certs.other_ca) as wrong:  # a CA that did not sign it
            assert _modules(wrong, "reader", timeout=2) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        server.stop()


def test_mtls_makes_the_certificate_the_principal(certs: Certs, tmp_path: Path) -> None:
    tokens = tmp_path / "roles.toml"
    # A principal with no tokens: one that authenticates by certificate.
    tokens.write_text('[[principal]]\nname = "backup-agent"\nroles = ["producer:backup"]\n')
    tls = TlsConfig(certs.server_cert, certs.server_key, client_ca=certs.ca)
    server = ServerThread(tls=tls, tokens=tokens).start()
    try:
        with _tls_channel(server.port, certs.ca, certs.client("backup-agent")) as channel:
            rep = stub(rpb_grpc.TaskReportingServiceStub, channel)
            rep.RegisterModule(rpb.RegisterModuleRequest(module="backup"), timeout=5)
            created = rep.CreateTask(rpb.CreateTaskRequest(module="backup", type="t"), timeout=5)
            assert created.status.owner == "backup-agent"
            assert outcome(lambda: rep.RegisterModule(
                rpb.RegisterModuleRequest(module="repair"), timeout=5)) == D  # fmt: skip
        # A certificate the file does not name: authenticated, but with no roles.
        with _tls_channel(server.port, certs.ca, certs.client("stranger")) as channel:
            assert _modules(channel) == D
        # No certificate, or one of another CA: no connection at all.
        for pair in (None, certs.client("backup-agent", untrusted=True)):
            with _tls_channel(server.port, certs.ca, pair) as channel:
                assert _modules(channel, timeout=2) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        server.stop()


def test_mtls_alone_gives_every_verified_certificate_every_role(certs: Certs) -> None:
    tls = TlsConfig(certs.server_cert, certs.server_key, client_ca=certs.ca)
    server = ServerThread(tls=tls).start()
    try:
        with _tls_channel(server.port, certs.ca, certs.client("ops")) as channel:
            tm = stub(pb_grpc.TaskManagerServiceStub, channel)
            tm.SetTtl(pb.SetTtlRequest(ttl_seconds=5), timeout=5)
    finally:
        server.stop()


def test_a_new_certificate_is_served_without_a_restart(certs: Certs, tmp_path: Path) -> None:
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.server_cert, live_cert)
    shutil.copy(certs.server_key, live_key)
    server = ServerThread(tls=TlsConfig(live_cert, live_key)).start()
    try:
        with _tls_channel(server.port, certs.ca) as channel:
            assert _modules(channel) == OK
        renewed = make_certs(tmp_path / "renewed")  # another CA's, so the switch shows
        shutil.copy(renewed.server_key, tmp_path / "next.key")
        shutil.copy(renewed.server_cert, tmp_path / "next.pem")
        (tmp_path / "next.key").replace(live_key)
        (tmp_path / "next.pem").replace(live_cert)
        time.sleep(0.05)  # mtimes of different files may be one tick apart
        with _tls_channel(server.port, renewed.ca) as channel:
            assert _modules(channel) == OK
        with _tls_channel(server.port, certs.ca) as channel:
            assert _modules(channel, timeout=2) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        server.stop()


# ---- quotas ----------------------------------------------------------------------------------


def _quota(exc: Any) -> tuple[str, str, str]:
    meta = metadata_of(exc)
    return exc.code().name, reason_of(exc), meta.get("quota", "") + "=" + meta.get("limit", "")


def test_task_quotas_refuse_cleanly_and_the_server_goes_on(tokens_file: Path) -> None:
    server = ServerThread(
        tokens=tokens_file, shards=1, quotas=TaskQuotas(max_tasks=6, max_tasks_per_principal=4,
                                                        max_children=2),
    ).start()  # fmt: skip
    try:
        with grpc.insecure_channel(server.target) as channel:
            s = Stubs(channel)
            targets = Targets(s)
            root = targets.task()

            def child() -> Any:
                return s.rep.CreateTask(
                    rpb.CreateTaskRequest(module="backup", type="c", parent_id=root),
                    metadata=md("producer"),
                )

            child(), child()
            with pytest.raises(grpc.RpcError) as caught:  # children per task
                child()
            assert _quota(caught.value) == ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED",
                                            "children_per_task=2")  # fmt: skip
            targets.task()  # the producer's fourth
            with pytest.raises(grpc.RpcError) as caught:
                targets.task()
            assert _quota(caught.value)[2] == "tasks_per_principal=4"
            assert "principal producer" in details(caught.value)
            # Others may still create, up to the node's limit.
            s.rep.CreateTask(rpb.CreateTaskRequest(module="backup", type="x"), metadata=md("peer"))
            s.rep.CreateTask(rpb.CreateTaskRequest(module="backup", type="x"),
                             metadata=md("operator"))  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                s.rep.CreateTask(rpb.CreateTaskRequest(module="backup", type="x"),
                                 metadata=md("operator"))  # fmt: skip
            assert _quota(caught.value)[2] == "tasks=6"
            assert "--max-tasks" in details(caught.value)
            # Reads go on, and a finished task that leaves makes room again.
            s.rep.FinishTask(rpb.FinishTaskRequest(task_id=root), metadata=md("producer"))
            assert s.health.Check(health_pb2.HealthCheckRequest()).status == 1
    finally:
        server.stop()


def test_session_and_stream_quotas(tokens_file: Path) -> None:
    server = ServerThread(
        tokens=tokens_file, max_sessions_per_principal=2,
        streams=StreamQuotas(per_connection=3, per_principal=4),
    ).start()  # fmt: skip
    try:
        with grpc.insecure_channel(server.target) as channel:
            s = Stubs(channel)
            targets = Targets(s)
            task_id = targets.task()
            sessions = []
            for _ in range(2):
                call = s.rep.OpenSession(rpb.OpenSessionRequest(), metadata=md("producer"))
                next(call)
                sessions.append(call)
            with pytest.raises(grpc.RpcError) as caught:
                next(s.rep.OpenSession(rpb.OpenSessionRequest(), metadata=md("producer")))
            assert _quota(caught.value)[2] == "sessions_per_principal=2"
            # Two sessions stream on this connection: one more stream fits.
            watch = s.tm.WaitTask(pb.WaitTaskRequest(task_id=task_id), metadata=md("reader"))
            next(watch)
            with pytest.raises(grpc.RpcError) as caught:
                next(s.tm.WaitTask(pb.WaitTaskRequest(task_id=task_id), metadata=md("reader")))
            assert _quota(caught.value)[2] == "streams_per_connection=3"
            # On other connections, the reader may hold 4 streams in all.
            # (Channels of one process share connections unless told not to.)
            own = [("grpc.use_local_subchannel_pool", 1)]
            others = [grpc.insecure_channel(server.target, options=own) for _ in range(4)]
            try:
                opened = []
                for other in others[:3]:
                    w = stub(pb_grpc.TaskManagerServiceStub, other).WaitTask(
                        pb.WaitTaskRequest(task_id=task_id), metadata=md("reader"))  # fmt: skip
                    next(w)
                    opened.append(w)
                last = stub(pb_grpc.TaskManagerServiceStub, others[3])
                with pytest.raises(grpc.RpcError) as caught:
                    next(last.WaitTask(pb.WaitTaskRequest(task_id=task_id), metadata=md("reader")))
                assert _quota(caught.value)[2] == "streams_per_principal=4"
                # A stream that ends gives its place back.
                watch.cancel()
                again = pb.WaitTaskRequest(task_id=task_id)
                _wait_until(
                    lambda: (
                        outcome(lambda: next(s.tm.WaitTask(again, metadata=md("producer")))) == OK
                    )
                )
            finally:
                for other in others:
                    other.close()
            for call in sessions:
                call.cancel()
    finally:
        server.stop()


def test_a_request_past_the_size_limit_is_refused_with_its_limit(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.target) as channel:
        tm = stub(pb_grpc.TaskManagerServiceStub, channel)
        with pytest.raises(grpc.RpcError) as caught:
            tm.GetTaskStatus(pb.GetTaskStatusRequest(task_id="x" * 70_000), metadata=md("reader"))
        exc: Any = caught.value
        assert _quota(exc) == ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "request_bytes=65536")
        assert "--max-request-bytes" in exc.details()
        assert _modules(channel, "reader") == OK


# ---- without access checks -------------------------------------------------------------------


def test_without_auth_callers_are_anonymous_and_everything_works(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        s = Stubs(channel)
        s.rep.RegisterModule(rpb.RegisterModuleRequest(module="backup"))
        created = s.rep.CreateTask(rpb.CreateTaskRequest(module="backup", type="t", start=True,
                                                         abortable=True))  # fmt: skip
        assert created.status.owner == ""
        s.tm.AbortTask(pb.AbortTaskRequest(task_id=created.status.id, reason="why not"))
        status = s.tm.GetTaskStatus(pb.GetTaskStatusRequest(task_id=created.status.id)).status
        assert (status.abort.reason, status.abort.principal) == ("why not", "")


def test_reflection_can_be_turned_off() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = ServerThread(reflection=False).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            reflect = stub(reflection_pb2_grpc.ServerReflectionStub, channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as caught:
                list(reflect.ServerReflectionInfo(iter([request]), timeout=5))
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


# ---- the typed client, the Producer and the CLI ----------------------------------------------


def test_the_client_producer_and_cli_carry_tokens_and_tell_who_aborted_and_why(
    secured: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    from tm_client import (
        Credentials,
        NotOwnerError,
        Producer,
        TaskAbortedError,
        TaskManagerClient,
        UnauthenticatedError,
        from_rpc_error,
    )
    from tm_client.cli import run

    def creds(name: str) -> Credentials:
        return Credentials(token=token_of(name))

    with (
        Producer(secured.target, module="backup", credentials=creds("producer")) as producer,
        TaskManagerClient(secured.target, credentials=creds("operator")) as ops,
        Producer(secured.target, module="backup", credentials=creds("peer")) as peer,
        producer.task("dump", abortable=True) as task,
    ):
        with pytest.raises(grpc.RpcError) as refused:
            peer._stub.FinishTask(rpb.FinishTaskRequest(task_id=str(task.id)))
        assert isinstance(from_rpc_error(refused.value), NotOwnerError)  # by its reason
        ops.abort(task.id, reason="disk replaced")
        assert task.wait_abort(10)
        assert task.abort_reason == ("disk replaced", "operator")
        with pytest.raises(TaskAbortedError) as caught:
            task.check_abort()
        assert (caught.value.reason, caught.value.principal) == ("disk replaced", "operator")
        assert "aborted by operator: disk replaced" in str(caught.value)
        status = ops.get_status(task.id)
        assert status.owner == "producer" and status.abort is not None
        assert (status.abort.reason, status.abort.principal) == ("disk replaced", "operator")
        code = run(["--target", secured.target, "--token", token_of("reader"),
                    "tasks", "status", str(task.id)])  # fmt: skip
        shown = capsys.readouterr().out
        assert code == 0 and "owner: producer" in shown
        assert "abort: requested by operator at " in shown and ": disk replaced" in shown
    with (
        TaskManagerClient(secured.target, credentials=Credentials()) as anonymous,
        pytest.raises(UnauthenticatedError),
    ):
        anonymous.list_modules()
