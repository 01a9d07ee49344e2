"""Open server streams counted against their quotas, for every transport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from tm_client import reason_name
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core.counts import count
from tm_server.security.roles import Principal, Role

from .refusal import AccessRefused

QUOTA_EXCEEDED = reason_name(pb.ERROR_REASON_QUOTA_EXCEEDED)

#: Streams one connection may hold open (``--max-streams-per-connection``).
DEFAULT_MAX_STREAMS_PER_CONNECTION = 20_000
#: Streams one authenticated principal may hold open (``--max-streams-per-principal``).
DEFAULT_MAX_STREAMS_PER_PRINCIPAL = 50_000


@dataclass(frozen=True, slots=True)
class StreamQuotas:
    """Limits on open server streams (watches, recursive statuses, sessions)."""

    per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    per_principal: int = DEFAULT_MAX_STREAMS_PER_PRINCIPAL


class StreamHold:
    """An open stream counted against its quotas (``AuthInterceptor.hold_stream``)."""

    __slots__ = ("connection", "module", "principal", "revoked", "role", "task", "token")

    def __init__(
        self, task: asyncio.Task[Any] | None, connection: str, principal: Principal | None,
        token: str | None, role: Role | None, module: str | None,
    ) -> None:  # fmt: skip
        self.task = task
        self.connection = connection
        self.principal = principal
        self.token = token
        self.role = role
        self.module = module
        #: Why the stream was ended by a reload of the tokens (``None``: it was not).
        self.revoked: AccessRefused | None = None


class StreamLedger:
    """Open streams by connection and by principal, against their quotas.

    Holds of checked callers are kept, so a reload of the tokens can find
    the streams whose rights went away (``revocable``).
    """

    def __init__(self, quotas: StreamQuotas) -> None:
        self._quotas = quotas
        self._by_connection: dict[str, int] = {}
        self._by_principal: dict[str, int] = {}
        self._open: set[StreamHold] = set()

    def hold(
        self, connection: str, principal: Principal | None, token: str | None,
        role: Role | None, module: str | None,
    ) -> StreamHold:  # fmt: skip
        """Counts a stream of the current task (kept for revocation when ``role`` is given).

        Raises:
            AccessRefused: the connection or the principal has its quota of streams open.
        """
        self._take(connection, principal.name if principal is not None else None)
        hold = StreamHold(asyncio.current_task(), connection, principal, token, role, module)
        if role is not None:
            self._open.add(hold)
        return hold

    def release(self, hold: StreamHold) -> None:
        """Ends what ``hold`` counted."""
        self._open.discard(hold)
        self._give(hold.connection, hold.principal.name if hold.principal is not None else None)

    def revocable(self) -> list[StreamHold]:
        """The open holds of checked callers."""
        return list(self._open)

    def _take(self, connection: str, principal: str | None) -> None:
        quotas = self._quotas
        held = self._by_connection.get(connection, 0)
        if held >= quotas.per_connection:
            raise _quota(
                "streams_per_connection",
                quotas.per_connection,
                f"this connection has {held} streams open (--max-streams-per-connection "
                f"{quotas.per_connection}); close some, or open another connection",
            )
        owned = self._by_principal.get(principal, 0) if principal is not None else 0
        if principal is not None and owned >= quotas.per_principal:
            raise _quota(
                "streams_per_principal",
                quotas.per_principal,
                f"principal {principal} has {owned} streams open (--max-streams-per-principal "
                f"{quotas.per_principal}); close some first",
            )
        count(self._by_connection, connection, 1)
        if principal is not None:
            count(self._by_principal, principal, 1)

    def _give(self, connection: str, principal: str | None) -> None:
        count(self._by_connection, connection, -1)
        if principal is not None:
            count(self._by_principal, principal, -1)


def _quota(quota: str, limit: int, message: str) -> AccessRefused:
    return AccessRefused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        QUOTA_EXCEEDED,
        {"quota": quota, "limit": str(limit)},
    )


__all__ = [
    "DEFAULT_MAX_STREAMS_PER_CONNECTION",
    "DEFAULT_MAX_STREAMS_PER_PRINCIPAL",
    "StreamHold",
    "StreamLedger",
    "StreamQuotas",
]
