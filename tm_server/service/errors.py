"""The one table from domain errors to gRPC status codes, with google.rpc details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tm_server.core import (
    CursorExpiredError,
    InvalidArgumentError,
    InvalidStateError,
    JournalUnavailableError,
    ModuleLimitError,
    NodeUnavailableError,
    QuotaExceededError,
    SessionNotFoundError,
    ShuttingDownError,
    StoreUnavailableError,
    TaskAlreadyExistsError,
    TaskManagerError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
    WaitTimeoutError,
    WatchFellBehindError,
)

#: The domain of every ErrorInfo this server sends.
ERROR_DOMAIN = "tm"

_CODES: dict[type[TaskManagerError], grpc.StatusCode] = {
    TaskNotFoundError: grpc.StatusCode.NOT_FOUND,
    UnknownModuleError: grpc.StatusCode.NOT_FOUND,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    TaskNotAbortableError: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidStateError: grpc.StatusCode.FAILED_PRECONDITION,
    TaskAlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    SessionNotFoundError: grpc.StatusCode.NOT_FOUND,
    ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
    ModuleLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WaitTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    NodeUnavailableError: grpc.StatusCode.UNAVAILABLE,
    JournalUnavailableError: grpc.StatusCode.UNAVAILABLE,
    CursorExpiredError: grpc.StatusCode.FAILED_PRECONDITION,
    WatchFellBehindError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def code_of(error: type[TaskManagerError]) -> grpc.StatusCode | None:
    """The status code of a kind of domain error, or ``None`` if the table lacks it."""
    for cls in error.__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return None


def code_for(exc: TaskManagerError) -> grpc.StatusCode:
    """Returns the status code of a domain error (INTERNAL for one missing from the table)."""
    return code_of(type(exc)) or grpc.StatusCode.INTERNAL


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def make_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    field_violation: tuple[str, str] | None = None,
) -> grpc.Status:
    """Builds a status carrying a google.rpc.Status with an ErrorInfo (and BadRequest)."""
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    ]
    if field_violation is not None:
        field, description = field_violation
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=description
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(proto)


def status_for(exc: TaskManagerError) -> grpc.Status:
    """Maps a domain error to its gRPC status with machine-readable details."""
    metadata, violation = details_of(exc)
    return make_status(code_for(exc), str(exc), exc.reason, metadata, violation)


def details_of(exc: TaskManagerError) -> tuple[dict[str, str], tuple[str, str] | None]:
    """A domain error's ErrorInfo metadata, and the field it faults with why (if it is one)."""
    metadata: dict[str, str] = {}
    violation: tuple[str, str] | None = None
    if isinstance(
        exc,
        TaskNotFoundError | TaskNotAbortableError | TaskAlreadyExistsError | WaitTimeoutError,
    ):
        metadata["task_id"] = str(exc.task_id)
    if isinstance(exc, UnknownModuleError | ModuleLimitError):
        metadata["module"] = exc.module
    if isinstance(exc, ModuleLimitError):
        metadata["limit"] = str(exc.limit)
    if isinstance(exc, QuotaExceededError):
        metadata["quota"] = exc.quota
        metadata["limit"] = str(exc.limit)
    if isinstance(exc, WatchFellBehindError):
        metadata["limit"] = str(exc.limit)
    if isinstance(exc, NodeUnavailableError):
        metadata["node"] = exc.node
    if isinstance(exc, SessionNotFoundError):
        metadata["session_id"] = str(exc.session_id)
    if isinstance(exc, InvalidArgumentError):
        metadata["field"] = exc.field
        violation = (exc.field, exc.description)
    return metadata, violation
