"""Routes of the HTTP side, each checked as the RPC it stands for.

A route names the RPC whose rule in ``service.access`` it obeys and the
request fields the rule reads (the module, the task), so the HTTP side and
gRPC share one table of who may do what, one set of checks (the access
interceptor's own), one audit log, and the durability of the calls that
change the registry: the reply of a route standing for a durable RPC waits
for the journal, as the RPC's does.

Around every call: cross-site protection for what changes state, the
caller's admission, the journal, and the error table (a domain error gets
its status and JSON body; anything unexpected a 500 with an incident id in
the log, never a traceback to the caller).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from tm_server.core import JournalUnavailableError, TaskManagerError
from tm_server.core.logs import RateLimitedLog
from tm_server.logsetup import CallInfo, current_call
from tm_server.security.roles import Principal
from tm_server.service.auth import AccessRefused, AuthInterceptor
from tm_server.service.durability import DURABLE_METHODS, Durable

from .errors import CROSS_SITE_REQUEST, INTERNAL, HttpError, from_domain, from_refusal

log = logging.getLogger(__name__)
#: One line per request at DEBUG (as ``tm.rpc`` for RPCs).
http_log = logging.getLogger("tm.http")

#: The cookie the login form sets (the token, HttpOnly).
TOKEN_COOKIE = "tm_token"
#: The cookie a page copies into ``CSRF_HEADER`` (readable by the page's own scripts).
CSRF_COOKIE = "tm_csrf"
CSRF_HEADER = "X-TM-CSRF"

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Fields = Callable[[web.Request], Any]
Handler = Callable[["Call"], Awaitable[web.StreamResponse]]


def no_fields(request: web.Request) -> Any:
    """A route whose rule reads no request field."""
    return SimpleNamespace()


def module_field(request: web.Request) -> Any:
    """The module named in the path."""
    return SimpleNamespace(module=request.match_info.get("module", ""))


def task_field(request: web.Request) -> Any:
    """The task named in the path (or the ``task_id`` query value)."""
    return SimpleNamespace(
        task_id=request.match_info.get("task_id") or request.query.get("task_id", "")
    )


@dataclass(frozen=True, slots=True)
class Route:
    """One path: its method, the RPC it stands for (``None``: public), its handler."""

    method: str
    path: str
    rpc: str | None
    handler: Handler
    fields: Fields = no_fields


@dataclass(slots=True)
class Call:
    """A request being served: the request, its caller, and the route's RPC."""

    request: web.Request
    principal: Principal | None
    token: str | None
    module: str | None
    route: Route


class Gate:
    """What every route goes through (see the module's docstring)."""

    def __init__(self, access: AuthInterceptor, journal: Durable | None) -> None:
        self.access = access
        self._journal = journal
        self.unexpected_log = RateLimitedLog(log)

    def wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp handler of ``route``."""
        durable = route.rpc in DURABLE_METHODS and self._journal is not None
        name = f"{route.method} {route.path}"

        async def serve(request: web.Request) -> web.StreamResponse:
            fields: Any = None
            # What a log line written meanwhile names (the JSON format's
            # method, peer, task id), as for an RPC.
            call = CallInfo(name, _Peer(request), None)
            current_call.set(call)
            started = time.perf_counter()
            try:
                if request.method in _UNSAFE:
                    check_same_origin(request)
                    await check_body_size(request)
                fields = call.request = route.fields(request)
                principal, token, module = await self.admit(route, request, fields)
                if durable:
                    await self._ready()
                response = await route.handler(Call(request, principal, token, module, route))
                if durable:
                    await self._durable()
                self._audit(route, fields, request, "OK")
            except HttpError as exc:
                if not exc.audited:
                    self._audit(route, fields, request, exc.reason, exc.message)
                return exc.response()
            except TaskManagerError as exc:
                error = from_domain(exc)
                self._audit(route, fields, request, error.reason, error.message)
                return error.response()
            except (web.HTTPException, ConnectionError):
                raise
            except Exception as exc:
                error = self.unexpected(f"{route.method} {route.path}", exc)
                self._audit(route, fields, request, error.reason, error.message)
                return error.response()
            finally:
                call.done = True
                if http_log.isEnabledFor(logging.DEBUG):
                    elapsed = (time.perf_counter() - started) * 1000
                    http_log.debug("%s %s in %.3f ms", name, request.path, elapsed,
                                   extra={"duration_ms": round(elapsed, 3)})  # fmt: skip
            return response

        return serve

    async def admit(
        self, route: Route, request: web.Request, fields: Any
    ) -> tuple[Principal | None, str | None, str | None]:
        """The caller of ``request`` as the route's RPC would see it; raises HttpError."""
        if route.rpc is None or not self.access.enabled:
            return None, None, None
        header, by_cookie = credentials_of(request)
        if by_cookie and request.method in _UNSAFE:
            check_csrf_token(request)
        try:
            return await self.access.admit(
                route.rpc,
                fields,
                header=header,
                identity=certificate_identity(request),
                peer=peer_of(request),
            )
        except AccessRefused as refusal:
            error = from_refusal(refusal)
            error.audited = True  # admit wrote the refusal's audit line
            raise error from None

    async def _ready(self) -> None:
        assert self._journal is not None
        if self._journal.failure is not None:
            await self._durable()

    async def _durable(self) -> None:
        assert self._journal is not None
        try:
            await self._journal.commit()
        except JournalUnavailableError as exc:
            raise from_domain(exc) from None

    def _audit(
        self, route: Route, fields: Any, request: web.Request, outcome: str, why: object = None
    ) -> None:
        if route.rpc is not None and fields is not None:
            self.access.audit(route.rpc, fields, peer_of(request), outcome, why)

    def unexpected(self, where: str, exc: BaseException) -> HttpError:
        """Logs an unexpected error (rate-limited) and returns the 500 a caller sees."""
        incident = uuid.uuid4().hex[:12]
        self.unexpected_log.log(
            logging.ERROR,
            (where, type(exc)),
            "unexpected error in HTTP %s (incident %s): %s: %s",
            where,
            incident,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return HttpError(
            500,
            f"internal error; the server log has the details (incident {incident})",
            INTERNAL,
            {"incident": incident},
        )


def check_same_origin(request: web.Request) -> None:
    """Refuses a state-changing request a browser says comes from another site.

    ``curl`` and programs send neither header; every browser sends
    ``Origin`` with a cross-origin POST, and ``Sec-Fetch-Site`` with all.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise _cross_site(f"Sec-Fetch-Site is {site!r}")
    origin = request.headers.get("Origin")
    if origin is not None:
        host = origin.split("://", 1)[-1].rstrip("/")
        if origin == "null" or host != request.host:
            raise _cross_site(f"Origin {origin!r} is not this server ({request.host})")


#: The largest request body (a login form; no other route reads one).
MAX_BODY_BYTES = 64 * 1024


async def check_body_size(request: web.Request) -> None:
    """Refuses a body over ``MAX_BODY_BYTES`` before anything is done (413)."""
    length = request.content_length
    if length is None and request.body_exists:
        # A chunked body: read as far as the limit, kept for the handler.
        body = await request.content.read(MAX_BODY_BYTES + 1)
        length = len(body)
        if length <= MAX_BODY_BYTES:
            request.content.unread_data(body)
    if length is not None and length > MAX_BODY_BYTES:
        raise HttpError(
            413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "INVALID_ARGUMENT"
        )


def check_csrf_token(request: web.Request) -> None:
    """A request authenticated by the cookie must carry the cookie's twin in a header."""
    expected = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if not expected or sent != expected:
        raise _cross_site(
            f"a request authenticated by the {TOKEN_COOKIE} cookie must send the "
            f"{CSRF_HEADER} header with the value of the {CSRF_COOKIE} cookie"
        )


def _cross_site(why: str) -> HttpError:
    return HttpError(
        403, f"refused as a cross-site request: {why}", CROSS_SITE_REQUEST, {"check": "csrf"}
    )


def credentials_of(request: web.Request) -> tuple[str | None, bool]:
    """The request's authorization value, and whether it came from the login cookie.

    The ``Authorization`` header wins; else the cookie's token as ``Bearer TOKEN``.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        return header, False
    cookie = request.cookies.get(TOKEN_COOKIE)
    return (f"Bearer {cookie}", True) if cookie else (None, False)


class _Peer:
    """What the log's call fields read of a request: its peer, as a gRPC context's."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def peer(self) -> str:
        return peer_of(self._request)


def certificate_identity(request: web.Request) -> str | None:
    """The verified client certificate's common name (else its first DNS name), under mTLS."""
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI", "IP Address"):
            return str(value)
    return None


def peer_of(request: web.Request) -> str:
    """The caller's address as gRPC writes a peer (``ipv4:HOST:PORT``)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return "http:unknown"
    host, port = peer[0], peer[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "Call",
    "Gate",
    "Route",
    "certificate_identity",
    "check_csrf_token",
    "check_same_origin",
    "credentials_of",
    "module_field",
    "no_fields",
    "peer_of",
    "task_field",
]
