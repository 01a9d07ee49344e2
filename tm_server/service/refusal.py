"""A caller refused by the access checks, kept apart from any transport."""

from __future__ import annotations

import grpc

from .errors import make_status


class AccessRefused(Exception):
    """A caller refused by the access checks: a gRPC code, a message and an ErrorInfo reason.

    Kept apart from any transport: the gRPC side turns it into a status
    (``status``), the HTTP side into its own status code and JSON body.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}

    @property
    def status(self) -> grpc.Status:
        """The refusal as a gRPC status with its google.rpc details."""
        return make_status(self.code, self.message, self.reason, self.metadata or None)


__all__ = ["AccessRefused"]
