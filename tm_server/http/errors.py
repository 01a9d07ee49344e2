"""HTTP status codes and JSON error bodies, from the same error table as gRPC's.

A domain error has its gRPC code (``service.errors``, the one table) and its
ErrorInfo reason; here that code becomes ScyllaDB's HTTP status (400 for an
unknown task or module, never 404; 403 for a task that is not abortable;
408 for a wait that timed out) or, where ScyllaDB has none, the usual one.
The body is ScyllaDB's error object (``message``, ``code``) with tm's
``reason`` and ``metadata``.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from aiohttp import web

from tm_client import reason_name
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core import TaskManagerError, TaskNotAbortableError
from tm_server.service.auth import AccessRefused
from tm_server.service.errors import code_for, details_of

#: Reasons of the HTTP side's own refusals.
CROSS_SITE_REQUEST = "CROSS_SITE_REQUEST"
NOT_A_PATH = "NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
INVALID_ARGUMENT = reason_name(pb.ERROR_REASON_INVALID_ARGUMENT)
INTERNAL = reason_name(pb.ERROR_REASON_INTERNAL)

_HTTP: dict[grpc.StatusCode, int] = {
    # ScyllaDB's: an unknown task or module is a bad parameter, never 404.
    grpc.StatusCode.NOT_FOUND: 400,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


class HttpError(Exception):
    """An answer other than success: an HTTP status, a message, a reason, metadata."""

    def __init__(
        self, status: int, message: str, reason: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        #: Whether the refusal's audit line is written already.
        self.audited = False

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        body: dict[str, Any] = {"message": self.message, "code": self.status, "reason": self.reason}
        if self.metadata:
            body["metadata"] = self.metadata
        return body

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The error as a response."""
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=headers,
        )


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for one the table lacks)."""
    return _HTTP.get(code, 500)


def from_domain(exc: TaskManagerError) -> HttpError:
    """A domain error as the HTTP side answers it."""
    # ScyllaDB's 403 for a task that is not abortable (the swagger says so),
    # where gRPC says FAILED_PRECONDITION.
    status = 403 if isinstance(exc, TaskNotAbortableError) else http_status(code_for(exc))
    metadata, _ = details_of(exc)
    return HttpError(status, str(exc), exc.reason, metadata)


def from_refusal(refusal: AccessRefused) -> HttpError:
    """An access refusal as the HTTP side answers it."""
    return HttpError(
        http_status(refusal.code), refusal.message, refusal.reason, dict(refusal.metadata)
    )


def bad_argument(field: str, message: str) -> HttpError:
    """A query or path value that cannot be used (400)."""
    return HttpError(400, message, INVALID_ARGUMENT, {"field": field})


__all__ = [
    "CROSS_SITE_REQUEST",
    "HttpError",
    "bad_argument",
    "from_domain",
    "from_refusal",
    "http_status",
]
