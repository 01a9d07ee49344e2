"""What the cluster layer tells an observer (metrics): its store calls and unanswered peers.

The cluster layer keeps no metrics of its own. A node given a
``ClusterObserver`` reaches its store through ``observer.store(store)`` (a
store that measures each call, say) and tells it of every live node that did
not answer in time; without one nothing is wrapped and nothing is told.
"""

from __future__ import annotations

from typing import Protocol

from .store import ClusterStore


class ClusterObserver(Protocol):
    """Told of what a node's cluster layer does."""

    def store(self, store: ClusterStore) -> ClusterStore:
        """The store the node uses: ``store`` itself, or one that observes its calls."""

    def unreachable(self, operation: str, nodes: int) -> None:
        """``nodes`` live nodes did not answer an ``operation`` call in time."""


__all__ = ["ClusterObserver"]
