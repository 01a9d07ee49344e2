"""Cluster tasks: virtual tasks whose state is a row in the cluster store.

``ClusterTaskGroup`` is one ``VirtualTaskGroup`` (the contract ScyllaDB's
virtual tasks follow) and the producers' ``ClusterTasks`` port at once. Every
node answers for every cluster task alike: its status is generated on demand
from its row, its cluster children (rows whose parent it is) and its regular
children gathered from every live node (ScyllaDB's ``tasks_get_children``),
with those that finished kept in the store (``children.py``); nodes that do
not answer in time are named in ``unreachable_nodes``. Writes go to the
store, and every node hears of them through the change feed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from uuid import UUID

from tm_server.core import (
    InvalidArgumentError,
    InvalidStateError,
    Progress,
    TaskAlreadyExistsError,
    TaskIdentity,
    TaskKind,
    TaskManager,
    TaskNotFoundError,
    TaskState,
    TaskStats,
    TaskStatus,
    VirtualChild,
    VirtualTaskGroup,
    VirtualTaskHint,
    new_task_id,
)
from tm_server.core.producers import Producers, TaskSpec
from tm_server.core.types import AbortRequest, StatusExtras
from tm_server.core.validation import (
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    check_length,
    check_progress,
)

from .children import FinishedChild, FinishedChildren
from .feed import ChangeFeed
from .membership import Membership
from .peers import Peers
from .store import NOW, ClusterStore, ClusterTaskRow

log = logging.getLogger(__name__)

_UNFINISHED = ("created", "running")
#: How often a changed child makes a cluster task's watchers look again, at most.
CHILD_NOTIFY_INTERVAL = 0.1
# Cluster tasks nest shallowly; a parent's progress sums at most this deep.
_MAX_PROGRESS_DEPTH = 32


def _creation_order(child: VirtualChild) -> tuple[float, int]:
    return (child.creation_time or 0.0, child.task_id.int)


def _uuid(text: str | None) -> UUID | None:
    return None if text is None else UUID(text)


class ClusterTaskGroup(VirtualTaskGroup):
    """Every cluster task, served from the store by this node like by any other."""

    def __init__(
        self,
        store: ClusterStore,
        membership: Membership,
        peers: Peers,
        feed: ChangeFeed,
        manager: TaskManager,
        producers: Producers,
        *,
        retention_seconds: float,
    ) -> None:
        self._store = store
        self._membership = membership
        self._peers = peers
        self._feed = feed
        self._manager = manager
        self._producers = producers
        self.retention_seconds = retention_seconds
        self._node = membership.config.node
        # Cluster tasks whose children here changed since their watchers were told.
        self._pending_children: set[UUID] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._finished = FinishedChildren(store, membership.check_writable)
        feed.on_change(self._on_change)

    @property
    def name(self) -> str:
        """The group's name."""
        return "cluster_tasks"

    @property
    def module(self) -> str:
        """Cluster tasks belong to modules of their own."""
        return ""

    # ---- reading -----------------------------------------------------------------------------

    async def contains(self, task_id: UUID) -> VirtualTaskHint | None:
        """The task's row, if it is a cluster task."""
        row = await self._store.get_task(str(task_id))
        self._finished.seen(task_id, row is not None)
        return row

    async def is_abortable(self, task_id: UUID, hint: VirtualTaskHint) -> bool:
        """Whether the task was created abortable."""
        assert isinstance(hint, ClusterTaskRow)
        return hint.abortable

    async def abort_pending(self, task_id: UUID, hint: VirtualTaskHint) -> bool:
        """Whether an abort was requested (a child created under it is aborted at once)."""
        assert isinstance(hint, ClusterTaskRow)
        return hint.abort_requested

    async def get_status(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        """The task's status now: its row, and its children on every live node."""
        row = await self._store.get_task(str(task_id))
        return None if row is None else await self.status_of(row)

    async def status_of(self, row: ClusterTaskRow, depth: int = 0) -> TaskStatus:
        """A row's status, its children gathered from the store and every live node."""
        children, cluster, regular, unreachable, _ = await self._gather(row)
        progress = await self._progress(row, cluster, regular, depth)
        return self._status(row, children, progress, unreachable)

    async def _gather(self, row: ClusterTaskRow) -> tuple[
        list[TaskIdentity], list[ClusterTaskRow], list[VirtualChild], list[str],
        dict[UUID, FinishedChild],
    ]:  # fmt: skip
        # Cluster children from the store; regular ones from this node, every
        # live peer, and the store for those that finished (on any node).
        task_id = UUID(row.id)
        self._finished.seen(task_id, True)
        cluster = await self._store.children_of(row.id)
        finished = await self._finished.of(task_id)
        local = [
            VirtualChild(s.id, s.node, s.creation_time, s.progress)
            for s in await self._manager.virtual_children_statuses(task_id)
        ]
        remote, unreachable = await self._peers.cluster_children(task_id)
        # A child seen both live and finished (its node answered just before
        # it finished, or it is leaving this node's registry right now) is
        # shown finished: a final status is never the older one.
        regular = [c for c in local + remote if c.task_id not in finished]
        regular += [f.child for f in finished.values()]
        # One order on every node (whichever node asks, it lists its own first
        # otherwise): by creation, cluster-wide.
        regular.sort(key=_creation_order)
        unreachable.sort()
        identities = [TaskIdentity(UUID(c.id), "") for c in cluster]
        identities += [TaskIdentity(c.task_id, c.node) for c in regular]
        return identities, cluster, regular, unreachable, finished

    async def _progress(
        self,
        row: ClusterTaskRow,
        cluster: list[ClusterTaskRow],
        regular: list[VirtualChild],
        depth: int,
    ) -> Progress:
        if row.progress_completed is not None:
            return Progress(row.progress_completed, row.progress_total or 0.0)
        # As for regular tasks: the children's sum, a known total replacing its total.
        total = Progress()
        for child in regular:
            total = total + child.progress
        if depth < _MAX_PROGRESS_DEPTH:
            for child_row in cluster:  # as the gather read them
                total = total + (await self.status_of(child_row, depth + 1)).progress
        if row.progress_total is not None and row.state in _UNFINISHED:
            total = Progress(total.completed, row.progress_total)
        return total

    def _status(
        self,
        row: ClusterTaskRow,
        children: list[TaskIdentity],
        progress: Progress,
        unreachable: list[str],
    ) -> TaskStatus:
        return TaskStatus(
            id=UUID(row.id),
            type=row.type,
            kind=TaskKind.CLUSTER,
            scope=row.scope,
            state=TaskState(row.state),
            is_abortable=row.abortable,
            creation_time=row.created_at,
            start_time=row.started_at,
            end_time=row.ended_at,
            error=row.error,
            parent_id=_uuid(row.parent_id),
            sequence_number=0,
            shard=0,
            keyspace=row.keyspace,
            table=row.tbl,
            entity=row.entity,
            progress_units=row.progress_units,
            progress=progress,
            children=tuple(children),
            module=row.module,
            internal=False,
            user_task=row.user_task,
            abort_requested=row.abort_requested and row.state in _UNFINISHED,
            expire_time=None if row.ended_at is None else row.ended_at + self.retention_seconds,
            children_count=len(children),
            extras=StatusExtras(tuple(unreachable), _abort_of(row), row.owner),
        )

    async def wait(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        """Waits for the task's final status (watches use ``changes`` instead)."""
        changes = self.changes(task_id, hint)
        try:
            while True:
                status = await self.get_status(task_id, hint)
                if status is None or status.state.is_final:
                    return status
                await anext(changes)
        finally:
            await changes.aclose()  # type: ignore[attr-defined]

    def changes(self, task_id: UUID, hint: VirtualTaskHint) -> AsyncIterator[None]:
        """Wakes on every change of the task (its row, or its children on any node)."""
        return self._feed.subscribe(str(task_id))

    async def modules(self) -> list[str]:
        """The modules cluster tasks belong to, by the store."""
        return await self._store.modules()

    async def get_stats(self) -> list[TaskStats]:
        """Not used: cluster tasks are listed by module (``module_stats``)."""
        return []

    async def module_stats(self, module: str) -> list[TaskStats]:
        """The module's cluster tasks.

        Unfinished ones, and those finished within the user task TTL (as ScyllaDB
        lists its node operations).
        """
        since = await self._store.now() - self._manager.user_task_ttl
        return [self._stats(row) for row in await self._store.tasks_of_module(module, since)]

    @staticmethod
    def _stats(row: ClusterTaskRow) -> TaskStats:
        return TaskStats(
            task_id=UUID(row.id),
            state=TaskState(row.state),
            type=row.type,
            kind=TaskKind.CLUSTER,
            scope=row.scope,
            keyspace=row.keyspace,
            table=row.tbl,
            entity=row.entity,
            sequence_number=0,
            shard=0,
            creation_time=row.created_at,
            start_time=row.started_at,
            end_time=row.ended_at,
        )

    def walk(
        self, task_id: UUID, hint: VirtualTaskHint
    ) -> AsyncIterator[tuple[int, TaskStatus]] | None:
        """The task's whole tree: cluster children and the subtrees on every live node."""
        return self._walk(task_id)

    async def _walk(self, task_id: UUID) -> AsyncGenerator[tuple[int, TaskStatus], None]:
        items = await self._tree(task_id, 0)
        # Each subtree came in BFS order; a stable sort by depth interleaves
        # them as one BFS of the whole tree (siblings keep their order).
        items.sort(key=lambda item: item[0])
        for item in items:
            yield item

    async def _tree(self, task_id: UUID, depth: int) -> list[tuple[int, TaskStatus]]:
        row = await self._store.get_task(str(task_id))
        if row is None:
            if depth == 0:
                raise TaskNotFoundError(task_id)
            return []  # removed meanwhile
        children, cluster, regular, _, finished = await self._gather(row)
        status = self._status(row, children, await self._progress(row, cluster, regular, 0), [])
        items = [(depth, status)]
        for identity in children:
            if not identity.node:  # a cluster child
                items += await self._tree(identity.task_id, depth + 1)
        for child in regular:
            kept = finished.get(child.task_id)
            if kept is None:
                items += await self._subtree(child, depth + 1)
            else:
                # Its subtree left its node with it; it now lasts as long as its parent.
                items.append((depth + 1, kept.status()._replace(expire_time=status.expire_time)))
        return items

    async def _subtree(self, child: VirtualChild, depth: int) -> list[tuple[int, TaskStatus]]:
        if child.node == self._node:
            source = self._manager.local_tree(child.task_id)
        else:
            node = self._peers.node(child.node)
            if node is None:
                return []  # its node went away since it answered: it is not asked again
            source = self._peers.subtree(node, child.task_id)
        try:
            return [(depth + d, s) async for d, s in source]
        except TaskNotFoundError:
            return []  # unregistered meanwhile

    # ---- writing (producers, through any node) -----------------------------------------------

    async def create(
        self, spec: TaskSpec, *, session_id: UUID | None, start: bool
    ) -> tuple[TaskStatus, bool]:
        """Creates a cluster task (and starts it); an idempotent retry returns the same one."""
        if spec.shard is not None or spec.internal:
            field = "shard" if spec.shard is not None else "internal"
            raise InvalidArgumentError(field, "a cluster task has no shard and is never internal")
        for field in ("keyspace", "table"):
            check_length(field, getattr(spec, field), MAX_NAME_LENGTH)
        check_length("entity", spec.entity, MAX_TEXT_LENGTH)
        await self._membership.check_writable()
        task_id = spec.task_id
        if task_id is None:
            task_id = new_task_id()
        elif await self._manager.local_status(task_id) is not None:
            raise TaskAlreadyExistsError(task_id)
        parent = None
        if spec.parent_id is not None:
            parent = await self._store.get_task(str(spec.parent_id))
            if parent is None:
                raise TaskNotFoundError(spec.parent_id, "parent cluster task")
            if parent.state not in _UNFINISHED:
                raise InvalidStateError(
                    f"parent task with id {spec.parent_id} is {parent.state}: "
                    "a finished task takes no new children"
                )
        row = ClusterTaskRow(
            id=str(task_id),
            parent_id=None if spec.parent_id is None else str(spec.parent_id),
            module=spec.module,
            type=spec.type,
            scope=spec.scope,
            keyspace=spec.keyspace,
            tbl=spec.table,
            entity=spec.entity,
            state="created",
            error="",
            abortable=spec.abortable,
            user_task=spec.user_task,
            abort_requested=parent is not None and parent.abort_requested,
            progress_units=spec.progress_units,
            progress_completed=None,
            progress_total=spec.progress_total,
            created_at=0.0,
            started_at=None,
            ended_at=None,
            session_id=None if session_id is None else str(session_id),
            session_node=None if session_id is None else self._node,
            version=0,
            owner=spec.owner,
        )
        try:
            row = await self._store.create_task(row)
            self._finished.seen(task_id, True)
        except TaskAlreadyExistsError:
            existing = None if spec.task_id is None else await self._store.get_task(str(task_id))
            if existing is None or not self._same(existing, spec):
                raise
            if start and existing.state == "created":
                await self.start(task_id)
            return await self.status_of(await self._row(task_id)), False
        if start:
            status = await self.start(task_id)
            assert status is not None
            return status, True
        return await self.status_of(row), True

    @staticmethod
    def _same(row: ClusterTaskRow, spec: TaskSpec) -> bool:
        parent = None if spec.parent_id is None else str(spec.parent_id)
        return (row.module, row.type, row.scope, row.parent_id, row.keyspace, row.tbl,
                row.entity) == (spec.module, spec.type, spec.scope, parent, spec.keyspace,
                                spec.table, spec.entity)  # fmt: skip

    async def _row(self, task_id: UUID) -> ClusterTaskRow:
        row = await self._store.get_task(str(task_id))
        if row is None:
            raise TaskNotFoundError(task_id)
        return row

    async def _update(
        self, task_id: UUID, action: str, states: tuple[str, ...], **values: object
    ) -> ClusterTaskRow | None:
        """Updates a cluster task in one of ``states``; ``None`` if it is no cluster task.

        Raises:
            InvalidStateError: it is one, in another state.
        """
        await self._membership.check_writable()
        updated = await self._store.update_task(str(task_id), states, **values)
        if updated is not None:
            return updated
        row = await self._store.get_task(str(task_id))
        if row is None:
            return None
        hint = ": start it first" if row.state == "created" else ""
        raise InvalidStateError(f"cannot {action} task with id {task_id}: it is {row.state}{hint}")

    async def start(self, task_id: UUID) -> TaskStatus | None:
        """Starts a created cluster task (one aborted before it started fails at once)."""
        row = await self._store.get_task(str(task_id))
        if row is None:
            return None
        if row.abort_requested and row.state == "created":
            updated = await self._update(
                task_id, "start", ("created",), state="failed", error="abort requested",
                started_at=NOW, ended_at=NOW,
            )  # fmt: skip
        else:
            if row.state != "created":
                raise InvalidStateError(
                    f"task with id {task_id} was already started (state {row.state})"
                )
            updated = await self._update(
                task_id, "start", ("created",), state="running", started_at=NOW
            )
        return None if updated is None else await self.status_of(updated)

    async def report_progress(
        self, task_id: UUID, completed: float, total: float | None
    ) -> bool | None:
        """Records a running cluster task's own progress; whether an abort is pending."""
        check_progress(completed, total)
        row = await self._store.get_task(str(task_id))
        if row is None:
            return None
        effective = total if total is not None else row.progress_total
        if effective is not None and completed > effective:
            raise InvalidArgumentError(
                "completed", f"{completed:g} is above the total {effective:g}"
            )
        values: dict[str, object] = {"progress_completed": completed}
        values["progress_total"] = effective if effective is not None else 0.0
        updated = await self._update(task_id, "report progress of", ("running",), **values)
        return None if updated is None else updated.abort_requested

    async def finish(self, task_id: UUID, error: str | None, suspended: bool) -> TaskStatus | None:
        """Finishes a running cluster task: done, failed, or suspended (revoked)."""
        row = await self._store.get_task(str(task_id))
        if row is None:
            return None
        if error is None and row.abort_requested and not suspended:
            error = "abort requested"
        state = "suspended" if suspended else ("done" if error is None else "failed")
        updated = await self._update(
            task_id, "finish", ("running",), state=state, error=error or "", ended_at=NOW
        )
        if updated is None:
            return None
        self._producers.task_finished(task_id)
        return await self.status_of(updated)

    async def abort(
        self, task_id: UUID, hint: VirtualTaskHint, request: AbortRequest | None = None
    ) -> None:
        """Records the abort, who asked, when and why; each node aborts its children."""
        await self._membership.check_writable()
        request = request or AbortRequest(self._manager.clock.now())
        updated = await self._store.update_task(
            str(task_id), _UNFINISHED, abort_requested=True, **_abort_values(request)
        )
        if updated is not None:
            await self._aborted(updated)

    async def fail_session(self, session_id: UUID, error: str) -> int:
        """Fails the unfinished cluster tasks of a producer session of this node."""
        failed = await self._store.fail_unfinished(error, session_id=str(session_id))
        return len(failed)

    async def fail_gone_nodes(self, gone: list[str]) -> None:
        """Fails, once, the cluster tasks whose producer session lived on a gone node."""
        if not gone:
            return
        failed = await self._store.fail_unfinished(
            "producer lost: the node holding its session left the cluster", nodes=gone
        )
        for row in failed:
            log.warning("cluster task %s failed: its session's node %s is gone", row.id,
                        row.session_node)  # fmt: skip

    # ---- reacting to changes, on every node --------------------------------------------------

    async def _on_change(self, task_id: str) -> None:
        if task_id:
            self._manager.virtual_task_changed(UUID(task_id))  # for module watches
        ids = await self._interesting() if not task_id else {UUID(task_id)}
        for key in ids:
            if not await self._touches_here(key):
                continue
            row = await self._store.get_task(str(key))
            if row is None:
                continue
            if row.abort_requested and row.state in _UNFINISHED:
                await self._aborted(row)
            if row.state not in _UNFINISHED:
                self._producers.task_finished(key)

    async def _interesting(self) -> set[UUID]:
        parents = await self._manager.virtual_parents()
        return parents | set(self._producers.session_tasks())

    async def _touches_here(self, task_id: UUID) -> bool:
        if self._producers.session_of(task_id) is not None:
            return True
        return bool(await self._manager.get_children(task_id))

    async def _aborted(self, row: ClusterTaskRow) -> None:
        task_id = UUID(row.id)
        request = _abort_of(row) or AbortRequest(self._manager.clock.now())
        # What reaches the descendants names this task as where it came from.
        passed = request._replace(origin=task_id)
        await self._manager.abort_virtual_children(task_id, passed)
        self._producers.task_aborted(task_id)
        for child in await self._store.children_of(row.id):
            if not child.abort_requested and child.state in _UNFINISHED:
                updated = await self._store.update_task(
                    child.id, _UNFINISHED, abort_requested=True, **_abort_values(passed)
                )
                if updated is not None:
                    await self._aborted(updated)

    def child_changed(self, parent_id: UUID) -> None:
        """A child here of a (maybe cluster) task changed.

        Its watchers everywhere are told, at most every ``CHILD_NOTIFY_INTERVAL`` a task.
        """
        self._pending_children.add(parent_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(CHILD_NOTIFY_INTERVAL)
        pending, self._pending_children = self._pending_children, set()
        for parent in pending:
            try:
                await self._store.notify(str(parent))
            except Exception:
                log.debug("could not tell of a change under %s", parent, exc_info=True)

    def child_finished(self, parent_id: UUID, status: TaskStatus) -> None:
        """A child here of a (maybe cluster) task finished: its status is kept in the store.

        Only noted here (this runs on the shard, for every child of any virtual
        task); a background writer keeps it.
        """
        self._finished.add(parent_id, status)

    async def close(self) -> None:
        """Stops telling of changes, once the finished children noted here are kept."""
        await self._finished.close()
        if self._flusher is not None:
            self._flusher.cancel()


def _abort_values(request: AbortRequest) -> dict[str, object]:
    # The abort request as the store's columns.
    return {
        "abort_reason": request.reason,
        "abort_principal": request.principal,
        "abort_time": request.time,
        "abort_origin": None if request.origin is None else str(request.origin),
    }


def _abort_of(row: ClusterTaskRow) -> AbortRequest | None:
    # The row's abort request, if one was made (rows from before the columns have no time).
    if not row.abort_requested or row.abort_time is None:
        return None
    return AbortRequest(row.abort_time, row.abort_reason, row.abort_principal,
                        _uuid(row.abort_origin))  # fmt: skip
