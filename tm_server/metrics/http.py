"""The metrics endpoint: ``GET /metrics`` over plain HTTP/1.1, served on the server's own loop.

A scrape is rendered on the event loop that runs the server, so the
collectors read the registry and the task manager where they live, never from
another thread, and nothing but asyncio is needed (what must be awaited, the
shards' task counts, is read by the ``refresh`` calls just before). It is a deliberately small
server: one request a connection (``Connection: close``), the request head
read within ``REQUEST_TIMEOUT`` seconds and at most ``MAX_HEAD_BYTES`` long,
``GET`` and ``HEAD`` only. The format follows the scraper's ``Accept``
header (the Prometheus text format by default, OpenMetrics when asked), and
is gzipped when the scraper accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

log = logging.getLogger(__name__)

#: How long a client has to send its request's head.
REQUEST_TIMEOUT = 10.0
#: The longest request head read.
MAX_HEAD_BYTES = 16 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}  # fmt: skip


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as host and port.

    Raises:
        ValueError: not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


class MetricsEndpoint:
    """Serves a registry at ``http://ADDRESS/metrics``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str,
        refresh: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """Checks the address; nothing is bound until ``start``.

        ``refresh`` are awaited before each scrape is rendered (collectors
        whose state must be awaited read it there).

        Raises:
            ValueError: ``address`` is not HOST:PORT.
        """
        self._registry = registry
        self.refresh = list(refresh)
        self.address = address
        self._host, self._port = parse_address(address)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        """Binds the address and starts serving; returns the port (port 0 picks one).

        Raises:
            OSError: the address cannot be listened on.
        """
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            # asyncio's message repeats the address; the OS's reason is enough.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += " (is another server running there?)"
            raise OSError(f"cannot serve metrics on {self.address}: {reason}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stops listening and ends the scrapes in progress."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # nothing useful came: the connection just closes
            status, headers, body = await self._answer(head)
            send_body = not head.startswith(b"HEAD ")
            lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
            lines += [f"{name}: {value}" for name, value in headers]
            lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + (body if send_body else b""))
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, [("Content-Type", "text/plain")], b"bad request\n"
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"GET only\n"
        path = target.split("?", 1)[0]
        if path == "/":
            return 200, [("Content-Type", "text/plain")], b"tm-server: metrics at /metrics\n"
        if path != "/metrics":
            return 404, [("Content-Type", "text/plain")], b"not found: try /metrics\n"
        return await self.render(headers.get("accept", ""), headers.get("accept-encoding", ""))

    async def render(
        self, accept: str, accept_encoding: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A scrape: the status, headers and body for a scraper's Accept headers.

        Served here and on the HTTP side's ``/metrics`` alike.
        """
        encoder, content_type = choose_encoder(accept)
        try:
            for refresh in self.refresh:
                await refresh()
            body = encoder(self._registry)
        except Exception:
            log.exception("a metrics collector failed")
            return 500, [("Content-Type", "text/plain")], b"a collector failed: see the log\n"
        reply = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body, compresslevel=6)
            reply.append(("Content-Encoding", "gzip"))
        return 200, reply, body


__all__ = ["MetricsEndpoint", "parse_address"]
