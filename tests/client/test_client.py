"""The typed client and the CLI against grpcio-testing's in-process channel double.

The test plays the server: it takes each call the client makes and answers
it, so what the client does with answers a real tm server never gives (a
stream that ends on RUNNING, timestamps past year 9999, errors with and
without details) is checked without a server.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tm_client import (
    InternalError,
    InvalidArgumentError,
    StoreUnavailableError,
    TaskManagerClient,
    TaskNotFoundError,
    TaskState,
    UnavailableError,
    cli,
)
from tm_client.pb import task_manager_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TaskManagerService"]
T = TypeVar("T")
SAYS = "the server says so"


@pytest.fixture
def channel() -> Iterator[grpc_testing.Channel]:
    yield grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def method(name: str) -> Any:
    return SERVICE.methods_by_name[name]


def status_msg(task_id: UUID, state: Any = pb.TASK_STATE_RUNNING, **fields: Any) -> pb.TaskStatus:
    return pb.TaskStatus(id=str(task_id), state=state, kind=pb.TASK_KIND_NODE, **fields)


def details(code: grpc.StatusCode, message: str, reason: str, **metadata: str) -> tuple[Any, ...]:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tm", metadata=metadata))
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[info])
    return (("grpc-status-details-bin", proto.SerializeToString()),)


def answer_wait(channel: grpc_testing.Channel, *states: Any, code: Any = None) -> None:
    _, request, rpc = channel.take_unary_stream(method("WaitTask"))
    for state in states:
        rpc.send_response(pb.WaitTaskResponse(status=status_msg(UUID(request.task_id), state)))
    rpc.terminate((), code or grpc.StatusCode.OK, "")


def test_wait_never_returns_a_status_that_is_not_final(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    client = TaskManagerClient(channel=channel)
    task_id = uuid4()
    waiting: Future[Any] = pool.submit(client.wait, task_id)
    answer_wait(channel, pb.TASK_STATE_RUNNING)  # ends OK, but on RUNNING
    with pytest.raises(InternalError, match="on state running, not on a final state") as err:
        waiting.result(10)
    assert err.value.reason == "WAIT_ENDED_EARLY"
    watching: Future[Any] = pool.submit(lambda: list(client.watch(task_id)))
    answer_wait(channel)  # no status at all
    with pytest.raises(InternalError, match="on no status"):
        watching.result(10)
    waiting = pool.submit(client.wait, task_id)
    answer_wait(channel, pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED)
    assert waiting.result(10).state is TaskState.FAILED


def _send_wait(channel: grpc_testing.Channel, *statuses: pb.TaskStatus, code: Any) -> Any:
    _, request, rpc = channel.take_unary_stream(method("WaitTask"))
    for status in statuses:
        rpc.send_response(pb.WaitTaskResponse(status=status))
    rpc.terminate((), code, "")
    return request


def test_watch_resumes_a_broken_stream_without_repeating_or_missing_a_status(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    client = TaskManagerClient(channel=channel, resume_seconds=10)
    task_id = uuid4()
    one = status_msg(task_id, progress_completed=1, progress_total=3)
    two = status_msg(task_id, progress_completed=2, progress_total=3)
    done = status_msg(task_id, pb.TASK_STATE_DONE, progress_completed=3, progress_total=3)
    watching: Future[Any] = pool.submit(lambda: list(client.watch(task_id, timeout=60)))
    _send_wait(channel, one, code=grpc.StatusCode.UNAVAILABLE)  # the node went away
    # The resumed stream starts with what was seen already; the deadline carried over.
    request = _send_wait(channel, one, two, done, code=grpc.StatusCode.OK)
    assert 0 < request.timeout.ToNanoseconds() <= 60e9
    seen = watching.result(10)
    assert [(s.state, s.progress_completed) for s in seen] == [
        (TaskState.RUNNING, 1), (TaskState.RUNNING, 2), (TaskState.DONE, 3),
    ]  # fmt: skip

    # Without resuming, the break is the caller's to see.
    plain = TaskManagerClient(channel=channel, resume_seconds=0)
    waiting: Future[Any] = pool.submit(plain.wait, task_id)
    _send_wait(channel, one, code=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(UnavailableError):
        waiting.result(10)


def test_errors_are_typed_by_reason_then_by_code(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    client = TaskManagerClient(channel=channel, retry_seconds=0)  # a bare UNAVAILABLE is raised
    task_id = uuid4()
    cases: list[tuple[tuple[Any, ...], grpc.StatusCode, type[Exception], str]] = [
        (
            details(grpc.StatusCode.NOT_FOUND, SAYS, "TASK_NOT_FOUND", task_id=str(task_id)),
            grpc.StatusCode.NOT_FOUND,
            TaskNotFoundError,
            "TASK_NOT_FOUND",
        ),
        (
            details(grpc.StatusCode.INVALID_ARGUMENT, SAYS, "INVALID_PAGE_TOKEN", field="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            InvalidArgumentError,
            "INVALID_PAGE_TOKEN",
        ),
        ((), grpc.StatusCode.UNAVAILABLE, UnavailableError, ""),
    ]
    for trailing, code, error, reason in cases:
        call: Future[Any] = pool.submit(client.get_status, task_id)
        _, _, rpc = channel.take_unary_unary(method("GetTaskStatus"))
        rpc.terminate(None, trailing, code, SAYS)
        with pytest.raises(error) as err:
            call.result(10)
        assert err.value.reason == reason and err.value.code is code  # type: ignore[attr-defined]
        assert not isinstance(err.value, grpc.RpcError)


def test_reads_are_retried_while_tm_is_unreachable_and_nothing_else_is(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    client = TaskManagerClient(channel=channel, retry_seconds=30)
    task_id = uuid4()
    # Unreachable (no reason), then restarting (SHUTTING_DOWN): tried again, and the
    # third try's answer is the call's.
    reading: Future[Any] = pool.submit(client.get_status, task_id)
    for trailing in ((), details(grpc.StatusCode.UNAVAILABLE, SAYS, "SHUTTING_DOWN")):
        _, _, rpc = channel.take_unary_unary(method("GetTaskStatus"))
        rpc.terminate(None, trailing, grpc.StatusCode.UNAVAILABLE, SAYS)
    _, _, rpc = channel.take_unary_unary(method("GetTaskStatus"))
    msg = status_msg(task_id, pb.TASK_STATE_RUNNING)
    rpc.terminate(pb.GetTaskStatusResponse(status=msg), (), grpc.StatusCode.OK, "")
    assert reading.result(10).state is TaskState.RUNNING

    # tm answering that a dependency of its own is down: said at once, not retried.
    reading = pool.submit(client.get_status, task_id)
    _, _, rpc = channel.take_unary_unary(method("GetTaskStatus"))
    store_down = details(grpc.StatusCode.UNAVAILABLE, SAYS, "STORE_UNAVAILABLE")
    rpc.terminate(None, store_down, grpc.StatusCode.UNAVAILABLE, SAYS)
    with pytest.raises(StoreUnavailableError):
        reading.result(10)

    # A change that is not safe to repeat (its reply says what it replaced) is not retried.
    changing: Future[Any] = pool.submit(client.set_ttl, 60)
    _, _, rpc = channel.take_unary_unary(method("SetTtl"))
    rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, SAYS)
    with pytest.raises(UnavailableError):
        changing.result(10)


def test_any_timestamp_the_wire_can_carry_decodes(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    client = TaskManagerClient(channel=channel)
    task_id = uuid4()
    msg = status_msg(task_id, pb.TASK_STATE_DONE)
    msg.expire_time.CopyFrom(timestamp_pb2.Timestamp(seconds=2**63 - 1))
    msg.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=-(2**63)))
    msg.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=10**12, nanos=999_999_999))
    msg.creation_time.CopyFrom(timestamp_pb2.Timestamp(seconds=1, nanos=500_000))
    call: Future[Any] = pool.submit(client.get_status, task_id)
    _, _, rpc = channel.take_unary_unary(method("GetTaskStatus"))
    rpc.terminate(pb.GetTaskStatusResponse(status=msg), (), grpc.StatusCode.OK, "")
    status = call.result(10)
    assert status.expire_time == datetime.max.replace(tzinfo=UTC)
    assert status.end_time == datetime.min.replace(tzinfo=UTC)
    assert status.start_time == datetime.max.replace(tzinfo=UTC)
    assert status.creation_time == datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC)


def run_cli(channel: grpc_testing.Channel, pool: ThreadPoolExecutor, *argv: str) -> Future[str]:
    def run() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.run(list(argv), channel=channel) == 0
        return out.getvalue()

    return pool.submit(run)


def serve_unary(channel: grpc_testing.Channel, name: str, respond: Callable[[Any], Any]) -> None:
    _, request, rpc = channel.take_unary_unary(method(name))
    rpc.terminate(respond(request), (), grpc.StatusCode.OK, "")


def test_cli_status_pages_in_the_children_a_status_leaves_out(
    channel: grpc_testing.Channel, pool: ThreadPoolExecutor
) -> None:
    task_id = uuid4()
    children = sorted((uuid4() for _ in range(2500)), key=lambda u: u.int)
    identities = [pb.TaskIdentity(task_id=str(c), node="n1") for c in children]
    output = run_cli(channel, pool, "tasks", "status", str(task_id))
    serve_unary(
        channel,
        "GetTaskStatus",
        lambda _: pb.GetTaskStatusResponse(
            status=status_msg(task_id, children_ids=identities[:1000], children_count=2500)
        ),
    )
    for start, token, next_token in ((0, "", "p1"), (1000, "p1", "p2"), (2000, "p2", "")):

        def page(request: pb.ListTaskChildrenRequest) -> pb.ListTaskChildrenResponse:
            assert request.task_id == str(task_id) and request.page_token == token  # noqa: B023
            return pb.ListTaskChildrenResponse(
                children=identities[start : start + 1000],  # noqa: B023
                children_count=2500,
                next_page_token=next_token,  # noqa: B023
            )

        serve_unary(channel, "ListTaskChildren", page)
    text = output.result(10)
    line = next(x for x in text.splitlines() if x.startswith("children_ids: "))
    assert line.count("task_id: ") == 2500 and str(children[-1]) in line
    assert "children_count: 2500" in text
