"""Recovery: a task's journal record, and the registry rebuilt from the records at start.

A record holds what a task's status and its place in a tree need (its
shape, parent, sequence number, state, times, error, progress, whether it
folded), never its children: a parent's live children are the records that
name it as their parent, in the order they were first written (creation
order), and its folded ones those that folded into it, in finishing order.
So a fold writes one record, the child's, however many children the parent
has.

Rebuilding goes as the task's life went: records become tasks on their
shards (as many as the node has now: a record's shard is taken modulo
that), folded ones become their parents' folded records again (deepest
first, so a folded task carries its failed descendants), then each shard
settles what the restart means: finished children go back to their
parents, finished roots whose TTL passed leave (the rest expire when their
TTL says), and tasks whose body ran inside the server fail, since their
body died with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from .journal import (
    MODULE_KEY,
    SEQUENCE_KEY,
    SESSION_KEY,
    TASK_KEY,
    TASK_SESSION_KEY,
    TTL_KEY,
    task_key,
)
from .manager import TaskManager
from .port import ParentKind, ParentLink
from .progress import leaf_progress
from .record import Task
from .status import build_status, folded_record
from .task import TaskContext, TaskImpl
from .types import FoldedTask, Progress, TaskState

#: The error of a task whose body ran in the server when it stopped.
NODE_RESTARTED = (
    "node restarted: the task ran inside the server, whose restart ended it; start it again"
)


def task_record(shard: int, task: Task, final: Progress | None) -> list[object]:
    """A task's journal record (plain JSON data; the id is in the key)."""
    impl = task.impl
    parent = task.parent
    reported = task.reported
    return [
        task.module,
        shard,
        impl.type,
        impl.scope,
        impl.progress_units,
        impl.abortable,
        impl.user_task,
        impl.internal,
        impl.external,
        None if parent is None else parent.id.hex,
        None if parent is None else parent.kind.value,
        None if parent is None else parent.shard,
        task.sequence_number,
        task.keyspace,
        task.table,
        task.entity,
        task.state.value,
        task.start_time,
        task.end_time,
        task.error,
        task.abort_requested,
        None if reported is None else [reported.completed, reported.total],
        task.reported_total,
        task.expire_at,
        task.folded_into_parent,
        task.orphaned,
        task.internal,
        None if final is None else [final.completed, final.total],
    ]


@dataclass(frozen=True, slots=True)
class Shape:
    """What a recovered task's implementation presents (its status fields)."""

    type: str
    scope: str
    progress_units: str
    abortable: bool
    user_task: bool
    internal: bool | None


class RecoveredTaskImpl(TaskImpl):
    """The implementation of a recovered task whose body ran in the server: it has none now.

    Such a task comes back finished (as it was, or failed by the restart), so
    its body is never asked to run.
    """

    def __init__(self, shape: Shape) -> None:
        self.type = shape.type
        self.scope = shape.scope
        self.progress_units = shape.progress_units
        self.abortable = shape.abortable
        self.user_task = shape.user_task
        self.internal = shape.internal

    async def run(self, ctx: TaskContext) -> None:
        """Never called: a recovered body cannot run."""
        raise AssertionError("a recovered task has no body")


@dataclass
class RecoveryReport:
    """What recovery brought back, by kind, for the log."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, kind: str, n: int = 1) -> None:
        """Counts ``n`` tasks of a kind."""
        self.counts[kind] = self.counts.get(kind, 0) + n

    def describe(self) -> str:
        """One line for the log: counts by kind and the time taken."""
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()) if n)
        return f"{parts or 'nothing'} in {self.seconds:.2f}s"


@dataclass(slots=True)
class _Entry:
    task: Task
    shard: int
    final: Progress | None
    parent_key: int | None
    position: int


def _build(
    task_id: UUID, rec: list[Any], shards: int, impl_for: Callable[[Shape, bool], TaskImpl]
) -> tuple[Task, int, Progress | None]:
    (module, shard, type_, scope, units, abortable, user_task, impl_internal, external,
     parent_hex, parent_kind, parent_shard, sequence, keyspace, table, entity, state, start,
     end, error, abort_requested, reported, reported_total, expire_at, folded, orphaned,
     internal, final) = rec  # fmt: skip
    shape = Shape(type_, scope, units, abortable, user_task, impl_internal)
    parent = (
        None
        if parent_hex is None
        else ParentLink(UUID(hex=parent_hex), ParentKind(parent_kind), parent_shard % shards)
    )
    task = Task(
        task_id, module, impl_for(shape, bool(external)), parent, sequence, keyspace, table,
        entity, reported_total,
    )  # fmt: skip
    task.internal = internal
    task.state = TaskState(state)
    task.start_time = start
    task.end_time = end
    task.error = error
    task.abort_requested = abort_requested
    task.reported = None if reported is None else Progress(reported[0], reported[1])
    task.expire_at = expire_at
    task.folded_into_parent = folded
    task.orphaned = orphaned
    return task, shard % shards, None if final is None else Progress(final[0], final[1])


def _depths(entries: dict[int, _Entry], keys: list[int]) -> dict[int, int]:
    # Depth in the tree for each key, by a loop (a chain may be deeper than
    # any recursion limit); memoised, so each entry is walked once.
    depth: dict[int, int] = {}
    for key in keys:
        path: list[int] = []
        at: int | None = key
        while at is not None and at not in depth:
            path.append(at)
            entry = entries.get(at)
            at = None if entry is None else entry.parent_key
        base = -1 if at is None else depth[at]
        for k in reversed(path):
            base += 1
            depth[k] = base
    return depth


async def recover(
    manager: TaskManager,
    records: Mapping[str, Any],
    external_impl: Callable[[Shape], TaskImpl],
    restore_sessions: Callable[[list[UUID], list[tuple[UUID, UUID, bool]]], int],
) -> RecoveryReport:
    """Rebuilds the registry from journal records (``key -> value``, in first-written order).

    ``external_impl`` gives the implementation of a reported task's shape
    (the producers' flyweight), ``restore_sessions`` brings back producer
    sessions and their unfinished tasks.
    """
    started = time.perf_counter()
    report = RecoveryReport()
    shards = manager.local_shards
    count = len(shards)
    node = manager.node
    cap = manager.max_status_children
    bodies: dict[Shape, TaskImpl] = {}

    def impl_for(shape: Shape, external: bool) -> TaskImpl:
        if external:
            return external_impl(shape)
        impl = bodies.get(shape)
        if impl is None:
            impl = bodies[shape] = RecoveredTaskImpl(shape)
        return impl

    entries: dict[int, _Entry] = {}
    modules: set[str] = set()
    sequences: dict[tuple[int, str], int] = {}
    sessions: list[UUID] = []
    links: list[tuple[UUID, UUID]] = []
    ttls: object = None
    for position, (name_, value) in enumerate(records.items()):
        kind = name_[0]
        if name_ == TTL_KEY:
            ttls = value
        elif kind == TASK_KEY:
            task_id = UUID(hex=name_[1:])
            task, home, final = _build(task_id, value, count, impl_for)
            parent = task.parent
            parent_key = (
                None if parent is None or parent.kind is not ParentKind.NODE else (parent.id.int)
            )
            entries[task_id.int] = _Entry(task, home, final, parent_key, position)
            modules.add(task.module)
        elif kind == MODULE_KEY:
            modules.add(str(value))
        elif kind == SEQUENCE_KEY:
            shard_text, _, module_hex = name_[1:].partition(":")
            where = (int(shard_text) % count, bytes.fromhex(module_hex).decode())
            sequences[where] = max(sequences.get(where, 0), int(value))
        elif kind == SESSION_KEY:
            sessions.append(UUID(hex=name_[1:]))
        elif kind == TASK_SESSION_KEY:
            links.append((UUID(hex=name_[1:]), UUID(hex=str(value))))
    for name in sorted(modules):
        for shard in shards:
            await shard.register_module(name)
    if ttls is not None:
        await manager.restore_ttls(ttls)

    # Children by parent, in creation order (records keep their first position).
    children: dict[int, list[int]] = {}
    for key, entry in entries.items():
        if entry.parent_key is not None:
            if entry.parent_key in entries:
                children.setdefault(entry.parent_key, []).append(key)
            else:
                entry.task.orphaned = True  # its parent's record did not survive
    folded = [k for k, e in entries.items() if e.task.folded_into_parent]
    depth = _depths(entries, folded)
    folded.sort(key=lambda k: -depth[k])
    records_of: dict[int, FoldedTask] = {}

    def folded_children(key: int) -> list[FoldedTask]:
        kept = [c for c in children.get(key, ()) if c in records_of]
        kept.sort(key=lambda c: (entries[c].task.end_time or 0.0, entries[c].position))
        return [records_of[c] for c in kept]

    for key in folded:  # deepest first: a folded task's own folded children are ready
        entry = entries[key]
        task = entry.task
        task.folded_children = folded_children(key) or None
        progress = entry.final or leaf_progress(task)
        # As the parent took it: before the child left the registry (no expiry yet).
        status = build_status(task, entry.shard, node, progress)._replace(expire_time=None)
        records_of[key] = folded_record(status, task, node, cap)
    kept: list[list[Task]] = [[] for _ in shards]
    folded_ids: list[list[UUID]] = [[] for _ in shards]
    for key, entry in entries.items():
        task = entry.task
        if task.folded_into_parent:
            folded_ids[entry.shard].append(task.id)
            continue
        live = [c for c in children.get(key, ()) if not entries[c].task.folded_into_parent]
        if live:
            task.live_children = {entries[c].task.id: entries[c].shard for c in live}
        task.folded_children = folded_children(key) or None
        kept[entry.shard].append(task)
    # A folded record whose parent did not come back names nothing: it goes.
    parents_kept = {t.id.int for tasks in kept for t in tasks}
    for shard_index, ids in enumerate(folded_ids):
        survivors = []
        for task_id in ids:
            entry = entries[task_id.int]
            if _top_holder(entries, entry) in parents_kept:
                survivors.append(task_id)
            else:
                manager.journal.forget(task_id)
        folded_ids[shard_index] = survivors
        report.add("folded", len(survivors))
    for shard in shards:
        shard.restore(kept[shard.index], folded_ids[shard.index], {
            module: n for (index, module), n in sequences.items() if index == shard.index
        })  # fmt: skip
    for shard in shards:
        for kind, n in (await shard.settle_restored(NODE_RESTARTED)).items():
            report.add(kind, n)
    live_tasks = {t.id: t for tasks in kept for t in tasks if not t.state.is_complete}
    unfinished = [(t, s, live_tasks[t].abort_requested) for t, s in links if t in live_tasks]
    report.add("sessions", restore_sessions(sessions, unfinished))
    for task_id, _ in links:
        if task_id not in live_tasks:
            manager.journal.delete(TASK_SESSION_KEY + task_id.hex)
    report.seconds = time.perf_counter() - started
    return report


def _top_holder(entries: dict[int, _Entry], entry: _Entry) -> int | None:
    # The first ancestor that did not fold: the task whose record holds this one.
    at: _Entry | None = entry
    while at is not None and at.task.folded_into_parent:
        parent = at.parent_key
        if parent is None:
            return None
        at = entries.get(parent)
    return None if at is None else at.task.id.int


__all__ = ["NODE_RESTARTED", "RecoveryReport", "Shape", "recover", "task_key", "task_record"]
