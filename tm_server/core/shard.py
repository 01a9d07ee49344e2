"""One shard of the registry: it owns its tasks, module instances, sequence counters and TTL expiry.

Other shards and the manager reach a shard only through its public ``async``
methods, which take and return plain data (ids, statuses, folded records),
never another shard's task objects: that is the narrow interface that lets a
shard later move into a process of its own without its callers changing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from sortedcontainers import SortedDict

from .clock import Clock, TimerHandle
from .errors import (
    InvalidArgumentError,
    InvalidStateError,
    ShuttingDownError,
    TaskAbortedError,
    TaskFailedError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
)
from .task import TaskContext, TaskImpl
from .types import (
    NO_PROGRESS,
    FoldedTask,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskKind,
    TaskState,
    TaskStats,
    TaskStatus,
    creation_time_of,
)
from .validation import MAX_PROGRESS, check_progress

if TYPE_CHECKING:
    from .manager import TaskManager

log = logging.getLogger(__name__)


T = TypeVar("T")

ABORT_ERROR = "abort requested"
# An Enum member read off its class goes through the metaclass; every status
# built here reads this one.
_NODE = TaskKind.NODE


def _known_total(task: Task) -> float | None:
    """The total a producer reported, else the implementation's expected workload."""
    if task.reported_total is not None:
        return task.reported_total
    expected = task.impl.expected_total_workload()
    if expected is None or not 0.0 <= expected <= MAX_PROGRESS:
        return None  # an implementation's inf or NaN is no known total
    return expected


def _leaf_progress(task: Task) -> Progress:
    """The progress of a task without children: reported, else none of its expected total."""
    if task.reported is not None:
        return task.reported  # the task's own progress, as specific types override it
    if task.state.is_complete:
        return NO_PROGRESS
    leaf_total = _known_total(task)
    return NO_PROGRESS if leaf_total is None else Progress(0.0, leaf_total)


def _count(counts: dict[int, int], key: int, delta: int) -> None:
    """Adds ``delta`` to a reference count, forgetting the key at 0."""
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


def _folded_keys(folded: FoldedTask) -> list[int]:
    """The ids a folded record names: its own and its kept failed descendants' (iteratively)."""
    keys: list[int] = []
    stack = [folded]
    while stack:
        item = stack.pop()
        keys.append(item.status.id.int)
        stack.extend(item.failed_children)
    return keys


class ParentKind(enum.Enum):
    """What a task's parent is: none, a regular task or a virtual task."""

    NONE = "none"
    NODE = "node"
    VIRTUAL = "virtual"


@dataclass(frozen=True, slots=True)
class ParentLink:
    """How a new task is attached to its parent."""

    id: UUID
    kind: ParentKind
    shard: int  # the parent's shard (0 for a virtual parent)


@dataclass(frozen=True, slots=True)
class AttachResult:
    """What the parent's shard tells a child being attached to it."""

    sequence_number: int
    abort_pending: bool


@dataclass(frozen=True, slots=True)
class TreeNode:
    """A task's status with its children split as recursive status walks them."""

    status: TaskStatus
    live_children: tuple[tuple[UUID, int], ...]
    folded_children: tuple[FoldedTask, ...]


@dataclass(slots=True)
class TtlConfig:
    """The retention settings a shard reads when a task finishes."""

    task_ttl: int
    user_task_ttl: int


class ModuleState:
    """A module's instance on one shard: its sequence counter and registered tasks."""

    __slots__ = ("name", "sequence", "tasks")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sequence = 0
        # Sorted by id, so listings page in a stable order without a scan.
        self.tasks: SortedDict[int, Task] = SortedDict()

    def new_sequence_number(self) -> int:
        """Returns the next sequence number of this module on this shard (the first is 1)."""
        self.sequence += 1
        return self.sequence


class TaskSync:
    """The asyncio objects of a task, made only for the tasks that need them.

    Most registered tasks are never awaited, aborted from inside a body or
    watched, so keeping these out of ``Task`` saves memory per task.
    """

    __slots__ = ("abort_event", "done", "runner", "status", "waiters")

    def __init__(self) -> None:
        self.abort_event: asyncio.Event | None = None
        self.done: asyncio.Future[None] | None = None
        self.runner: asyncio.Task[None] | None = None
        # Watches parked until the task changes (a set: cancelling one is O(1)).
        self.waiters: set[asyncio.Future[None]] | None = None
        # The status at a version, shared by every watcher woken for it.
        self.status: tuple[int, TaskStatus] | None = None


class Task:
    """A regular task's state on its owner shard; only that shard touches it.

    Kept small (a million of them fit in a few hundred MB): containers and
    asyncio objects are created on first use.
    """

    __slots__ = (
        "abort_requested",
        "children_progress",
        "end_time",
        "entity",
        "error",
        "expire_at",
        "folded_children",
        "folded_into_parent",
        "id",
        "impl",
        "internal",
        "keyspace",
        "live_children",
        "module",
        "orphaned",
        "parent",
        "reported",
        "reported_total",
        "sequence_number",
        "start_time",
        "state",
        "sync",
        "table",
        "version",
    )

    def __init__(
        self,
        task_id: UUID,
        module: str,
        impl: TaskImpl,
        parent: ParentLink | None,
        sequence_number: int,
        keyspace: str,
        table: str,
        entity: str,
        total: float | None = None,
    ) -> None:
        self.id = task_id
        self.module = module
        self.impl = impl
        self.parent = parent
        self.sequence_number = sequence_number
        self.keyspace = keyspace
        self.table = table
        self.entity = entity
        default_internal = parent is not None and parent.kind is ParentKind.NODE
        self.internal = default_internal if impl.internal is None else impl.internal
        self.state = TaskState.CREATED
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.error = ""
        self.abort_requested = False
        # Live children in creation order (id -> shard), made on the first child.
        self.live_children: dict[UUID, int] | None = None
        # Finished internal children in finishing order, made on the first fold.
        self.folded_children: list[FoldedTask] | None = None
        self.folded_into_parent = False
        self.orphaned = False
        self.reported: Progress | None = None
        self.reported_total = total
        self.expire_at: float | None = None
        self.version = 0
        self.sync: TaskSync | None = None
        # The sum of the children's progress at ``version``: any change below
        # bumps the version, so a tree's progress is summed once, not per read.
        self.children_progress: tuple[int, Progress] | None = None

    def get_sync(self) -> TaskSync:
        """Returns the task's asyncio objects, making them on first use."""
        if self.sync is None:
            self.sync = TaskSync()
        return self.sync

    @property
    def runner(self) -> asyncio.Task[None] | None:
        """The asyncio task running the body, while it runs."""
        return None if self.sync is None else self.sync.runner

    @property
    def parent_kind(self) -> ParentKind:
        """Whether the parent is none, regular or virtual."""
        return ParentKind.NONE if self.parent is None else self.parent.kind

    def stats(self, shard: int) -> TaskStats:
        """Returns the task's list entry."""
        return TaskStats(
            task_id=self.id,
            state=self.state,
            type=self.impl.type,
            kind=TaskKind.NODE,
            scope=self.impl.scope,
            keyspace=self.keyspace,
            table=self.table,
            entity=self.entity,
            sequence_number=self.sequence_number,
            shard=shard,
            creation_time=creation_time_of(self.id),
            start_time=self.start_time,
            end_time=self.end_time,
        )

    def matches(self, flt: ListFilter) -> bool:
        """Whether the task passes a listing's filters."""
        return (
            (flt.internal or not self.internal)
            and (not flt.keyspace or self.keyspace == flt.keyspace)
            and (not flt.table or self.table == flt.table)
        )


class Shard:
    """One shard: tasks, module instances, sequence counters and TTL expiry."""

    def __init__(
        self,
        index: int,
        manager: TaskManager,
        clock: Clock,
        node: str,
        ttl: TtlConfig,
        max_status_children: int,
    ) -> None:
        self.index = index
        self._max_children = max_status_children
        self.manager = manager
        self._clock = clock
        self._node = node
        self._ttl = ttl
        # Keyed by the id's int: it hashes in C, where a UUID hashes in Python.
        self._tasks: dict[int, Task] = {}
        # Finished tasks already unregistered but still reachable through a
        # live parent (ScyllaDB keeps them alive by the parent's pointer).
        self._held: dict[int, Task] = {}
        # Ids that trees here still name without a task of their own being
        # registered or held: parents that tasks here point to, and finished
        # children folded into parents here (with their kept failed
        # descendants). Counts, as one id can be named more than once. A
        # client-chosen id in here is refused: reusing it could make a task
        # its own ancestor, or two tasks share one id in a tree.
        self._parent_refs: dict[int, int] = {}
        self._folded_refs: dict[int, int] = {}
        self._modules: dict[str, ModuleState] = {}
        # Children of virtual parents: virtual id -> child ids on this shard.
        self._virtual_children: dict[int, dict[UUID, None]] = {}
        # Finished roots waiting for their TTL, one queue per TTL value: with
        # one TTL, tasks expire in the order they finished, so a queue of ids
        # costs a pointer per task where a heap of (time, id) would cost a tuple.
        self._expiry: dict[float, deque[int]] = {}
        self._expiry_timer: TimerHandle | None = None
        self._expiry_timer_at: float | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._parked: set[asyncio.Future[None]] = set()
        self._stopping = False

    @property
    def _peers(self) -> list[Shard]:
        return self.manager.shards

    # ---- modules -----------------------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers the module here; returns False if it already was."""
        if name in self._modules:
            return False
        self._modules[name] = ModuleState(name)
        return True

    async def list_modules(self) -> list[str]:
        """Returns the module names registered on this shard."""
        return list(self._modules)

    async def has_module(self, name: str) -> bool:
        """Whether the module is registered here."""
        return name in self._modules

    def _module(self, name: str) -> ModuleState:
        module = self._modules.get(name)
        if module is None:
            raise UnknownModuleError(name)
        return module

    async def abort_module(self, name: str) -> None:
        """Aborts the module's tasks that follow its abort source: roots and virtual children.

        Their descendants are reached through them, on any shard.
        """
        module = self._module(name)
        for task in list(module.tasks.values()):
            if task.parent_kind is not ParentKind.NODE:
                await self._abort(task)

    async def wait_module_idle(self, name: str) -> None:
        """Waits until every task of the module on this shard has finished."""
        module = self._module(name)
        for task in list(module.tasks.values()):
            if not task.state.is_complete:
                await self._done_future(task)

    async def remove_module(self, name: str) -> None:
        """Unregisters the module's tasks (cutting TTLs short) and the module itself."""
        module = self._module(name)
        for task in list(module.tasks.values()):
            self._unregister(task)
        del self._modules[name]

    # ---- ttl ---------------------------------------------------------------------------------

    async def set_ttl(self, task_ttl: int | None = None, user_task_ttl: int | None = None) -> None:
        """Sets the TTLs read by tasks that finish from now on."""
        if task_ttl is not None:
            self._ttl.task_ttl = task_ttl
        if user_task_ttl is not None:
            self._ttl.user_task_ttl = user_task_ttl

    # ---- creation ----------------------------------------------------------------------------

    async def contains(self, task_id: UUID) -> bool:
        """Whether a regular task with this id is registered here."""
        return task_id.int in self._tasks

    async def id_in_use(self, task_id: UUID) -> bool:
        """Whether a tree here still names this id.

        It does if a task with this id is registered or held here, if tasks
        here point to it as their parent, or if it was folded into a parent here.
        """
        key = task_id.int
        return (
            key in self._tasks
            or key in self._held
            or key in self._parent_refs
            or key in self._folded_refs
        )

    async def attach_child(self, parent_id: UUID, child_id: UUID, child_shard: int) -> AttachResult:
        """Adds a child to a registered parent here; returns what the child inherits.

        Raises:
            TaskNotFoundError: the parent is not registered here.
            InvalidStateError: the parent has already finished.
        """
        parent = self._tasks.get(parent_id.int)
        if parent is None:
            raise TaskNotFoundError(parent_id, "parent task")
        if parent.state.is_complete:
            raise InvalidStateError(
                f"parent task with id {parent_id} is {parent.state.value}: "
                "a finished task takes no new children"
            )
        if parent.live_children is None:
            parent.live_children = {}
        parent.live_children[child_id] = child_shard
        await self._changed(parent)
        return AttachResult(parent.sequence_number, parent.abort_requested)

    async def detach_child(self, parent_id: UUID, child_id: UUID) -> None:
        """Undoes ``attach_child`` when the child could not be created."""
        parent = self._reachable(parent_id)
        if (
            parent is not None
            and parent.live_children is not None
            and parent.live_children.pop(child_id, None) is not None
        ):
            await self._changed(parent)

    async def create_task(
        self,
        module_name: str,
        impl: TaskImpl,
        task_id: UUID,
        parent: ParentLink | None,
        inherited: AttachResult | None,
        keyspace: str,
        table: str,
        entity: str,
        total: float | None = None,
    ) -> Task:
        """Builds and registers a task here, in state ``created``.

        The task object is returned for the in-process handle of its creator
        only; every other caller goes by id.
        """
        module = self._module(module_name)
        if inherited is not None:
            sequence_number = inherited.sequence_number
        else:
            sequence_number = module.new_sequence_number()
        task = Task(
            task_id, module_name, impl, parent, sequence_number, keyspace, table, entity, total
        )
        key = task_id.int
        self._tasks[key] = task
        module.tasks[key] = task
        if parent is not None:
            _count(self._parent_refs, parent.id.int, 1)
        if parent is not None and parent.kind is ParentKind.VIRTUAL:
            self._virtual_children.setdefault(parent.id.int, {})[task_id] = None
        if inherited is not None and inherited.abort_pending:
            # A child created under a parent with an abort pending is aborted at once.
            task.abort_requested = True
        return task

    # ---- lifecycle ---------------------------------------------------------------------------

    def _registered(self, task_id: UUID) -> Task:
        task = self._tasks.get(task_id.int)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    def _reachable(self, task_id: UUID) -> Task | None:
        key = task_id.int
        return self._tasks.get(key) or self._held.get(key)

    async def start_task(self, task_id: UUID) -> None:
        """Starts a created task: its body runs in the background.

        Raises:
            InvalidStateError: the task was already started.
        """
        task = self._registered(task_id)
        if task.state is not TaskState.CREATED:
            raise InvalidStateError(
                f"task with id {task_id} was already started (state {task.state.value})"
            )
        task.start_time = self._clock.now()
        if task.abort_requested:
            # Aborted before start: fail at once, the body never runs.
            await self._finish(task, ABORT_ERROR)
            return
        task.state = TaskState.RUNNING
        await self._changed(task)
        if not task.impl.external:
            task.get_sync().runner = asyncio.get_running_loop().create_task(
                self._run_to_completion(task), name=f"tm-task-{task_id}"
            )

    async def _run_to_completion(self, task: Task) -> None:
        error: str | None
        try:
            await task.impl.run(TaskContext(self, task))
        except (TaskFailedError, TaskAbortedError) as exc:
            error = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            error = "task cancelled: the server is shutting down"
        except Exception as exc:
            log.warning("task %s failed", task.id, exc_info=True)
            try:
                error = f"{type(exc).__name__} ({exc})"
            except Exception:
                error = "Failed to get error message"
        else:
            # A body that returns after an abort request still fails.
            error = ABORT_ERROR if task.abort_requested else None
        task.get_sync().runner = None
        await self._finish(task, error)

    def _running(self, task_id: UUID, action: str) -> Task:
        task = self._registered(task_id)
        if task.state is not TaskState.RUNNING:
            hint = ": start it first" if task.state is TaskState.CREATED else ""
            raise InvalidStateError(
                f"cannot {action} task with id {task_id}: it is {task.state.value}{hint}"
            )
        return task

    async def finish_task(self, task_id: UUID, error: str | None) -> TaskStatus:
        """Finishes a running task from outside its body (done, or failed with ``error``).

        A task with an abort pending fails with the abort error whatever ``error`` says.

        Raises:
            TaskNotFoundError: no such registered task here.
            InvalidStateError: the task is not running.
        """
        task = self._running(task_id, "finish")
        if error is None and task.abort_requested:
            error = ABORT_ERROR
        await self._finish(task, error)
        return await self._status(task)

    async def fail_task(self, task_id: UUID, error: str) -> bool:
        """Fails a created or running task (its producer is gone); False if it had finished."""
        task = self._tasks.get(task_id.int)
        if task is None or task.state.is_complete:
            return False
        await self._finish(task, error)
        return True

    async def fail_external_tasks(self, module_name: str, error: str) -> None:
        """Fails the module's unfinished externally driven tasks here."""
        module = self._module(module_name)
        for task in list(module.tasks.values()):
            if task.impl.external and not task.state.is_complete:
                await self._finish(task, error)

    async def _finish(self, task: Task, error: str | None) -> None:
        if task.state.is_complete:
            return
        task.end_time = self._clock.now()
        task.state = TaskState.DONE if error is None else TaskState.FAILED
        task.error = error or ""
        parent = task.parent
        if parent is not None and parent.kind is ParentKind.NODE:
            if task.internal and not task.live_children:
                folded = await self._folded(task)
                task.folded_into_parent = await self._peers[parent.shard].fold_child(
                    parent.id, task.id, folded
                )
                if not task.folded_into_parent:
                    log.warning("task %s could not fold into parent %s", task.id, parent.id)
            else:
                await self._peers[parent.shard].child_changed(parent.id)
        sync = task.sync
        if sync is not None and sync.done is not None and not sync.done.done():
            sync.done.set_result(None)
        task.impl.notify_finished(task.id)
        if (parent is not None and parent.kind is ParentKind.NODE) or task.internal:
            task.expire_at = task.end_time
            self._unregister(task)
        else:
            ttl = self._ttl.user_task_ttl if task.impl.user_task else self._ttl.task_ttl
            task.expire_at = task.end_time + ttl
            if ttl <= 0:
                self._unregister(task)
            else:
                self._schedule_expiry(ttl, task)
        self._bump(task)

    async def _folded(self, task: Task) -> FoldedTask:
        failed = tuple(f for f in task.folded_children or () if f.has_failure)
        status = await self._status(task)
        shown = failed if len(failed) <= self._max_children else failed[: self._max_children]
        status = status._replace(
            children=tuple(TaskIdentity(f.status.id, self._node) for f in shown),
            children_count=len(failed),
        )
        return FoldedTask(status, failed)

    async def fold_child(self, parent_id: UUID, child_id: UUID, folded: FoldedTask) -> bool:
        """Moves a finished child from the parent's live children to its folded ones."""
        parent = self._reachable(parent_id)
        if (
            parent is None
            or parent.live_children is None
            or parent.live_children.pop(child_id, None) is None
        ):
            return False
        if parent.folded_children is None:
            parent.folded_children = []
        parent.folded_children.append(folded)
        for key in _folded_keys(folded):
            _count(self._folded_refs, key, 1)
        await self._changed(parent)
        return True

    async def child_changed(self, parent_id: UUID) -> None:
        """Tells a parent that one of its children changed (state or progress)."""
        parent = self._reachable(parent_id)
        if parent is not None:
            await self._changed(parent)

    async def set_progress(self, task: Task, completed: float, total: float | None) -> None:
        """Records a task's own progress (used by its body or its producer)."""
        if total is None:
            total = _known_total(task) or 0.0
        else:
            task.reported_total = total
        task.reported = Progress(completed, total)
        await self._changed(task)

    async def report_progress(self, task_id: UUID, completed: float, total: float | None) -> bool:
        """Records the progress of a running task by id; returns whether an abort is pending.

        Raises:
            InvalidArgumentError: negative or non-finite values, or completed above the total.
            InvalidStateError: the task is not running.
        """
        task = self._running(task_id, "report progress of")
        check_progress(completed, total)
        effective_total = total if total is not None else _known_total(task)
        if effective_total is not None and completed > effective_total:
            raise InvalidArgumentError(
                "completed", f"{completed:g} is above the total {effective_total:g}"
            )
        await self.set_progress(task, completed, total)
        return task.abort_requested

    # ---- abort -------------------------------------------------------------------------------

    async def abort_task(self, task_id: UUID, *, check_abortable: bool) -> None:
        """Requests the abort of a task and, on every shard, of its descendants.

        Raises:
            TaskNotFoundError: no such registered task here.
            TaskNotAbortableError: ``check_abortable`` and the task is not abortable.
        """
        task = self._tasks.get(task_id.int) if check_abortable else self._reachable(task_id)
        if task is None:
            if check_abortable:
                raise TaskNotFoundError(task_id)
            return
        if check_abortable and not task.impl.abortable:
            raise TaskNotAbortableError(task_id)
        await self._abort(task)

    async def _abort(self, task: Task) -> None:
        if task.abort_requested:
            return  # a second abort is a no-op
        if not task.state.is_complete:
            task.abort_requested = True
            if task.sync is not None and task.sync.abort_event is not None:
                task.sync.abort_event.set()
            task.impl.notify_abort(task.id)
            await self._changed(task)
        # Descendants are aborted whatever their own abortable flag says.
        for child_id, child_shard in list((task.live_children or {}).items()):
            await self._peers[child_shard].abort_task(child_id, check_abortable=False)

    async def wait_abort(self, task: Task) -> None:
        """Returns once an abort is requested for ``task``."""
        if task.abort_requested:
            return
        sync = task.get_sync()
        if sync.abort_event is None:
            sync.abort_event = asyncio.Event()
        await sync.abort_event.wait()

    # ---- unregistering and expiry ------------------------------------------------------------

    def _unregister(self, task: Task) -> None:
        key = task.id.int
        if self._tasks.pop(key, None) is None:
            return
        module = self._modules.get(task.module)
        if module is not None:
            module.tasks.pop(key, None)
        parent = task.parent
        if parent is not None and parent.kind is ParentKind.VIRTUAL:
            siblings = self._virtual_children.get(parent.id.int)
            if siblings is not None:
                siblings.pop(task.id, None)
                if not siblings:
                    del self._virtual_children[parent.id.int]
        held_by_parent = (
            parent is not None
            and parent.kind is ParentKind.NODE
            and not task.folded_into_parent
            and not task.orphaned
        )
        if held_by_parent:
            self._held[key] = task
        else:
            self._drop(task)

    def _drop(self, task: Task) -> None:
        # Children the dropped task still pointed at are released with it.
        for child_id, child_shard in (task.live_children or {}).items():
            self._spawn(self._peers[child_shard].release(child_id))
        if task.parent is not None:
            _count(self._parent_refs, task.parent.id.int, -1)
        for folded in task.folded_children or ():
            for key in _folded_keys(folded):
                _count(self._folded_refs, key, -1)

    async def release(self, task_id: UUID) -> None:
        """Forgets a held task whose parent went away (or marks a live one orphaned)."""
        task = self._held.pop(task_id.int, None)
        if task is not None:
            self._drop(task)
            return
        live = self._tasks.get(task_id.int)
        if live is not None:
            live.orphaned = True

    async def unregister_task(self, task_id: UUID) -> None:
        """Unregisters a task now, whatever its TTL."""
        task = self._tasks.get(task_id.int)
        if task is not None:
            self._unregister(task)

    def _schedule_expiry(self, ttl: float, task: Task) -> None:
        assert task.expire_at is not None
        queue = self._expiry.get(ttl)
        if queue is None:
            queue = self._expiry[ttl] = deque()
        queue.append(task.id.int)
        self._arm_expiry(task.expire_at)

    def _arm_expiry(self, when: float) -> None:
        if self._expiry_timer_at is None or when < self._expiry_timer_at:
            if self._expiry_timer is not None:
                self._expiry_timer.cancel()
            self._expiry_timer_at = when
            self._expiry_timer = self._clock.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        self._expiry_timer = None
        self._expiry_timer_at = None
        now = self._clock.now()
        earliest: float | None = None
        for ttl, queue in list(self._expiry.items()):
            while queue:
                task = self._tasks.get(queue[0])
                if task is None or task.expire_at is None:
                    queue.popleft()  # unregistered already (drain, module stop)
                    continue
                if task.expire_at > now:
                    if earliest is None or task.expire_at < earliest:
                        earliest = task.expire_at
                    break
                queue.popleft()
                self._unregister(task)
            if not queue:
                del self._expiry[ttl]
        if earliest is not None:
            self._arm_expiry(earliest)

    async def drain(self, module_name: str) -> int:
        """Unregisters the module's finished regular tasks here; returns how many."""
        module = self._module(module_name)
        finished = [t for t in module.tasks.values() if t.state.is_complete]
        for task in finished:
            self._unregister(task)
        return len(finished)

    # ---- reading -----------------------------------------------------------------------------

    async def _progress(self, task: Task) -> Progress:
        if not task.live_children and not task.folded_children:
            return _leaf_progress(task)
        return await self._rolled_up_progress(task)

    async def _rolled_up_progress(self, task: Task) -> Progress:
        # A task with children: the sum of theirs (cached per version of the
        # task), with the task's own expected total while it runs.
        cached = task.children_progress
        if cached is not None and cached[0] == task.version:
            total = cached[1]
        else:
            version = task.version
            total = NO_PROGRESS
            for folded in task.folded_children or ():
                total = total + folded.status.progress
            for child_id, child_shard in list((task.live_children or {}).items()):
                total = total + await self._peers[child_shard].get_progress(child_id)
            if task.version == version:
                task.children_progress = (version, total)
        if task.state.is_complete:
            return total
        expected = _known_total(task)
        if expected is not None:
            total = Progress(total.completed, expected)
        return total

    async def get_progress(self, task_id: UUID) -> Progress:
        """Returns a reachable task's progress, or zero if it is gone."""
        task = self._reachable(task_id)
        return NO_PROGRESS if task is None else await self._progress(task)

    async def _status(self, task: Task) -> TaskStatus:
        # Every status read comes through here: a leaf (most tasks) costs no
        # further coroutine for its progress.
        children: tuple[TaskIdentity, ...] = ()
        count = 0
        if not task.live_children and not task.folded_children:
            progress = _leaf_progress(task)
        else:
            progress = await self._rolled_up_progress(task)
            children, count = self._children(task)
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
            shard=self.index,
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
            children_count=count,
        )

    def _children(self, task: Task) -> tuple[tuple[TaskIdentity, ...], int]:
        # Live children in creation order, then folded ones in finishing order,
        # the first max_status_children only: a root with 95,000 children
        # must not make a status no client can receive (children_page lists all).
        node, cap = self._node, self._max_children
        live = task.live_children or {}
        folded = task.folded_children or ()
        count = len(live) + len(folded)
        ids: Iterable[UUID] = itertools.chain(live, (f.status.id for f in folded))
        if count > cap:
            ids = itertools.islice(ids, cap)
        return tuple(TaskIdentity(cid, node) for cid in ids), count

    async def children_page(
        self, task_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[TaskIdentity], int] | None:
        """A page of a reachable task's children by id, after ``after``, and how many it has.

        ``None`` when no such task is registered here. Paging goes by id, as
        children move from live to folded while a client pages.
        """
        task = self._tasks.get(task_id.int)
        if task is None:
            return None
        live = task.live_children or {}
        folded = task.folded_children or ()
        floor = -1 if after is None else after.int
        keys = itertools.chain((cid.int for cid in live), (f.status.id.int for f in folded))
        page = heapq.nsmallest(limit, (k for k in keys if k > floor))
        return [TaskIdentity(UUID(int=k), self._node) for k in page], len(live) + len(folded)

    async def status_of(self, task: Task) -> TaskStatus:
        """Returns the status of a task object held by its creator, registered or not."""
        return await self._status(task)

    async def wait_done(self, task: Task) -> TaskStatus:
        """Waits until a task object held by its creator finishes; returns its final status."""
        await self._done_future(task)
        return await self._status(task)

    async def get_status(self, task_id: UUID) -> TaskStatus:
        """Returns a registered task's status (no side effects).

        Raises:
            TaskNotFoundError: no task with this id is registered here.
        """
        return await self._status(self._registered(task_id))

    async def find_status(self, task_id: UUID) -> TaskStatus | None:
        """Returns a registered task's status, or ``None`` when it is not here.

        One call where ``contains`` then ``get_status`` would be two: the
        manager asks every shard this for every status read.
        """
        task = self._tasks.get(task_id.int)
        return None if task is None else await self._status(task)

    async def get_tree_node(self, task_id: UUID) -> TreeNode | None:
        """Returns a reachable task's status and children, as recursive status walks them."""
        task = self._reachable(task_id)
        if task is None:
            return None
        return TreeNode(
            await self._status(task),
            tuple((task.live_children or {}).items()),
            tuple(task.folded_children or ()),
        )

    async def virtual_children_of(self, parent_id: UUID) -> list[UUID]:
        """Ids of the registered tasks here whose parent is the virtual task ``parent_id``."""
        return list(self._virtual_children.get(parent_id.int, ()))

    async def list_tasks(
        self, module_name: str, flt: ListFilter, after: UUID | None, limit: int
    ) -> list[TaskStats]:
        """Up to ``limit`` matching tasks of the module, by id, after ``after``."""
        module = self._module(module_name)
        keys = module.tasks.irange(
            minimum=None if after is None else after.int, inclusive=(False, False)
        )
        out: list[TaskStats] = []
        for key in keys:
            task = module.tasks[key]
            if task.matches(flt):
                out.append(task.stats(self.index))
                if len(out) >= limit:
                    break
        return out

    async def is_external(self, task_id: UUID) -> bool:
        """Whether a registered task here is driven from outside (by a producer)."""
        return self._registered(task_id).impl.external

    async def invoke(self, task_id: UUID, fn: Callable[[Task], Awaitable[T]]) -> T:
        """Runs ``fn`` on a registered task here (ScyllaDB's ``invoke_on_task``)."""
        return await fn(self._registered(task_id))

    # ---- waiting and watching ----------------------------------------------------------------

    def _bump(self, task: Task) -> None:
        task.version += 1
        sync = task.sync
        if sync is None or not sync.waiters:
            return
        waiters, sync.waiters = sync.waiters, None
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _changed(self, task: Task) -> None:
        self._bump(task)
        parent = task.parent
        if parent is not None and parent.kind is ParentKind.NODE:
            await self._peers[parent.shard].child_changed(parent.id)

    def _done_future(self, task: Task) -> asyncio.Future[None]:
        sync = task.get_sync()
        if sync.done is None:
            sync.done = asyncio.get_running_loop().create_future()
            if task.state.is_complete:
                sync.done.set_result(None)
        return sync.done

    async def watch(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        """Yields the task's status now and after every change, until it has finished.

        The watch holds the task, so it ends with the final status even if the
        task is unregistered meanwhile. Updates that come faster than the
        consumer reads are coalesced into the latest status. Watchers woken for
        the same version share one status object.

        Raises:
            TaskNotFoundError: no such registered task.
            ShuttingDownError: the server is stopping (at once, or while waiting).
        """
        if self._stopping:
            raise ShuttingDownError()
        task = self._registered(task_id)
        sync = task.get_sync()
        last: TaskStatus | None = None
        while True:
            version = task.version
            cached = sync.status
            if cached is not None and cached[0] == version:
                status = cached[1]
            else:
                status = await self._status(task)
                if task.version == version:
                    sync.status = (version, status)
            if status is not last and status != last:
                yield status
                last = status
            # Ends on what was sent, not on the task's state now: while a slow
            # reader held the last status, the task may have moved on and
            # finished, and that final status is still owed (the loop sends it).
            if last is not None and last.state.is_complete:
                return
            if task.version == version:
                # Checked again here, not only on entry: shutdown may have come
                # while this watch's last status was being written, and a watch
                # parked after it would be left for the server to cancel.
                if self._stopping:
                    raise ShuttingDownError()
                fut = asyncio.get_running_loop().create_future()
                if sync.waiters is None:
                    sync.waiters = set()
                sync.waiters.add(fut)
                self._parked.add(fut)
                try:
                    await fut
                finally:
                    self._parked.discard(fut)
                    if sync.waiters is not None:
                        sync.waiters.discard(fut)

    def stop_watches(self) -> None:
        """Ends every watch on this shard with ``ShuttingDownError`` (server shutdown)."""
        self._stopping = True
        for fut in list(self._parked):
            if not fut.done():
                fut.set_exception(ShuttingDownError())

    def watcher_count(self) -> int:
        """How many watch futures are parked on this shard's tasks (for leak checks)."""
        return len(self._parked)

    # ---- background work ---------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def runner() -> None:
            await coro

        bg = asyncio.get_running_loop().create_task(runner())
        self._background.add(bg)
        bg.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancels the bodies still running and the expiry timer."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        runners = [t.runner for t in self._tasks.values() if t.runner is not None]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def stats_counts(self) -> dict[str, int]:
        """Counts of registered and held tasks (for tests and diagnostics)."""
        return {"registered": len(self._tasks), "held": len(self._held)}
