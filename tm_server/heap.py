"""Heap management: short garbage-collection pauses with millions of objects registered."""

from __future__ import annotations

import asyncio
import gc
import logging

from .aio import cancel_and_wait

log = logging.getLogger(__name__)


class HeapManager:
    """Freezes long-lived objects out of the collector's reach, at a fixed interval.

    CPython's full collection walks every tracked object: with a million
    tasks registered that is a pause of about half a second, during which no
    call is served. Every ``interval`` seconds this collects the young
    generations (so fresh garbage cycles are freed, not frozen) and then
    ``gc.freeze()``s the survivors: tasks, statuses kept for their TTL and
    the like move to the permanent generation, which collections skip, so a
    full collection only walks what was allocated since (at 0.1 s, a few
    milliseconds' worth even while tasks pour in). Frozen objects are
    still freed by reference counting when unregistered; only a reference
    cycle that outlived two young collections would be kept, a rare leak
    traded for bounded pauses.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the periodic freeze (no-op for an interval of 0)."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tm-heap")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            gc.collect(1)
            gc.freeze()

    async def stop(self) -> None:
        """Stops freezing and hands the frozen objects back to the collector."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            gc.unfreeze()
