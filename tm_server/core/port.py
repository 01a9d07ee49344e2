"""The shard port: the one interface through which anything reaches a shard.

The manager, the producer API, task handles and the shards themselves (for a
parent or child on another shard) call a shard only through ``ShardPort``: ids,
names, numbers and the frozen records below go in and out, never a shard's
task objects, and a shard holds no reference to the manager, only to its
peers' ports. Every walk over a tree is a loop in the caller of one port call
per task (``child_changed`` returns where to go next, ``abort`` and ``release``
return the children to visit), so no walk nests calls and a tree may be as
deep as memory allows.

What another process (or another tm node) would take to stand behind the
port: a client class with these methods that serialises the arguments and
results (all plain data: UUIDs, strings, numbers, enums, named tuples and
frozen dataclasses of those) and a server loop calling a ``Shard``; ``watch``
becomes a stream; ``release_handle`` a one-way message. Two things stay
in-process today and would need more: ``create_task`` takes a ``TaskImpl``
object (a remote shard could only run reported tasks, whose impl is plain
data, or impls it can import by name), and the task bodies and their
``TaskContext`` run inside the shard, so they would live in its process.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from .feed import ChangeKind
from .types import (
    AbortRequest,
    FoldedTask,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskOwner,
    TaskState,
    TaskStats,
    TaskStatus,
)

if TYPE_CHECKING:
    from .handle import TaskHandle
    from .task import TaskImpl


class ParentKind(enum.Enum):
    """What a task's parent is: none, a regular task or a virtual task."""

    NONE = "none"
    NODE = "node"
    VIRTUAL = "virtual"


@dataclass(frozen=True, slots=True)
class ParentLink:
    """Where a task's parent is: its id, its kind and its shard (0 for a virtual parent)."""

    id: UUID
    kind: ParentKind
    shard: int


#: A child as its parent keeps it: its id and the shard that holds it.
ChildRef = tuple[UUID, int]


@dataclass(frozen=True, slots=True)
class AttachResult:
    """What the parent tells a child being attached to it.

    ``sequence_number`` is ``None`` when the child takes a fresh one (its
    parent is virtual).
    """

    sequence_number: int | None
    abort_pending: bool


@dataclass(frozen=True, slots=True)
class TreeNode:
    """A task's status with its children split as recursive status walks them."""

    status: TaskStatus
    live_children: tuple[ChildRef, ...]
    folded_children: tuple[FoldedTask, ...]


@dataclass(frozen=True, slots=True)
class ProgressStep:
    """One step of a progress roll-up: the progress, or what summing it needs.

    ``progress`` is set when the shard could answer at once (a leaf, a cached
    sum, a task gone). Otherwise the caller sums ``folded`` and the progress of
    each of ``children``, then hands the sum back with ``version`` to
    ``ShardPort.progress_done``.
    """

    progress: Progress | None
    version: int = 0
    folded: Progress | None = None
    children: tuple[ChildRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a wait times out (epoch seconds on the injected clock), and its timeout."""

    at: float
    timeout: float


@dataclass(frozen=True, slots=True)
class NewTask:
    """Everything a shard needs to create a task, but its implementation."""

    module: str
    task_id: UUID
    parent: ParentLink | None
    inherited: AttachResult | None
    keyspace: str = ""
    table: str = ""
    entity: str = ""
    progress_total: float | None = None


@dataclass(frozen=True, slots=True)
class WatchChange:
    """One task's changes since a watch's cursor, coalesced (see ``feed.Change``).

    ``entry`` is the task's list entry now (for a removed one, as it left).
    """

    kind: ChangeKind
    before: TaskState | None
    entry: TaskStats
    seq: int


@dataclass(frozen=True, slots=True)
class ShardChanges:
    """A shard's changes after a cursor, up to ``head`` (its last change)."""

    head: int
    changes: tuple[WatchChange, ...]


class ShardHost(Protocol):
    """What a shard needs from outside.

    Creating its bodies' children, and telling a virtual parent one of its
    children here changed.
    """

    def virtual_child_changed(self, parent_id: UUID) -> None:
        """A task here whose parent is the virtual task ``parent_id`` changed."""

    def virtual_child_finished(self, parent_id: UUID, status: TaskStatus) -> None:
        """A task here whose parent is the virtual task ``parent_id`` finished (final status)."""

    async def create_task(
        self,
        module: str,
        impl: TaskImpl,
        *,
        shard: int = 0,
        parent_id: UUID | None = None,
        task_id: UUID | None = None,
        keyspace: str = "",
        table: str = "",
        entity: str = "",
        progress_total: float | None = None,
    ) -> TaskHandle:
        """Creates a task (see ``TaskManager.create_task``)."""


class ShardPort(Protocol):
    """One shard, as its callers see it. Every method takes and returns plain data.

    Lookups by id see registered tasks only, unless they say otherwise:
    "reachable" tasks also include finished ones a live parent still holds,
    and "handled" ones those an in-process ``TaskHandle`` still refers to.
    """

    index: int

    def connect(self, peers: Sequence[ShardPort]) -> None:
        """Gives the shard the ports of every shard (itself included), by index."""

    # ---- modules and settings ----------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers the module here; returns False if it already was."""

    async def list_modules(self) -> list[str]:
        """The module names registered here."""

    async def has_module(self, name: str) -> bool:
        """Whether the module is registered here."""

    async def abort_module(self, name: str) -> list[ChildRef]:
        """Aborts the module's roots and children of virtual parents; returns their children."""

    async def fail_external_tasks(self, module: str, error: str) -> None:
        """Fails the module's unfinished reported tasks here."""

    async def wait_module_idle(self, name: str) -> None:
        """Waits until every task of the module here has finished."""

    async def remove_module(self, name: str) -> None:
        """Unregisters the module's tasks here and the module."""

    async def set_ttl(self, task_ttl: int | None = None, user_task_ttl: int | None = None) -> None:
        """Sets the TTLs read by tasks that finish from now on."""

    # ---- creating and running tasks ----------------------------------------------------------

    async def contains(self, task_id: UUID) -> bool:
        """Whether a task with this id is registered here."""

    async def id_in_use(self, task_id: UUID) -> bool:
        """Whether a tree here still names this id (a task, a parent, a folded child)."""

    async def attach_child(self, parent_id: UUID, child_id: UUID, child_shard: int) -> AttachResult:
        """Adds a child to a registered parent here; returns what the child inherits."""

    async def detach_child(self, parent_id: UUID, child_id: UUID) -> None:
        """Undoes ``attach_child`` when the child could not be created."""

    async def create_task(self, spec: NewTask, impl: TaskImpl, *, handle: bool) -> None:
        """Registers a task here, in state ``created`` (held for a handle if ``handle``)."""

    async def start_task(self, task_id: UUID, *, reported: bool = False) -> None:
        """Starts a created task; a body of the server's own runs in the background.

        ``reported``: refuse a task whose body the server runs (for producers).
        """

    async def report_progress(
        self, task_id: UUID, completed: float, total: float | None, *, reported: bool = False
    ) -> bool:
        """Records a running task's progress; returns whether an abort is pending."""

    async def finish_task(
        self, task_id: UUID, error: str | None, *, reported: bool = False
    ) -> TaskStatus:
        """Finishes a running task from outside its body; returns its final status."""

    async def fail_task(self, task_id: UUID, error: str) -> bool:
        """Fails an unfinished task (its producer is gone); False if it had finished."""

    async def unregister_task(self, task_id: UUID) -> None:
        """Unregisters a task now, whatever its TTL."""

    async def drain(self, module: str) -> int:
        """Unregisters the module's finished tasks here; returns how many."""

    # ---- walking trees (one call a task; the caller loops) -----------------------------------

    async def child_changed(self, parent_id: UUID) -> ParentLink | None:
        """Tells a parent one of its children changed; returns whom to tell next.

        That is the parent's own parent, or ``None`` where the change need go no higher.
        """

    async def fold_child(
        self, parent_id: UUID, child_id: UUID, folded: FoldedTask
    ) -> tuple[bool, ParentLink | None]:
        """Moves a finished child to the parent's folded children.

        Returns whether it could, and whom to tell of the change next (as ``child_changed``).
        """

    async def abort(
        self, task_id: UUID, *, check_abortable: bool, request: AbortRequest | None = None
    ) -> list[ChildRef]:
        """Requests the abort of a task; returns its live children, to abort next."""

    async def release(self, task_id: UUID) -> list[ChildRef]:
        """Forgets a held task whose parent went away; returns its children, to release next."""

    async def forget_folded(self, keys: list[int]) -> None:
        """The last records naming these folded tasks of this shard were forgotten (by id int)."""

    async def progress_step(self, task_id: UUID) -> ProgressStep:
        """The first step of a reachable task's progress (see ``ProgressStep``)."""

    async def progress_done(self, task_id: UUID, version: int, children_sum: Progress) -> Progress:
        """Completes a roll-up: caches the children's sum and returns the task's progress."""

    # ---- reading -----------------------------------------------------------------------------

    async def find_status(self, task_id: UUID) -> TaskStatus | None:
        """A registered task's status, or ``None`` when it is not here."""

    async def owner_of(self, task_id: UUID) -> TaskOwner | None:
        """A registered task's module and owner, or ``None`` when it is not here."""

    async def handle_status(self, task_id: UUID) -> TaskStatus | None:
        """The status of a task registered, held or handled here, or ``None``."""

    async def wait_done(self, task_id: UUID) -> TaskStatus | None:
        """Waits until a task registered, held or handled here finishes; its final status."""

    def release_handle(self, task_id: UUID) -> None:
        """The last handle of a task went away (not async: a finalizer calls it)."""

    async def abort_requested(self, task_id: UUID) -> bool:
        """Whether an abort was requested for a task registered, held or handled here."""

    async def get_tree_node(self, task_id: UUID) -> TreeNode | None:
        """A reachable task's status and children, as recursive status walks them."""

    async def virtual_parents(self) -> list[UUID]:
        """The virtual tasks that tasks here have as their parent."""

    async def virtual_children_of(self, parent_id: UUID) -> list[UUID]:
        """Ids of the tasks here whose parent is the virtual task ``parent_id``."""

    async def children_page(
        self, task_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[TaskIdentity], int] | None:
        """A page of a registered task's children by id, and how many it has."""

    async def list_tasks(
        self, module: str, flt: ListFilter, after: UUID | None, limit: int
    ) -> list[TaskStats]:
        """Up to ``limit`` matching tasks of the module here, by id, after ``after``."""

    def watch(self, task_id: UUID, deadline: Deadline | None) -> AsyncGenerator[TaskStatus, None]:
        """The task's status now and after every change, until a final one (see ``Watches``)."""

    # ---- module watches (see ``feed``) -------------------------------------------------------

    async def change_head(self) -> int:
        """The number of the shard's last change (0 before any)."""

    async def changes(self, module: str | None, after: int) -> ShardChanges:
        """The changes after ``after`` of the module's tasks (any module's for ``None``).

        Raises:
            CursorExpiredError: some of them left the shard's window.
        """

    def change_waiter(self, after: int) -> asyncio.Future[None]:
        """A future done once the shard has a change after ``after`` (or the watches stop).

        Shared by every watch waiting for the same change, and never cancelled
        by one (a watch that stops waiting only drops its callback); a shard in
        another process would set it from its stream of change numbers.
        """

    async def state_counts(self) -> dict[tuple[str, TaskState], int]:
        """Registered tasks here by module and state."""

    # ---- lifetime ----------------------------------------------------------------------------

    def stop_watches(self) -> None:
        """Ends every watch here with ``ShuttingDownError``."""

    def watcher_count(self) -> int:
        """How many watches are parked here."""

    def stats_counts(self) -> dict[str, int]:
        """Counts of registered and held tasks."""

    async def close(self) -> None:
        """Cancels the bodies still running and the timers."""
