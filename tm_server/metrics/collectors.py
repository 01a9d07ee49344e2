"""Live counts, read when a scrape asks: tasks by state, producer sessions, the cluster's nodes.

Each collector reads the server's own state, on the server's event loop (the
metrics endpoint runs there), so nothing is read from another thread; what
must be awaited (the shards' counts) is read by a ``refresh`` the endpoint
awaits just before it renders. ``describe`` names the families without
reading anything, so registering a collector costs nothing either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tm_server.cluster.store import NodeRow
from tm_server.core.producers import Producers
from tm_server.core.types import TaskState

#: Every state a regular task is in, so a module's count that drops to 0 shows 0.
_STATES = tuple(s.value for s in TaskState if s is not TaskState.SUSPENDED)


class TaskCountsCollector:
    """``tm_tasks{module, state}``: the tasks registered now (``TaskManager.task_counts``).

    The shards are asked through their ports, which take awaiting: the
    endpoint awaits ``refresh`` just before it renders a scrape, and
    ``collect`` reports what that read.
    """

    def __init__(self, counts: Callable[[], Awaitable[dict[tuple[str, str], int]]]) -> None:
        self._counts = counts
        self._latest: dict[tuple[str, str], int] = {}

    async def refresh(self) -> None:
        """Reads the counts now (on the server's loop)."""
        self._latest = await self._counts()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tm_tasks", "Regular tasks registered on this node now, by module and state "
            "(finished ones until their TTL ends)", labels=["module", "state"],
        )  # fmt: skip

    def describe(self) -> Iterable[Metric]:
        """The family, without samples."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """The counts the last refresh read; every state of a module with tasks, 0 included."""
        family = self._family()
        counts = self._latest
        for module in sorted({module for module, _ in counts}):
            for state in _STATES:
                family.add_metric([module, state], counts.get((module, state), 0))
        for (module, state), value in sorted(counts.items()):
            if state not in _STATES:
                family.add_metric([module, state], value)
        return [family]


class ProducersCollector:
    """Producer sessions open now, and how many leases ran out."""

    def __init__(self, producers: Producers) -> None:
        self._producers = producers

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        sessions = GaugeMetricFamily(
            "tm_producer_sessions", "Producer sessions alive now: with their stream open "
            "(connected), or within their lease after it broke (disconnected)",
            labels=["state"],
        )  # fmt: skip
        expiries = CounterMetricFamily(
            "tm_producer_lease_expiries", "Producer sessions whose lease ran out before a "
            "stream resumed them (their unfinished tasks failed)",
        )  # fmt: skip
        return sessions, expiries

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The sessions now and the expiries so far."""
        sessions, expiries = self._families()
        producers = self._producers
        connected = producers.connected_session_count()
        sessions.add_metric(["connected"], connected)
        sessions.add_metric(["disconnected"], producers.session_count() - connected)
        expiries.add_metric([], producers.lease_expiries)
        return sessions, expiries


class ClusterCollector:
    """``tm_cluster_nodes{state}``: the cluster's nodes, as this node last read the store."""

    def __init__(self, nodes: Callable[[], Sequence[NodeRow] | None]) -> None:
        # None: the server is in no cluster (yet).
        self._nodes = nodes

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tm_cluster_nodes", "The cluster's nodes as this node last read them from the "
            "store (at most a heartbeat ago): alive, left (shut down cleanly) or down "
            "(their heartbeat expired)", labels=["state"],
        )  # fmt: skip

    def describe(self) -> Iterable[Metric]:
        """The family, without samples."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """The nodes by state, if the server is in a cluster."""
        nodes = self._nodes()
        if nodes is None:
            return []
        family = self._family()
        alive = sum(1 for n in nodes if n.alive)
        left = sum(1 for n in nodes if n.left)
        family.add_metric(["alive"], alive)
        family.add_metric(["left"], left)
        family.add_metric(["down"], len(nodes) - alive - left)
        return [family]


__all__ = ["ClusterCollector", "ProducersCollector", "TaskCountsCollector"]
