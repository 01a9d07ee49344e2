"""A shard's store of task records: who is registered, held or handled, and what trees name.

Plain bookkeeping with no waiting in it: the maps a shard looks tasks up in,
its modules, the reference counts that keep a client from reusing an id a
tree still names, unregistering (with the retention rules of ScyllaDB) and
the expiry of finished roots. The shard (``shard.py``) drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from .clock import Clock
from .counts import count
from .errors import TaskNotFoundError, UnknownModuleError
from .expiry import ExpiryQueues
from .feed import DEFAULT_WATCH_WINDOW, ChangeFeed, ChangeKind, state_code
from .journal import ABORT_KEY, Journal, sequence_key
from .observe import NO_OBSERVER, TaskObserver
from .port import ChildRef, NewTask, ParentKind
from .quotas import ShardQuotas, TaskQuotas
from .rate import RateTracker
from .record import ModuleState, Task
from .task import TaskImpl
from .types import AbortRequest, FoldedTask, TaskState, creation_time_of


def _expiry(task: Task) -> float:
    return task.expire_at or 0.0


def forgotten_keys(records: list[FoldedTask]) -> dict[int, list[int]]:
    """The folded ids named by records being forgotten, by the shard that counts each.

    A folded task's id is counted on its own shard (``status.shard``) from
    the moment it folds until the last record naming it is forgotten: its
    parent's, or, for a failed one carried up by folding, the top-most
    holder's. The walk is a loop over the kept failed descendants.
    """
    by_shard: dict[int, list[int]] = {}
    stack = list(records)
    while stack:
        record = stack.pop()
        by_shard.setdefault(record.status.shard, []).append(record.status.id.int)
        stack.extend(record.failed_children)
    return by_shard


class TaskStore:
    """The records of one shard, and what leaving the registry means for each."""

    def __init__(
        self,
        clock: Clock,
        on_dropped: Callable[[list[ChildRef], dict[int, list[int]]], None],
        *,
        shard: int,
        journal: Journal,
        quotas: ShardQuotas | None = None,
        window: int = DEFAULT_WATCH_WINDOW,
        observer: TaskObserver = NO_OBSERVER,
    ) -> None:
        self.shard = shard
        # Every change of a registered task, for module watches.
        self.feed = ChangeFeed(window)
        self.observer = observer
        # Registered tasks by module and state (index ``state_code - 1``), for
        # metrics: kept as they change, never counted on demand.
        self.states: dict[str, list[int]] = {}
        # The pace of running tasks that have progressed (see ``rate``).
        self.paces: dict[int, RateTracker] = {}
        self.quotas = quotas or ShardQuotas(TaskQuotas(), 1)
        # Registered tasks by owning principal (named ones only), for its quota.
        self.owned: dict[str, int] = {}
        # Who asked for each abort, when and why: only aborted tasks are in it
        # (a slot on every task would cost all of them).
        self.aborts: dict[int, AbortRequest] = {}
        # Told of every record that changes or goes (a no-op without a journal).
        self.journal = journal
        self._sequence_keys: dict[str, str] = {}
        # Keyed by the id's int: it hashes in C, where a UUID hashes in Python.
        self.tasks: dict[int, Task] = {}
        # Finished tasks already unregistered but still reachable through a
        # live parent (ScyllaDB keeps them alive by the parent's pointer).
        self.held: dict[int, Task] = {}
        # Tasks an in-process TaskHandle still refers to, registered or not,
        # with how many handles do (kept here, not on the task, which most
        # tasks never need).
        self.handled: dict[int, Task] = {}
        self._handles: dict[int, int] = {}
        # Ids that trees still name without a task of their own being
        # registered or held: parents that tasks here point to, and tasks of
        # this shard that folded into a parent (counted until the last record
        # naming them is forgotten, see ``forgotten_keys``). Counts, as one
        # id can be named more than once. A client-chosen id in here is
        # refused: reusing it could make a task its own ancestor, or two tasks
        # share one id in a tree.
        self._parent_refs: dict[int, int] = {}
        self._folded_refs: dict[int, int] = {}
        self.modules: dict[str, ModuleState] = {}
        # Children of virtual parents: virtual id -> child ids on this shard.
        self.virtual_children: dict[int, dict[UUID, None]] = {}
        self.expiry = ExpiryQueues(clock, self._expire_due)
        # Told of every task dropped: its children, to release, and the
        # folded ids its records named, to forget (on any shard).
        self._on_dropped = on_dropped

    # ---- lookups -----------------------------------------------------------------------------

    def module(self, name: str) -> ModuleState:
        """The module's instance here.

        Raises:
            UnknownModuleError: it is not registered.
        """
        module = self.modules.get(name)
        if module is None:
            raise UnknownModuleError(name)
        return module

    def registered(self, task_id: UUID) -> Task:
        """The registered task with this id.

        Raises:
            TaskNotFoundError: there is none.
        """
        task = self.tasks.get(task_id.int)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    def reachable(self, task_id: UUID) -> Task | None:
        """A registered task, or a finished one its live parent still holds."""
        key = task_id.int
        return self.tasks.get(key) or self.held.get(key)

    def handled_task(self, task_id: UUID) -> Task | None:
        """A reachable task, or one an in-process handle still refers to."""
        key = task_id.int
        return self.tasks.get(key) or self.held.get(key) or self.handled.get(key)

    def id_in_use(self, task_id: UUID) -> bool:
        """Whether a tree here still names this id (see ``ShardPort.id_in_use``)."""
        key = task_id.int
        return (
            key in self.tasks
            or key in self.held
            or key in self.handled
            or key in self._parent_refs
            or key in self._folded_refs
        )

    # ---- adding ------------------------------------------------------------------------------

    def add(self, spec: NewTask, impl: TaskImpl, *, handle: bool) -> Task:
        """Builds and registers a task record.

        Raises:
            UnknownModuleError: the module is not registered here.
            QuotaExceededError: the shard, or the task's owner, holds its share of tasks.
        """
        module = self.module(spec.module)
        self.quotas.check_tasks(len(self.tasks))
        owner = impl.owner
        if owner:
            self.quotas.check_owned(owner, self.owned.get(owner, 0))
            count(self.owned, owner, 1)
        inherited = spec.inherited
        if inherited is None or inherited.sequence_number is None:
            sequence = module.new_sequence_number()
            # Durable with the task: numbers continue after a restart, never reused.
            counter = self._sequence_keys.get(module.name)
            if counter is None:
                counter = self._sequence_keys[module.name] = sequence_key(self.shard, module.name)
            self.journal.put(counter, sequence)
        else:
            sequence = inherited.sequence_number
        task = Task(
            spec.task_id,
            spec.module,
            impl,
            spec.parent,
            sequence,
            spec.keyspace,
            spec.table,
            spec.entity,
            spec.progress_total,
        )
        key = spec.task_id.int
        self.tasks[key] = task
        module.tasks[key] = task
        parent = spec.parent
        if parent is not None:
            count(self._parent_refs, parent.id.int, 1)
            if parent.kind is ParentKind.VIRTUAL:
                self.virtual_children.setdefault(parent.id.int, {})[spec.task_id] = None
        if inherited is not None and inherited.abort_pending:
            # A child created under a parent with an abort pending is aborted at once.
            task.abort_requested = True
        if handle:
            self.handled[key] = task
            self._handles[key] = 1
        self.journal.record(self.shard, task)
        by_state = self.states.get(spec.module)
        if by_state is None:
            by_state = self.states[spec.module] = [0] * len(TaskState)
        by_state[0] += 1
        self.feed.append(spec.task_id, ChangeKind.CREATED, 0)
        self.observer.task_created(spec.module, impl.type)
        return task

    def started(self, task: Task) -> None:
        """A task moved from created to running."""
        if self.tasks.get(task.id.int) is not task:
            return
        by_state = self.states[task.module]
        by_state[0] -= 1
        by_state[state_code(task.state) - 1] += 1

    def finished(self, task: Task, before: TaskState) -> None:
        """A task finished (its state and end time are set); it moved from ``before``."""
        self.paces.pop(task.id.int, None)
        if self.tasks.get(task.id.int) is task:
            by_state = self.states[task.module]
            code = state_code(before)
            by_state[code - 1] -= 1
            by_state[state_code(task.state) - 1] += 1
            self.feed.append(task.id, ChangeKind.FINISHED, code)
        end = task.end_time
        assert end is not None
        # From the start; a task that failed before it started, from its creation.
        since = task.start_time
        if since is None:
            since = creation_time_of(task.id) or end
        self.observer.task_finished(task.module, task.impl.type, task.state, max(0.0, end - since))

    def restore(
        self,
        tasks: dict[str, list[tuple[int, Task]]],
        folded: list[UUID],
        sequences: dict[str, int],
        aborts: dict[int, AbortRequest] | None = None,
    ) -> None:
        """Registers tasks rebuilt from the journal, as ``add`` would have (recovery only).

        ``tasks`` are (id number, task) by module, ``folded`` ids of this
        shard's tasks that folded into a parent (named until their parent's
        record goes), ``sequences`` each module's last sequence number here,
        ``aborts`` who asked for the aborts of tasks here. In bulk, with one
        pass over the tasks (a million of them lie far apart in memory: each
        pass costs a cache miss a task): a sorted map filled at once sorts
        once, where a million inserts would cost seconds.
        """
        parent_refs = self._parent_refs
        highest = dict(sequences)
        owned = self.owned
        for name, pairs in tasks.items():
            # Made once and merged twice: merging a dict presizes the map it
            # goes into, where a list of pairs grows it step by step.
            by_id = dict(pairs)
            self.tasks.update(by_id)
            self.module(name).tasks.update(by_id)
            by_state = self.states.setdefault(name, [0] * len(TaskState))
            top = highest.get(name, 0)
            for _, task in pairs:
                by_state[state_code(task.state) - 1] += 1
                owner = task.impl.owner
                if owner:
                    count(owned, owner, 1)
                if task.sequence_number > top:
                    top = task.sequence_number
                parent = task.parent
                if parent is not None:
                    count(parent_refs, parent.id.int, 1)
                    if parent.kind is ParentKind.VIRTUAL:
                        self.virtual_children.setdefault(parent.id.int, {})[task.id] = None
            highest[name] = top
        for task_id in folded:
            self.count_folded(task_id)
        if aborts:
            self.aborts.update((k, a) for k, a in aborts.items() if k in self.tasks)
        for name, module in self.modules.items():
            module.sequence = max(module.sequence, highest.get(name, 0))

    def settle_restored(self, now: float) -> tuple[list[Task], dict[str, int]]:
        """Applies a restart to the restored tasks, but those whose body ran in the server.

        Finished children go back to their parents (held), finished roots stay
        for what is left of their TTL or leave now. Returns the unfinished
        tasks whose body ran in the server (for the shard to fail) and counts
        by kind, for the log.
        """
        counts = {"running": 0, "created": 0, "finished": 0, "held": 0, "expired": 0}
        ended: list[Task] = []
        lasting: list[Task] = []
        leaving: list[Task] = []
        for task in self.tasks.values():
            if not task.state.is_complete:
                if not task.impl.external:
                    ended.append(task)
                else:
                    counts["running" if task.state is TaskState.RUNNING else "created"] += 1
            elif task.parent is None and task.expire_at is not None and task.expire_at > now:
                lasting.append(task)
            else:
                leaving.append(task)  # to its parent (held), or gone
        for task in leaving:
            self.unregister(task)
            counts["held" if task.id.int in self.held else "expired"] += 1
        # Expiry queues are FIFO per TTL: queued in the order they expire.
        lasting.sort(key=_expiry)
        if lasting:
            self.expiry.schedule_sorted([t.id.int for t in lasting], _expiry(lasting[0]))
        counts["finished"] = len(lasting)
        return ended, counts

    def folded(self, parent: Task, folded: FoldedTask) -> None:
        """Records a child folded into ``parent``."""
        if parent.folded_children is None:
            parent.folded_children = []
        parent.folded_children.append(folded)

    def count_folded(self, task_id: UUID) -> None:
        """A task of this shard folded into its parent: its id stays named."""
        count(self._folded_refs, task_id.int, 1)

    def forget_folded(self, keys: list[int]) -> None:
        """The last records naming these folded tasks of this shard were forgotten."""
        for key in keys:
            count(self._folded_refs, key, -1)
            if key not in self._folded_refs:
                self.journal.forget(UUID(int=key))

    def release_handle(self, task_id: UUID) -> None:
        """One handle of the task went away; at the last one, stop keeping it."""
        key = task_id.int
        count = self._handles.get(key, 0) - 1
        if count > 0:
            self._handles[key] = count
        else:
            self._handles.pop(key, None)
            self.handled.pop(key, None)

    # ---- leaving -----------------------------------------------------------------------------

    def unregister(self, task: Task) -> None:
        """Takes a task out of the registry: held by its live parent, or dropped."""
        key = task.id.int
        if self.tasks.pop(key, None) is None:
            return
        code = state_code(task.state)
        self.states[task.module][code - 1] -= 1
        self.feed.append(task.id, ChangeKind.REMOVED, code, task)
        if self.paces:
            self.paces.pop(key, None)
        owner = task.impl.owner
        if owner:
            count(self.owned, owner, -1)
        module = self.modules.get(task.module)
        if module is not None:
            module.tasks.pop(key, None)
        parent = task.parent
        if parent is not None and parent.kind is ParentKind.VIRTUAL:
            siblings = self.virtual_children.get(parent.id.int)
            if siblings is not None:
                siblings.pop(task.id, None)
                if not siblings:
                    del self.virtual_children[parent.id.int]
        held_by_parent = (
            parent is not None
            and parent.kind is ParentKind.NODE
            and not task.folded_into_parent
            and not task.orphaned
        )
        if held_by_parent:
            self.held[key] = task
            return
        children, forgotten = self._drop(task)
        if children or forgotten:
            self._on_dropped(children, forgotten)

    def _drop(self, task: Task) -> tuple[list[ChildRef], dict[int, list[int]]]:
        """Forgets what the task named.

        Returns the children it pointed at, to release, and the folded ids its
        records named, by shard, to forget. Its folded records are forgotten
        with it unless it folded into its parent, which then holds the failed
        ones (the others were forgotten when it folded).
        """
        if task.parent is not None:
            count(self._parent_refs, task.parent.id.int, -1)
        if self.aborts and self.aborts.pop(task.id.int, None) is not None:
            self.journal.delete(f"{ABORT_KEY}{task.id.int:032x}")
        if not task.folded_into_parent:
            # A folded task's record stays while its parent's names it
            # (``forget_folded`` lets it go).
            self.journal.forget(task.id)
        children = list((task.live_children or {}).items())
        forgotten = {} if task.folded_into_parent else forgotten_keys(task.folded_children or [])
        return children, forgotten

    def release(self, task_id: UUID) -> list[ChildRef]:
        """Forgets a held task whose parent went away (or marks a live one orphaned).

        Returns the dropped task's own children, to release next (the caller walks on).
        """
        task = self.held.pop(task_id.int, None)
        if task is None:
            live = self.tasks.get(task_id.int)
            if live is not None:
                live.orphaned = True
                self.journal.record(self.shard, live)
            return []
        children, forgotten = self._drop(task)
        if forgotten:
            self._on_dropped([], forgotten)
        return children

    def expire_later(self, ttl: float, task: Task) -> None:
        """Queues a finished task to leave the registry at its ``expire_at``."""
        assert task.expire_at is not None
        self.expiry.schedule(ttl, task.id.int, task.expire_at)

    def _expires_at(self, key: int) -> float | None:
        task = self.tasks.get(key)
        return None if task is None else task.expire_at

    def _expire_due(self) -> None:
        expired: dict[str, int] = {}
        for key in self.expiry.pop_due(self._expires_at):
            task = self.tasks.get(key)
            if task is not None:
                self.unregister(task)
                count(expired, task.module, 1)
        for module, n in expired.items():
            self.observer.tasks_expired(module, n)

    def remove_module(self, name: str) -> None:
        """Unregisters the module's tasks (cutting TTLs short) and the module itself."""
        for task in list(self.module(name).tasks.values()):
            self.unregister(task)
        del self.modules[name]
        self.states.pop(name, None)

    def drain(self, module: str) -> int:
        """Unregisters the module's finished tasks; returns how many."""
        finished = [t for t in self.module(module).tasks.values() if t.state.is_complete]
        for task in finished:
            self.unregister(task)
        return len(finished)
