"""The "test" module: tasks that run until told to finish, driven by the test service."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from .errors import InvalidStateError, TaskAbortedError, TaskFailedError
from .manager import TaskManager
from .shard import Task
from .task import TaskContext, TaskImpl

TEST_MODULE = "test"


class TestTaskImpl(TaskImpl):
    """A test task: type and scope "test", not abortable, internal iff its parent is regular.

    It runs until ``finish`` is called; an abort (from a parent or a module
    stop) ends it failed, since its body notices aborts.
    """

    __test__ = False  # not a pytest test class
    type = "test"
    scope = "test"

    def __init__(self, *, user_task: bool = False) -> None:
        self.user_task = user_task
        self._outcome: asyncio.Future[str | None] | None = None

    def _future(self) -> asyncio.Future[str | None]:
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
        return self._outcome

    def finish(self, error: str | None) -> None:
        """Makes the body return (``error`` None) or fail with ``error``."""
        fut = self._future()
        if not fut.done():
            fut.set_result(error)

    async def run(self, ctx: TaskContext) -> None:
        """Waits for ``finish`` or an abort."""
        outcome = self._future()
        aborted: asyncio.Future[None] = asyncio.ensure_future(ctx.aborted())
        try:
            pending: list[asyncio.Future[Any]] = [outcome, aborted]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
        if outcome.done():
            error = outcome.result()
            if error is not None:
                raise TaskFailedError(error)
            return
        raise TaskAbortedError()


async def register_test_module(manager: TaskManager) -> None:
    """Registers module "test" on every shard."""
    await manager.register_module(TEST_MODULE)


async def unregister_test_module(manager: TaskManager) -> None:
    """Stops module "test": aborts its tasks, waits for them and unregisters everything."""
    await manager.unregister_module(TEST_MODULE)


async def create_test_task(
    manager: TaskManager,
    *,
    task_id: UUID | None = None,
    shard: int = 0,
    parent_id: UUID | None = None,
    keyspace: str = "",
    table: str = "",
    entity: str = "",
    user_task: bool = False,
) -> UUID:
    """Creates and starts a test task; returns its id."""
    handle = await manager.create_task(
        TEST_MODULE,
        TestTaskImpl(user_task=user_task),
        shard=shard,
        parent_id=parent_id,
        task_id=task_id,
        keyspace=keyspace,
        table=table,
        entity=entity,
    )
    await handle.start()
    return handle.id


async def _finish_and_wait(task: Task, error: str | None) -> None:
    if not isinstance(task.impl, TestTaskImpl):
        raise InvalidStateError(f"task with id {task.id} is not a test task")
    task.impl.finish(error)
    if task.runner is not None:
        # Returns once the task's completion has resolved.
        await asyncio.shield(task.runner)


async def finish_test_task(manager: TaskManager, task_id: UUID, error: str | None = None) -> None:
    """Finishes a test task (failed if ``error`` is given); a finished one is left as it is."""
    shard = await manager.locate(task_id)

    async def finish(task: Task) -> None:
        await _finish_and_wait(task, error)

    await shard.invoke(task_id, finish)


async def delete_test_task(manager: TaskManager, task_id: UUID) -> None:
    """Finishes a running test task successfully, waits for it, then unregisters it."""
    shard = await manager.locate(task_id)

    async def finish(task: Task) -> None:
        await _finish_and_wait(task, None)

    await shard.invoke(task_id, finish)
    await shard.unregister_task(task_id)
