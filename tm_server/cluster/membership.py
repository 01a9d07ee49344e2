"""A node's membership of the cluster: joining, heartbeats, leaving, and who is alive.

A node is alive while its heartbeat is fresh by the store's clock. This node
renews its own every ``heartbeat`` seconds; if it cannot renew it before it
would expire (the store is unreachable, or another node took its name after
it expired), it stops writing cluster state (``check_writable`` raises) until
a renewal succeeds again. Each round also fails, once, the cluster tasks whose
producer session lived on a node that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tm_server.aio import cancel_and_wait
from tm_server.core import StoreUnavailableError

from .store import ClusterStore, NodeNameTakenError, NodeRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MembershipConfig:
    """How this node takes part: its name, address, and the heartbeat's timing."""

    node: str
    address: str
    version: str
    heartbeat_seconds: float = 5.0
    expiry_seconds: float = 20.0


class Membership:
    """This node's row in the store, kept fresh."""

    def __init__(
        self,
        store: ClusterStore,
        config: MembershipConfig,
        answers: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        # Whether a node at an address answers (a crashed node's row looks
        # alive until it expires; its restart may take the name over).
        self._answers = answers
        self.config = config
        self.incarnation = uuid.uuid4().hex
        self._renewed_at = 0.0  # time.monotonic() of the last successful renewal
        # Since when every renewal succeeded (None after a failed one).
        self._healthy_since: float | None = None
        self._nodes: list[NodeRow] = []
        self._task: asyncio.Task[None] | None = None
        self._on_round: list[Callable[[list[NodeRow]], Awaitable[None]]] = []

    async def join(self) -> None:
        """Registers the node.

        Raises:
            NodeNameTakenError: a live node has this name already.
            StoreUnavailableError: the store cannot be reached.
        """
        started = time.monotonic()
        try:
            await self._store.join(
                self.config.node, self.config.address, self.config.version, self.incarnation,
                self.config.expiry_seconds,
            )  # fmt: skip
        except NodeNameTakenError:
            holder = next((n for n in await self._store.nodes() if n.name == self.config.node),
                          None)  # fmt: skip
            if holder is None or self._answers is None or await self._answers(holder.address):
                raise
            # The row looks alive but its node does not answer: it crashed (this
            # is most likely its restart) or is frozen; take the name over.
            log.warning(
                "node %s at %s does not answer; taking its name over", holder.name,
                holder.address,
            )  # fmt: skip
            await self._store.join(
                self.config.node, self.config.address, self.config.version, self.incarnation,
                self.config.expiry_seconds, replacing=holder.incarnation,
            )  # fmt: skip
        self._renewed_at = started
        self._healthy_since = started
        self._nodes = await self._store.nodes()

    def on_round(self, handler: Callable[[list[NodeRow]], Awaitable[None]]) -> None:
        """Runs ``handler(nodes)`` after every heartbeat round."""
        self._on_round.append(handler)

    def start(self) -> None:
        """Starts the heartbeats."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tm-heartbeat")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            await self.renew()

    async def renew(self) -> None:
        """One heartbeat round: renew, read the nodes, run the round's handlers."""
        if not await self._renew():
            return
        for handler in self._on_round:
            try:
                await handler(self._nodes)
            except Exception:
                log.warning("a membership round's work failed", exc_info=True)

    async def _renew(self) -> bool:
        """Renews this node's row and reads the nodes; whether it could."""
        started = time.monotonic()
        try:
            if await self._store.heartbeat(
                self.config.node, self.incarnation, self.config.expiry_seconds
            ):
                self._renewed_at = started
            else:
                # Our row expired and was taken over or removed: join again (this
                # fails while another live node holds the name).
                log.warning("node %s lost its membership; joining again", self.config.node)
                await self.join()
            self._nodes = await self._store.nodes()
        except Exception as exc:  # the store unreachable, or the name taken meanwhile
            log.warning("node %s could not renew its membership: %s", self.config.node, exc)
            self._healthy_since = None
            return False
        if self._healthy_since is None:
            self._healthy_since = started
        return True

    @property
    def settled(self) -> bool:
        """Whether this node has renewed without a miss for a whole expiry period.

        Only then may it judge another node gone: after the store was down,
        every node's heartbeat looks stale at first, and each gets an expiry
        period to renew before the others act on its absence.
        """
        since = self._healthy_since
        return since is not None and time.monotonic() - since >= self.config.expiry_seconds

    @property
    def writable(self) -> bool:
        """Whether the membership is surely still valid (renewed within the expiry)."""
        return time.monotonic() - self._renewed_at < self.config.expiry_seconds

    async def check_writable(self) -> None:
        """Raises ``StoreUnavailableError`` unless this node may write cluster state.

        A node past its expiry tries one renewal first: the store may be back
        (or a long lock released) before the next heartbeat is due.
        """
        if not self.writable:
            await self._renew()
        if not self.writable:
            raise StoreUnavailableError(
                f"node {self.config.node} could not renew its membership in time, so it "
                "writes no cluster state until it can"
            )

    async def alive_peers(self) -> list[NodeRow]:
        """The other nodes alive now, by the store; those of the last round if it is down.

        Read afresh on every call rather than once a heartbeat: a node that
        joined a moment ago already holds tasks the caller must see, and one
        that expired a moment ago must not be asked.
        """
        try:
            nodes = await self.nodes()
        except StoreUnavailableError:
            nodes = self._nodes
        return [n for n in nodes if n.alive and n.name != self.config.node]

    def known_peer(self, name: str) -> NodeRow | None:
        """Another node by name, if it was alive at the last read of the nodes."""
        return next(
            (n for n in self._nodes if n.name == name and n.alive and n.name != self.config.node),
            None,
        )

    @property
    def known_nodes(self) -> list[NodeRow]:
        """Every node as the store had them at the last read (a heartbeat ago at most)."""
        return self._nodes

    async def nodes(self) -> list[NodeRow]:
        """Every node, read from the store now."""
        self._nodes = await self._store.nodes()
        return self._nodes

    async def leave(self) -> None:
        """Stops the heartbeats and marks the node as gone (a clean shutdown)."""
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(StoreUnavailableError):
            await self._store.leave(self.config.node, self.incarnation)
