"""A task's status and its children, as a shard builds them from the task's record."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from uuid import UUID

from .record import Task
from .types import (
    NO_EXTRAS,
    AbortRequest,
    FoldedTask,
    Progress,
    StatusExtras,
    TaskIdentity,
    TaskKind,
    TaskStatus,
    creation_time_of,
)

# An Enum member read off its class goes through the metaclass; every status
# built here reads this one.
_NODE = TaskKind.NODE


def build_status(
    task: Task,
    shard: int,
    node: str,
    progress: Progress,
    children: tuple[TaskIdentity, ...] = (),
    children_count: int = 0,
    abort: AbortRequest | None = None,
) -> TaskStatus:
    """The status of a task on ``shard`` with its progress, listed children and abort."""
    impl = task.impl
    return TaskStatus(
        id=task.id,
        type=impl.type,
        kind=_NODE,
        scope=impl.scope,
        state=task.state,
        is_abortable=impl.abortable,
        creation_time=creation_time_of(task.id),
        start_time=task.start_time,
        end_time=task.end_time,
        error=task.error,
        parent_id=None if task.parent is None else task.parent.id,
        sequence_number=task.sequence_number,
        shard=shard,
        keyspace=task.keyspace,
        table=task.table,
        entity=task.entity,
        progress_units=impl.progress_units,
        progress=progress,
        children=children,
        module=task.module,
        internal=task.internal,
        user_task=impl.user_task,
        abort_requested=task.abort_requested,
        expire_time=task.expire_at,
        children_count=children_count,
        node=node,
        extras=NO_EXTRAS if abort is None and not impl.owner else _extras(abort, impl.owner),
    )


# One extras object per owner, shared by the statuses of its tasks (a
# principal's tasks are many, principals few).
_OWNED: dict[str, StatusExtras] = {}


def _extras(abort: AbortRequest | None, owner: str) -> StatusExtras:
    if abort is not None:
        return StatusExtras((), abort, owner)
    shared = _OWNED.get(owner)
    if shared is None:
        if len(_OWNED) >= 10_000:
            _OWNED.clear()
        shared = _OWNED[owner] = StatusExtras((), None, owner)
    return shared


def listed_children(task: Task, node: str, cap: int) -> tuple[tuple[TaskIdentity, ...], int]:
    """The children a status lists, and how many there are.

    Live children in creation order, then folded ones in finishing order, the
    first ``cap`` only: a root with 95,000 children must not make a status no
    client can receive (``children_page`` lists them all).
    """
    live = task.live_children or {}
    folded = task.folded_children or ()
    count = len(live) + len(folded)
    ids: Iterable[UUID] = itertools.chain(live, (f.status.id for f in folded))
    if count > cap:
        ids = itertools.islice(ids, cap)
    return tuple(TaskIdentity(cid, node) for cid in ids), count


def children_page(
    task: Task, node: str, after: UUID | None, limit: int
) -> tuple[list[TaskIdentity], int]:
    """A page of the task's children by id, after ``after``, and how many it has.

    Paging goes by id, as children move from live to folded while a client pages.
    """
    live = task.live_children or {}
    folded = task.folded_children or ()
    floor = -1 if after is None else after.int
    keys = itertools.chain((cid.int for cid in live), (f.status.id.int for f in folded))
    page = heapq.nsmallest(limit, (k for k in keys if k > floor))
    return [TaskIdentity(UUID(int=k), node) for k in page], len(live) + len(folded)


def folded_record(status: TaskStatus, task: Task, node: str, cap: int) -> FoldedTask:
    """What a parent keeps of a finished child.

    Its status, whose children are its failed descendants only, and those descendants.
    """
    failed = tuple(f for f in task.folded_children or () if f.has_failure)
    shown = failed if len(failed) <= cap else failed[:cap]
    status = status._replace(
        children=tuple(TaskIdentity(f.status.id, node) for f in shown),
        children_count=len(failed),
    )
    return FoldedTask(status, failed)
