"""Counts kept in dictionaries: a key is there only while its count is above zero."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")


def count(counts: dict[K, int], key: K, delta: int) -> None:
    """Adds ``delta`` to ``key``'s count, forgetting the key at 0."""
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
