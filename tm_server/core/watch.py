"""Watches on a shard's tasks: a status after every change, ending on a final one.

A watch parks on a future of the task's ``TaskSync`` until the task changes
(its version moves), and is woken by the shard with every other watch of that
task. It never ends with less than a final status: while a slow reader holds
the last status sent, the task may move on and finish, and the loop sends
that final status before it returns. Statuses in between are coalesced into
the latest one. A deadline, on the injected clock, ends a watch with
``WaitTimeoutError`` once it has sent the current status; shutdown ends every
watch with ``ShuttingDownError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from uuid import UUID

from .clock import Clock
from .errors import ShuttingDownError, WaitTimeoutError
from .port import Deadline
from .record import Task, TaskSync
from .types import TaskStatus


class Watches:
    """The parked watches of one shard."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._parked: set[asyncio.Future[None]] = set()
        self._stopping = False

    @staticmethod
    def wake(task: Task) -> None:
        """Wakes every watch parked on ``task`` (its version has just moved)."""
        sync = task.sync
        if sync is None or not sync.waiters:
            return
        waiters, sync.waiters = sync.waiters, None
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def follow(
        self,
        task_id: UUID,
        resolve: Callable[[UUID], Task],
        status_of: Callable[[Task], Awaitable[TaskStatus]],
        deadline: Deadline | None,
    ) -> AsyncGenerator[TaskStatus, None]:
        """Yields the task's status now and after every change, until it is final.

        The watch holds the task, so it ends with the final status even if the
        task is unregistered meanwhile. Watchers woken for the same version
        share one status object.

        Raises:
            TaskNotFoundError: from ``resolve``, before anything is yielded.
            ShuttingDownError: the server is stopping (at once, or while waiting).
            WaitTimeoutError: ``deadline`` passed before a final status.
        """
        if self._stopping:
            raise ShuttingDownError()
        task = resolve(task_id)
        sync = task.get_sync()
        last: TaskStatus | None = None
        while True:
            version = task.version
            cached = sync.status
            if cached is not None and cached[0] == version:
                status = cached[1]
            else:
                status = await status_of(task)
                if task.version == version:
                    sync.status = (version, status)
            if status is not last and status != last:
                yield status
                last = status
            # Ends on what was sent, not on the task's state now: while a slow
            # reader held the last status, the task may have moved on and
            # finished, and that final status is still owed (the loop sends it).
            if last is not None and last.state.is_complete:
                return
            if deadline is not None and self._clock.now() >= deadline.at:
                raise WaitTimeoutError(task_id, deadline.timeout)
            if task.version == version:
                # Checked again here, not only on entry: shutdown may have come
                # while this watch's last status was being written, and a watch
                # parked after it would be left for the server to cancel.
                if self._stopping:
                    raise ShuttingDownError()
                await self._park(task_id, sync, deadline)

    async def _park(self, task_id: UUID, sync: TaskSync, deadline: Deadline | None) -> None:
        fut = asyncio.get_running_loop().create_future()
        if sync.waiters is None:
            sync.waiters = set()
        sync.waiters.add(fut)
        self._parked.add(fut)
        timer = None
        if deadline is not None:
            # Armed only for waits with a timeout: most watchers have none.
            def expire() -> None:
                if not fut.done():
                    fut.set_exception(WaitTimeoutError(task_id, deadline.timeout))

            timer = self._clock.call_at(deadline.at, expire)
        try:
            await fut
        finally:
            self._parked.discard(fut)
            if sync.waiters is not None:
                sync.waiters.discard(fut)
            if timer is not None:
                timer.cancel()

    def stop(self) -> None:
        """Ends every parked watch with ``ShuttingDownError``; new ones fail at once."""
        self._stopping = True
        for fut in list(self._parked):
            if not fut.done():
                fut.set_exception(ShuttingDownError())

    @property
    def stopping(self) -> bool:
        """Whether the shard is shutting down."""
        return self._stopping

    def count(self) -> int:
        """How many watches are parked (for leak checks)."""
        return len(self._parked)
