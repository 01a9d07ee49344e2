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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from .journal import (
    ABORT_KEY,
    MODULE_KEY,
    SEQUENCE_KEY,
    SESSION_KEY,
    SHAPE_KEY,
    TASK_KEY,
    TASK_SESSION_KEY,
    TTL_KEY,
    JournalRecords,
    abort_from_record,
)
from .manager import TaskManager
from .port import ParentKind, ParentLink
from .progress import leaf_progress
from .record import Task
from .status import build_status, folded_record
from .task import TaskContext, TaskImpl, TaskShape
from .types import AbortRequest, FoldedTask, Progress, TaskState
from .validation import uuid_from_int

#: The error of a task whose body ran in the server when it stopped.
NODE_RESTARTED = (
    "node restarted: the task ran inside the server, whose restart ended it; start it again"
)


#: A task's state in its record, one letter (regular tasks are never suspended).
_STATE_LETTER = {TaskState.CREATED: "c", TaskState.RUNNING: "r", TaskState.DONE: "d",
                 TaskState.FAILED: "f"}  # fmt: skip
_LETTER_STATE = {letter: state for state, letter in _STATE_LETTER.items()}
_KIND_LETTER = {ParentKind.NODE: "n", ParentKind.VIRTUAL: "v"}
_LETTER_KIND = {letter: kind for kind, letter in _KIND_LETTER.items()}
_TASK_BYTE = TASK_KEY.encode()[0]
#: The optional tail of a record, after its seven fixed fields, and each field's default.
_TAIL_DEFAULTS: tuple[object, ...] = (None, None, None, "", "", "", "", 0, None, None, 0, 0, None)


def _ns(seconds: float | None) -> int | None:
    # Integer nanoseconds: parsed faster than floats, and ns / 1e9 gives the
    # very float back (a float's step at today's epoch is ~240 ns).
    return None if seconds is None else round(seconds * 1e9)


def shape_of(task: Task) -> tuple[object, ...]:
    """What tasks of one kind share, journaled once as a "shape" record (see ``SHAPE_KEY``)."""
    impl = task.impl
    return (task.module, impl.type, impl.scope, impl.progress_units, impl.abortable,
            impl.user_task, impl.internal, impl.external, impl.owner)  # fmt: skip


def task_record(shard: int, task: Task, final: Progress | None, shape: int) -> list[object]:
    """A task's journal record (plain JSON data; the id is in the key, the shape is a number).

    Seven fixed fields, then a tail with its trailing defaults left out: a
    finished root is seven numbers and a letter, which is what makes a
    million records load in seconds.
    """
    parent = task.parent
    reported = task.reported
    start, end, expire_at = task.start_time, task.end_time, task.expire_at
    if (
        parent is None
        and final is None
        and not (task.keyspace or task.table or task.entity or task.error)
        and not (task.abort_requested or task.folded_into_parent or task.orphaned)
    ):
        # Most records (every root on its way, and the progress of the running
        # ones): the tail made as far as it goes, with nothing to trim.
        short: list[object] = [
            shape, shard, task.sequence_number, _STATE_LETTER[task.state],
            None if start is None else round(start * 1e9),
            None if end is None else round(end * 1e9),
            None if expire_at is None else round(expire_at * 1e9),
        ]  # fmt: skip
        total = task.reported_total
        if reported is not None or total is not None:
            short += _TAIL_DEFAULTS[:8]
            short.append(None if reported is None else [reported.completed, reported.total])
            if total is not None:
                short.append(total)
        return short
    record: list[object] = [
        shape, shard, task.sequence_number, _STATE_LETTER[task.state],
        _ns(start), _ns(end), _ns(expire_at),
        None if parent is None else parent.id.hex,
        None if parent is None else _KIND_LETTER[parent.kind],
        None if parent is None else parent.shard,
        task.keyspace, task.table, task.entity, task.error, int(task.abort_requested),
        None if reported is None else [reported.completed, reported.total],
        task.reported_total, int(task.folded_into_parent), int(task.orphaned),
        None if final is None else [final.completed, final.total],
    ]  # fmt: skip
    end = len(record)
    while end > 7 and record[end - 1] == _TAIL_DEFAULTS[end - 8]:
        end -= 1
    del record[end:]
    return record


class RecoveredTaskImpl(TaskImpl):
    """The implementation of a recovered task whose body ran in the server: it has none now.

    Such a task comes back finished (as it was, or failed by the restart), so
    its body is never asked to run.
    """

    def __init__(self, shape: TaskShape) -> None:
        shape.apply(self)

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


class _Entry(NamedTuple):
    task: Task
    shard: int
    final: Progress | None
    parent_key: int | None
    position: int


# Made a million times at start: straight from a tuple, not the generated __new__.
_new_entry = tuple.__new__


def _build(
    task_id: UUID, rec: list[Any], shards: int, shapes: dict[int, tuple[str, TaskImpl]]
) -> tuple[Task, int, Progress | None]:
    if len(rec) < 20:
        rec = rec + list(_TAIL_DEFAULTS[len(rec) - 7 :])
    (shape, shard, sequence, state, start, end, expire_at, parent_hex, parent_kind,
     parent_shard, keyspace, table, entity, error, abort_requested, reported, reported_total,
     folded, orphaned, final) = rec  # fmt: skip
    module, impl = shapes[shape]
    parent = (
        None
        if parent_hex is None
        else ParentLink(
            uuid_from_int(int(parent_hex, 16)), _LETTER_KIND[parent_kind], parent_shard % shards
        )
    )
    task = Task(task_id, module, impl, parent, sequence, keyspace, table, entity, reported_total)
    task.state = _LETTER_STATE[state]
    task.start_time = None if start is None else start / 1e9
    task.end_time = None if end is None else end / 1e9
    task.expire_at = None if expire_at is None else expire_at / 1e9
    if error:
        task.error = error
    if abort_requested:
        task.abort_requested = True
    if reported is not None:
        task.reported = Progress(reported[0], reported[1])
    if folded:
        task.folded_into_parent = True
    if orphaned:
        task.orphaned = True
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
    records: JournalRecords,
    external_impl: Callable[[TaskShape], TaskImpl],
    restore_sessions: Callable[[list[tuple[UUID, str]], list[tuple[UUID, UUID, bool]]], int],
) -> RecoveryReport:
    """Rebuilds the registry from the journal's records (in first-written order).

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
    bodies: dict[TaskShape, TaskImpl] = {}
    shapes: dict[int, tuple[str, TaskImpl]] = {}
    # Records with more than a root's seven fields, and roots with nothing optional (by id).
    entries: dict[int, _Entry] = {}
    roots: dict[int, Task] = {}
    # Children by parent key, in creation order (records keep their first position).
    children: dict[int, list[int]] = {}
    kept: list[dict[str, list[tuple[int, Task]]]] = [{} for _ in shards]
    folded_keys: list[int] = []
    modules: set[str] = set()
    sequences: dict[tuple[int, str], int] = {}
    sessions: list[tuple[UUID, str]] = []
    aborts: dict[int, AbortRequest] = {}
    links: list[tuple[UUID, UUID]] = []
    ttls: object = None
    keys, values, shape_positions = records
    # Shapes first, wherever they are: a record keeps the place its key was
    # first written at, so a task id used again (its first task finished and
    # forgotten) sits before the shape its new record names.
    for position in shape_positions:
        value = values[position]
        module, type_, scope, units, abortable, user_task, internal, external = value[:8]
        owner = value[8] if len(value) > 8 else ""  # journals from before owners
        shape = TaskShape(type_, scope, units, abortable, user_task, internal, owner)
        if external:
            impl = external_impl(shape)
        else:
            impl = bodies.get(shape) or bodies.setdefault(shape, RecoveredTaskImpl(shape))
        shapes[int(keys[position][1:])] = (module, impl)
    state_of = _LETTER_STATE
    for position, raw in enumerate(keys):
        value = values[position]
        if raw[0] == _TASK_BYTE:
            number = int(raw[1:], 16)
            shaped = shapes.get(value[0])
            if shaped is None:
                # Shapes are never deleted: one missing is damage, not
                # something to skip (and forgetting the records would make
                # the loss permanent).
                raise ValueError(
                    f"the journal is damaged: task {uuid_from_int(number)}'s record names "
                    f"shape {value[0]}, which is not in it. Restore the data directory from "
                    "a backup, or move its journal folder aside to start with an empty registry"
                )
            if len(value) == 7:
                # A root with nothing optional (most records): built here, with no
                # entry of its own, as a million may come back before the node serves.
                _, shard, sequence, state, start, end, expire_at = value
                module, impl = shaped
                task = Task.restored_root(uuid_from_int(number), module, impl, sequence,
                    state_of[state], (None if start is None else start / 1e9,
                    None if end is None else end / 1e9,
                    None if expire_at is None else expire_at / 1e9))  # fmt: skip
                roots[number] = task
                by_module = kept[shard % count]
                group = by_module.get(module)
                if group is None:
                    by_module[module] = [(number, task)]
                else:
                    group.append((number, task))
                continue
            task, home, final = _build(uuid_from_int(number), value, count, shapes)
            parent = task.parent
            parent_key = None
            if parent is not None and parent.kind is ParentKind.NODE:
                parent_key = parent.id.int
                siblings = children.get(parent_key)
                if siblings is None:
                    children[parent_key] = [number]
                else:
                    siblings.append(number)
            entries[number] = _new_entry(_Entry, (task, home, final, parent_key, position))
            if task.folded_into_parent:
                folded_keys.append(number)
            else:
                kept[home].setdefault(task.module, []).append((number, task))
            continue
        name_ = raw.decode()
        kind = name_[0]
        if kind == SHAPE_KEY:
            continue  # read above
        if name_ == TTL_KEY:
            ttls = value
        elif kind == MODULE_KEY:
            modules.add(str(value))
        elif kind == SEQUENCE_KEY:
            shard_text, _, module_hex = name_[1:].partition(":")
            where = (int(shard_text) % count, bytes.fromhex(module_hex).decode())
            sequences[where] = max(sequences.get(where, 0), int(value))
        elif kind == SESSION_KEY:
            # The value is the owner (1 in journals from before owners).
            sessions.append((UUID(hex=name_[1:]), value if isinstance(value, str) else ""))
        elif kind == ABORT_KEY:
            aborts[int(name_[1:], 16)] = abort_from_record(value)
        elif kind == TASK_SESSION_KEY:
            links.append((UUID(hex=name_[1:]), UUID(hex=str(value))))
    # The modules registered, and those of the tasks that come back (journals
    # from before module records). Not every module a shape names: shapes
    # outlive their tasks, and an unregistered module must stay unregistered.
    for by_module in kept:
        modules.update(by_module)
    for name in sorted(modules):
        for shard in shards:
            await shard.register_module(name)
    if ttls is not None:
        await manager.restore_ttls(ttls)

    for parent_key, keys_ in children.items():
        if parent_key not in entries and parent_key not in roots:
            for key_ in keys_:
                entries[key_].task.orphaned = True  # its parent's record did not survive
    depth = _depths(entries, folded_keys)
    folded_keys.sort(key=lambda k: -depth[k])
    records_of: dict[int, FoldedTask] = {}

    def folded_children(key: int) -> list[FoldedTask]:
        kept = [c for c in children.get(key, ()) if c in records_of]
        kept.sort(key=lambda c: (entries[c].task.end_time or 0.0, entries[c].position))
        return [records_of[c] for c in kept]

    for key in folded_keys:  # deepest first: a folded task's own folded children are ready
        entry = entries[key]
        task = entry.task
        task.folded_children = folded_children(key) or None
        progress = entry.final or leaf_progress(task)
        # As the parent took it: before the child left the registry (no expiry yet).
        status = build_status(task, entry.shard, node, progress)._replace(expire_time=None)
        records_of[key] = folded_record(status, task, node, cap)
    for parent_key, keys_ in children.items():
        holder = entries.get(parent_key)
        parent_task = roots.get(parent_key) if holder is None else holder.task
        if parent_task is None or parent_task.folded_into_parent:
            continue
        live = [c for c in keys_ if not entries[c].task.folded_into_parent]
        if live:
            parent_task.live_children = {entries[c].task.id: entries[c].shard for c in live}
        parent_task.folded_children = folded_children(parent_key) or None
    # A folded record whose holder did not come back names nothing: it goes.
    folded_ids: list[list[UUID]] = [[] for _ in shards]
    for key in folded_keys:
        entry = entries[key]
        if _top_holder(entries, roots, entry) is not None:
            folded_ids[entry.shard].append(entry.task.id)
            report.add("folded")
        else:
            manager.journal.forget(entry.task.id)
    for key in [
        k
        for k in aborts
        if k not in roots and (k not in entries or entries[k].task.folded_into_parent)
    ]:
        del aborts[key]  # its task did not come back
        manager.journal.delete(f"{ABORT_KEY}{key:032x}")
    for shard in shards:
        shard.restore(kept[shard.index], folded_ids[shard.index], {
            module: n for (index, module), n in sequences.items() if index == shard.index
        }, aborts)  # fmt: skip
    for shard in shards:
        for kind, n in (await shard.settle_restored(NODE_RESTARTED)).items():
            report.add(kind, n)
    unfinished: list[tuple[UUID, UUID, bool]] = []
    for task_id, session_id in links:
        found = entries.get(task_id.int)
        linked = roots.get(task_id.int) if found is None else found.task
        if linked is not None and not linked.state.is_complete:
            unfinished.append((task_id, session_id, linked.abort_requested))
        else:
            manager.journal.delete(TASK_SESSION_KEY + task_id.hex)
    report.add("sessions", restore_sessions(sessions, unfinished))
    report.seconds = time.perf_counter() - started
    return report


def _top_holder(entries: dict[int, _Entry], roots: dict[int, Task], entry: _Entry) -> int | None:
    # The first ancestor that did not fold: the task whose record holds this one.
    at: _Entry | None = entry
    while at is not None and at.task.folded_into_parent:
        parent = at.parent_key
        if parent is None:
            return None
        at = entries.get(parent)
        if at is None:
            return parent if parent in roots else None
    return None if at is None else at.task.id.int


__all__ = ["NODE_RESTARTED", "RecoveryReport", "recover", "shape_of", "task_record"]
