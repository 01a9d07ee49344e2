"""The servicer layer's error table and handler wrappers, without a network.

grpcio-testing drives only synchronous servicers, and tm's are asyncio ones,
so the wrappers are exercised here with a recording context instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast
from uuid import uuid4

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tm_server.core import (
    InvalidArgumentError,
    InvalidStateError,
    TaskAlreadyExistsError,
    TaskManagerError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
)
from tm_server.service.errors import status_for
from tm_server.service.handlers import Context, Servicer, streaming, unary


def decode(status: grpc.Status) -> tuple[status_pb2.Status, dict[str, Any]]:
    raw = next(v for k, v in status.trailing_metadata if k == "grpc-status-details-bin")
    proto = status_pb2.Status.FromString(raw)
    details: dict[str, Any] = {}
    for detail in proto.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            details["info"] = info
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            details["bad"] = bad
    return proto, details


TID = uuid4()


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [
        (
            TaskNotFoundError(TID),
            grpc.StatusCode.NOT_FOUND,
            "TASK_NOT_FOUND",
            {"task_id": str(TID)},
        ),
        (UnknownModuleError("m"), grpc.StatusCode.NOT_FOUND, "MODULE_NOT_FOUND", {"module": "m"}),
        (
            TaskNotAbortableError(TID),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TASK_NOT_ABORTABLE",
            {"task_id": str(TID)},
        ),
        (
            InvalidStateError("task is done"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "INVALID_STATE",
            {},
        ),
        (
            TaskAlreadyExistsError(TID),
            grpc.StatusCode.ALREADY_EXISTS,
            "TASK_ALREADY_EXISTS",
            {"task_id": str(TID)},
        ),
        (
            InvalidArgumentError("page_size", "too big"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {"field": "page_size"},
        ),
    ],
)
def test_every_domain_error_has_its_code_and_error_info(
    error: TaskManagerError, code: grpc.StatusCode, reason: str, metadata: dict[str, str]
) -> None:
    status = status_for(error)
    assert status.code is code and status.details == str(error)
    proto, details = decode(status)
    assert proto.code == code.value[0] and proto.message == str(error)
    assert details["info"].reason == reason and details["info"].domain == "tm"
    assert dict(details["info"].metadata) == metadata
    if isinstance(error, InvalidArgumentError):
        (violation,) = details["bad"].field_violations
        assert (violation.field, violation.description) == ("page_size", "too big")


class Aborted(Exception):
    pass


class RecordingContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted()


class Handlers(Servicer):
    @unary
    async def Fails(self, request: Exception, context: Context) -> str:
        raise request

    @streaming
    async def Streams(self, request: Exception, context: Context) -> AsyncIterator[str]:
        yield "first"
        raise request


async def _call(awaitable: Awaitable[str]) -> str:
    return await awaitable


def run_unary(exc: Exception) -> grpc.Status:
    ctx = RecordingContext()
    with pytest.raises(Aborted):
        asyncio.run(_call(Handlers().Fails(exc, cast(Context, ctx))))
    assert ctx.status is not None
    return ctx.status


def test_unexpected_error_becomes_internal_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("ERROR"):
        status = run_unary(KeyError("password=hunter2"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "hunter2" not in status.details and "incident" in status.details
    _, details = decode(status)
    assert details["info"].reason == "INTERNAL"
    incident = details["info"].metadata["incident"]
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)


def test_domain_error_in_unary_handler() -> None:
    status = run_unary(TaskNotFoundError(TID))
    assert status.code is grpc.StatusCode.NOT_FOUND


def test_stream_error_after_messages_is_a_status() -> None:
    ctx = RecordingContext()

    async def consume() -> list[str]:
        out = []
        async for item in Handlers().Streams(UnknownModuleError("x"), cast(Context, ctx)):
            out.append(item)
        return out

    with pytest.raises(Aborted):
        asyncio.run(consume())
    assert ctx.status is not None and ctx.status.code is grpc.StatusCode.NOT_FOUND


def _domain_errors() -> list[type[TaskManagerError]]:
    import tm_server.core.errors as module

    return [
        cls
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, TaskManagerError)
        and cls is not TaskManagerError
    ]


@pytest.mark.parametrize("error", _domain_errors(), ids=lambda cls: cls.__name__)
def test_every_domain_error_has_a_code_and_a_reason_of_the_proto(
    error: type[TaskManagerError],
) -> None:
    from tm_client import REASONS
    from tm_server.service.errors import code_of

    assert code_of(error) not in (None, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert error.reason in REASONS


def test_every_reason_of_the_proto_is_one_the_server_sends() -> None:
    from tm_client import REASONS
    from tm_server.service.auth import NOT_OWNER, PERMISSION_DENIED, UNAUTHENTICATED
    from tm_server.service.decoding import MALFORMED_REQUEST
    from tm_server.service.handlers import INTERNAL

    sent = {cls.reason for cls in _domain_errors()} | {MALFORMED_REQUEST, INTERNAL}
    sent |= {UNAUTHENTICATED, PERMISSION_DENIED, NOT_OWNER}  # the access interceptor's
    assert sent == REASONS
