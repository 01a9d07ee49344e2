"""The in-process task API: a task's behaviour (``TaskImpl``) and what its body sees."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from uuid import UUID

from .errors import TaskAbortedError
from .validation import check_progress

if TYPE_CHECKING:
    from .handle import TaskHandle
    from .record import Task
    from .shard import Shard


class TaskImpl(abc.ABC):
    """What a task does and how it presents itself; subclass it and override ``run``.

    As in ScyllaDB, a task is an object with a ``run`` coroutine. The class
    attributes describe it; an instance may override them.
    """

    #: What operation the task covers, e.g. "repair".
    type: str = ""
    #: Which part of the operation the task covers, e.g. "table".
    scope: str = ""
    #: The unit of progress, e.g. "ranges". Children use the parent's unit.
    progress_units: str = ""
    #: Whether an abort through the API is allowed.
    abortable: bool = False
    #: Whether the task is kept for user_task_ttl (else task_ttl) once finished.
    user_task: bool = False
    #: ``None`` applies ScyllaDB's rule: internal exactly when the parent is a regular task.
    internal: bool | None = None
    #: The principal that created the task ("" for a task the server runs, or
    #: without access checks); only it (or an operator) may drive a reported task.
    owner: str = ""
    #: True for a task driven from outside (a producer): ``run`` is never
    #: called; the task is started, advanced and finished through the shard.
    external: ClassVar[bool] = False

    def notify_abort(self, task_id: UUID) -> None:
        """Called on the owner shard when an abort is requested for the task (no-op here)."""
        return None

    def notify_finished(self, task_id: UUID) -> None:
        """Called on the owner shard once the task has finished (no-op here)."""
        return None

    def expected_total_workload(self) -> float | None:
        """Returns the expected total of progress units, or ``None`` when unknown."""
        return None

    @abc.abstractmethod
    async def run(self, ctx: TaskContext) -> None:
        """Does the work. Returning finishes the task, raising fails it.

        The body should notice aborts (``ctx.abort_requested``, ``ctx.check_abort``,
        ``await ctx.aborted()``): an abort never interrupts it, but a body that
        returns after an abort request still ends ``failed``.
        """


@dataclass(frozen=True, slots=True)
class TaskShape:
    """What an implementation presents in its tasks' statuses, as plain data.

    Implementations that are data, not code (a producer's reported tasks, a
    recovered task), are made from one; one object serves every task of a
    shape.
    """

    type: str
    scope: str
    progress_units: str
    abortable: bool
    user_task: bool
    internal: bool | None
    owner: str = ""

    def apply(self, impl: TaskImpl) -> None:
        """Gives ``impl`` this shape's attributes."""
        impl.type = self.type
        impl.scope = self.scope
        impl.progress_units = self.progress_units
        impl.abortable = self.abortable
        impl.user_task = self.user_task
        impl.internal = self.internal
        impl.owner = self.owner


class TaskContext:
    """The running task as its body sees it: abort state, progress, children."""

    __slots__ = ("_shard", "_task")

    def __init__(self, shard: Shard, task: Task) -> None:
        self._shard = shard
        self._task = task

    @property
    def task_id(self) -> UUID:
        """The task's id."""
        return self._task.id

    @property
    def shard(self) -> int:
        """The shard that holds the task."""
        return self._shard.index

    @property
    def abort_requested(self) -> bool:
        """Whether an abort was requested for this task."""
        return self._task.abort_requested

    def check_abort(self) -> None:
        """Raises ``TaskAbortedError`` if an abort was requested."""
        if self._task.abort_requested:
            raise TaskAbortedError()

    async def aborted(self) -> None:
        """Returns once an abort is requested for this task."""
        await self._shard.wait_abort(self._task)

    async def report_progress(self, completed: float, total: float | None = None) -> None:
        """Sets this task's own progress; watchers of it and its ancestors are woken.

        Raises:
            InvalidArgumentError: a value is negative, not finite or above ``MAX_PROGRESS``.
        """
        check_progress(completed, total)
        await self._shard.set_progress(self._task, completed, total)

    async def create_child(
        self,
        impl: TaskImpl,
        *,
        shard: int | None = None,
        keyspace: str = "",
        table: str = "",
        entity: str = "",
        task_id: UUID | None = None,
        start: bool = True,
    ) -> TaskHandle:
        """Creates (and by default starts) a child task of this one in the same module."""
        handle = await self._shard.host.create_task(
            self._task.module,
            impl,
            shard=self._shard.index if shard is None else shard,
            parent_id=self._task.id,
            keyspace=keyspace,
            table=table,
            entity=entity,
            task_id=task_id,
        )
        if start:
            await handle.start()
        return handle
