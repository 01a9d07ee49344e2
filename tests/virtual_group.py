"""An in-memory virtual task group, as a cluster-wide service would implement one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

from tm_server.core import (
    Progress,
    TaskKind,
    TaskManager,
    TaskState,
    TaskStats,
    TaskStatus,
    VirtualTaskGroup,
    VirtualTaskHint,
)
from tm_server.core.types import AbortRequest


@dataclass
class Operation:
    """One cluster-wide operation the group tracks."""

    type: str
    keyspace: str = ""
    table: str = ""
    state: TaskState = TaskState.RUNNING
    abortable: bool = False
    error: str = ""
    start_time: float | None = 1.0
    end_time: float | None = None
    tracked: bool = True
    aborted: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class InMemoryGroup(VirtualTaskGroup):
    """Operations kept in a dict; children are gathered from the manager on demand."""

    def __init__(self, manager: TaskManager, module: str, name: str = "memory_group") -> None:
        self._manager = manager
        self._module = module
        self._name = name
        self.ops: dict[UUID, Operation] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def module(self) -> str:
        return self._module

    async def contains(self, task_id: UUID) -> VirtualTaskHint | None:
        op = self.ops.get(task_id)
        return None if op is None else op.type

    async def is_abortable(self, task_id: UUID, hint: VirtualTaskHint) -> bool:
        return self.ops[task_id].abortable

    async def _status(self, task_id: UUID) -> TaskStatus | None:
        op = self.ops.get(task_id)
        if op is None or not op.tracked:
            return None
        return TaskStatus(
            id=task_id,
            type=op.type,
            kind=TaskKind.NODE,  # the manager corrects it to CLUSTER
            scope="cluster",
            state=op.state,
            is_abortable=op.abortable,
            creation_time=None,
            start_time=op.start_time,
            end_time=op.end_time,
            error=op.error,
            parent_id=None,
            sequence_number=99,  # the manager corrects it to 0
            shard=5,  # the manager corrects it to 0
            keyspace=op.keyspace,
            table=op.table,
            entity="",
            progress_units="",
            progress=Progress(),
            children=tuple(await self._manager.get_children(task_id)),
        )

    async def get_status(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        return await self._status(task_id)

    async def wait(self, task_id: UUID, hint: VirtualTaskHint) -> TaskStatus | None:
        op = self.ops.get(task_id)
        if op is None:
            return None
        await op.finished.wait()
        return await self._status(task_id)

    async def abort(
        self, task_id: UUID, hint: VirtualTaskHint, request: AbortRequest | None = None
    ) -> None:
        op = self.ops[task_id]
        op.aborted = True
        self.finish(task_id, TaskState.FAILED, "aborted by user")

    def finish(self, task_id: UUID, state: TaskState, error: str = "") -> None:
        op = self.ops[task_id]
        op.state = state
        op.error = error
        op.end_time = 2.0
        op.finished.set()

    async def get_stats(self) -> list[TaskStats]:
        return [
            TaskStats(
                task_id=task_id,
                state=op.state,
                type=op.type,
                kind=TaskKind.CLUSTER,
                scope="cluster",
                keyspace=op.keyspace,
                table=op.table,
                entity="",
                sequence_number=0,
                shard=0,
                creation_time=None,
                start_time=op.start_time,
                end_time=op.end_time,
            )
            for task_id, op in self.ops.items()
        ]
