"""Watching a module's tasks (or every module's): a snapshot, then a batch of changes a tick.

A watch reads each shard's window of changes (``feed``) from its cursor, one
position per shard, and sends what changed since, coalesced to one event per
task with the task's entry as it is now; then it waits for the next tick of
``interval`` seconds, so a busy module costs a watcher one batch a tick, not
one message per change, and a slow reader never makes the server buffer: it
reads from its own position when it is ready, and what changed meanwhile is
coalesced again. Only a reader so slow that changes it has not read left the
window is ended, with ``WatchFellBehindError``.

Watches with the same filters at the same cursor (the usual case: every
dashboard of a module, woken by the same change) share one batch object per
tick, computed once; the transport keeps its encoding on it (``wire``), so a
hundred watchers cost one encoding. Cursors are opaque strings bound to this
incarnation of the node: one from before a restart is ``CursorExpiredError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import secrets
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from .clock import Clock
from .errors import (
    CursorExpiredError,
    InvalidArgumentError,
    ShuttingDownError,
    WatchFellBehindError,
)
from .feed import ChangeFeed, ChangeKind
from .port import ShardChanges, WatchChange
from .types import ListFilter, TaskStats, TaskStatus

#: Seconds between a watch's batches, unless told otherwise (``--watch-interval``).
DEFAULT_WATCH_INTERVAL = 0.1
#: What the wait between batches stretches to while every tick finds changes
#: (``--watch-max-interval``).
DEFAULT_WATCH_MAX_INTERVAL = 1.0
#: Events in one batch at most (a message of about 200 KB).
MAX_BATCH_EVENTS = 1000
#: A watch whose filters hide every change still moves its cursor on this often.
BOOKMARK_INTERVAL = 1.0
# Batches kept for watchers that come for the same filters and cursor.
_SHARED_BATCHES = 256
_CURSOR_PREFIX = "w1."
_MAX_CURSOR_CHARS = 4096


class WatchEventKind(enum.Enum):
    """What an event says happened (``EXISTING``: there when the snapshot was taken)."""

    EXISTING = "existing"
    CREATED = "created"
    CHANGED = "changed"
    FINISHED = "finished"
    REMOVED = "removed"


_KINDS = {
    ChangeKind.CREATED: WatchEventKind.CREATED,
    ChangeKind.CHANGED: WatchEventKind.CHANGED,
    ChangeKind.FINISHED: WatchEventKind.FINISHED,
    ChangeKind.REMOVED: WatchEventKind.REMOVED,
}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One task's change: its entry after it, and its full status when the watch asked."""

    kind: WatchEventKind
    task: TaskStats
    status: TaskStatus | None = None


class WatchBatch:
    """Events sent together, the cursor after them, and whether they end the snapshot.

    ``wire`` and ``wire_text`` are the transports': the binary one (gRPC)
    and the text one (the HTTP event stream) keep the batch's encoding
    there, shared by every watcher the same batch goes to.
    """

    __slots__ = ("cursor", "events", "snapshot_complete", "wire", "wire_text")

    def __init__(
        self, events: tuple[WatchEvent, ...], cursor: str, snapshot_complete: bool = False
    ) -> None:
        self.events = events
        self.cursor = cursor
        self.snapshot_complete = snapshot_complete
        self.wire: object | None = None
        self.wire_text: object | None = None


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """What a watch selects: a module (``None``: every one), filters, full statuses."""

    module: str | None
    flt: ListFilter
    full_status: bool = False
    # Hashed once: the query keys the batches watchers share, at every read.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.module, self.flt, self.full_status)))

    def __hash__(self) -> int:
        return self._hash


StatusReader = Callable[[UUID], Awaitable[TaskStatus | None]]


class ChangeSource(Protocol):
    """Where a watch reads changes: a shard, or the node's virtual (cluster) tasks."""

    async def change_head(self) -> int:
        """The number of the last change (0 before any)."""

    async def changes(self, module: str | None, after: int) -> ShardChanges:
        """The module's changes after ``after``, each with the task's entry now."""

    def change_waiter(self, after: int) -> asyncio.Future[None]:
        """A future done once there is a change after ``after`` (see ``ShardPort``)."""


class VirtualChanges:
    """The changes of virtual (cluster) tasks this node hears of, as a source for watches.

    The cluster store tells a node that a task changed, not how: a change is
    read as CHANGED, or FINISHED once the task's state is final, with the
    entry its group gives now (a task the groups no longer know is left out).
    """

    def __init__(self, read: StatusReader, window: int) -> None:
        self._read = read
        self._feed = ChangeFeed(window)

    def changed(self, task_id: UUID) -> None:
        """A virtual task may have changed."""
        self._feed.append(task_id, ChangeKind.CHANGED, 0)

    async def change_head(self) -> int:
        """The number of the last change heard of."""
        return self._feed.head

    async def changes(self, module: str | None, after: int) -> ShardChanges:
        """The module's virtual tasks that changed after ``after``, with their entries now."""
        head = self._feed.head
        out: list[WatchChange] = []
        for change in self._feed.since(after):
            status = await self._read(change.task_id)
            if status is None or (module is not None and status.module != module):
                continue
            kind = ChangeKind.FINISHED if status.state.is_final else ChangeKind.CHANGED
            out.append(WatchChange(kind, None, entry_of(status), change.seq))
        return ShardChanges(head, tuple(out))

    def change_waiter(self, after: int) -> asyncio.Future[None]:
        """A future done once a virtual task changed after ``after``, or the watches stop."""
        return self._feed.waiter(after)

    def stop(self) -> None:
        """Wakes every waiter, now and from now on (shutdown)."""
        self._feed.stop()


def entry_of(status: TaskStatus) -> TaskStats:
    """A virtual task's list entry, from its status."""
    return TaskStats(
        status.id,
        status.state,
        status.type,
        status.kind,
        status.scope,
        status.keyspace,
        status.table,
        status.entity,
        status.sequence_number,
        status.shard,
        status.creation_time,
        status.start_time,
        status.end_time,
        status.progress.completed,
        status.progress.total,
        status.module,
        status.internal,
    )


Snapshot = Callable[[WatchQuery], AsyncIterator[list[TaskStats]]]


class ModuleWatches:
    """The module watches of a node: cursors, ticks and batches shared between watchers."""

    def __init__(
        self,
        shards: Sequence[ChangeSource],
        clock: Clock,
        *,
        interval: float = DEFAULT_WATCH_INTERVAL,
        max_interval: float = DEFAULT_WATCH_MAX_INTERVAL,
        window: int,
        shard_window: int,
    ) -> None:
        self._shards = shards
        self._clock = clock
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.window = window
        # A watch waiting for its tick reads early once half a shard's window
        # went by: waiting is never falling behind.
        self._early = max(1, shard_window // 2)
        # The sources a watch reads, the shards then the virtual tasks; a cursor
        # has a position in each. Cursors name this incarnation: one from
        # before a restart is refused.
        self._epoch = secrets.randbits(48)
        # (query, positions) -> (tick slot, heads, (batches, positions after)).
        self._shared: OrderedDict[
            tuple[WatchQuery, tuple[int, ...]],
            tuple[float | None, tuple[int, ...], tuple[list[WatchBatch], tuple[int, ...]]],
        ] = OrderedDict()
        self._ticks: dict[float, asyncio.Future[None]] = {}
        self._waits: dict[
            tuple[tuple[int, ...], asyncio.Future[None] | None], asyncio.Future[None]
        ] = {}
        self._stopping = False
        self.open = 0

    # ---- cursors -----------------------------------------------------------------------------

    def encode(self, positions: Sequence[int]) -> str:
        """The opaque cursor of these positions (one per shard)."""
        text = ".".join([f"{self._epoch:x}", *(f"{p:x}" for p in positions)])
        return _CURSOR_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[int, ...]:
        """The positions a cursor names.

        Raises:
            InvalidArgumentError: not a cursor this server writes.
            CursorExpiredError: one of another incarnation (or shard count).
        """
        if len(cursor) > _MAX_CURSOR_CHARS or not cursor.startswith(_CURSOR_PREFIX):
            raise InvalidArgumentError("cursor", "not a cursor of WatchTasks")
        body = cursor[len(_CURSOR_PREFIX) :]
        try:
            text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
            epoch, *rest = (int(part, 16) for part in text.split("."))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgumentError("cursor", "not a cursor of WatchTasks") from None
        if epoch != self._epoch or len(rest) != len(self._shards):
            raise CursorExpiredError()
        if any(p < 0 for p in rest):
            raise InvalidArgumentError("cursor", "not a cursor of WatchTasks")
        return tuple(rest)

    # ---- the stream --------------------------------------------------------------------------

    async def watch(
        self,
        query: WatchQuery,
        *,
        snapshot: Snapshot | None,
        cursor: str,
        read_status: StatusReader,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Yields the snapshot (if asked), then a batch of changes whenever there are some.

        Raises:
            CursorExpiredError: ``cursor`` is too old (or from before a restart).
            WatchFellBehindError: the reader fell more than the window behind.
            ShuttingDownError: the server is stopping.
        """
        if self._stopping:
            raise ShuttingDownError()
        if cursor:
            # Checked by the first read, before anything is sent.
            positions = self.decode(cursor)
        else:
            positions = tuple([await shard.change_head() for shard in self._shards])
        self.open += 1
        try:
            if snapshot is not None:
                async for batch in self._snapshot(query, snapshot, positions, read_status):
                    yield batch
            elif not cursor:
                # The cursor of "now" at once, so a reader can resume before any change.
                yield WatchBatch((), self.encode(positions))
            last_sent = self._clock.now()
            first = bool(cursor)
            wait = self.interval
            while True:
                try:
                    batches, moved = await self._next(query, positions, read_status)
                except CursorExpiredError:
                    if first:
                        raise
                    raise WatchFellBehindError(self.window) from None
                first = False
                if batches:
                    for batch in batches:
                        yield batch
                    last_sent = self._clock.now()
                elif moved != positions and self._clock.now() - last_sent >= BOOKMARK_INTERVAL:
                    # Changes this watch does not show went by: move its cursor on,
                    # so a reader that resumes later is still inside the window.
                    yield WatchBatch((), self.encode(moved))
                    last_sent = self._clock.now()
                if moved != positions:
                    # Something changed (shown or not): the next read waits for the
                    # tick, so a busy module costs a watch one read a tick; while
                    # every tick finds changes, the wait doubles up to the most.
                    positions = moved
                    await self._tick(positions, wait)
                    wait = min(wait * 2, self.max_interval)
                else:
                    # Quiet: the next change goes at once, the waits start over.
                    wait = self.interval
                    await self._wait_any(positions)
        finally:
            self.open -= 1

    async def _snapshot(
        self,
        query: WatchQuery,
        snapshot: Snapshot,
        positions: tuple[int, ...],
        read_status: StatusReader,
    ) -> AsyncGenerator[WatchBatch, None]:
        # The positions were taken first: a change during the listing comes
        # again as an event, never goes missing.
        async for page in snapshot(query):
            for start in range(0, len(page), MAX_BATCH_EVENTS):
                events = [
                    WatchEvent(
                        WatchEventKind.EXISTING,
                        entry,
                        await read_status(entry.task_id) if query.full_status else None,
                    )
                    for entry in page[start : start + MAX_BATCH_EVENTS]
                ]
                yield WatchBatch(tuple(events), "")
        yield WatchBatch((), self.encode(positions), snapshot_complete=True)

    async def _next(
        self, query: WatchQuery, positions: tuple[int, ...], read_status: StatusReader
    ) -> tuple[list[WatchBatch], tuple[int, ...]]:
        # The batches after ``positions``, and where they end; computed once for
        # every watcher with the same query at the same positions.
        key = (query, positions)
        slot = self._slot()
        shared = self._shared.get(key)
        # Shared within a tick (watchers woken together), or while nothing moved.
        if shared is not None and slot is not None and shared[0] == slot:
            return shared[2]
        heads = tuple([await shard.change_head() for shard in self._shards])
        if shared is not None and shared[1] == heads:
            return shared[2]
        batches: list[WatchBatch] = []
        moved = list(positions)
        pending: list[WatchEvent] = []
        for index, shard in enumerate(self._shards):
            found = await shard.changes(query.module, positions[index])
            for change in found.changes:
                entry = change.entry
                if not query.flt.admits(entry, entry.internal, change.before):
                    continue
                status = None
                if query.full_status and change.kind is not ChangeKind.REMOVED:
                    status = await read_status(change.entry.task_id)
                pending.append(WatchEvent(_KINDS[change.kind], change.entry, status))
                if len(pending) >= MAX_BATCH_EVENTS:
                    moved[index] = change.seq
                    batches.append(WatchBatch(tuple(pending), self.encode(moved)))
                    pending = []
            moved[index] = found.head
        if pending:
            batches.append(WatchBatch(tuple(pending), self.encode(moved)))
        result = (batches, tuple(moved))
        if result[1] != positions:
            # Nothing is kept of a read that found nothing: the next one must look again.
            self._shared[key] = (slot, heads, result)
            if len(self._shared) > _SHARED_BATCHES:
                self._shared.popitem(last=False)
        return result

    def _slot(self) -> float | None:
        # The tick the clock is in (None without ticks).
        return None if self.interval <= 0 else self._clock.now() // self.interval

    async def _tick(self, positions: tuple[int, ...], interval: float) -> None:
        # Until the next multiple of the interval (watchers woken together stay
        # together, and share their next batch), or half a window of changes.
        if interval <= 0:
            return
        now = self._clock.now()
        at = (now // interval + 1) * interval
        tick = self._ticks.get(at)
        if tick is None:
            tick = self._ticks[at] = asyncio.get_running_loop().create_future()

            def fire() -> None:
                self._ticks.pop(at, None)
                if not tick.done():
                    tick.set_result(None)

            self._clock.call_at(at, fire)
        await self._wait_any(tuple(p + self._early for p in positions), tick)

    async def _wait_any(
        self, positions: tuple[int, ...], tick: asyncio.Future[None] | None = None
    ) -> None:
        # Until a source has a change after its position (or the tick). Watches
        # waiting for the same thing share one future, with one callback on
        # each source's waiter: an idle watch costs little more than its stream.
        if self._stopping:
            raise ShuttingDownError()
        key = (positions, tick)
        shared = self._waits.get(key)
        if shared is None:
            futures = [
                source.change_waiter(position)
                for source, position in zip(self._shards, positions, strict=True)
            ]
            if tick is not None:
                futures.append(tick)
            if any(f.done() for f in futures):
                return
            shared = self._waits[key] = asyncio.get_running_loop().create_future()

            def wake(_: asyncio.Future[None], shared: asyncio.Future[None] = shared) -> None:
                if not shared.done():
                    shared.set_result(None)
                    if self._waits.get(key) is shared:
                        del self._waits[key]

            for future in futures:
                future.add_done_callback(wake)
        # Shielded: a watch that goes away must not cancel the others' wait.
        await asyncio.shield(shared)
        if self._stopping:
            raise ShuttingDownError()

    def stop(self) -> None:
        """Ends every module watch with ``ShuttingDownError`` (the sources wake them)."""
        self._stopping = True
        for tick in list(self._ticks.values()):
            if not tick.done():
                tick.set_result(None)
        self._ticks.clear()
