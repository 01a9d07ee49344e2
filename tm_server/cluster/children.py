"""Regular children of cluster tasks that finished: kept in the store, so they outlive their node.

A child of a cluster task lives on one node and leaves that node's registry
as soon as it finishes (a child of a virtual parent is kept for no TTL).
Its final status is then written to the cluster store, so that the cluster
task's status (its children, their count, its progress roll-up) and its
recursive status still show it, with its state, error and node, through any
node and after its own node is gone. The rows go with their cluster task
when the retention sweep removes it (``SqlStore.sweep``).

The core tells of a finished child synchronously on the shard
(``VirtualTaskGroup.child_finished``), for every child of any virtual parent:
that call only notes the status. One background writer keeps the noted
statuses in the store, many in one transaction, retrying with backoff while
the store is down for up to ``KEEP_TRYING_SECONDS``; the node's stop flushes
what is left. Until a status is written, this node shows it from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from uuid import UUID

from google.protobuf import json_format

from tm_client.pb import task_manager_pb2 as pb
from tm_server.aio import cancel_and_wait
from tm_server.core import Progress, StoreUnavailableError, TaskStatus, VirtualChild
from tm_server.service.convert import status_from_pb, status_to_pb

from .store import ClusterStore, FinishedChildRow

log = logging.getLogger(__name__)

#: How long a finished child's status is retried while the store is down,
#: before it is given up (logged); an outage shorter than this loses none.
KEEP_TRYING_SECONDS = 600.0
#: The first retry's delay; each next one doubles, up to ``MAX_RETRY_DELAY``.
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
#: How long a node's stop waits for the statuses not yet written.
STOP_GRACE_SECONDS = 5.0
#: Statuses written in one transaction, at most.
BATCH = 256
#: Ids remembered as cluster tasks or not (the core asks for every virtual parent).
KNOWN_IDS = 65_536


def status_to_json(status: TaskStatus) -> str:
    """A status as JSON: the wire's message in protobuf's JSON mapping (one encoding for both)."""
    message = status_to_pb(status)
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def status_from_json(text: str) -> TaskStatus:
    """A status that ``status_to_json`` encoded."""
    return status_from_pb(json_format.Parse(text, pb.TaskStatus()))


def finished_row(parent_id: UUID, status: TaskStatus) -> FinishedChildRow:
    """The row that keeps a finished child's status."""
    return FinishedChildRow(
        id=str(status.id),
        parent_id=str(parent_id),
        node=status.node,
        created_at=status.creation_time,
        progress_completed=status.progress.completed,
        progress_total=status.progress.total,
        status=status_to_json(status),
    )


class FinishedChild:
    """A finished child of a cluster task: what its parent's status needs, and its own status.

    A kept one's status is decoded only when asked for (by a recursive status):
    a plain status of its parent needs the columns only.
    """

    __slots__ = ("_json", "_status", "child")

    def __init__(self, child: VirtualChild, status: TaskStatus | None, text: str = "") -> None:
        self.child = child
        self._status = status
        self._json = text

    @classmethod
    def kept(cls, row: FinishedChildRow) -> FinishedChild:
        """One the store keeps."""
        progress = Progress(row.progress_completed, row.progress_total)
        return cls(VirtualChild(UUID(row.id), row.node, row.created_at, progress), None, row.status)

    @classmethod
    def noted(cls, status: TaskStatus) -> FinishedChild:
        """One this node has not written yet."""
        child = VirtualChild(status.id, status.node, status.creation_time, status.progress)
        return cls(child, status)

    def status(self) -> TaskStatus:
        """Its final status."""
        if self._status is None:
            self._status = status_from_json(self._json)
        return self._status


class _Noted:
    """A finished child's status not yet in the store."""

    __slots__ = ("noted_at", "parent_id", "row", "status")

    def __init__(self, parent_id: UUID, status: TaskStatus, noted_at: float) -> None:
        self.parent_id = parent_id
        self.status = status
        self.noted_at = noted_at
        # Encoded by the writer, once (not on the shard that finished it).
        self.row: FinishedChildRow | None = None


class FinishedChildren:
    """This node's part: writing its finished children's statuses, and reading them all back."""

    def __init__(
        self,
        store: ClusterStore,
        writable: Callable[[], Awaitable[None]],
        *,
        keep_trying: float = KEEP_TRYING_SECONDS,
    ) -> None:
        self._store = store
        self._writable = writable
        self.keep_trying = keep_trying
        # Whether an id is a cluster task, as its last lookup here found: a
        # child's parent is looked up when the child is created, so this tells
        # the children of other virtual groups apart without asking the store.
        self._known: OrderedDict[UUID, bool] = OrderedDict()
        # Statuses not yet written: parent id -> child id -> noted status.
        self._noted: dict[UUID, dict[UUID, _Noted]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # cuts a retry's wait short when the node stops
        self._closing = False
        self._late = 0  # statuses noted after the stop began (not kept)

    def seen(self, task_id: UUID, is_cluster_task: bool) -> None:
        """Remembers what a lookup found ``task_id`` to be (the oldest are forgotten)."""
        known = self._known
        known[task_id] = is_cluster_task
        known.move_to_end(task_id)
        if len(known) > KNOWN_IDS:
            known.popitem(last=False)

    def add(self, parent_id: UUID, status: TaskStatus) -> None:
        """Notes a child's final status, to be written in the background (never waits)."""
        if self._known.get(parent_id) is False:
            return  # a child of another group's virtual task
        if self._closing:
            # The node is stopping and its writes are flushed: this one comes too
            # late. Told once: a stopping node may end many children at once.
            self._late += 1
            if self._late == 1:
                log.warning("child %s of %s finished as the node stopped: its status (and any "
                            "more such) is not kept", status.id, parent_id)  # fmt: skip
            return
        loop = asyncio.get_running_loop()
        self._noted.setdefault(parent_id, {})[status.id] = _Noted(parent_id, status, loop.time())
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write(), name="tm-finished-children")

    async def of(self, parent_id: UUID) -> dict[UUID, FinishedChild]:
        """The finished children of a cluster task: those the store keeps, and those noted here.

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        found = {
            UUID(row.id): FinishedChild.kept(row)
            for row in await self._store.finished_children(str(parent_id))
        }
        for child_id, noted in self._noted.get(parent_id, {}).items():
            found.setdefault(child_id, FinishedChild.noted(noted.status))
        return found

    @property
    def pending(self) -> int:
        """How many statuses wait to be written."""
        return sum(len(children) for children in self._noted.values())

    # ---- the writer ---------------------------------------------------------------------------

    def _batch(self) -> list[tuple[_Noted, FinishedChildRow]]:
        batch: list[tuple[_Noted, FinishedChildRow]] = []
        broken: list[_Noted] = []
        for noted in (n for children in self._noted.values() for n in children.values()):
            if noted.row is None:
                try:
                    noted.row = finished_row(noted.parent_id, noted.status)
                except Exception:  # a bug, not an outage: retrying would not help
                    log.exception("cannot encode the status of child %s", noted.status.id)
                    broken.append(noted)
                    continue
            batch.append((noted, noted.row))
            if len(batch) == BATCH:
                break
        for noted in broken:
            self._forget(noted)
        return batch

    def _forget(self, noted: _Noted) -> None:
        children = self._noted.get(noted.parent_id)
        if children is not None:
            children.pop(noted.status.id, None)
            if not children:
                del self._noted[noted.parent_id]

    async def _write(self) -> None:
        delay = FIRST_RETRY_DELAY
        failures = 0
        while self._noted:
            batch = self._batch()
            if not batch:  # none but statuses that could not be encoded (now forgotten)
                continue
            try:
                await self._writable()
                await self._store.add_finished_children([row for _, row in batch])
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "cannot keep %d finished children of cluster tasks in the store yet "
                        "(%s); retrying for up to %gs",
                        self.pending, exc, self.keep_trying,
                        exc_info=not isinstance(exc, StoreUnavailableError),
                    )  # fmt: skip
                self._give_up_old()
                await self._pause(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            for noted, _ in batch:
                self._forget(noted)
            if failures:
                log.info("the store is back: finished children of cluster tasks kept again "
                         "(after %d failed tries)", failures)  # fmt: skip
                failures = 0
            delay = FIRST_RETRY_DELAY

    def _give_up_old(self) -> None:
        # Past the deadline a status is dropped rather than held (and retried) forever.
        deadline = asyncio.get_running_loop().time() - self.keep_trying
        old = [n for c in self._noted.values() for n in c.values() if n.noted_at < deadline]
        for noted in old:
            self._forget(noted)
        if old:
            log.error(
                "gave up keeping %d finished children of cluster tasks after %gs of store "
                "failures (e.g. %s of %s): their cluster tasks' statuses will not show them",
                len(old), self.keep_trying, old[0].status.id, old[0].parent_id,
            )  # fmt: skip

    async def _pause(self, delay: float) -> None:
        if self._closing:
            # The stop's grace is short: retry often within it.
            await asyncio.sleep(min(delay, 0.2))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)  # set when the node stops

    async def close(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Writes what is noted, for up to ``grace`` seconds (the store is closed next)."""
        self._closing = True
        self._wake.set()
        writer = self._writer
        if writer is None or writer.done():
            return
        await asyncio.wait({writer}, timeout=grace)
        if not writer.done():
            lost = self.pending
            await cancel_and_wait(writer)
            log.error(
                "the node stopped with %d finished children of cluster tasks not kept in the "
                "store: their cluster tasks' statuses will not show them",
                lost,
            )
