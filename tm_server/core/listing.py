"""Listing a module's tasks a page at a time, across the shards and the virtual groups."""

from __future__ import annotations

from collections.abc import Sequence

from .paging import (
    PAGE_BYTES,
    PHASE_REGULAR,
    PHASE_VIRTUAL,
    PagePosition,
    PageTokens,
    entry_bytes,
)
from .port import ShardPort
from .types import ListFilter, TaskStats
from .virtual import VirtualGroups


async def list_page(
    shards: Sequence[ShardPort],
    groups: VirtualGroups,
    tokens: PageTokens,
    module: str,
    flt: ListFilter,
    size: int,
    page_token: str,
) -> tuple[list[TaskStats], str]:
    """One page of the module's tasks and the next page's token ("" at the end).

    The order is stable, as ScyllaDB lists: every shard's regular tasks,
    shard by shard and by id within each, then the virtual tasks by id (on
    shard 0, where they live). A page never scans entries before its token,
    so deep pages cost what shallow ones do. A page ends at ``size`` entries,
    or before its reply would pass ``PAGE_BYTES``.

    Raises:
        InvalidPageTokenError: a token this server did not issue for this listing.
    """
    pos = tokens.decode(page_token, module, flt, len(shards))
    sources = [(shard, PHASE_REGULAR) for shard in shards] + [(shards[0], PHASE_VIRTUAL)]
    first = 0
    if pos is not None:
        first = len(shards) if pos.phase == PHASE_VIRTUAL else pos.shard
    out: list[tuple[int, int, TaskStats]] = []
    for number, (shard, phase) in enumerate(sources[first:], start=first):
        after = pos.after if pos is not None and number == first else None
        need = size + 1 - len(out)
        if phase == PHASE_REGULAR:
            entries = await shard.list_tasks(module, flt, after, need)
        else:
            entries = await groups.stats(module, flt, after, need)
        out.extend((shard.index, phase, e) for e in entries)
        if len(out) > size:
            break
    # 4 KB entities make 1,000 entries larger than a default client accepts.
    end, used = 0, 0
    while end < len(out) and end < size:
        used += entry_bytes(out[end][2])
        if used > PAGE_BYTES and end > 0:
            break
        end += 1
    if end == len(out):
        return [e for _, _, e in out], ""
    last_shard, last_phase, last = out[end - 1]
    token = tokens.encode(module, flt, PagePosition(last_shard, last_phase, last.task_id))
    return [e for _, _, e in out[:end]], token
