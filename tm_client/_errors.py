"""Typed client exceptions, keyed by gRPC status code (and by ErrorInfo reason where finer)."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .pb import task_manager_pb2 as pb


class TmError(Exception):
    """An error from a tm server (or from reaching it).

    Attributes:
        code: the gRPC status code.
        message: the server's message, meant for people.
        reason: the machine-readable ErrorInfo reason ("" if none was sent).
        metadata: the ErrorInfo metadata (e.g. ``task_id``, ``field``).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class CancelledError(TmError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnknownError(TmError):
    """The server answered UNKNOWN (tm itself never does)."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(TmError):
    """A request field is bad; ``metadata["field"]`` names it."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field(self) -> str:
        """The name of the bad field."""
        return self.metadata.get("field", "")


class DeadlineExceededError(TmError):
    """The deadline (or a wait's timeout) passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(TmError):
    """An unknown task or module."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TmError):
    """A task with that id exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(TmError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(TmError):
    """A limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(TmError):
    """Not allowed in the current state (e.g. aborting a task that is not abortable)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(TmError):
    """The operation was aborted (concurrency conflict)."""

    code = grpc.StatusCode.ABORTED


class OutOfRangeError(TmError):
    """A value is out of range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(TmError):
    """The server does not serve this RPC (e.g. the test service is off)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(TmError):
    """The server hit an unexpected error; its log has the details."""

    code = grpc.StatusCode.INTERNAL


class UnavailableError(TmError):
    """The server cannot be reached, or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLossError(TmError):
    """Unrecoverable data loss."""

    code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(TmError):
    """The caller is not authenticated."""

    code = grpc.StatusCode.UNAUTHENTICATED


class TaskNotFoundError(NotFoundError):
    """No task with that id (reason TASK_NOT_FOUND)."""


class UnknownModuleError(NotFoundError):
    """No module with that name (reason MODULE_NOT_FOUND)."""


class TaskNotAbortableError(FailedPreconditionError):
    """The task is not abortable (reason TASK_NOT_ABORTABLE)."""


class WaitTimeoutError(DeadlineExceededError):
    """The task did not finish within the wait's timeout (reason WAIT_TIMEOUT)."""


class StoreUnavailableError(UnavailableError):
    """The cluster store cannot be reached now; retry later (reason STORE_UNAVAILABLE)."""


class NodeUnavailableError(UnavailableError):
    """The node that holds the task did not answer in time (reason NODE_UNAVAILABLE)."""


class JournalUnavailableError(UnavailableError):
    """The node cannot write its journal (a full disk): the change was not made durable.

    Reason JOURNAL_UNAVAILABLE. Reads keep working; retry once the disk is fixed.
    """


class NotOwnerError(PermissionDeniedError):
    """The task or producer session belongs to another principal (reason NOT_OWNER)."""


class QuotaExceededError(ResourceExhaustedError):
    """A quota of the server was reached (reason QUOTA_EXCEEDED).

    ``metadata["quota"]`` names it (e.g. "tasks_per_principal") and
    ``metadata["limit"]`` gives its value.
    """


class CursorExpiredError(FailedPreconditionError):
    """A watch cursor the server no longer has changes for (reason CURSOR_EXPIRED).

    The cursor is older than the server's window of changes, or from before
    it restarted: list the tasks again (or watch with a snapshot) and watch
    from the new cursor; ``watch_tasks(resnapshot=True)`` does that itself.
    """


class WatchFellBehindError(ResourceExhaustedError):
    """The watch's reader fell more than the server's window behind (reason WATCH_FELL_BEHIND).

    Watch again with a snapshot; ``watch_tasks(resnapshot=True)`` does that itself.
    """


_BY_CODE: dict[grpc.StatusCode, type[TmError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def reason_name(value: int) -> str:
    """The ErrorInfo reason string of a ``tm.v1.ErrorReason`` value ("TASK_NOT_FOUND")."""
    return pb.ErrorReason.Name(value).removeprefix("ERROR_REASON_")  # type: ignore[arg-type]


#: Every reason a tm server sends, from the proto's ErrorReason enum.
REASONS: frozenset[str] = frozenset(reason_name(v) for v in pb.ErrorReason.values() if v)

_BY_REASON: dict[str, type[TmError]] = {
    reason_name(pb.ERROR_REASON_TASK_NOT_FOUND): TaskNotFoundError,
    reason_name(pb.ERROR_REASON_MODULE_NOT_FOUND): UnknownModuleError,
    reason_name(pb.ERROR_REASON_TASK_NOT_ABORTABLE): TaskNotAbortableError,
    reason_name(pb.ERROR_REASON_WAIT_TIMEOUT): WaitTimeoutError,
    reason_name(pb.ERROR_REASON_STORE_UNAVAILABLE): StoreUnavailableError,
    reason_name(pb.ERROR_REASON_NODE_UNAVAILABLE): NodeUnavailableError,
    reason_name(pb.ERROR_REASON_JOURNAL_UNAVAILABLE): JournalUnavailableError,
    reason_name(pb.ERROR_REASON_NOT_OWNER): NotOwnerError,
    reason_name(pb.ERROR_REASON_QUOTA_EXCEEDED): QuotaExceededError,
    reason_name(pb.ERROR_REASON_CURSOR_EXPIRED): CursorExpiredError,
    reason_name(pb.ERROR_REASON_WATCH_FELL_BEHIND): WatchFellBehindError,
}


def _error_info(error: Any) -> tuple[str, dict[str, str]]:
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return "", {}
    if status is None:
        return "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason), dict(info.metadata)
    return "", {}


def from_rpc_error(error: grpc.RpcError) -> TmError:
    """Returns the typed exception for a failed call (raise it ``from`` the original)."""
    code: grpc.StatusCode = error.code()
    message = str(error.details() or code.name)
    reason, metadata = _error_info(error)
    cls = _BY_REASON.get(reason)
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, TmError)
    return cls(message, code=code, reason=reason, metadata=metadata)
