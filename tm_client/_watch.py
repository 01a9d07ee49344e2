"""Watching tasks (WatchTasks) across the streams a watch resumes, blocking or asyncio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, Self

import grpc

from ._errors import (
    CursorExpiredError,
    InternalError,
    TmError,
    UnavailableError,
    WatchFellBehindError,
    from_rpc_error,
)
from ._resume import _Backoff
from ._types import TaskEvent, TaskState, WatchBatch, type_filter, wire_states
from .pb import task_manager_pb2 as pb

#: Why a watch started its snapshot again, in ``WatchBatch.restart_reason``.
RESTART_UNAVAILABLE = "UNAVAILABLE"


class _WatchState:
    """A task watch across its streams: the request to send next, the cursor, the restarts.

    After each response the next request is the filters and that response's
    cursor, so a stream that breaks resumes exactly after the last batch
    handed out. A snapshot has no cursor to resume in its middle (its batches
    carry none until the one that completes it): a stream that breaks within
    one starts the snapshot again (flagged ``restarted`` once events of it
    were handed out). With ``resnapshot``, an expired cursor
    or a reader that fell behind starts a new snapshot too, as long as the
    previous restart's snapshot completed (a reader that cannot keep up even
    then gets the error).
    """

    def __init__(
        self,
        *,
        module: str | None,
        internal: bool,
        keyspace: str,
        table: str,
        states: Iterable[TaskState | str],
        types: Iterable[str],
        snapshot: bool,
        full_status: bool,
        cursor: str | None,
        resnapshot: bool,
        patience: float,
    ) -> None:
        self._filters: dict[str, Any] = {
            "module": module or "",
            "internal": internal,
            "keyspace": keyspace,
            "table": table,
            "states": wire_states(states),
            "types": type_filter(types),
            "full_status": full_status,
        }
        self.cursor = cursor or ""
        # The first request is the caller's as given (the server refuses a
        # snapshot with a cursor, and says so).
        self._next = pb.WatchTasksRequest(**self._filters, snapshot=snapshot, cursor=self.cursor)
        self._in_snapshot = snapshot
        self._snapshot_seen = False  # whether events of the current snapshot were handed out
        self._resnapshot = resnapshot
        self._patience = patience
        self._backoff: _Backoff | None = None
        self._restart_reason = ""  # set: the next batch is the first of a restarted snapshot
        self._restart_settled = True  # whether the last restart's snapshot completed

    def request(self) -> pb.WatchTasksRequest:
        """The next stream's request."""
        return self._next

    def received(self, response: pb.WatchTasksResponse) -> WatchBatch:
        """Decodes a response into the batch to hand out, and moves the cursor on."""
        self._backoff = None  # the stream is back
        events = tuple(TaskEvent.from_pb(e) for e in response.events)
        if response.cursor:
            self.cursor = response.cursor
        if response.snapshot_complete:
            self._in_snapshot = False
            self._restart_settled = True
        elif self._in_snapshot and events:
            self._snapshot_seen = True
        if not self._in_snapshot and self.cursor:
            self._next = pb.WatchTasksRequest(**self._filters, cursor=self.cursor)
        batch = WatchBatch(
            events=events,
            cursor=self.cursor,
            snapshot_complete=response.snapshot_complete,
            restarted=bool(self._restart_reason),
            restart_reason=self._restart_reason,
        )
        self._restart_reason = ""
        return batch

    def ended(self) -> TmError:
        """The error for a stream that ended with OK, which a tm server never does."""
        return InternalError(
            "the server ended the task watch, which it never does by itself",
            reason="WATCH_ENDED",
        )

    def failed(self, error: TmError) -> float | None:
        """After a stream failed: the wait before the next stream, or ``None`` to raise."""
        if isinstance(error, UnavailableError):
            if self._backoff is None:
                self._backoff = _Backoff(self._patience)
            delay = self._backoff.next_delay()
            if delay is not None and self._in_snapshot and self._snapshot_seen:
                self._restart(RESTART_UNAVAILABLE)
            return delay
        if (
            isinstance(error, (CursorExpiredError, WatchFellBehindError))
            and self._resnapshot
            and self._restart_settled
        ):
            self._restart(error.reason)
            self._restart_settled = False
            return 0.0
        return None

    def _restart(self, reason: str) -> None:
        # Nothing before the new snapshot resumes it: its batches carry no
        # cursor until the one that completes it.
        self.cursor = ""
        self._next = pb.WatchTasksRequest(**self._filters, snapshot=True)
        self._in_snapshot = True
        self._snapshot_seen = False
        self._restart_reason = reason


class TaskWatch(Iterator[WatchBatch]):
    """A running task watch (``TaskManagerClient.watch_tasks``): an iterator of batches.

    Each ``WatchBatch`` holds events in order and the cursor after them;
    ``cursor`` is the last one handed out, to resume a later watch from. The
    watch runs until it is closed (``close()``, a ``with`` block, or dropping
    it), and never ends by itself.

    Example:
        >>> with tm.watch_tasks("repair", snapshot=True) as watch:
        ...     for batch in watch:
        ...         for event in batch:
        ...             print(event.type, event.task.task_id, event.task.state)
    """

    def __init__(self, method: Callable[[pb.WatchTasksRequest], Any], state: _WatchState) -> None:
        self._method = method
        self._state = state
        self._batches = self._run()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchBatch:
        return next(self._batches)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cursor(self) -> str:
        """The cursor after the last batch handed out (the caller's own before any)."""
        return self._state.cursor

    def close(self) -> None:
        """Cancels the stream; the iterator ends."""
        self._batches.close()

    def _run(self) -> Generator[WatchBatch]:
        while True:
            call = self._method(self._state.request())
            cause: grpc.RpcError | None = None
            try:
                for response in call:
                    yield self._state.received(response)
                error = self._state.ended()
            except grpc.RpcError as exc:
                error, cause = from_rpc_error(exc), exc
            finally:
                call.cancel()  # a no-op once the stream ended; frees it on close
            delay = self._state.failed(error)
            if delay is None:
                raise error from cause
            time.sleep(delay)


class AsyncTaskWatch(AsyncIterator[WatchBatch]):
    """The asyncio twin of ``TaskWatch`` (``AsyncTaskManagerClient.watch_tasks``).

    Example:
        >>> async with tm.watch_tasks(snapshot=True) as watch:
        ...     async for batch in watch:
        ...         ...
    """

    def __init__(self, method: Callable[[pb.WatchTasksRequest], Any], state: _WatchState) -> None:
        self._method = method
        self._state = state
        self._batches = self._run()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        return await anext(self._batches)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def cursor(self) -> str:
        """The cursor after the last batch handed out (the caller's own before any)."""
        return self._state.cursor

    async def aclose(self) -> None:
        """Cancels the stream; the iterator ends."""
        await self._batches.aclose()

    async def _run(self) -> AsyncGenerator[WatchBatch]:
        while True:
            call = self._method(self._state.request())
            cause: grpc.RpcError | None = None
            try:
                async for response in call:
                    yield self._state.received(response)
                error = self._state.ended()
            except grpc.RpcError as exc:
                error, cause = from_rpc_error(exc), exc
            finally:
                call.cancel()
            delay = self._state.failed(error)
            if delay is None:
                raise error from cause
            await asyncio.sleep(delay)
