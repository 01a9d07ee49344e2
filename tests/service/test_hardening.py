"""Hardening against a real server: final states whatever the reader's speed, bad bodies and
tokens, far-future ids and times, replies no default client would refuse, producer mishaps."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tm_client import (
    InternalError,
    InvalidArgumentError,
    Producer,
    ResourceExhaustedError,
    TaskManagerClient,
    TaskState,
)
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc
from tm_server.core.producers import Producers, TaskSpec
from tm_server.core.validation import MAX_TTL_SECONDS

from ..error_info import reason_of
from ..process import run_tm
from ..server_fixture import ServerThread


def reporting(server: ServerThread) -> Iterator[rpb_grpc.TaskReportingServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield rpb_grpc.TaskReportingServiceStub(channel)


@pytest.fixture
def stub(server: ServerThread) -> Iterator[rpb_grpc.TaskReportingServiceStub]:
    yield from reporting(server)


def producers_of(server: ServerThread) -> Producers:
    assert server.server is not None
    return server.server.producers


# ---- WaitTask ends OK only on a final state --------------------------------------------------


def test_wait_read_after_the_task_finished_ends_on_done(
    stub: rpb_grpc.TaskReportingServiceStub, server: ServerThread
) -> None:
    created = stub.CreateTask(
        rpb.CreateTaskRequest(module="m", type="t", entity="e" * 4096, start=True)
    )
    task_id = created.status.id
    with grpc.insecure_channel(server.target) as channel:
        wait = channel.unary_stream(
            "/tm.v1.TaskManagerService/WaitTask",
            request_serializer=pb.WaitTaskRequest.SerializeToString,
            response_deserializer=pb.WaitTaskResponse.FromString,
        )
        call = wait(pb.WaitTaskRequest(task_id=task_id))  # opened, not read yet
        for i in range(1500):
            stub.ReportProgress(rpb.ReportProgressRequest(task_id=task_id, completed=i))
        stub.FinishTask(rpb.FinishTaskRequest(task_id=task_id))
        messages = list(call)
    assert call.code() is grpc.StatusCode.OK
    assert messages[-1].status.state == pb.TASK_STATE_DONE
    assert all(m.status.state == pb.TASK_STATE_RUNNING for m in messages[:-1])


ROUNDS = 15


async def test_fast_watchers_of_a_task_finished_right_after_progress_all_end_on_done(
    server: ServerThread,
) -> None:
    outcomes: dict[str, int] = {}

    def progress_then_finish(stub: rpb_grpc.TaskReportingServiceStub, task_id: str) -> None:
        stub.ReportProgress(rpb.ReportProgressRequest(task_id=task_id, completed=1))
        stub.FinishTask(rpb.FinishTaskRequest(task_id=task_id))

    sync_channel = grpc.insecure_channel(server.target)
    sync_producer = rpb_grpc.TaskReportingServiceStub(sync_channel)
    async with grpc.aio.insecure_channel(server.target) as channel:
        producer = rpb_grpc.TaskReportingServiceStub(channel)
        reader = pb_grpc.TaskManagerServiceStub(channel)
        for _ in range(ROUNDS):
            # Statuses of 4 KiB: 200 of them fill the connection's flow-control
            # window, so writes wait for the reader and the finish comes in meanwhile.
            created = await producer.CreateTask(
                rpb.CreateTaskRequest(module="m", type="t", entity="e" * 4096, start=True)
            )
            task_id = created.status.id
            calls = [reader.WaitTask(pb.WaitTaskRequest(task_id=task_id)) for _ in range(200)]
            for call in calls:  # every watcher has its first status: all are parked
                await call.read()

            async def last_state(call: Any) -> int:
                state = -1
                while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                    state = message.status.state
                assert await call.code() is grpc.StatusCode.OK
                return int(state)

            reads = [asyncio.ensure_future(last_state(c)) for c in calls]
            # Back to back, from a thread and a channel of their own: the finish
            # lands while the watchers write the progress.
            await asyncio.to_thread(progress_then_finish, sync_producer, task_id)
            for state in await asyncio.wait_for(asyncio.gather(*reads), 30):
                name = pb.TaskState.Name(state)  # type: ignore[arg-type]
                outcomes[name] = outcomes.get(name, 0) + 1
    sync_channel.close()
    assert outcomes == {"TASK_STATE_DONE": 200 * ROUNDS}


# ---- ids, times and TTLs a client may send ---------------------------------------------------

FAR_FUTURE = "ffffffff-ffff-7fff-bfff-ffffffffffff"  # a valid version-7 UUID of year 10889


def test_an_id_from_the_far_future_breaks_no_reader(
    stub: rpb_grpc.TaskReportingServiceStub, client: TaskManagerClient, server: ServerThread
) -> None:
    stub.CreateTask(rpb.CreateTaskRequest(module="m", type="t", task_id=FAR_FUTURE, start=True))
    stub.CreateTask(rpb.CreateTaskRequest(module="m", type="t", start=True))
    status = client.get_status(FAR_FUTURE)
    assert status.creation_time is None and status.state is TaskState.RUNNING
    entries = {str(e.task_id): e for e in client.list_tasks("m")}
    assert len(entries) == 2 and entries[FAR_FUTURE].creation_time is None
    assert all(e.creation_time is not None for i, e in entries.items() if i != FAR_FUTURE)
    for args in (("tasks", "list", "m"), ("tasks", "status", FAR_FUTURE), ("tasks", "tree")):
        result = run_tm(server.target, *args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and FAR_FUTURE in result.stdout


@pytest.mark.parametrize("ttl", [10**12, 2**63 - 1])
def test_ttls_beyond_the_maximum_are_refused_and_tasks_still_finish(
    client: TaskManagerClient, stub: rpb_grpc.TaskReportingServiceStub, ttl: int
) -> None:
    for setter in (client.set_ttl, client.set_user_ttl):
        with pytest.raises(InvalidArgumentError) as err:
            setter(ttl)
        assert err.value.reason == "VALUE_OUT_OF_RANGE"
        assert str(MAX_TTL_SECONDS) in err.value.message
    assert client.set_ttl(MAX_TTL_SECONDS) == 0
    created = stub.CreateTask(rpb.CreateTaskRequest(module="m", type="t", start=True))
    finished = stub.FinishTask(rpb.FinishTaskRequest(task_id=created.status.id))
    assert finished.status.state == pb.TASK_STATE_DONE
    status = client.wait(created.status.id)
    assert status.expire_time is not None and status.expire_time.year > 2300


def test_progress_beyond_the_maximum_is_refused(stub: rpb_grpc.TaskReportingServiceStub) -> None:
    task_id = stub.CreateTask(rpb.CreateTaskRequest(module="m", type="t", start=True)).status.id
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportProgress(rpb.ReportProgressRequest(task_id=task_id, completed=1e308))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "text", ["0x" + "a" * 30, "+" + "a" * 31, "a" * 4 + "_" + "a" * 27, "\uff11" * 32]
)
def test_ids_that_are_not_uuids_are_refused(client: TaskManagerClient, text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid UUID"):
        client.get_status(text)


# ---- bodies that do not decode ---------------------------------------------------------------


def _methods() -> list[tuple[str, bool, bool, bool]]:
    """Every method the server serves: (path, client streams, server streams, field 1 is a
    string)."""
    from google.protobuf.descriptor import FieldDescriptor
    from grpc_reflection.v1alpha import reflection_pb2

    from tm_client.pb import task_manager_pb2, task_manager_test_pb2, task_reporting_pb2

    out = []
    files = (task_manager_pb2, task_manager_test_pb2, task_reporting_pb2, health_pb2)
    for module in (*files, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                first = method.input_type.fields_by_number.get(1)
                out.append(
                    (
                        f"/{service.full_name}/{method.name}",
                        method.client_streaming,
                        method.server_streaming,
                        first is not None and first.type == FieldDescriptor.TYPE_STRING,
                    )
                )
    return out


METHODS = _methods()
# Bodies no message decodes from, whatever its fields.
CRAFTED = [
    b"\x0a\x05ab",  # field 1, length 5, two bytes follow: truncated
    b"\x0f\x01",  # wire type 7
    b"\x0c",  # an end-group with no group
    b"\x08",  # a varint tag with no value
    b"\xff",  # one byte, not a tag
    b"\x80" * 10 + b"\x01",  # a tag longer than a varint may be
]
# A string of invalid UTF-8 in field 1: malformed for requests whose field 1 is a string.
BAD_UTF8 = b"\x0a\x03\xff\xfe\xfd"


def _outcome(channel: grpc.Channel, path: str, cin: bool, cout: bool, body: bytes) -> Any:
    """Sends ``body`` as it is (identity serializers) and returns the finished call."""

    def ident(b: bytes) -> bytes:
        return b

    try:
        if cin:
            streams = channel.stream_stream(
                path, request_serializer=ident, response_deserializer=ident
            )
            call: Any = streams(iter([body]), timeout=5)
        elif cout:
            streams_out = channel.unary_stream(
                path, request_serializer=ident, response_deserializer=ident
            )
            call = streams_out(body, timeout=5)
        else:
            unary = channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)
            return unary.with_call(body, timeout=5)[1]
        for _ in call:
            pass
        return call
    except grpc.RpcError as exc:
        return exc


@pytest.mark.parametrize(("path", "cin", "cout", "text"), METHODS, ids=[m[0] for m in METHODS])
def test_a_body_that_does_not_decode_is_invalid_argument(
    server: ServerThread,
    path: str,
    cin: bool,
    cout: bool,
    text: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(server.target) as channel:
        for body in [*CRAFTED, BAD_UTF8] if text else CRAFTED:
            call = _outcome(channel, path, cin, cout, body)
            assert call.code() is grpc.StatusCode.INVALID_ARGUMENT, (body, call.details())
            assert reason_of(call) == "MALFORMED_REQUEST"
            details = call.details() or ""
            assert "is not a valid" in details
            assert "DecodeError" not in details and "class" not in details
        # The server keeps serving.
        health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        assert health(health_pb2.HealthCheckRequest()).status == 1
    # Several bad bodies: at most one short line in the log, none at ERROR.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    logged = [r.getMessage() for r in caplog.records if "not a valid" in r.getMessage()]
    assert len(logged) <= 1 and all(len(line) < 300 for line in logged)


def test_random_bodies_never_get_unknown_or_internal(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(1234)
    bodies = [rng.randbytes(rng.randint(1, 48)) for _ in range(8)]
    codes: dict[str, int] = {}
    with grpc.insecure_channel(server.target) as channel:
        for path, cin, cout, _ in METHODS:
            for body in bodies:
                call = _outcome(channel, path, cin, cout, body)
                code = call.code()
                assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
                    path,
                    body,
                    call.details(),
                )
                codes[code.name] = codes.get(code.name, 0) + 1
    assert codes.get("INVALID_ARGUMENT", 0) > len(METHODS) * len(bodies) // 2
    # Hundreds of bad requests cost a few short lines, never a traceback.
    text = "".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in text and len(text) < 200 * len(METHODS)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---- page tokens the server did not issue ----------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@pytest.mark.parametrize(
    "token",
    [
        _b64(b'{"s":Infinity,"p":0,"a":"00","q":"x"}'),
        _b64(b'{"s":1e400,"p":0,"a":"00","q":"x"}'),
        # 20,000 deep (far past the recursion limit), inside --max-request-bytes.
        _b64(b"[" * 20_000 + b"]" * 20_000),
        _b64(json.dumps({"s": 0, "p": 0, "a": uuid4().hex, "q": "0" * 16}).encode()),
        "%%%",
        "a" * 10_000,
        _b64(b"\x01" * 44),
    ],
)
def test_tokens_the_server_did_not_issue_are_invalid_argument(
    client: TaskManagerClient, token: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        client.list_tasks_page("test", page_token=token)
    assert err.value.reason == "INVALID_PAGE_TOKEN" and err.value.field == "page_token"
    with pytest.raises(InvalidArgumentError) as err:
        client.list_children_page(uuid4(), page_token=token)
    assert err.value.reason == "INVALID_PAGE_TOKEN"


def test_a_token_of_another_server_or_listing_is_refused(
    client: TaskManagerClient, server: ServerThread
) -> None:
    testsvc_ids = [server.call(lambda: _test_task(server)) for _ in range(3)]
    assert len(testsvc_ids) == 3
    _, token = client.list_tasks_page("test", page_size=1)
    assert token
    with pytest.raises(InvalidArgumentError, match="another module or filters"):
        client.list_tasks_page("test", keyspace="ks", page_token=token)
    other = ServerThread().start()
    try:
        with (
            TaskManagerClient(other.target) as elsewhere,
            pytest.raises(InvalidArgumentError, match=r"did not issue|not a page token"),
        ):
            elsewhere.list_tasks_page("test", page_token=token)
    finally:
        other.stop()
    entries, _ = client.list_tasks_page("test", page_size=2, page_token=token)
    assert len(entries) == 2  # a real token still works


async def _test_task(server: ServerThread) -> UUID:
    from tm_server.testing import create_test_task

    return await create_test_task(server.manager)


# ---- replies a default client can always receive ---------------------------------------------

MANY_CHILDREN = 100_000


@pytest.mark.slow
def test_a_root_with_a_hundred_thousand_children_is_readable(server: ServerThread) -> None:
    async def build() -> UUID:
        p = producers_of(server)
        root, _ = await p.create_task(TaskSpec(module="import", type="import"), start=True)
        spec = TaskSpec(module="import", type="file", parent_id=root.id, entity="f" * 40)
        for _ in range(MANY_CHILDREN):
            await p.create_task(spec, start=True)
        return root.id

    root = server.call(build, timeout=120)
    with TaskManagerClient(server.target) as client:
        status = client.get_status(root)
        assert status.children_count == MANY_CHILDREN and status.children_truncated
        assert len(status.children) == 1000
        first = next(iter(client.watch(root)))
        assert first.children_count == MANY_CHILDREN
        children = list(client.list_children(root, page_size=1000))
        assert len({c.task_id for c in children}) == MANY_CHILDREN
        assert [c.task_id.int for c in children] == sorted(c.task_id.int for c in children)
        assert {c.task_id for c in status.children} <= {c.task_id for c in children}


def test_children_pages_cover_live_and_folded_children_once(server: ServerThread) -> None:
    async def build() -> tuple[UUID, list[UUID]]:
        p = producers_of(server)
        root, _ = await p.create_task(TaskSpec(module="m", type="t"), start=True)
        kids = []
        for i in range(250):
            spec = TaskSpec(module="m", type="t", parent_id=root.id)
            child, _ = await p.create_task(spec, start=True)
            kids.append(child.id)
            if i % 2:
                await p.finish_task(child.id, None)  # folds
        return root.id, kids

    root, kids = server.call(build)
    with TaskManagerClient(server.target) as client:
        seen: list[UUID] = []
        token = ""
        while True:
            page, count, token = client.list_children_page(root, page_size=40, page_token=token)
            assert count == 250
            seen.extend(c.task_id for c in page)
            if len(seen) == 80:
                # Children finish while the client pages: none is lost or listed twice.
                server.call(lambda: finish_all(server, kids[::2][:20]))
            if not token:
                break
        assert sorted(seen) == sorted(kids) and len(seen) == len(set(seen))
        assert client.task(root).children() == [c for c in client.list_children(root)]
        status = client.get_status(root)
        assert status.children_count == 250 and not status.children_truncated


async def finish_all(server: ServerThread, ids: list[UUID]) -> None:
    for task_id in ids:
        await producers_of(server).finish_task(task_id, None)


def test_status_lists_at_most_the_configured_children() -> None:
    server = ServerThread(max_status_children=10).start()
    try:

        async def build() -> UUID:
            p = producers_of(server)
            root, _ = await p.create_task(TaskSpec(module="m", type="t"), start=True)
            for _ in range(25):
                await p.create_task(TaskSpec(module="m", type="t", parent_id=root.id), start=True)
            return root.id

        root = server.call(build)
        with TaskManagerClient(server.target) as client:
            status = client.get_status(root)
            assert len(status.children) == 10 and status.children_count == 25
            result = run_tm(server.target, "tasks", "status", str(root))
            assert result.returncode == 0
            line = next(x for x in result.stdout.splitlines() if x.startswith("children_ids"))
            assert line.count("task_id") == 25  # the CLI pages in the rest
    finally:
        server.stop()


def test_module_count_is_bounded() -> None:
    server = ServerThread(max_modules=5).start()
    try:
        with Producer(server.target, module="m0", session=False) as p:
            for i in range(1, 4):
                p._unary(p._stub.RegisterModule, rpb.RegisterModuleRequest(module=f"m{i}"))
            # "test" and m0..m3 make five.
            with pytest.raises(ResourceExhaustedError) as err:
                p._unary(p._stub.RegisterModule, rpb.RegisterModuleRequest(module="m4"))
            assert err.value.reason == "MODULE_LIMIT_REACHED"
            assert err.value.metadata == {"module": "m4", "limit": "5"}
            with pytest.raises(ResourceExhaustedError):
                Producer(server.target, module="m5", session=False)  # registers its module
            # A registered module still takes tasks.
            finished = p.create_task("t").finish()
            assert finished is not None and finished.state is TaskState.DONE
    finally:
        server.stop()


def test_list_pages_of_large_entries_stay_under_what_a_client_accepts(
    server: ServerThread,
) -> None:
    async def build() -> None:
        p = producers_of(server)
        spec = TaskSpec(module="big", type="t" * 256, entity="\U0001f600" * 4096)
        for _ in range(1000):
            await p.create_task(spec, start=True)

    server.call(build, timeout=60)
    with TaskManagerClient(server.target) as client:
        page, token = client.list_tasks_page("big", page_size=1000)
        assert token and 0 < len(page) < 1000
        assert sum(1 for _ in client.list_tasks("big", page_size=1000)) == 1000


# ---- the Producer helper ---------------------------------------------------------------------


def test_a_huge_exception_fails_the_task_and_stays_the_callers(
    server: ServerThread, client: TaskManagerClient
) -> None:
    client.set_ttl(600)
    text = "start-" + "x" * 10_000 + "-end"
    with Producer(server.target, module="m") as producer:
        with pytest.raises(RuntimeError) as err, producer.task("t") as task:
            raise RuntimeError(text)
        assert str(err.value) == text  # the user's own exception, not a reporting error
        status = client.get_status(task.id)
        assert status.state is TaskState.FAILED
        assert len(status.error) <= 4096
        assert status.error.startswith("RuntimeError: start-") and status.error.endswith("-end")
        assert "characters cut" in status.error
        assert producer.tracked_tasks() == 0


def test_a_failed_report_never_replaces_the_users_exception(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    # strict: a finish tm refuses (the task was finished behind the helper's
    # back) raises, and the block's exit logs that rather than raise it.
    with Producer(server.target, module="m", session=False, strict=True) as producer:
        task = producer.create_task("t")
        producer._unary(
            producer._stub.FinishTask, rpb.FinishTaskRequest(task_id=str(task.id))
        )  # finished behind the helper's back: its own finish will fail
        with pytest.raises(KeyError), task:
            raise KeyError("mine")
    assert any("could not report task" in r.getMessage() for r in caplog.records)
    # Not strict: tm's end of the task is taken (logged), and the exception is still the user's.
    with Producer(server.target, module="m", session=False) as producer:
        task = producer.create_task("t")
        producer._unary(producer._stub.FinishTask, rpb.FinishTaskRequest(task_id=str(task.id)))
        with pytest.raises(KeyError), task:
            raise KeyError("mine")
    assert any(f"tm had ended task {task.id}" in r.getMessage() for r in caplog.records)


def test_the_producer_keeps_nothing_per_finished_task(server: ServerThread) -> None:
    with Producer(server.target, module="m") as producer:
        for _ in range(200):
            with producer.task("t", abortable=True) as task:
                task.progress(1)
        assert producer.tracked_tasks() == 0
        done = threading.Event()
        task = producer.task("t", abortable=True)
        with TaskManagerClient(server.target) as client:
            client.abort(task.id)
        assert task.wait_abort(10)
        done.set()
        task.finish()
        assert producer.tracked_tasks() == 0


# ---- errors that repeat ----------------------------------------------------------------------


def test_an_error_that_repeats_logs_its_traceback_once(
    server: ServerThread, client: TaskManagerClient, caplog: pytest.LogCaptureFixture
) -> None:
    from .test_service import install_broken_group

    vid = install_broken_group(server)
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            with pytest.raises(InternalError):
                client.get_status(vid)
    records = [r for r in caplog.records if r.name.startswith("tm_server")]
    assert sum(1 for r in records if r.exc_info) == 1
    assert len(records) == 1  # the other 49 are counted into the next line, due in 10 s
    assert "secret internal detail" in records[0].getMessage()
