"""The HTTP side's port: every route, the dashboard's files, and how the port is served.

aiohttp serves it on the gRPC server's own event loop, so its handlers call
the same task manager where it lives, with no thread or hop between them.
A path that does not exist is a JSON 404, a method a path does not take a
JSON 405; the dashboard's files are served with a content security policy
that lets the page load nothing but its own.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tm_server.core import TaskManager
from tm_server.metrics import Metrics
from tm_server.metrics.http import MetricsEndpoint, parse_address
from tm_server.metrics.web import metrics_middleware
from tm_server.service.auth import AuthInterceptor
from tm_server.service.durability import Durable

from .errors import METHOD_NOT_ALLOWED, NOT_A_PATH, HttpError
from .own import OwnApi
from .rest import ScyllaRest
from .routing import MAX_BODY_BYTES, Gate, Route
from .streams import EventStreams

log = logging.getLogger(__name__)

#: The dashboard's files (what ships in the package is what the browser loads).
STATIC = Path(__file__).parent / "static"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class HttpParts:
    """What the HTTP side serves from: the server's manager, checks, journal and nodes."""

    manager: TaskManager
    access: AuthInterceptor
    journal: Durable | None
    nodes: Callable[[], Awaitable[Sequence[Any]]]
    tls: ssl.SSLContext | None = None
    metrics: MetricsEndpoint | None = None
    #: The families requests are counted in (``None``: the server has no metrics).
    registry: Metrics | None = None
    test_service: bool = False


class HttpEndpoint:
    """Serves ``http://ADDRESS/`` (``https`` under TLS) until ``close``."""

    def __init__(self, address: str, parts: HttpParts) -> None:
        """Checks the address and builds the routes; nothing is bound until ``start``.

        Raises:
            ValueError: ``address`` is not HOST:PORT.
        """
        try:
            self._host, self._port = parse_address(address)
        except ValueError:
            raise ValueError(
                f"--http-address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:10000) or off"
            ) from None
        self.address = address
        self._parts = parts
        self.gate = Gate(parts.access, parts.journal)
        self.app = self._build()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        """``https`` under TLS, else ``http``."""
        return "https" if self._parts.tls is not None else "http"

    def routes(self) -> list[Route]:
        """Every API route, in the order they are matched."""
        parts = self._parts
        routes = ScyllaRest(parts.manager).routes()
        if parts.test_service:
            from tm_server.testing.rest import TestRest

            routes += TestRest(parts.manager).routes()
        routes += OwnApi(
            parts.manager, parts.access, parts.nodes, secure_cookies=parts.tls is not None
        ).routes()
        routes += EventStreams(parts.manager, parts.access).routes()
        return routes

    def _build(self) -> web.Application:
        middlewares: list[Any] = [self._errors]
        if self._parts.registry is not None:
            # Outermost, so every answer is counted, the errors' included.
            middlewares.insert(0, metrics_middleware(self._parts.registry))
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
        for route in self.routes():
            app.router.add_route(route.method, route.path, self.gate.wrap(route))
        if self._parts.metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        app.router.add_static("/ui/", STATIC, append_version=False)
        app.on_response_prepare.append(_page_headers)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # aiohttp's own answers (no such path, a method the path does not
        # take, a body too large) in the same JSON as every other error.
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return HttpError(
                405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                METHOD_NOT_ALLOWED,
            ).response({"Allow": allowed})  # fmt: skip
        except web.HTTPNotFound:
            return HttpError(
                404, f"no such path: {request.path} (see /task_manager/... and /tm/v1/...)",
                NOT_A_PATH,
            ).response()  # fmt: skip
        except web.HTTPRequestEntityTooLarge:
            return HttpError(
                413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "INVALID_ARGUMENT"
            ).response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return HttpError(exc.status, exc.reason, "INVALID_ARGUMENT").response()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        metrics = self._parts.metrics
        assert metrics is not None
        status, headers, body = await metrics.render(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        return web.Response(status=status, body=body, headers=dict(headers))

    async def start(self) -> int:
        """Binds the address and starts serving; returns the port (port 0 picks one).

        Raises:
            OSError: the address cannot be listened on.
        """
        # A client that goes away cancels its handler, so a stream it held
        # ends at once instead of at its next write.
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._parts.tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += " (is another server running there? --http-address picks another)"
            raise OSError(f"cannot serve HTTP on {self.address}: {reason}") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        return self.port

    async def close(self) -> None:
        """Stops listening and ends the requests and streams in progress."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/" or request.path.startswith("/ui/"):
        response.headers.update(_PAGE_HEADERS)
        if request.path == "/":
            response.headers["Cache-Control"] = "no-cache"


__all__ = ["STATIC", "HttpEndpoint", "HttpParts"]
