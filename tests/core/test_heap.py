"""The heap manager freezes survivors periodically and hands them back on stop."""

from __future__ import annotations

import asyncio
import gc

from tm_server.heap import HeapManager


async def test_heap_manager_freezes_and_unfreezes() -> None:
    gc.unfreeze()
    keep = [object() for _ in range(1000)]
    heap = HeapManager(0.01)
    heap.start()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if gc.get_freeze_count() > 0:
            break
    assert gc.get_freeze_count() > 0
    await heap.stop()
    assert gc.get_freeze_count() == 0
    assert len(keep) == 1000


async def test_zero_interval_disables_it() -> None:
    gc.unfreeze()
    heap = HeapManager(0)
    heap.start()
    await asyncio.sleep(0.05)
    assert gc.get_freeze_count() == 0
    await heap.stop()
