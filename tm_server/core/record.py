"""The task record a shard keeps, its asyncio objects, and a module's instance on a shard.

Only the owner shard touches these: they never cross the shard port.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from sortedcontainers import SortedDict

from .port import ParentKind, ParentLink
from .task import TaskImpl
from .types import (
    FoldedTask,
    Progress,
    TaskState,
    TaskStatus,
)


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


_new_object = object.__new__


class Task:
    """A regular task's state on its owner shard.

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

    @classmethod
    def restored_root(
        cls,
        task_id: UUID,
        module: str,
        impl: TaskImpl,
        sequence_number: int,
        state: TaskState,
        times: tuple[float | None, float | None, float | None],
    ) -> Task:
        """A root as recovery rebuilds it: no parent, nothing optional, its state and times.

        Every slot set straight, without ``__init__``'s call and the second
        stores of what it defaults: a million come back before the node
        serves. (``test_recovery`` checks that every slot is set.)
        """
        task: Task = _new_object(cls)
        task.id = task_id
        task.module = module
        task.impl = impl
        task.parent = None
        task.sequence_number = sequence_number
        task.keyspace = task.table = task.entity = task.error = ""
        task.internal = False if impl.internal is None else impl.internal
        task.state = state
        task.start_time, task.end_time, task.expire_at = times
        task.abort_requested = task.folded_into_parent = task.orphaned = False
        task.live_children = task.folded_children = task.reported = task.reported_total = None
        task.sync = task.children_progress = None
        task.version = 0
        return task

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

    @property
    def regular_parent(self) -> ParentLink | None:
        """The parent, if it is a regular task (the one changes and folding go up to)."""
        parent = self.parent
        return parent if parent is not None and parent.kind is ParentKind.NODE else None

    @property
    def has_children(self) -> bool:
        """Whether any child is live or folded into this task."""
        return bool(self.live_children) or bool(self.folded_children)

    @property
    def rolled_up_is_stale(self) -> bool:
        """Whether the cached sum of the children's progress is missing or out of date."""
        cached = self.children_progress
        return cached is None or cached[0] != self.version

    @property
    def watched(self) -> bool:
        """Whether watches are parked on the task."""
        return self.sync is not None and bool(self.sync.waiters)
