"""Prometheus metrics of a tm server (``--metrics-address``): families, hooks and the endpoint.

``registry`` holds the families counted as things happen, ``tasks`` the core's
task observer, ``interceptor`` the RPC counts, ``journal`` and ``cluster`` the
hooks into those layers, ``collectors`` the live counts read at scrape time,
and ``http`` the endpoint that serves them. Nothing here runs unless the
server is asked for metrics.
"""

from .cluster import ClusterMetrics
from .collectors import ClusterCollector, ProducersCollector, TaskCountsCollector
from .http import MetricsEndpoint
from .interceptor import MetricsInterceptor
from .journal import JournalMetrics
from .registry import Metrics
from .tasks import TaskMetrics

__all__ = [
    "ClusterCollector",
    "ClusterMetrics",
    "JournalMetrics",
    "Metrics",
    "MetricsEndpoint",
    "MetricsInterceptor",
    "ProducersCollector",
    "TaskCountsCollector",
    "TaskMetrics",
]
