"""Builds and runs the gRPC server: the services, reflection, health and graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib.metadata
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import grpc
from google.rpc import error_details_pb2  # noqa: F401  # served by reflection (see start)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tm_client import Credentials
from tm_client.pb import (
    node_pb2_grpc,
    task_manager_pb2,
    task_manager_pb2_grpc,
    task_manager_test_pb2_grpc,
    task_reporting_pb2,
    task_reporting_pb2_grpc,
)
from tm_server.core import Clock, TaskManager, TaskManagerError
from tm_server.core.journal import NO_JOURNAL
from tm_server.core.observe import NO_OBSERVER
from tm_server.core.producers import Producers
from tm_server.core.recovery import recover
from tm_server.core.types import TaskOwner
from tm_server.security.tls import ServerTls
from tm_server.security.tokens import Tokens

from .cluster.node import ClusterConfig, ClusterNode
from .cluster.store import NodeRow
from .config import ServerConfig, is_loopback
from .datadir import DataDir
from .heap import HeapManager
from .http import HttpEndpoint, HttpParts
from .journal import (
    JOURNAL_DIR,
    FileJournal,
    JournalConfig,
)
from .logsetup import RPC_LOGGER, CallLogInterceptor
from .metrics import (
    ClusterCollector,
    ClusterMetrics,
    JournalMetrics,
    Metrics,
    MetricsEndpoint,
    MetricsInterceptor,
    ProducersCollector,
    TaskCountsCollector,
    TaskMetrics,
)
from .service.auth import AuthInterceptor
from .service.calls import WrappingInterceptor
from .service.decoding import add_service
from .service.durability import DurabilityInterceptor
from .service.health_servicer import HealthServicer
from .service.node_servicer import NodeServicer
from .service.reporting_servicer import TaskReportingServicer
from .service.servicer import TaskManagerServicer

__all__ = ["ServerConfig", "TmServer", "serve", "server_options"]

log = logging.getLogger(__name__)

TASK_MANAGER_SERVICE = task_manager_pb2.DESCRIPTOR.services_by_name["TaskManagerService"].full_name
REPORTING_SERVICE = task_reporting_pb2.DESCRIPTOR.services_by_name["TaskReportingService"].full_name


def server_options(
    keepalive_seconds: float = 20.0, keepalive_timeout_seconds: float = 10.0
) -> list[tuple[str, int]]:
    """The grpcio server options tm runs with (the benchmark's baseline uses them too)."""
    keepalive_ms = round(keepalive_seconds * 1000)
    timeout_ms = round(keepalive_timeout_seconds * 1000)
    return [
        # A producer whose host froze or vanished without closing its
        # connection is found by pings: after keepalive_seconds without a
        # frame from it the server pings, and a ping not answered within the
        # timeout closes the connection, ending its session stream (its lease
        # starts then). grpc-core waits for a ping's answer for
        # ping_timeout_ms (60 s by default), not keepalive_timeout_ms, so both
        # are set: without it a frozen producer was noticed after 60-80 s.
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # grpcio sets SO_REUSEPORT by default: a second server on the same
        # port would start without a word and take half the calls into an
        # empty registry. Off, the second bind fails.
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # grpcio refuses calls that wait for the application beyond 1,000 (and
        # all beyond 3,000): a burst of 10,000 watchers opening at once would
        # lose half.
        ("grpc.server.max_pending_requests", 100_000),
        ("grpc.server.max_pending_requests_hard_limit", 200_000),
    ]


def _version() -> str:
    try:
        return importlib.metadata.version("tm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _bind_error(address: str) -> str:
    """Why ``address`` cannot be listened on, as the OS says it (grpcio does not say)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit():
        return "expected HOST:PORT, e.g. 127.0.0.1:50051"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return f"{reason} (is another tm-server running there?)"
        return reason
    return "grpcio refused the address"


# grpcio's own limit, above tm's: a body between the two gets tm's status
# (RESOURCE_EXHAUSTED with a reason); one past this, grpcio's bare one.
_GRPC_MAX_RECEIVE_BYTES = 4 * 1024 * 1024


class _Owners:
    """Whose a task or a session is, for the access checks (see ``service.auth.Owners``)."""

    def __init__(self, manager: TaskManager, producers: Producers) -> None:
        self._manager = manager
        self._producers = producers

    async def task_owner(self, task_id: UUID) -> TaskOwner | None:
        found = await self._manager.task_owner(task_id)
        if found is not None or self._manager.remote is None:
            return found
        # A cluster task, or one of another node: its status names its module.
        try:
            status = await self._manager.get_status(task_id)
        except TaskManagerError:
            return None
        return TaskOwner(status.module, status.owner)

    def session_owner(self, session_id: UUID) -> str | None:
        return self._producers.session_owner(session_id)


class TmServer:
    """A running tm server: the task manager and the gRPC server in front of it."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        manager: TaskManager | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Creates a server; pass ``manager`` to serve a task manager the application owns.

        With ``manager`` given, its shards, node and TTLs are used and the
        config's are ignored.
        """
        self.config = config
        # A journal when the server has a data directory and owns its manager
        # (an application's own manager keeps its own state).
        self.journal: FileJournal | None = None
        if manager is None and config.data_dir is not None and config.journal:
            self.journal = FileJournal(
                JournalConfig(
                    config.data_dir / JOURNAL_DIR,
                    progress_window=config.progress_window_seconds,
                    compact_bytes=config.journal_compact_bytes,
                )
            )
        # Metrics only when asked for: otherwise no hook, interceptor or endpoint exists.
        self.metrics: Metrics | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        if config.metrics_address is not None:
            self.metrics = Metrics()
            self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_address)
        self.manager = manager or TaskManager(
            shards=config.shards,
            node=config.node,
            clock=clock,
            task_ttl=config.task_ttl,
            user_task_ttl=config.user_task_ttl,
            max_modules=config.max_modules,
            max_status_children=config.max_status_children,
            journal=self.journal or NO_JOURNAL,
            quotas=config.quotas,
            watch_window=config.watch_window,
            watch_interval=config.watch_interval,
            watch_max_interval=config.watch_max_interval,
            observer=NO_OBSERVER if self.metrics is None else TaskMetrics(self.metrics),
        )
        if manager is not None and self.metrics is not None:
            manager.set_observer(TaskMetrics(self.metrics))
        self.heap = HeapManager(config.gc_freeze_interval)
        self.producers = Producers(
            self.manager,
            lease_seconds=config.producer_lease_seconds,
            max_sessions_per_principal=config.max_sessions_per_principal,
        )
        self.health = HealthServicer()
        # Read now: a tokens file or TLS files that cannot be used stop the
        # start with one line saying which and why.
        self.tokens = None if config.tokens is None else Tokens(config.tokens)
        self.tls = None if config.tls is None else ServerTls(config.tls)
        # Callers are checked before anything else runs (a refused call does
        # not wait for the disk); then durable calls wait for the journal.
        self.access = AuthInterceptor(
            _Owners(self.manager, self.producers),
            tokens=self.tokens,
            mtls=config.tls is not None and config.tls.client_ca is not None,
            streams=config.streams,
        )
        # The outermost first: a call is logged and counted however it ends,
        # refused by the access checks included. They wrap each method's
        # handler as its service is registered (see ``WrappingInterceptor``).
        interceptors: list[WrappingInterceptor] = []
        log_calls = logging.getLogger(RPC_LOGGER).isEnabledFor(logging.DEBUG)
        if config.log_format == "json" or log_calls:
            interceptors.append(CallLogInterceptor(log_calls=log_calls))
        if self.metrics is not None:
            interceptors.append(MetricsInterceptor(self.metrics))
            self._collect_state(self.metrics)
        interceptors.append(self.access)
        if self.journal is not None:
            interceptors.append(DurabilityInterceptor(self.journal))
        options = server_options(config.keepalive_seconds, config.keepalive_timeout_seconds)
        options.append(
            (
                "grpc.max_receive_message_length",
                max(_GRPC_MAX_RECEIVE_BYTES, 2 * config.max_request_bytes),
            )
        )
        self._interceptors = interceptors
        self.server = grpc.aio.server(options=options)
        self.http: HttpEndpoint | None = None
        if config.http_address is not None:
            self.http = HttpEndpoint(
                config.http_address,
                HttpParts(
                    manager=self.manager,
                    access=self.access,
                    journal=self.journal,
                    nodes=self._nodes,
                    tls=None if self.tls is None else self.tls.ssl_context(),
                    metrics=self.metrics_endpoint,
                    registry=self.metrics,
                    test_service=config.enable_test_service,
                ),
            )
        self.http_port = 0
        self._token_watch: asyncio.Task[None] | None = None
        self.port = 0
        self.metrics_port = 0
        self.cluster: ClusterNode | None = None
        self._stopped = asyncio.Event()
        self._data_dir = None if config.data_dir is None else DataDir(config.data_dir)
        # How long reading the journal and rebuilding the registry took at start.
        self.recovery_seconds = 0.0
        self._started_at: float | None = None

    def _collect_state(self, metrics: Metrics) -> None:
        # The live counts, read at scrape time.
        registry = metrics.registry
        tasks = TaskCountsCollector(self.manager.task_counts)
        registry.register(tasks)
        assert self.metrics_endpoint is not None
        self.metrics_endpoint.refresh.append(tasks.refresh)
        registry.register(ProducersCollector(self.producers))
        registry.register(ClusterCollector(self._known_nodes))
        if self.journal is not None:
            JournalMetrics(metrics, self.journal)
        metrics.info.labels(_version(), self.manager.node).set(1)

    def _known_nodes(self) -> list[NodeRow] | None:
        return None if self.cluster is None else self.cluster.membership.known_nodes

    async def start(self) -> int:
        """Takes the data directory, binds the address and starts serving; returns the port.

        Raises:
            DataDirInUseError: another live server holds the data directory.
            JournalError: the journal cannot be read or written.
            OSError: the address or the data directory cannot be used.
        """
        self._check_exposure()
        if self._data_dir is not None:
            self._data_dir.lock()
        try:
            if self.metrics_endpoint is not None:
                self.metrics_port = await self.metrics_endpoint.start()
            if self.journal is not None:
                await self._recover(self.journal)
            return await self._start()
        except BaseException:
            if self.http is not None:
                await self.http.close()
            if self.metrics_endpoint is not None:
                await self.metrics_endpoint.close()
            if self.journal is not None:
                await self.journal.close()
            if self._data_dir is not None:
                self._data_dir.unlock()
            raise

    def _check_exposure(self) -> None:
        # tm serves a fleet, but a listener on other interfaces without TLS
        # and caller checks lets anyone on the network do anything: it must
        # be asked for by name.
        config = self.config
        exposed = [
            address
            for address in (config.address, config.http_address)
            if address is not None and not is_loopback(address)
        ]
        if not exposed:
            return
        if config.enable_test_service and not config.authenticates:
            raise ValueError(
                f"the test service lets any caller create and finish tasks: it is served on "
                f"{exposed[0]} (not loopback) only with --tokens or --tls-client-ca"
            )
        missing = [
            what
            for what, ok in (
                ("TLS", config.tls is not None),
                ("caller checks", config.authenticates),
            )
            if not ok
        ]
        if not missing:
            return
        if not config.insecure:
            raise ValueError(
                f"refusing to serve {exposed[0]} (not loopback) without "
                f"{' and '.join(missing)}: give --tls-cert/--tls-key and --tokens (or "
                "--tls-client-ca), or --insecure to serve it anyway"
            )
        log.warning(
            "serving %s without %s (--insecure): anyone who can reach it can read, "
            "create, abort and drain tasks",
            " and ".join(exposed),
            " and ".join(missing),
        )

    async def _recover(self, journal: FileJournal) -> None:
        # Before anything is served: the registry as the journal left it. The
        # collector is held off meanwhile: a million new objects would have it
        # scan the growing heap again and again, for no garbage at all.
        started = time.perf_counter()
        collecting = gc.isenabled()
        gc.disable()
        try:
            records = journal.load()
            await journal.start()
            report = await recover(
                self.manager, records, self.producers.impl_of, self.producers.restore
            )
            found = len(records.keys)
            del records
        finally:
            if collecting:
                # What recovery built lives as long as the registry: frozen (as
                # the heap manager freezes what survives), the collector never
                # walks it, and turning it back on does not start with a pass
                # over every object recovery made (1.3 s for a million tasks).
                gc.freeze()
                gc.enable()
        # What recovery changed (failed bodies, expired roots) goes to disk, and
        # a disk that refuses it stops the start.
        await journal.check_writable()
        self.recovery_seconds = report.seconds = time.perf_counter() - started
        if found:
            log.info("journal: recovered %s", report.describe())

    async def _start(self) -> int:
        # Every service goes through add_service, so that a request body that
        # does not decode is INVALID_ARGUMENT, never grpcio's UNKNOWN.
        limit = self.config.max_request_bytes

        def add(register: Callable[[Any, Any], None], servicer: Any) -> list[str]:
            return add_service(self.server, register, servicer, limit, self._interceptors)

        services = add(
            task_manager_pb2_grpc.add_TaskManagerServiceServicer_to_server,
            TaskManagerServicer(self.manager, self._nodes),
        )
        services += add(node_pb2_grpc.add_NodeServiceServicer_to_server, NodeServicer(self.manager))
        services += add(
            task_reporting_pb2_grpc.add_TaskReportingServiceServicer_to_server,
            TaskReportingServicer(self.producers),
        )
        if self.config.enable_test_service:
            # The test-only API is imported only when asked for.
            from .testing import register_test_module
            from .testing.servicer import TaskManagerTestServicer

            services += add(
                task_manager_test_pb2_grpc.add_TaskManagerTestServiceServicer_to_server,
                TaskManagerTestServicer(self.manager),
            )
            await register_test_module(self.manager)
        services += add(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        if self.config.reflection:
            # Reflection answers from the default descriptor pool: every type
            # imported is described, the google.rpc error details (imported
            # above) included, so grpcurl and buf curl decode them by name.
            services.append(reflection.SERVICE_NAME)
            add(
                reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                reflection_aio.ReflectionServicer(services),
            )
        try:
            if self.tls is not None:
                self.port = self.server.add_secure_port(self.config.address, self.tls.credentials())
            else:
                self.port = self.server.add_insecure_port(self.config.address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {self.config.address}: {_bind_error(self.config.address)}"
            )
        if self.http is not None:
            # Bound before the cluster is joined: a taken HTTP port fails the
            # start before this node is announced to the others.
            self.http_port = await self.http.start()
        if self.config.store is not None:
            # Joined only once the port is bound: a second server on a taken
            # port fails on the port, and the node advertises the real one.
            self.cluster = ClusterNode(self._cluster_config(), self.manager, self.producers)
            try:
                await self.cluster.start()
            except BaseException:
                await self.cluster.stop()
                self.cluster = None
                await self.server.stop(None)
                raise
        await self.server.start()
        self.producers.renew_leases()
        if self.tokens is not None:
            self._token_watch = asyncio.get_running_loop().create_task(
                self._watch_tokens(self.tokens), name="tm-tokens-watch"
            )
        self.heap.start()
        self._started_at = self.manager.clock.now()
        for name in ("", TASK_MANAGER_SERVICE, REPORTING_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def _watch_tokens(self, tokens: Tokens) -> None:
        # A stat of the file a second: an edit takes effect within a second,
        # without a restart and without dropping anyone who keeps their rights.
        while True:
            await asyncio.sleep(1.0)
            tokens.check()

    def reload_credentials(self) -> None:
        """Re-reads the tokens file now and the TLS files before the next handshake (SIGHUP)."""
        if self.tokens is not None:
            self.tokens.reload()
        if self.tls is not None:
            self.tls.reload_soon()

    def _peer_channels(self) -> Callable[[str], grpc.aio.Channel]:
        # Other nodes are called as this node: over TLS when it serves TLS
        # (with its own certificate under mTLS), with the node token if given.
        token = self.config.node_token
        credentials = (
            Credentials(token=token) if self.tls is None else self.tls.peer_credentials(token)
        )
        credentials.check()  # unreadable files fail the start, not the first call
        return credentials.aio_channel

    def _cluster_config(self) -> ClusterConfig:
        assert self.config.store is not None
        advertised = self._advertised_address()
        advertised_host = advertised.rsplit(":", 1)[0].strip("[]")
        if advertised_host in ("0.0.0.0", "::", ""):
            raise OSError(
                f"cannot advertise {advertised}: other nodes cannot reach a wildcard address; "
                "give --advertise-address HOST:PORT"
            )
        return ClusterConfig(
            store=self.config.store,
            node=self.manager.node,
            advertise_address=advertised,
            version=_version(),
            heartbeat_seconds=self.config.heartbeat_seconds,
            expiry_seconds=self.config.node_expiry_seconds,
            peer_timeout_seconds=self.config.peer_timeout_seconds,
            retention_seconds=self.config.cluster_task_retention_seconds,
            channels=self._peer_channels(),
            observer=None if self.metrics is None else ClusterMetrics(self.metrics),
        )

    async def _nodes(self) -> list[NodeRow]:
        if self.cluster is not None:
            return await self.cluster.nodes()
        now = self.manager.clock.now()
        started = self._started_at or now
        row = NodeRow(
            self.manager.node, self._advertised_address(), _version(), "", started, now, now,
            False, True,
        )  # fmt: skip
        return [row]

    def _advertised_address(self) -> str:
        # Where this node is reached: as given, else the listen host with the
        # port bound (not the one asked for: port 0 picks one).
        host = self.config.address.rsplit(":", 1)[0]
        return self.config.advertise_address or f"{host}:{self.port}"

    async def stop(self) -> None:
        """Stops accepting calls, ends open streams cleanly, then stops the task manager."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._token_watch is not None:
            self._token_watch.cancel()
        await self.health.enter_graceful_shutdown()
        if self.cluster is not None:
            await self.cluster.leave()  # the others stop asking this node first
        self.manager.stop_watches()
        self.producers.stop_streams()
        await self.server.stop(self.config.grace_seconds)
        if self.http is not None:
            await self.http.close()
        await self.manager.close()
        if self.cluster is not None:
            # After the bodies the stop ended: their final statuses, as children
            # of cluster tasks, reach the store before it closes.
            await self.cluster.close()
        if self.journal is not None:
            await self.journal.close()
        await self.heap.stop()
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        if self._data_dir is not None:
            self._data_dir.unlock()


async def serve(config: ServerConfig) -> None:
    """Runs a server until SIGTERM or SIGINT, then shuts it down gracefully."""
    server = TmServer(config)
    port = await server.start()
    host = config.address.rsplit(":", 1)[0]
    # Before the "listening" line, which tools wait for: every port is known by then.
    if server.metrics_endpoint is not None:
        where = server.metrics_endpoint.address.rsplit(":", 1)[0]
        log.info("metrics on http://%s:%d/metrics", where, server.metrics_port)
    if server.http is not None:
        where = server.http.address.rsplit(":", 1)[0]
        log.info("http on %s://%s:%d/ (dashboard and REST API)", server.http.scheme, where,
                 server.http_port)  # fmt: skip
    log.info(
        "tm-server listening on %s:%d (node %s, %d shards%s)",
        host,
        port,
        config.node,
        config.shards,
        ", test service on" if config.enable_test_service else "",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    log.info("stopped")
