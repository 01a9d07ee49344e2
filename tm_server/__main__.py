"""The ``tm-server`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from tm_client.argtypes import (
    non_negative_seconds,
    positive_int,
    positive_seconds,
)
from tm_server.core import MAX_TTL_SECONDS
from tm_server.core.feed import DEFAULT_WATCH_WINDOW
from tm_server.core.manager import DEFAULT_MAX_MODULES, DEFAULT_MAX_STATUS_CHILDREN
from tm_server.core.module_watch import DEFAULT_WATCH_INTERVAL, DEFAULT_WATCH_MAX_INTERVAL

from .cluster.store import NodeNameTakenError
from .config import (
    DEFAULT_GC_FREEZE_INTERVAL,
    DEFAULT_HTTP_ADDRESS,
    DEFAULT_MAX_REQUEST_BYTES,
    ServerConfig,
)
from .core import StoreUnavailableError
from .core.producers import DEFAULT_MAX_SESSIONS_PER_PRINCIPAL
from .core.quotas import (
    DEFAULT_MAX_CHILDREN,
    DEFAULT_MAX_TASKS,
    DEFAULT_MAX_TASKS_PER_PRINCIPAL,
    TaskQuotas,
)
from .journal import DEFAULT_COMPACT_BYTES, DEFAULT_PROGRESS_WINDOW
from .journal_files import JournalError
from .logsetup import LOG_FORMATS
from .logsetup import configure as configure_logging
from .metrics.http import parse_address
from .security.tls import TlsConfig, TlsFilesError
from .security.tokens import TokensFileError
from .server import serve
from .service.stream_holds import (
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_MAX_STREAMS_PER_PRINCIPAL,
    StreamQuotas,
)


def log_level(text: str) -> str:
    """A logging level's name, in any case."""
    name = text.upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return name


def ttl_seconds(text: str) -> int:
    """A TTL flag: whole seconds from 0 to ``MAX_TTL_SECONDS``."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    if value > MAX_TTL_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TTL_SECONDS}: {value}")
    return value


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """Parses the server flags into a config."""
    parser = argparse.ArgumentParser(
        prog="tm-server", description="tm: a task manager service with ScyllaDB's task semantics"
    )
    parser.add_argument(
        "--address", default="127.0.0.1:50051", help="host:port to listen on (port 0 picks one)"
    )
    parser.add_argument(
        "--node",
        default=socket.gethostname(),
        help="this node's name, unique in its cluster, reported as the node of its tasks "
        "(default: the host name)",
    )
    durability = parser.add_argument_group("durability")
    durability.add_argument(
        "--journal",
        choices=("on", "off"),
        default="on",
        help="keep a journal in the data directory, so that a restart loses no task (on, "
        "the default), or keep tasks in memory only, as ScyllaDB does (off)",
    )
    durability.add_argument(
        "--progress-window-seconds", type=positive_seconds, default=DEFAULT_PROGRESS_WINDOW,
        help="progress reports are written to the journal in batches, at most this long "
        "after a report: a crash loses at most this window of progress (default 1)",
    )  # fmt: skip
    durability.add_argument(
        "--journal-compact-mib", type=positive_seconds, default=DEFAULT_COMPACT_BYTES / 2**20,
        help="a journal log this large (or as large as the last snapshot) is compacted into "
        "a snapshot, which bounds replay time (default 64)",
    )  # fmt: skip
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="this node's data directory, made on start (default: $XDG_DATA_HOME/tm/NODE, "
        "i.e. ~/.local/share/tm/NODE)",
    )
    cluster.add_argument(
        "--store",
        default=None,
        help="the cluster store: sqlite:///PATH (nodes of one host) or postgresql://... "
        "(nodes of several hosts), or 'none' for a node without a cluster "
        "(default: sqlite:///DATA_DIR/cluster.db, a cluster of one)",
    )
    cluster.add_argument(
        "--advertise-address",
        default=None,
        help="HOST:PORT other nodes and clients reach this node at (default: the listen "
        "address, with the port it bound; a wildcard address is refused)",
    )
    cluster.add_argument(
        "--heartbeat-seconds", type=positive_seconds, default=5.0,
        help="how often this node renews its membership (default 5)",
    )  # fmt: skip
    cluster.add_argument(
        "--node-expiry-seconds", type=positive_seconds, default=20.0,
        help="how long a node stays alive without renewing, by the store's clock (default 20)",
    )  # fmt: skip
    cluster.add_argument(
        "--peer-timeout-seconds", type=positive_seconds, default=2.0,
        help="how long a node waits for another's answer before naming it unreachable "
        "(default 2)",
    )  # fmt: skip
    cluster.add_argument(
        "--cluster-task-retention-seconds", type=positive_seconds, default=86_400.0,
        help="how long a finished cluster task's row is kept (status and wait work until "
        "then; default 86400)",
    )  # fmt: skip
    security = parser.add_argument_group(
        "security", "TLS, callers and their roles (see the README's Security section)"
    )
    security.add_argument("--tls-cert", type=Path, help="the server's certificate chain (PEM); "
                          "with --tls-key, the port serves TLS only")  # fmt: skip
    security.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    security.add_argument(
        "--tls-client-ca", type=Path,
        help="mTLS: clients must present a certificate this CA (PEM) signed; its subject "
        "common name (else its first SAN) is the caller's principal",
    )  # fmt: skip
    security.add_argument(
        "--tls-peer-ca", type=Path,
        help="the CA other nodes' certificates chain to, for calls between nodes "
        "(default: --tls-client-ca, else the system's roots)",
    )  # fmt: skip
    security.add_argument(
        "--tokens", type=Path,
        help="a tokens file (or a directory of *.toml files) mapping hashed bearer tokens "
        "to principals and roles; every call then needs 'authorization: Bearer TOKEN' "
        "(reloaded on change and on SIGHUP; `tm-token new` makes entries)",
    )  # fmt: skip
    security.add_argument(
        "--node-token-file", type=Path,
        help="a file holding the token this node sends to the other nodes of its cluster "
        "(a principal with the node role); with mTLS, the node's certificate does instead",
    )  # fmt: skip
    security.add_argument(
        "--insecure", action="store_true",
        help="serve a non-loopback address without TLS or caller checks (logged as a warning)",
    )  # fmt: skip
    security.add_argument(
        "--reflection", choices=("on", "off"), default="on",
        help="serve gRPC server reflection, for grpcurl and buf curl (default on)",
    )  # fmt: skip
    quotas = parser.add_argument_group(
        "quotas", "limits that keep one caller from exhausting the server (RESOURCE_EXHAUSTED)"
    )
    quotas.add_argument(
        "--max-tasks", type=positive_int, default=DEFAULT_MAX_TASKS,
        help=f"registered tasks per node (default {DEFAULT_MAX_TASKS})",
    )  # fmt: skip
    quotas.add_argument(
        "--max-tasks-per-principal", type=positive_int, default=DEFAULT_MAX_TASKS_PER_PRINCIPAL,
        help="registered tasks per authenticated principal "
        f"(default {DEFAULT_MAX_TASKS_PER_PRINCIPAL})",
    )  # fmt: skip
    quotas.add_argument("--max-children", type=positive_int, default=DEFAULT_MAX_CHILDREN,
                        help=f"children per task (default {DEFAULT_MAX_CHILDREN})")  # fmt: skip
    quotas.add_argument(
        "--max-sessions-per-principal", type=positive_int,
        default=DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
        help=f"open producer sessions per principal (default {DEFAULT_MAX_SESSIONS_PER_PRINCIPAL})",
    )  # fmt: skip
    quotas.add_argument(
        "--max-streams-per-connection", type=positive_int,
        default=DEFAULT_MAX_STREAMS_PER_CONNECTION,
        help="open streams (waits, watches, sessions) per connection "
        f"(default {DEFAULT_MAX_STREAMS_PER_CONNECTION})",
    )  # fmt: skip
    quotas.add_argument(
        "--max-streams-per-principal", type=positive_int,
        default=DEFAULT_MAX_STREAMS_PER_PRINCIPAL,
        help="open streams per authenticated principal "
        f"(default {DEFAULT_MAX_STREAMS_PER_PRINCIPAL})",
    )  # fmt: skip
    quotas.add_argument(
        "--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"the largest request body served (default {DEFAULT_MAX_REQUEST_BYTES})",
    )  # fmt: skip
    parser.add_argument(
        "--watch-window", type=positive_int, default=DEFAULT_WATCH_WINDOW,
        help="changes kept for module watches to resume from, per node "
        f"(default {DEFAULT_WATCH_WINDOW:,}); a cursor older than that has expired",
    )  # fmt: skip
    parser.add_argument(
        "--watch-interval", type=positive_seconds, default=DEFAULT_WATCH_INTERVAL,
        help="seconds between a module watch's batches: changes in between are "
        f"coalesced (default {DEFAULT_WATCH_INTERVAL})",
    )  # fmt: skip
    parser.add_argument(
        "--watch-max-interval", type=positive_seconds, default=DEFAULT_WATCH_MAX_INTERVAL,
        help="what the wait between a watch's batches doubles up to while every batch "
        f"finds changes (default {DEFAULT_WATCH_MAX_INTERVAL})",
    )  # fmt: skip
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="number of registry shards (default: the CPU count)",
    )
    parser.add_argument(
        "--task-ttl-in-seconds",
        type=ttl_seconds,
        default=0,
        help="how long finished root tasks are kept (default 0)",
    )
    parser.add_argument(
        "--user-task-ttl-in-seconds",
        type=ttl_seconds,
        default=3600,
        help="how long finished user tasks are kept (default 3600)",
    )
    parser.add_argument(
        "--enable-test-service",
        action="store_true",
        help="serve TaskManagerTestService (the 'test' module), for testing only",
    )
    parser.add_argument(
        "--producer-lease-seconds",
        type=positive_seconds,
        default=30.0,
        help="how long a producer session survives a broken stream before its "
        "unfinished tasks fail (default 30)",
    )
    parser.add_argument(
        "--keepalive-seconds",
        type=positive_seconds,
        default=20.0,
        help="ping a connection after this long without a frame from it (default 20)",
    )
    parser.add_argument(
        "--keepalive-timeout-seconds",
        type=positive_seconds,
        default=10.0,
        help="close a connection whose ping is not answered within this long; a frozen "
        "producer is noticed after keepalive + timeout, then its lease runs (default 10)",
    )
    parser.add_argument(
        "--max-modules",
        type=positive_int,
        default=DEFAULT_MAX_MODULES,
        help=f"most modules registered at once (default {DEFAULT_MAX_MODULES})",
    )
    parser.add_argument(
        "--max-status-children",
        type=positive_int,
        default=DEFAULT_MAX_STATUS_CHILDREN,
        help="most children a status lists; ListTaskChildren pages through all "
        f"(default {DEFAULT_MAX_STATUS_CHILDREN})",
    )
    parser.add_argument(
        "--gc-freeze-interval-seconds",
        type=non_negative_seconds,
        default=DEFAULT_GC_FREEZE_INTERVAL,
        help="how often long-lived objects are frozen out of garbage collection, which "
        "keeps pauses short with millions of tasks (0 disables; default 0.1)",
    )
    operating = parser.add_argument_group("operating", "metrics and logs")
    operating.add_argument(
        "--metrics-address", default=None, metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP, no caller "
        "checks; port 0 picks one, the log says which; default: off)",
    )  # fmt: skip
    operating.add_argument(
        "--http-address", default=DEFAULT_HTTP_ADDRESS, metavar="HOST:PORT|off",
        help="serve ScyllaDB's REST API (/task_manager/...), the event streams and the web "
        "dashboard at http://HOST:PORT/ (https under TLS), with the same caller checks as "
        f"gRPC; port 0 picks one, the log says which; off turns it off (default "
        f"{DEFAULT_HTTP_ADDRESS}, ScyllaDB's REST port)",
    )  # fmt: skip
    operating.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="text (default), or json: one JSON object a line, with the RPC's method, peer "
        "and task id where they apply, for log shippers",
    )  # fmt: skip
    operating.add_argument(
        "--log-level",
        type=log_level,
        default="INFO",
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO; DEBUG "
        "also logs one line per RPC, logger tm.rpc)",
    )
    args = parser.parse_args(argv)
    if args.metrics_address is not None:
        try:
            parse_address(args.metrics_address)
        except ValueError as exc:
            parser.error(str(exc))
    if args.http_address == "off":
        args.http_address = None
    elif args.http_address is not None:
        try:
            parse_address(args.http_address)
        except ValueError:
            parser.error(
                f"--http-address {args.http_address!r}: expected HOST:PORT "
                f"(e.g. {DEFAULT_HTTP_ADDRESS}) or off"
            )
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert is None and (args.tls_client_ca or args.tls_peer_ca):
        parser.error("--tls-client-ca and --tls-peer-ca need --tls-cert and --tls-key")
    tls = None
    if args.tls_cert is not None:
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca, args.tls_peer_ca)
    node_token = None
    if args.node_token_file is not None:
        try:
            node_token = args.node_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read --node-token-file {args.node_token_file}: {exc.strerror}")
        if not node_token or any(c.isspace() for c in node_token):
            parser.error(f"--node-token-file {args.node_token_file} must hold one token")
    configure_logging(args.log_level, args.log_format)
    return ServerConfig(
        address=args.address,
        node=args.node,
        shards=args.shards,
        task_ttl=args.task_ttl_in_seconds,
        user_task_ttl=args.user_task_ttl_in_seconds,
        enable_test_service=args.enable_test_service,
        producer_lease_seconds=args.producer_lease_seconds,
        keepalive_seconds=args.keepalive_seconds,
        keepalive_timeout_seconds=args.keepalive_timeout_seconds,
        max_modules=args.max_modules,
        max_status_children=args.max_status_children,
        gc_freeze_interval=args.gc_freeze_interval_seconds,
        store=store_url(args.store, data_dir(args.data_dir, args.node)),
        data_dir=data_dir(args.data_dir, args.node),
        advertise_address=args.advertise_address,
        heartbeat_seconds=args.heartbeat_seconds,
        node_expiry_seconds=args.node_expiry_seconds,
        peer_timeout_seconds=args.peer_timeout_seconds,
        cluster_task_retention_seconds=args.cluster_task_retention_seconds,
        journal=args.journal == "on",
        progress_window_seconds=args.progress_window_seconds,
        journal_compact_bytes=max(1, round(args.journal_compact_mib * 2**20)),
        tls=tls,
        tokens=args.tokens,
        node_token=node_token,
        insecure=args.insecure,
        reflection=args.reflection == "on",
        quotas=TaskQuotas(args.max_tasks, args.max_tasks_per_principal, args.max_children),
        max_sessions_per_principal=args.max_sessions_per_principal,
        streams=StreamQuotas(args.max_streams_per_connection, args.max_streams_per_principal),
        max_request_bytes=args.max_request_bytes,
        watch_window=args.watch_window,
        watch_interval=args.watch_interval,
        watch_max_interval=args.watch_max_interval,
        metrics_address=args.metrics_address,
        log_format=args.log_format,
        http_address=args.http_address,
    )


def data_dir(given: Path | None, node: str) -> Path:
    """The node's data directory: the one given, else ``$XDG_DATA_HOME/tm/NODE``."""
    if given is not None:
        return given
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tm" / node


def store_url(given: str | None, directory: Path) -> str | None:
    """The cluster store: the one given (``none``: no cluster), else a SQLite file there."""
    if given == "none":
        return None
    if given is not None:
        return given
    return f"sqlite://{(directory / 'cluster.db').absolute()}"


def main(argv: list[str] | None = None) -> None:
    """Runs the server until SIGTERM or SIGINT; exits 0 after a clean shutdown."""
    config = parse_args(argv)
    try:
        asyncio.run(serve(config))
    except (
        OSError, ValueError, NodeNameTakenError, StoreUnavailableError, JournalError,
        TokensFileError, TlsFilesError,
    ) as exc:  # fmt: skip
        # One clear line, no traceback: the address, the store or the name is wrong.
        logging.getLogger("tm_server").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
