"""Producer sessions: a producer's unfinished tasks, its pending aborts, its open stream."""

from __future__ import annotations

import asyncio
from uuid import UUID

from .clock import TimerHandle
from .errors import ShuttingDownError


class ProducerSession:
    """A producer's session: its unfinished tasks, pending aborts and the open stream's queue."""

    def __init__(self, session_id: UUID, owner: str = "") -> None:
        self.id = session_id
        # The principal that opened it: only it may resume, use or close it.
        self.owner = owner
        self.tasks: dict[UUID, None] = {}  # unfinished tasks, in creation order
        self.pending_aborts: dict[UUID, None] = {}
        self.queue: asyncio.Queue[object] | None = None
        self.lease_timer: TimerHandle | None = None
        self.expired = False

    @property
    def connected(self) -> bool:
        """Whether a stream is open for the session."""
        return self.queue is not None

    def push_abort(self, task_id: UUID) -> None:
        """Records an abort request and sends it down the open stream, if any."""
        if task_id not in self.tasks or task_id in self.pending_aborts:
            return
        self.pending_aborts[task_id] = None
        if self.queue is not None:
            self.queue.put_nowait(task_id)

    def forget(self, task_id: UUID) -> None:
        """Drops a finished task."""
        self.tasks.pop(task_id, None)
        self.pending_aborts.pop(task_id, None)


#: Put on a stream's queue when the server stops (``Producers.stop_streams``).
STOP = object()


class SessionStream:
    """One open session stream: abort requests arrive through ``next_abort``."""

    def __init__(self, session: ProducerSession, resumed: bool) -> None:
        self.session = session
        self.resumed = resumed
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        # Aborts requested while no stream was open are sent again.
        for task_id in session.pending_aborts:
            self.queue.put_nowait(task_id)

    async def next_abort(self) -> UUID | None:
        """Returns the next task to abort, or ``None`` once another stream took the session over.

        Raises:
            ShuttingDownError: the server is stopping.
        """
        item = await self.queue.get()
        if item is STOP:
            raise ShuttingDownError()
        assert item is None or isinstance(item, UUID)
        return item
