"""A tm node's part in a cluster: the store, its membership, its peers and cluster tasks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import grpc

from tm_server.core import ModuleLimitError, TaskManager, TaskStatus
from tm_server.core.producers import Producers

from .children import status_from_json
from .feed import ChangeFeed
from .membership import Membership, MembershipConfig
from .observe import ClusterObserver
from .peers import Peers, node_answers
from .store import ClusterStore, NodeRow
from .tasks import ClusterTaskGroup

log = logging.getLogger(__name__)

#: Heartbeat rounds between two retention sweeps of finished cluster tasks.
SWEEP_EVERY = 12


def open_store(url: str) -> ClusterStore:
    """The store a ``--store`` URL names: ``sqlite:///PATH`` or ``postgresql://...``.

    Raises:
        ValueError: another scheme.
    """
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        path = url.removeprefix("sqlite://")
        if not path:
            raise ValueError(
                f"{url}: a SQLite store needs a file, e.g. sqlite:///var/tm/cluster.db"
            )
        return SqliteStore(url, Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"{url}: the store is sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster's state lives and how this node takes part (the cluster flags)."""

    store: str
    node: str
    advertise_address: str
    version: str
    heartbeat_seconds: float = 5.0
    expiry_seconds: float = 20.0
    peer_timeout_seconds: float = 2.0
    retention_seconds: float = 86_400.0
    # Opens the channel to another node (TLS and the node token when the server has them).
    channels: Callable[[str], grpc.aio.Channel] | None = None
    # Told of store calls and unanswered peers (the server's metrics), if any.
    observer: ClusterObserver | None = None


class ClusterNode:
    """Joins the cluster, keeps this node's membership, and serves cluster tasks."""

    def __init__(self, config: ClusterConfig, manager: TaskManager, producers: Producers) -> None:
        self.config = config
        self._manager = manager
        self._producers = producers
        self.store = open_store(config.store)
        observer = config.observer
        if observer is not None:
            self.store = observer.store(self.store)
        self.membership = Membership(
            self.store,
            MembershipConfig(
                config.node, config.advertise_address, config.version,
                config.heartbeat_seconds, config.expiry_seconds,
            ),
            answers=lambda address: node_answers(
                address, config.peer_timeout_seconds, config.channels
            ),
        )  # fmt: skip
        self.peers = Peers(
            self.membership, timeout=config.peer_timeout_seconds, channels=config.channels,
            on_unreachable=None if observer is None else observer.unreachable,
            kept=self._kept_status,
        )  # fmt: skip
        self.feed = ChangeFeed(self.store)
        self.tasks = ClusterTaskGroup(
            self.store, self.membership, self.peers, self.feed, manager, producers,
            retention_seconds=config.retention_seconds,
        )  # fmt: skip
        self._rounds = 0

    async def _kept_status(self, task_id: UUID) -> TaskStatus | None:
        # A cluster task's child that finished on a node, by its own id.
        row = await self.store.finished_child(str(task_id))
        return None if row is None else status_from_json(row.status)

    async def start(self) -> None:
        """Opens the store, joins the cluster and starts serving cluster tasks.

        Raises:
            NodeNameTakenError: a live node has this node's name.
            StoreUnavailableError: the store cannot be reached.
        """
        await self.store.open()
        await self.membership.join()
        await self._manager.register_virtual_group(self.tasks)
        self._manager.remote = self.peers
        self._producers.cluster = self.tasks
        await self._register_modules()
        self.membership.on_round(self._round)
        self.feed.start()
        self.membership.start()
        log.info(
            "node %s joined the cluster in %s as %s (%d nodes alive)",
            self.config.node, self.store.url, self.config.advertise_address,
            sum(n.alive for n in await self.membership.nodes()),
        )  # fmt: skip

    async def _register_modules(self) -> None:
        # Cluster tasks are listed in their module on every node.
        for module in await self.store.modules():
            try:
                await self._manager.register_module(module)
            except ModuleLimitError:
                log.warning("module %s of cluster tasks passes --max-modules here", module)

    async def _round(self, nodes: list[NodeRow]) -> None:
        self._rounds += 1
        if self.membership.settled:
            await self.tasks.fail_gone_nodes([n.name for n in nodes if not n.alive])
        await self._register_modules()
        if self._rounds % SWEEP_EVERY == 0:
            swept = await self.store.sweep(await self.store.now() - self.config.retention_seconds)
            if swept:
                log.info("removed %d cluster tasks finished over %gs ago", swept,
                         self.config.retention_seconds)  # fmt: skip

    async def nodes(self) -> list[NodeRow]:
        """Every node the store knows."""
        return await self.membership.nodes()

    async def stop(self) -> None:
        """Leaves the cluster (a clean shutdown) and closes the store."""
        await self.leave()
        await self.close()

    async def leave(self) -> None:
        """The first half of a clean stop: the others stop asking this node, which keeps its store.

        Tasks that end after it (bodies the node's stop cancels) still reach
        the store: ``close`` keeps their statuses before closing it.
        """
        await self.membership.leave()
        await self.feed.stop()

    async def close(self) -> None:
        """The second half: keeps the finished children noted so far, then closes the store."""
        await self.tasks.close()
        self._manager.remote = None
        self._producers.cluster = None
        self._manager.unregister_virtual_group(self.tasks.name)
        await self.peers.close()
        await self.store.close()
