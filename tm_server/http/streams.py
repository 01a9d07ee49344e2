"""Server-Sent Events over ``WatchTasks`` and ``WaitTask``, for browsers and ``curl -N``.

A module watch's batch is one event whose ``id`` is the batch's cursor: a
browser's ``EventSource`` sends it back as ``Last-Event-ID`` when it
reconnects, and the watch resumes after it, missing nothing and repeating
nothing. Every watcher sent the same batch shares its text (``wire_text``),
as gRPC watchers share its bytes.

What can be refused is refused before the stream starts (a 4xx with the
JSON error body); an error once it runs is one ``error`` event with that
body, then the end. A comment line goes out after ``KEEPALIVE`` seconds of
silence, so proxies keep the connection and a vanished client is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any, TypeVar

from aiohttp import web

from tm_server.core import TaskManager, TaskManagerError
from tm_server.core.module_watch import WatchBatch
from tm_server.service.access import ACCESS
from tm_server.service.auth import AccessRefused, AuthInterceptor

from . import params
from .errors import HttpError, from_domain, from_refusal
from .rest import list_filter
from .routing import Call, Route, peer_of, task_field
from .shapes import batch_json, status_json

#: Seconds of silence after which a comment line is sent.
KEEPALIVE = 15.0
#: How long the first read may take and still be answered as an HTTP error.
_FIRST_READ = 0.25
_TM = "/tm.v1.TaskManagerService/"
T = TypeVar("T")


def _watch_fields(request: web.Request) -> Any:
    return SimpleNamespace(module=request.query.get("module", ""))


def event_text(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One event in the text/event-stream format."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def batch_text(batch: WatchBatch) -> bytes:
    """A watch batch's event, encoded once for every watcher it goes to."""
    text = batch.wire_text
    if not isinstance(text, bytes):
        # Snapshot batches carry no cursor: a snapshot does not resume midway.
        text = batch.wire_text = event_text("batch", batch_json(batch), batch.cursor or None)
    return text


#: The event after a task's final status.
_END = b"event: end\ndata: {}\n\n"


def _status_text(status: Any) -> bytes:
    return event_text("status", status_json(status))


class EventStreams:
    """The two streams; ``routes`` lists them with the RPCs they stand for."""

    def __init__(self, manager: TaskManager, access: AuthInterceptor) -> None:
        self._tm = manager
        self._access = access

    def routes(self) -> list[Route]:
        """Tm's stream paths."""
        return [
            Route("GET", "/tm/v1/watch", _TM + "WatchTasks", self.watch, _watch_fields),
            Route("GET", "/tm/v1/wait/{task_id}", _TM + "WaitTask", self.wait, task_field),
        ]

    async def watch(self, call: Call) -> web.StreamResponse:
        """``GET /tm/v1/watch``: a module's (or every module's) changes."""
        request = call.request
        resumed = request.headers.get("Last-Event-ID", "")
        cursor = resumed or params.text(request, "cursor")
        batches = await self._tm.open_module_watch(
            params.text(request, "module") or None,
            list_filter(request),
            # A reconnect resumes after its last event, never from a new snapshot.
            snapshot=params.flag(request, "snapshot") and not cursor,
            full_status=params.flag(request, "full_status"),
            cursor=cursor,
        )
        return await self._stream(call, batches, batch_text, None)

    async def wait(self, call: Call) -> web.StreamResponse:
        """``GET /tm/v1/wait/{task_id}``: a task's status at each change, until it ends."""
        request = call.request
        timeout = params.number(request, "timeout")
        statuses = await self._tm.open_watch(params.task_id(request), timeout)
        return await self._stream(
            call,
            statuses,
            lambda status: event_text("status", status_json(status)),
            b"event: end\ndata: {}\n\n",
        )

    async def _stream(
        self,
        call: Call,
        items: AsyncGenerator[T, None],
        encode: Any,
        last: bytes | None,
    ) -> web.StreamResponse:
        request = call.request
        try:
            hold = self._access.hold_stream(
                peer_of(request), call.principal, call.token, ACCESS.get(call.route.rpc or ""),
                call.module,
            )  # fmt: skip
        except AccessRefused as refusal:
            await items.aclose()
            raise from_refusal(refusal) from None
        # An error the first read finds (a cursor past the window, say) is
        # still an HTTP error: the first step gets a moment before the head
        # is sent. A first read that must wait for a change is sent later.
        step = asyncio.ensure_future(anext(items))
        try:
            await asyncio.wait((step,), timeout=_FIRST_READ)
            if step.done() and not isinstance(step.exception(), StopAsyncIteration):
                step.result()  # raises what the first read raised
        except BaseException:
            await _cancel(step)
            await items.aclose()
            self._access.release_stream(hold)
            raise
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            await self._pump(response, items, encode, step)
            if last is not None:
                await response.write(last)
        except (ConnectionError, asyncio.CancelledError):
            if hold.revoked is None:
                raise
            # The caller's rights went with a reload of the tokens: say so, then end.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            with contextlib.suppress(ConnectionError):
                await response.write(event_text("error", from_refusal(hold.revoked).body()))
        except TaskManagerError as exc:
            with contextlib.suppress(ConnectionError):
                await response.write(event_text("error", from_domain(exc).body()))
        finally:
            await items.aclose()
            self._access.release_stream(hold)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _pump(
        self, response: web.StreamResponse, items: AsyncGenerator[T, None], encode: Any,
        step: asyncio.Future[T],
    ) -> None:  # fmt: skip
        while True:
            try:
                while True:
                    done, _ = await asyncio.wait((step,), timeout=KEEPALIVE)
                    if done:
                        break
                    await response.write(b": keep-alive\n\n")
            except BaseException:
                await _cancel(step)
                raise
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            await response.write(encode(item))
            step = asyncio.ensure_future(anext(items))


async def _cancel(step: asyncio.Future[Any]) -> None:
    step.cancel()
    with contextlib.suppress(BaseException):
        await step


__all__ = ["KEEPALIVE", "EventStreams", "HttpError", "batch_text", "event_text"]
