"""The cluster's metrics: every store call timed and its failures counted, unanswered peers.

``ClusterMetrics`` is the cluster layer's ``ClusterObserver``: the node
reaches its store through a ``MeasuredStore``, which times each operation
and counts those that fail (the store unreachable or refusing; a domain
answer such as a taken id or node name is no failure), and it is told of
every live node that did not answer in time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from tm_server.cluster.store import (
    ClusterStore,
    ClusterTaskRow,
    FinishedChildRow,
    NodeNameTakenError,
    NodeRow,
)
from tm_server.core import TaskAlreadyExistsError

from .registry import Metrics

T = TypeVar("T")

#: Exceptions that are answers, not failures of the store.
_ANSWERS = (TaskAlreadyExistsError, NodeNameTakenError)


class MeasuredStore:
    """A ``ClusterStore`` that times and counts every call of the store behind it."""

    def __init__(self, store: ClusterStore, metrics: Metrics) -> None:
        self.inner = store
        self.url = store.url
        self._duration = metrics.store_duration.labels
        self._errors = metrics.store_errors.labels

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except _ANSWERS:
            raise
        except Exception:
            self._errors(operation).inc()
            raise
        finally:
            self._duration(operation).observe(time.perf_counter() - started)

    async def open(self) -> None:
        """Connects and migrates."""
        await self._timed("open", self.inner.open())

    async def close(self) -> None:
        """Disconnects."""
        await self.inner.close()

    async def now(self) -> float:
        """The store's clock."""
        return await self._timed("now", self.inner.now())

    async def join(self, name: str, address: str, version: str, incarnation: str,
                   expiry: float, replacing: str = "") -> NodeRow:  # fmt: skip
        """Registers this node."""
        return await self._timed(
            "join", self.inner.join(name, address, version, incarnation, expiry, replacing)
        )

    async def heartbeat(self, name: str, incarnation: str, expiry: float) -> bool:
        """Renews the membership."""
        return await self._timed("heartbeat", self.inner.heartbeat(name, incarnation, expiry))

    async def leave(self, name: str, incarnation: str) -> None:
        """Marks the node as gone."""
        await self._timed("leave", self.inner.leave(name, incarnation))

    async def nodes(self) -> list[NodeRow]:
        """Every node."""
        return await self._timed("nodes", self.inner.nodes())

    async def create_task(self, row: ClusterTaskRow) -> ClusterTaskRow:
        """Inserts a cluster task."""
        return await self._timed("create_task", self.inner.create_task(row))

    async def get_task(self, task_id: str) -> ClusterTaskRow | None:
        """A cluster task's row."""
        return await self._timed("get_task", self.inner.get_task(task_id))

    async def update_task(
        self, task_id: str, states: Sequence[str], **values: Any
    ) -> ClusterTaskRow | None:
        """Updates a task in one of ``states``."""
        return await self._timed("update_task", self.inner.update_task(task_id, states, **values))

    async def tasks_of_module(self, module: str, finished_since: float) -> list[ClusterTaskRow]:
        """A module's tasks."""
        return await self._timed(
            "tasks_of_module", self.inner.tasks_of_module(module, finished_since)
        )

    async def children_of(self, parent_id: str) -> list[ClusterTaskRow]:
        """A cluster task's cluster children."""
        return await self._timed("children_of", self.inner.children_of(parent_id))

    async def fail_unfinished(
        self, error: str, *, session_id: str | None = None, nodes: Sequence[str] = ()
    ) -> list[ClusterTaskRow]:
        """Fails the unfinished tasks of a session or of nodes."""
        return await self._timed(
            "fail_unfinished",
            self.inner.fail_unfinished(error, session_id=session_id, nodes=nodes),
        )

    async def add_finished_children(self, rows: Sequence[FinishedChildRow]) -> None:
        """Keeps finished children of cluster tasks."""
        await self._timed("add_finished_children", self.inner.add_finished_children(rows))

    async def finished_children(self, parent_id: str) -> list[FinishedChildRow]:
        """The finished children kept for a cluster task."""
        return await self._timed("finished_children", self.inner.finished_children(parent_id))

    async def finished_child(self, task_id: str) -> FinishedChildRow | None:
        """A finished child kept, by its own id."""
        return await self._timed("finished_child", self.inner.finished_child(task_id))

    async def sweep(self, finished_before: float) -> int:
        """Removes old finished tasks."""
        return await self._timed("sweep", self.inner.sweep(finished_before))

    async def modules(self) -> list[str]:
        """The modules of cluster tasks."""
        return await self._timed("modules", self.inner.modules())

    async def notify(self, task_id: str) -> None:
        """Tells every node that a task may have changed."""
        await self._timed("notify", self.inner.notify(task_id))

    def changes(self) -> AsyncIterator[str]:
        """The store's change feed (not timed: it is one long read)."""
        return self.inner.changes()


class ClusterMetrics:
    """The cluster layer's observer (``cluster.observe.ClusterObserver``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._unreachable = metrics.unreachable.labels

    def store(self, store: ClusterStore) -> ClusterStore:
        """The store, measured."""
        return MeasuredStore(store, self._metrics)

    def unreachable(self, operation: str, nodes: int) -> None:
        """Counts live nodes that did not answer in time."""
        self._unreachable(operation).inc(nodes)


__all__ = ["ClusterMetrics", "MeasuredStore"]
