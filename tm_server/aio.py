"""Small asyncio helpers for the server's background loops (heartbeats, change feeds, the heap)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancels a background loop and waits until it has stopped (``None``: nothing to do).

    The loop's own end, cancelled as asked, is not an error of the caller's.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
