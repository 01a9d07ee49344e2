"""The access interceptor: who the caller is, whether the table lets it call, and the audit log.

For every call it authenticates the caller (a bearer token from the tokens
file, or the client certificate's identity under mTLS), checks the method's
rule in ``access.ACCESS`` (the role, on the module the call touches, and
that a task or session is the caller's own), counts open streams against
their quotas, and writes one audit line for each operator action. The
principal is then in ``current_principal`` for the servicers (a task
records who created it, an abort who asked).

With neither tokens nor mTLS configured (the default, on loopback) every
caller is anonymous and only the stream quotas and the audit log apply.

A check is dictionary lookups: the token's text is cached once its hash
was found in the file, and a task's owner is read off the shard that holds
it (no status is built).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol
from uuid import UUID

import grpc

from tm_client import reason_name
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core import InvalidArgumentError
from tm_server.core.types import TaskOwner
from tm_server.core.validation import MAX_NAME_LENGTH, parse_uuid
from tm_server.security.roles import Grant, Principal, Role
from tm_server.security.tokens import Tokens

from .access import ACCESS, Rule
from .calls import WrappingInterceptor
from .decoding import MalformedRequest
from .errors import make_status
from .handlers import Context, abort_with
from .refusal import AccessRefused
from .stream_holds import (
    StreamHold,
    StreamLedger,
    StreamQuotas,
)

UNAUTHENTICATED = reason_name(pb.ERROR_REASON_UNAUTHENTICATED)
PERMISSION_DENIED = reason_name(pb.ERROR_REASON_PERMISSION_DENIED)
NOT_OWNER = reason_name(pb.ERROR_REASON_NOT_OWNER)

audit_log = logging.getLogger("tm.audit")
log = logging.getLogger(__name__)

#: The caller of the call being served (``None``: no access checks configured).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tm_principal", default=None
)

# How many callers each cache of authenticated callers holds at most.
_CACHED = 10_000

_NOT_AUDITED = Rule(None)

#: What a principal known only by its certificate gets when no tokens file says more.
_EVERY_ROLE = tuple(Grant(role) for role in Role)


def caller_name() -> str:
    """The name of the caller being served ("" when the server checks no callers)."""
    principal = current_principal.get()
    return "" if principal is None else principal.name


class Owners(Protocol):
    """Where the interceptor learns whose a task or a session is."""

    async def task_owner(self, task_id: UUID) -> TaskOwner | None:
        """The task's module and owner, or ``None`` when no such task is known."""

    def session_owner(self, session_id: UUID) -> str | None:
        """The owner of a live producer session, or ``None`` when there is none."""


_Refusal = AccessRefused


def _unauthenticated(message: str) -> _Refusal:
    return _Refusal(grpc.StatusCode.UNAUTHENTICATED, message, UNAUTHENTICATED)


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class AuthInterceptor(WrappingInterceptor):
    """Enforces ``ACCESS``; see the module's docstring."""

    def __init__(
        self,
        owners: Owners,
        *,
        tokens: Tokens | None = None,
        mtls: bool = False,
        streams: StreamQuotas | None = None,
    ) -> None:
        super().__init__()
        self._owners = owners
        self._tokens = tokens
        self._mtls = mtls
        self.enabled = tokens is not None or mtls
        self._ledger = StreamLedger(streams or StreamQuotas())
        # Authenticated callers seen before, by header and by certificate
        # identity (bounded; known ones only; emptied when the tokens change).
        self._headers: dict[str, tuple[Principal, str]] = {}
        self._certificates: dict[str, Principal] = {}
        if tokens is not None:
            tokens.changed.append(self._recheck_streams)

    # ---- who is calling --------------------------------------------------------------------

    def _identity(self, context: Context) -> str | None:
        # The certificate's subject common name, else its first SAN (grpcio
        # puts both in the auth context once the handshake verified them).
        auth = context.auth_context()
        for key in ("x509_common_name", "x509_subject_alternative_name"):
            values = auth.get(key)
            if values:
                return bytes(next(iter(values))).decode(errors="replace")
        return None

    def _authenticate(self, context: Context) -> tuple[Principal, str | None]:
        header: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = str(value)
                break
        identity = None
        if self._mtls and (header is None or self._tokens is None):
            identity = self._identity(context)
        return self.authenticate(header, identity)

    def authenticate(
        self, header: str | None, identity: str | None
    ) -> tuple[Principal, str | None]:
        """The caller and its token, from an authorization value and a certificate identity.

        ``header`` is ``Bearer TOKEN`` as sent; ``identity`` the verified client
        certificate's name (under mTLS). For every transport: the HTTP side
        calls it with its own header, cookie and certificate.

        Raises:
            AccessRefused: neither identifies a caller this server knows.
        """
        tokens = self._tokens
        if header is not None and tokens is not None:
            # The hot path: a header seen before is one lookup (cleared on reload).
            known = self._headers.get(header)
            if known is not None:
                return known
            scheme, _, rest = str(header).partition(" ")
            token = rest.strip()
            if scheme.lower() != "bearer" or not token:
                raise _unauthenticated("the authorization metadata must be 'Bearer TOKEN'")
            principal = tokens.principal(token)
            if principal is None:
                raise _unauthenticated(
                    "the token is not in this server's tokens file (mistyped, or revoked)"
                )
            if len(self._headers) >= _CACHED:
                self._headers.clear()
            known = self._headers[header] = (principal, token)
            return known
        if identity is not None and self._mtls:
            found = self._certificates.get(identity)
            if found is None:
                if tokens is None:
                    found = Principal(identity, _EVERY_ROLE)
                else:
                    # A certificate the CA signed, but a name the tokens file may
                    # not list: authenticated, with the roles the file gives (maybe none).
                    found = tokens.by_name(identity) or Principal(identity, ())
                if len(self._certificates) >= _CACHED:
                    self._certificates.clear()
                self._certificates[identity] = found
            return found, None
        raise _unauthenticated(
            "this server checks callers: send 'authorization: Bearer TOKEN' metadata"
            + (" or present a client certificate" if self._mtls else "")
        )

    # ---- what it may do --------------------------------------------------------------------

    def _denied(
        self, principal: Principal, method: str, role: Role, module: str | None
    ) -> _Refusal:
        if module is not None and len(module) > MAX_NAME_LENGTH:
            # Not yet checked (the handler would refuse it): kept short, so the
            # refusal fits in the status a client accepts.
            module = module[:MAX_NAME_LENGTH] + "…"
        where = f" on module {module!r}" if module is not None else ""
        metadata = {"role": role.value, "principal": principal.name}
        if module is not None:
            metadata["module"] = module
        return _Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"principal {principal.name} may not call {_short(method)}: it needs the "
            f"{role.value} role{where} (it has: {principal.describe()})",
            PERMISSION_DENIED,
            metadata,
        )

    def _not_owner(self, principal: Principal, what: str, owner_check: str) -> _Refusal:
        return _Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{what} belongs to another principal: only its owner{owner_check} may "
            f"drive it (you are {principal.name})",
            NOT_OWNER,
            {"principal": principal.name},
        )

    def _authorize(
        self, method: str, rule: Rule, request: Any, principal: Principal
    ) -> tuple[str | None, UUID | None]:
        """Checks what the request alone tells.

        Returns the module the call touches (if it names one) and the task
        whose module and owner are still to be checked (``_check_task``).
        """
        role = rule.role
        assert role is not None
        if isinstance(request, MalformedRequest):
            if not principal.allows_somewhere(role):
                raise self._denied(principal, method, role, None)
            return None, None  # the handler refuses the body
        module: str | None = None
        if rule.module is not None:
            module = getattr(request, rule.module)
            if not principal.allows(role, module):
                raise self._denied(principal, method, role, module)
        elif rule.every_module:
            if not principal.allows(role):
                raise self._denied(principal, method, role, None)
        elif not principal.allows_somewhere(role):
            raise self._denied(principal, method, role, None)
        if rule.session is not None:
            self._check_session(rule.session, request, principal)
        if rule.task is None or (not rule.owned and principal.allows(role)):
            return module, None  # no task, or a role on every module: no lookup needed
        # None: no task named, or not an id: the handler says which.
        return module, _uuid(getattr(request, rule.task))

    async def _check_task(
        self, method: str, rule: Rule, principal: Principal, task_id: UUID
    ) -> str | None:
        """The task's module, once the caller may touch it (its owner's, if the rule says)."""
        role = rule.role
        assert role is not None
        found = await self._owners.task_owner(task_id)
        if found is None:
            return None  # the handler answers NOT_FOUND
        if not principal.allows(role, found.module):
            raise self._denied(principal, method, role, found.module)
        if (
            rule.owned
            and found.owner
            and found.owner != principal.name
            and not principal.allows(Role.OPERATOR, found.module)
        ):
            what = "the parent task" if rule.task == "parent_id" else f"task {task_id}"
            raise self._not_owner(principal, what, " (or an operator of its module)")
        return found.module

    def _check_session(self, field: str, request: Any, principal: Principal) -> None:
        session_id = _uuid(getattr(request, field))
        if session_id is None:
            return
        owner = self._owners.session_owner(session_id)
        if owner is not None and owner != principal.name:
            # The session's id was the caller's own input: nothing else is told.
            raise self._not_owner(principal, "the producer session", "")

    async def _admit(
        self, method: str, rule: Rule | None, request: Any, context: Context
    ) -> tuple[Principal | None, str | None, str | None]:
        """The caller, its token and the module its call touches; refuses with a status."""
        if not self.enabled or (rule is not None and rule.role is None):
            return None, None, None
        try:
            principal, token = self._authenticate(context) if rule is not None else (None, None)
            return await self._check(method, rule, request, principal, token)
        except _Refusal as refusal:
            if rule is not None and rule.audited and not isinstance(request, MalformedRequest):
                self._audit(method, request, context.peer(), refusal.code.name, refusal)
            await abort_with(context, refusal.status)

    async def _check(
        self,
        method: str,
        rule: Rule | None,
        request: Any,
        principal: Principal | None,
        token: str | None,
    ) -> tuple[Principal | None, str | None, str | None]:
        if rule is None:
            raise _Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not in the server's access table",
                PERMISSION_DENIED,
            )
        assert principal is not None
        current_principal.set(principal)
        module, task_id = self._authorize(method, rule, request, principal)
        if task_id is not None:
            module = await self._check_task(method, rule, principal, task_id) or module
        return principal, token, module

    async def admit(
        self,
        method: str,
        request: Any,
        *,
        header: str | None,
        identity: str | None,
        peer: str,
    ) -> tuple[Principal | None, str | None, str | None]:
        """Checks a call that came by another transport as the RPC ``method`` it stands for.

        ``request`` has the RPC's request fields (its message, built from the
        call). Sets ``current_principal``; audits a refused operator action.
        Returns the caller, its token and the module the call touches (all
        ``None`` when this server checks no callers).

        Raises:
            AccessRefused: the caller is unknown or may not make this call.
        """
        rule = ACCESS.get(method)
        if not self.enabled or (rule is not None and rule.role is None):
            return None, None, None
        try:
            principal, token = self.authenticate(header, identity)
            return await self._check(method, rule, request, principal, token)
        except _Refusal as refusal:
            if rule is not None and rule.audited:
                self._audit(method, request, peer, refusal.code.name, refusal)
            raise

    # ---- audit -------------------------------------------------------------------------------

    def audit(self, method: str, request: Any, peer: str, outcome: str, why: object = None) -> None:
        """Writes the audit line of an operator action (``method``'s rule says which are)."""
        if not ACCESS.get(method, _NOT_AUDITED).audited:
            return
        self._audit(method, request, peer, outcome, why)

    def _audit(
        self, method: str, request: Any, peer: str, outcome: str, why: object = None
    ) -> None:
        principal = current_principal.get()
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "principal": principal.name if principal is not None else "",
            "peer": peer,
            "action": _short(method),
        }
        if not isinstance(request, MalformedRequest):
            for field in ("task_id", "module", "ttl_seconds", "user_ttl_seconds", "reason"):
                if hasattr(request, field):
                    line[field] = getattr(request, field)
        line["outcome"] = outcome
        if why is not None:
            line["detail"] = str(why)
        # The entry rides along as an attribute: the JSON log format merges it
        # into its line, the text format writes the message.
        audit_log.info("%s", json.dumps(line, ensure_ascii=False), extra={"audit": line})

    # ---- wrapping ----------------------------------------------------------------------------

    def _wrap(self, method: str, handler: Any) -> Any:
        rule = ACCESS.get(method)
        if handler.unary_unary is not None and not self.enabled and not (rule and rule.audited):
            return handler  # nothing to check, count or log: served as it is
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary
            audited = rule is not None and rule.audited

            async def unary(request: Any, context: Context) -> Any:
                await self._admit(method, rule, request, context)
                # A body that does not decode is no action: the handler refuses it.
                if not audited or isinstance(request, MalformedRequest):
                    return await inner(request, context)
                try:
                    reply = await inner(request, context)
                except grpc.aio.AbortError:
                    code = context.code() if hasattr(context, "code") else None
                    name = getattr(code, "name", None) or "ABORTED"
                    self._audit(method, request, context.peer(), name, context.details() or None)
                    raise
                except BaseException as exc:
                    self._audit(method, request, context.peer(), "ERROR", exc)
                    raise
                self._audit(method, request, context.peer(), "OK")
                return reply

            return handler._replace(unary_unary=unary)
        if handler.unary_stream is not None:
            stream_inner: Any = handler.unary_stream

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                principal, token, module = await self._admit(method, rule, request, context)
                async for item in self._counted(
                    stream_inner(request, context), context, principal, token, rule, module
                ):
                    yield item

            return handler._replace(unary_stream=stream)
        if self.enabled and (rule is None or rule.role is not None):
            # A request stream (only reflection's, which is open to anyone):
            # no rule here reads one, so none gets past the checks unread.
            return _refused(handler, method)
        return handler

    async def _counted(
        self,
        items: AsyncIterator[Any],
        context: Context,
        principal: Principal | None,
        token: str | None,
        rule: Rule | None,
        module: str | None,
    ) -> AsyncIterator[Any]:
        try:
            hold = self.hold_stream(context.peer(), principal, token, rule, module)
        except _Refusal as refusal:
            await abort_with(context, refusal.status)
        try:
            async for item in items:
                yield item
        except asyncio.CancelledError:
            if hold.revoked is None:
                raise
            if hold.task is not None:
                hold.task.uncancel()
            await abort_with(context, hold.revoked.status)
        finally:
            self.release_stream(hold)

    def hold_stream(
        self,
        connection: str,
        principal: Principal | None,
        token: str | None,
        rule: Rule | None,
        module: str | None,
    ) -> StreamHold:
        """Counts an open stream of the current task against the quotas, for any transport.

        While held, a reload of the tokens that takes the caller's rights away
        cancels the task with ``revoked`` set (what to answer). Release it with
        ``release_stream`` however the stream ends.

        Raises:
            AccessRefused: the connection or the principal has its quota of streams open.
        """
        checked = principal is not None and rule is not None and rule.role is not None
        role = rule.role if checked and rule is not None else None
        return self._ledger.hold(connection, principal, token, role, module)

    def release_stream(self, hold: StreamHold) -> None:
        """Ends what ``hold_stream`` counted."""
        self._ledger.release(hold)

    # ---- revocation --------------------------------------------------------------------------

    def _recheck_streams(self) -> None:
        """After a reload: ends the streams of callers whose token or role went away."""
        tokens = self._tokens
        assert tokens is not None
        self._headers.clear()
        self._certificates.clear()
        for entry in self._ledger.revocable():
            assert entry.principal is not None and entry.role is not None
            if entry.token is not None:
                now = tokens.principal(entry.token)
            else:
                now = tokens.by_name(entry.principal.name) or Principal(entry.principal.name, ())
            if now is None:
                entry.revoked = _unauthenticated(
                    "the token was removed from the server's tokens file"
                )
            elif not now.allows(entry.role, entry.module) and not (
                entry.module is None and now.allows_somewhere(entry.role)
            ):
                entry.revoked = self._denied(now, "this stream", entry.role, entry.module)
            else:
                continue
            if entry.task is not None:
                entry.task.cancel()
        ended = sum(1 for e in self._ledger.revocable() if e.revoked)
        if ended:
            log.info("tokens reloaded: ended %d streams", ended)


def _refused(handler: Any, method: str) -> Any:
    status = make_status(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{method} takes a request stream, which the access table does not allow",
        PERMISSION_DENIED,
    )

    async def refuse(requests: Any, context: Context) -> Any:
        await abort_with(context, status)

    if handler.stream_unary is not None:
        return handler._replace(stream_unary=refuse)
    return handler._replace(stream_stream=refuse)


def _uuid(text: str) -> UUID | None:
    if not text:
        return None
    try:
        return parse_uuid("task_id", text)
    except InvalidArgumentError:
        return None


__all__ = [
    "AccessRefused",
    "AuthInterceptor",
    "Owners",
    "StreamHold",
    "StreamQuotas",
    "caller_name",
    "current_principal",
]
