"""The server's settings: what ``tm-server``'s flags set, as one frozen dataclass.

Kept apart from ``server`` so that what reads the settings (the command line,
an embedding application, the benchmarks) needs none of the server's machinery.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from tm_server.core.feed import DEFAULT_WATCH_WINDOW
from tm_server.core.manager import DEFAULT_MAX_MODULES, DEFAULT_MAX_STATUS_CHILDREN
from tm_server.core.module_watch import DEFAULT_WATCH_INTERVAL, DEFAULT_WATCH_MAX_INTERVAL
from tm_server.core.producers import DEFAULT_MAX_SESSIONS_PER_PRINCIPAL
from tm_server.core.quotas import TaskQuotas
from tm_server.security.tls import TlsConfig

from .journal import DEFAULT_COMPACT_BYTES, DEFAULT_PROGRESS_WINDOW
from .service.stream_holds import StreamQuotas

#: How often tm-server freezes long-lived objects out of garbage collection.
DEFAULT_GC_FREEZE_INTERVAL = 0.1
#: The largest request body served (``--max-request-bytes``): tm's largest
#: requests (every text field at its maximum) take under 20 KiB.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT listens on loopback only (a wildcard address does not)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


#: Where tm-server serves its HTTP side unless told otherwise: ScyllaDB's REST port, loopback.
DEFAULT_HTTP_ADDRESS = "127.0.0.1:10000"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server flags set."""

    address: str = "127.0.0.1:50051"
    node: str = "localhost"
    shards: int = 1
    task_ttl: int = 0
    user_task_ttl: int = 3600
    enable_test_service: bool = False
    producer_lease_seconds: float = 30.0
    keepalive_seconds: float = 20.0
    keepalive_timeout_seconds: float = 10.0
    max_modules: int = DEFAULT_MAX_MODULES
    max_status_children: int = DEFAULT_MAX_STATUS_CHILDREN
    # Off by default: freezing the collector is a process-wide setting, and
    # an application embedding a server may not want it; tm-server turns it
    # on (DEFAULT_GC_FREEZE_INTERVAL).
    gc_freeze_interval: float = 0.0
    grace_seconds: float = 5.0
    # The cluster: no store means a node on its own, with no cluster tasks
    # (tm-server defaults to a SQLite file in its data directory).
    store: str | None = None
    advertise_address: str | None = None
    heartbeat_seconds: float = 5.0
    node_expiry_seconds: float = 20.0
    peer_timeout_seconds: float = 2.0
    cluster_task_retention_seconds: float = 86_400.0
    # The node's data directory, locked while the server runs (tm-server
    # always names one; an embedded server, none unless asked).
    data_dir: Path | None = None
    # The journal in the data directory (off: memory-only, as ScyllaDB's).
    journal: bool = True
    progress_window_seconds: float = DEFAULT_PROGRESS_WINDOW
    journal_compact_bytes: int = DEFAULT_COMPACT_BYTES
    # Security: TLS (mTLS with a client CA), the tokens file, the token this
    # node sends to its peers; none of them: loopback only, unless insecure.
    tls: TlsConfig | None = None
    tokens: Path | None = None
    node_token: str | None = None
    insecure: bool = False
    reflection: bool = True
    # Quotas.
    quotas: TaskQuotas = field(default_factory=TaskQuotas)
    max_sessions_per_principal: int = DEFAULT_MAX_SESSIONS_PER_PRINCIPAL
    streams: StreamQuotas = field(default_factory=StreamQuotas)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Operating: Prometheus metrics at http://HOST:PORT/metrics (None: off), and
    # the log format ("json" puts each call's method, peer and task id on its lines).
    metrics_address: str | None = None
    log_format: str = "text"
    # The HTTP side: ScyllaDB's REST API, the event streams and the dashboard
    # (None: off; tm-server's default is DEFAULT_HTTP_ADDRESS).
    http_address: str | None = None
    # Module watches: changes kept for a watch to resume from, and the
    # seconds between a watch's batches.
    watch_window: int = DEFAULT_WATCH_WINDOW
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    watch_max_interval: float = DEFAULT_WATCH_MAX_INTERVAL

    @property
    def authenticates(self) -> bool:
        """Whether callers are checked (a tokens file, or mTLS)."""
        return self.tokens is not None or (self.tls is not None and self.tls.client_ca is not None)
