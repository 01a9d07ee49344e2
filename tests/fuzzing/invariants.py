"""The registry's invariants, checked after every step of a fuzz run."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from uuid import UUID

from tm_server.core import ListFilter, TaskManager
from tm_server.core.port import ParentKind, ParentLink
from tm_server.core.producers import Producers
from tm_server.core.record import Task
from tm_server.core.shard import Shard
from tm_server.core.store import TaskStore
from tm_server.core.types import FoldedTask, TaskState, creation_time_of

from ..server_fixture import ServerThread

# ---- the registry's invariants ---------------------------------------------------------------


async def settle(thread: ServerThread) -> None:
    """Waits (a second at most) for the server's background work to finish.

    That is: dropped tasks' children being released, expired sessions' tasks
    being failed, and the bodies of aborted test tasks noticing the abort.
    """
    assert thread.server is not None
    producers = thread.server.producers
    for _ in range(500):
        pending = [t for t in producers._background if not t.done()]
        for shard in thread.manager.local_shards:
            pending.extend(t for t in shard._background if not t.done())
            pending.extend(
                task.runner
                for task in shard._store.tasks.values()
                if task.runner is not None and task.abort_requested
            )
        if not pending:
            return
        await asyncio.sleep(0.002)


def _walk_folded(records: Sequence[FoldedTask]) -> Iterator[FoldedTask]:
    """Folded records and, at any depth, the failed ones kept below them."""
    stack = list(records)
    while stack:
        record = stack.pop()
        yield record
        stack.extend(record.failed_children)


Bad = Callable[[int, str], None]
#: Reachable tasks by id: the shard that holds each, and its record.
Reachable = dict[int, tuple[int, Task]]


async def registry_violations(
    thread: ServerThread, server_named: frozenset[UUID] = frozenset()
) -> list[str]:
    """Checks the registry's invariants once its background work settled; returns what is broken.

    From ScyllaDB's task manager (the reference's sections 2 and 4) as tm's
    shards keep it (``core/shard.py``, ``core/store.py``). On each shard,
    *registered* tasks are in ``store.tasks``, *held* ones in ``store.held``
    (finished tasks that a live parent still points to); *reachable* is either.

    1. Identity: an id is reachable on one shard at most, under its own id;
       regular tasks are never SUSPENDED.
    2. Modules: every shard has the same modules (those ListModules lists),
       and a shard's registered tasks are exactly its modules' task maps.
    3. Lifecycle: CREATED has no start or end time, RUNNING a start and no
       end, DONE or FAILED an end (not before its start), and DONE no error.
       A finished task stays registered only as a root (or a virtual task's
       child) that is not internal, its expiry set: one with a regular
       parent, an internal one or one whose TTL was 0 leaves the registry as
       it finishes (2.2). A held task has finished, has a regular parent, did
       not fold and is not orphaned.
    4. Reachable from its parent: a reachable task whose regular parent is
       reachable (on the shard its link names) is among that parent's live
       children, under its own shard, with the parent's sequence number
       (1.5); one whose parent is gone is registered and orphaned. A parent
       may finish while its children still run: nothing in ScyllaDB waits for
       them (2.3). What does hold is that a finished task takes no new child
       (a child in ``server_named``, whose time-ordered id the server chose,
       was made before its parent's end time), that the children then finish
       on their own, and 9.
    5. The other way: each live child a reachable task lists is reachable on
       the shard it names, its parent link naming that task and its shard.
    6. Trees: walking live children from the roots (tasks without a regular
       parent, and orphans) reaches every reachable task exactly once.
    7. Folded children (2.4): a reachable task's folded records are of
       finished tasks with that parent that are neither reachable anywhere
       nor among its live children; its children's ids are distinct; below a
       record only failed subtrees are kept.
    8. Bookkeeping: a shard's parent references count exactly the reachable
       tasks there naming each parent; its folded references exactly the
       folded records (at any depth, on any shard) naming each of its tasks;
       its virtual children are exactly the registered tasks with a virtual
       parent; its owner counts are those of its registered tasks; and abort
       records are kept only for reachable tasks whose abort was requested.
    9. Aborts (2.6): an abort requested for a task has reached every
       unfinished task below it through live children (finished ones on the
       way included); a body the server runs (a test task) that was asked to
       abort has finished.
    10. Counts, through the manager's public reads: each registered task's
        status agrees with its record (state, parent, children_count = live +
        folded, and it lists the first max_status_children of them); paging
        its children two at a time lists exactly its live and folded
        children, by id, each once, every page with that count; each
        module's listing, paged, is exactly the shards' maps of that module
        (all of them with internal tasks, the non-internal ones without).
    11. Producer sessions: a task linked to a session is registered,
        unfinished and among the session's tasks; a session's tasks are
        linked to it.
    12. A task leaves the registry only once finished (2.7: TTL expiry, a
        drain, the test service's delete and a module's stop all take
        finished tasks): ``watch_unregistering`` checks it as it happens.
    """
    await settle(thread)
    out: list[str] = []

    def bad(rule: int, text: str) -> None:
        if len(out) < 40:
            out.append(f"[{rule}] {text}")

    shards = thread.manager.local_shards
    reachable: Reachable = {}
    for shard in shards:
        store = shard._store
        for key in store.tasks.keys() & store.held.keys():
            bad(1, f"task {UUID(int=key)} is registered and held on shard {shard.index}")
        for key, task in [*store.tasks.items(), *store.held.items()]:
            if key != task.id.int:
                bad(1, f"task {task.id} kept under {UUID(int=key)}")
            if key in reachable and reachable[key][0] != shard.index:
                bad(1, f"task {task.id} on shards {reachable[key][0]} and {shard.index}")
            if task.state is TaskState.SUSPENDED:
                bad(1, f"regular task {task.id} is suspended")
            reachable[key] = (shard.index, task)
    names = sorted(await thread.manager.list_modules())
    _check_modules(shards, names, bad)
    _check_lifecycles(shards, bad)
    _check_links(shards, reachable, server_named, bad)
    _check_folding(shards, reachable, bad)
    _check_aborts(reachable, bad)
    await _check_counts(thread.manager, names, bad)
    assert thread.server is not None
    _check_sessions(thread.server.producers, shards, bad)
    return out


def _check_modules(shards: Sequence[Shard], names: list[str], bad: Bad) -> None:
    """Invariant 2."""
    for shard in shards:
        store = shard._store
        if sorted(store.modules) != names:
            bad(2, f"shard {shard.index} has modules {sorted(store.modules)}, listed {names}")
        in_modules: dict[int, Task] = {}
        for name, module in store.modules.items():
            for key, task in module.tasks.items():
                in_modules[key] = task
                if task.module != name:
                    bad(2, f"task {task.id} of module {task.module} is in module {name}'s map")
        same = in_modules.keys() == store.tasks.keys()
        if not same or any(in_modules[k] is not t for k, t in store.tasks.items()):
            bad(2, f"shard {shard.index}: {len(store.tasks)} tasks, {len(in_modules)} in modules")


def _lifecycle(task: Task, bad: Bad) -> None:
    """Invariant 3 for one task: its times and error fit its state."""
    state, start, end = task.state, task.start_time, task.end_time
    if state is TaskState.CREATED and (start is not None or end is not None):
        bad(3, f"created task {task.id} has times {start} {end}")
    elif state is TaskState.RUNNING and (start is None or end is not None):
        bad(3, f"running task {task.id} has times {start} {end}")
    elif state.is_complete and (end is None or (start is not None and start > end)):
        bad(3, f"finished task {task.id} has times {start} {end}")
    if state is TaskState.DONE and task.error:
        bad(3, f"done task {task.id} has an error {task.error!r}")


def _check_lifecycles(shards: Sequence[Shard], bad: Bad) -> None:
    """Invariant 3."""
    for shard in shards:
        for task in shard._store.tasks.values():
            _lifecycle(task, bad)
            stays = task.regular_parent is None and not task.internal and task.expire_at is not None
            if task.state.is_complete and not stays:
                bad(3, f"finished task {task.id} is still registered (parent {task.parent}, "
                    f"internal {task.internal}, expire_at {task.expire_at})")  # fmt: skip
        for task in shard._store.held.values():
            _lifecycle(task, bad)
            if not task.state.is_complete:
                bad(3, f"held task {task.id} is {task.state.value}")
            if task.regular_parent is None or task.folded_into_parent or task.orphaned:
                bad(3, f"held task {task.id}: parent {task.parent}, folded "
                    f"{task.folded_into_parent}, orphaned {task.orphaned}")  # fmt: skip


def _check_links(
    shards: Sequence[Shard], reachable: Reachable, server_named: frozenset[UUID], bad: Bad
) -> None:
    """Invariants 4, 5 and 6."""
    for key, (index, task) in reachable.items():
        link = task.regular_parent
        if link is None:
            continue
        found = reachable.get(link.id.int)
        if found is not None and found[0] == link.shard:
            parent = found[1]
            if (parent.live_children or {}).get(task.id) != index:
                bad(4, f"task {task.id} ({task.state.value}) is not among the live children "
                    f"of its parent {parent.id} ({parent.state.value})")  # fmt: skip
            if task.orphaned:
                bad(4, f"task {task.id} is orphaned, yet its parent {parent.id} is there")
            made = creation_time_of(task.id) if task.id in server_named else None
            if made is not None and parent.end_time is not None and made > parent.end_time:
                bad(4, f"task {task.id} was made at {made}, after its parent {parent.id} "
                    f"ended at {parent.end_time}")  # fmt: skip
            if task.sequence_number != parent.sequence_number:
                bad(4, f"task {task.id} has sequence number {task.sequence_number}, its "
                    f"parent {parent.sequence_number}")  # fmt: skip
        elif found is not None:
            bad(4, f"task {task.id}'s parent {link.id} is on shard {found[0]}, not {link.shard}")
        elif key in shards[index]._store.held:
            bad(4, f"held task {task.id}: its parent {link.id} is gone")
        elif not task.orphaned:
            bad(4, f"task {task.id}: its parent {link.id} is gone, but it is not orphaned")
    for parent_index, parent in reachable.values():
        for child_id, child_shard in (parent.live_children or {}).items():
            child = reachable.get(child_id.int)
            if child is None:
                bad(5, f"live child {child_id} of {parent.id} is not reachable")
                continue
            link = child[1].parent
            expected = ParentLink(parent.id, ParentKind.NODE, parent_index)
            if child[0] != child_shard or link != expected:
                bad(5, f"live child {child_id} of {parent.id} (shard {child_shard}) is on "
                    f"shard {child[0]} with parent link {link}")  # fmt: skip
    visited: set[int] = set()
    queue = deque(t for _, t in reachable.values() if t.regular_parent is None or t.orphaned)
    while queue:
        task = queue.popleft()
        if task.id.int in visited:
            bad(6, f"task {task.id} is reached twice")
            continue
        visited.add(task.id.int)
        queue.extend(reachable[c.int][1] for c in task.live_children or {} if c.int in reachable)
    if visited != reachable.keys():
        missing = [str(UUID(int=k)) for k in reachable.keys() - visited][:5]
        bad(6, f"{len(reachable) - len(visited)} reachable tasks are in no tree, e.g. {missing}")


def _check_folding(shards: Sequence[Shard], reachable: Reachable, bad: Bad) -> None:
    """Invariants 7 and 8."""
    folded_refs: dict[int, Counter[int]] = {shard.index: Counter() for shard in shards}
    for _, task in reachable.values():
        folded = task.folded_children or []
        ids = [f.status.id for f in folded]
        live = task.live_children or {}
        if len(set(ids)) != len(ids) or set(ids) & live.keys():
            bad(7, f"task {task.id} lists a child twice: folded {ids}, live {list(live)}")
        for record in folded:
            status = record.status
            if not status.state.is_complete or status.parent_id != task.id:
                bad(7, f"folded child {status.id} of {task.id} is {status.state.value}, "
                    f"its parent {status.parent_id}")  # fmt: skip
            if status.id.int in reachable:
                bad(7, f"folded child {status.id} of {task.id} is still reachable")
            for below in _walk_folded(record.failed_children):
                if not below.has_failure:
                    bad(7, f"folded record {below.status.id} below {status.id} has no failure")
        for record in _walk_folded(folded):
            folded_refs[record.status.shard][record.status.id.int] += 1
    for shard in shards:
        store = shard._store
        here = [*store.tasks.values(), *store.held.values()]
        parents = Counter(t.parent.id.int for t in here if t.parent is not None)
        if parents != Counter(store._parent_refs):
            bad(8, f"shard {shard.index}: parent references {dict(store._parent_refs)}, "
                f"its tasks name {dict(parents)}")  # fmt: skip
        if folded_refs[shard.index] != Counter(store._folded_refs):
            bad(8, f"shard {shard.index}: folded references {dict(store._folded_refs)}, "
                f"the records name {dict(folded_refs[shard.index])}")  # fmt: skip
        virtual: dict[int, set[UUID]] = {}
        for task in store.tasks.values():
            if task.parent is not None and task.parent.kind is ParentKind.VIRTUAL:
                virtual.setdefault(task.parent.id.int, set()).add(task.id)
        if virtual != {k: set(v) for k, v in store.virtual_children.items()}:
            bad(8, f"shard {shard.index}: virtual children {store.virtual_children}, {virtual}")
        owned = Counter(t.impl.owner for t in store.tasks.values() if t.impl.owner)
        if owned != Counter(store.owned):
            bad(8, f"shard {shard.index}: owned {store.owned}, registered {dict(owned)}")
        for key in store.aborts:
            kept = store.tasks.get(key) or store.held.get(key)
            if kept is None or not kept.abort_requested:
                bad(8, f"shard {shard.index} keeps an abort record for {UUID(int=key)}")


def _check_aborts(reachable: Reachable, bad: Bad) -> None:
    """Invariant 9."""
    for _, task in reachable.values():
        if not task.abort_requested:
            continue
        if not task.impl.external and not task.state.is_complete:
            bad(9, f"task {task.id}, run by the server, was aborted and is {task.state.value}")
        below = deque(task.live_children or {})
        walked: set[UUID] = set()
        while below:
            child_id = below.popleft()
            child = reachable.get(child_id.int)
            if child_id in walked or child is None:
                continue
            walked.add(child_id)
            if not child[1].state.is_complete and not child[1].abort_requested:
                bad(9, f"task {child_id} ({child[1].state.value}) below the aborted "
                    f"{task.id} was not told of the abort")  # fmt: skip
            below.extend(child[1].live_children or {})


async def _check_counts(manager: TaskManager, names: list[str], bad: Bad) -> None:
    """Invariant 10."""
    cap = manager.max_status_children
    for shard in manager.local_shards:
        for task in list(shard._store.tasks.values()):
            children = [
                *(task.live_children or {}),
                *(f.status.id for f in task.folded_children or []),
            ]
            parent_id = None if task.parent is None else task.parent.id
            status = await manager.get_status(task.id)
            found = (status.state, status.parent_id, status.children_count)
            if found != (task.state, parent_id, len(children)):
                bad(10, f"the status of {task.id} says {found}, its record "
                    f"{(task.state, parent_id, len(children))}")  # fmt: skip
            if [c.task_id for c in status.children] != children[:cap]:
                bad(10, f"the status of {task.id} lists {len(status.children)} children")
            paged: list[UUID] = []
            token = ""
            for _ in range(len(children) + 1):
                page, count, token = await manager.list_children(
                    task.id, page_size=2, page_token=token
                )
                paged.extend(c.task_id for c in page)
                if count != len(children):
                    bad(10, f"a page of {task.id}'s children says {count}, not {len(children)}")
                if not token:
                    break
            if paged != sorted(children, key=lambda u: u.int):
                bad(10, f"the pages of {task.id}'s children list {len(paged)} of {len(children)}")
    for name in names:
        for internal in (True, False):
            expected = {
                key
                for shard in manager.local_shards
                if name in shard._store.modules
                for key, task in shard._store.modules[name].tasks.items()
                if internal or not task.internal
            }
            listed: list[int] = []
            token = ""
            for _ in range(len(expected) + 1):
                flt = ListFilter(internal=internal)
                entries, token = await manager.list_module_tasks(
                    name, flt, page_size=7, page_token=token
                )
                listed.extend(e.task_id.int for e in entries)
                if not token:
                    break
            if sorted(listed) != sorted(expected):
                bad(10, f"module {name} lists {len(listed)} tasks (internal {internal}), "
                    f"its maps hold {len(expected)}")  # fmt: skip


def _check_sessions(producers: Producers, shards: Sequence[Shard], bad: Bad) -> None:
    """Invariant 11."""
    for key, session in producers._task_sessions.items():
        task = next((s._store.tasks[key] for s in shards if key in s._store.tasks), None)
        if task is None or task.state.is_complete:
            state = "not registered" if task is None else task.state.value
            bad(11, f"task {UUID(int=key)} of session {session.id} is {state}")
        if UUID(int=key) not in session.tasks:
            bad(11, f"task {UUID(int=key)} is linked to session {session.id}, not among its tasks")
    for session in producers._sessions.values():
        for task_id in session.tasks:
            if producers._task_sessions.get(task_id.int) is not session:
                bad(11, f"task {task_id} of session {session.id} is not linked to it")


def watch_unregistering(store: TaskStore, unfinished: list[str]) -> None:
    """Notes every task taken out of a shard's registry before it finished (invariant 12)."""
    unregister = store.unregister

    def checked(task: Task) -> None:
        if task.id.int in store.tasks and not task.state.is_complete:
            unfinished.append(f"[12] task {task.id} left the registry {task.state.value}")
        unregister(task)

    store.unregister = checked  # type: ignore[method-assign]
