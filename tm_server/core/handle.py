"""The in-process handle on a task, for the code that created it (embedding, task bodies)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING
from uuid import UUID

from .errors import TaskNotFoundError
from .port import ShardPort
from .types import TaskStatus

if TYPE_CHECKING:
    from .manager import TaskManager


class TaskHandle:
    """A created task, for the code that created it.

    Like the task pointer a ScyllaDB creator holds, a handle keeps its task
    reachable: ``status`` and ``wait`` work even after the task was
    unregistered (an internal child is, as soon as it finishes). It goes by id
    through the task's shard port; the shard keeps the task for it until the
    last handle is garbage collected.
    """

    __slots__ = ("__weakref__", "_port", "id", "manager", "shard")

    def __init__(self, manager: TaskManager, task_id: UUID, port: ShardPort) -> None:
        self.manager = manager
        self.id = task_id
        self.shard = port.index
        self._port = port
        weakref.finalize(self, port.release_handle, task_id)

    def __repr__(self) -> str:
        return f"TaskHandle({self.id}, shard={self.shard})"

    async def start(self) -> None:
        """Starts the task; its body runs in the background."""
        await self._port.start_task(self.id)

    async def status(self) -> TaskStatus:
        """Returns the task's status."""
        status = await self._port.handle_status(self.id)
        if status is None:
            raise TaskNotFoundError(self.id)
        return status

    async def wait(self) -> TaskStatus:
        """Waits until the task finishes and returns its final status."""
        status = await self._port.wait_done(self.id)
        if status is None:
            raise TaskNotFoundError(self.id)
        return status

    async def abort(self) -> None:
        """Requests the abort of the task and its descendants, as the API does."""
        await self.manager.abort_task(self.id)

    async def abort_requested(self) -> bool:
        """Whether an abort was requested (a child created under an aborting parent is)."""
        return await self._port.abort_requested(self.id)
