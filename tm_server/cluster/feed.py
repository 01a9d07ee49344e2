"""The change feed: every change the store reports, fanned out to this node's listeners.

One loop reads the store's changes (``ClusterStore.changes``) and wakes the
subscriptions of that task id (and the handlers that react on this node: an
abort reaching local children, a producer session told). An empty id means
"anything may have changed" (the store reconnected): everyone looks again.
Subscriptions also wake every ``backstop`` seconds, so no change is lost for
good even if a notification is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from tm_server.aio import cancel_and_wait

from .store import ClusterStore

log = logging.getLogger(__name__)


class Subscription:
    """Yields after each change of one task (or a backstop period), from when it was made."""

    def __init__(self, feed: ChangeFeed, task_id: str) -> None:
        self._feed = feed
        self.task_id = task_id
        self._changed = asyncio.Event()
        feed._subscribe(self)

    def __aiter__(self) -> AsyncIterator[None]:
        return self

    async def __anext__(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self._feed.backstop)
        self._changed.clear()

    def wake(self) -> None:
        """Wakes the subscriber: something may have changed."""
        self._changed.set()

    async def aclose(self) -> None:
        """Ends the subscription."""
        self._feed._unsubscribe(self)


class ChangeFeed:
    """Reads the store's changes and wakes whoever waits on them, on this node."""

    def __init__(self, store: ClusterStore, *, backstop: float = 2.0) -> None:
        self._store = store
        self.backstop = backstop
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._handlers: list[Callable[[str], Awaitable[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, task_id: str) -> Subscription:
        """A subscription to one task's changes, in place once this returns."""
        return Subscription(self, task_id)

    def _subscribe(self, sub: Subscription) -> None:
        self._subscriptions.setdefault(sub.task_id, set()).add(sub)

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscriptions.get(sub.task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscriptions[sub.task_id]

    def on_change(self, handler: Callable[[str], Awaitable[None]]) -> None:
        """Runs ``handler(task_id)`` for every change this node hears of."""
        self._handlers.append(handler)

    def start(self) -> None:
        """Starts reading the store's changes."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tm-change-feed")

    async def stop(self) -> None:
        """Stops reading."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        async for task_id in self._store.changes():
            if task_id:
                subs = self._subscriptions.get(task_id, ())
            else:  # anything may have changed
                subs = {s for group in self._subscriptions.values() for s in group}
            for sub in list(subs):
                sub.wake()
            for handler in self._handlers:
                try:
                    await handler(task_id)
                except Exception:
                    log.warning("a change of task %s was not handled", task_id, exc_info=True)

    def waiting(self) -> int:
        """How many subscriptions are open (for leak checks)."""
        return sum(len(s) for s in self._subscriptions.values())
