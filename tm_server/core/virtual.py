"""The virtual (cluster-wide) task group contract, registered on shard 0 only."""

from __future__ import annotations

import abc
from uuid import UUID

from .types import TaskStats, TaskStatus

#: What ``contains`` hands back for an id of the group: data reused by the
#: later calls (ScyllaDB's ``virtual_task_hint``); any value but ``None``.
VirtualTaskHint = object


class VirtualTaskGroup(abc.ABC):
    """One group of cluster-wide operations, each seen as a virtual task.

    Statuses are computed on demand. The manager fixes the fields every
    virtual task shares (kind ``cluster``, shard 0, sequence number 0, the
    group's module), so an implementation need not.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The group's name, the key it is registered under (one object per group)."""

    @property
    @abc.abstractmethod
    def module(self) -> str:
        """The module whose listings show the group's tasks."""

    @abc.abstractmethod
    async def contains(self, task_id: UUID) -> VirtualTaskHint | None:
        """Returns a hint if ``task_id`` is an operation of this group, else ``None``."""

    async def is_abortable(self, task_id: UUID, hint: VirtualTaskHint) -> bool:
        """Whether the operation may be aborted; by default it may not."""
        return False

    @abc.abstractmethod
    async def get_status(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        """Returns the operation's status, or ``None`` if it is no longer tracked."""

    @abc.abstractmethod
    async def wait(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        """Blocks until the operation ends; returns its final status or ``None``."""

    async def abort(self, task_id: UUID, hint: VirtualTaskHint) -> None:
        """Aborts the operation; never raises. By default does nothing."""
        return None

    @abc.abstractmethod
    async def get_stats(self) -> list[TaskStats]:
        """Returns the list entries of the group's operations."""
