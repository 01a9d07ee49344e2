"""The metric families a tm server exports, in a registry of its own.

Every server has its own ``CollectorRegistry`` (an application may run
several servers, and the tests do), so nothing here touches
prometheus_client's global registry. The families are ``series``' loop-local
ones: a count or an observation on a hot path takes no lock. Label values are bounded: module and
task type names, gRPC method names and status codes, store operations;
never a task id. Live counts (tasks by state, sessions, nodes) are read when
scraped, by the collectors in ``collectors.py``; the families here are the
ones that count events as they happen.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .series import Counter, Gauge, Histogram

#: RPC latencies: most calls take well under a millisecond; streams last long.
RPC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
#: Task durations: from a moment to a day (repairs and backups run for hours).
TASK_BUCKETS = (
    0.01, 0.1, 1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0,
    12 * 3600.0, 86_400.0,
)  # fmt: skip
#: Journal flushes: a write and an fdatasync.
COMMIT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip
#: Records in one journal flush (group commit gathers many).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000)
#: Cluster store round trips.
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """A server's registry and the event-counting families in it."""

    def __init__(self, *, process: bool = True) -> None:
        """Creates the registry; ``process`` adds the process, platform and GC collectors."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.info = Gauge(
            "tm_info", "1, labelled with this server's tm version and node name",
            ["version", "node"], registry=r,
        )  # fmt: skip
        # RPCs.
        self.rpc_handled = Counter(
            "tm_rpc_handled", "RPCs completed, by method and final status code (a server "
            "stream counts once, when it ends)", ["service", "method", "code"], registry=r,
        )  # fmt: skip
        self.rpc_duration = Histogram(
            "tm_rpc_duration_seconds", "How long RPCs took, by method (a server stream: how "
            "long it was open)", ["service", "method"], buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        self.rpc_streams_open = Gauge(
            "tm_rpc_streams_open", "Streaming RPCs open now (WaitTask, WatchTasks, "
            "OpenSession, ...), by method", ["service", "method"], registry=r,
        )  # fmt: skip
        # The HTTP side's requests (REST, streams, dashboard), by route template.
        self.http_requests = Counter(
            "tm_http_requests", "HTTP requests answered, by route (the path template, "
            "'unmatched' for none), method and status code", ["route", "method", "code"],
            registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "tm_http_request_duration_seconds", "How long HTTP requests took, by route and "
            "method (an event stream: how long it was open)", ["route", "method"],
            buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        # Tasks.
        self.tasks_created = Counter(
            "tm_tasks_created", "Regular tasks created on this node, by module and type",
            ["module", "type"], registry=r,
        )  # fmt: skip
        self.tasks_finished = Counter(
            "tm_tasks_finished", "Regular tasks finished on this node, by module, type and "
            "outcome (done or failed)", ["module", "type", "outcome"], registry=r,
        )  # fmt: skip
        self.task_duration = Histogram(
            "tm_task_duration_seconds", "How long finished tasks ran (from their start, or "
            "their creation if they never started), by module and type", ["module", "type"],
            buckets=TASK_BUCKETS, registry=r,
        )  # fmt: skip
        self.tasks_expired = Counter(
            "tm_tasks_expired", "Finished tasks that left the registry as their TTL ran out, "
            "by module", ["module"], registry=r,
        )  # fmt: skip
        # The journal.
        self.journal_commit = Histogram(
            "tm_journal_commit_seconds", "How long a journal batch took to write and flush "
            "to disk (what a durable call waits for)", (), buckets=COMMIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.journal_batch = Histogram(
            "tm_journal_batch_records", "Records written in one journal batch (group commit)",
            (), buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        # The cluster.
        self.store_duration = Histogram(
            "tm_cluster_store_duration_seconds", "Cluster store calls, by operation",
            ["operation"], buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "tm_cluster_store_errors", "Cluster store calls that failed (unreachable or "
            "refused), by operation", ["operation"], registry=r,
        )  # fmt: skip
        self.unreachable = Counter(
            "tm_cluster_unreachable_nodes", "Live nodes that did not answer another node in "
            "time (named in unreachable_nodes, or skipped in a lookup), by operation",
            ["operation"], registry=r,
        )  # fmt: skip


__all__ = ["Metrics"]
