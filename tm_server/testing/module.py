"""The "test" module: tasks that run until told to finish, driven by the test service."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any
from uuid import UUID

from tm_server.core import (
    MAX_TEXT_LENGTH,
    InvalidStateError,
    TaskAbortedError,
    TaskContext,
    TaskFailedError,
    TaskImpl,
    TaskManager,
)
from tm_server.core.validation import check_length

TEST_MODULE = "test"

# The bodies of each manager's unfinished test tasks, by id: finishing one
# from outside goes by id, never through a shard's task record.
_BODIES: weakref.WeakKeyDictionary[TaskManager, dict[UUID, TestTaskImpl]] = (
    weakref.WeakKeyDictionary()
)


def _bodies(manager: TaskManager) -> dict[UUID, TestTaskImpl]:
    bodies = _BODIES.get(manager)
    if bodies is None:
        bodies = _BODIES[manager] = {}
    return bodies


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
        self._bodies: dict[UUID, TestTaskImpl] | None = None

    def _future(self) -> asyncio.Future[str | None]:
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
        return self._outcome

    def finish(self, error: str | None) -> None:
        """Makes the body return (``error`` None) or fail with ``error``."""
        fut = self._future()
        if not fut.done():
            fut.set_result(error)

    def notify_finished(self, task_id: UUID) -> None:
        """Forgets the body: a finished test task has nothing left to finish."""
        if self._bodies is not None:
            self._bodies.pop(task_id, None)

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
    impl = TestTaskImpl(user_task=user_task)
    created = await manager.create(
        TEST_MODULE,
        impl,
        shard=shard,
        parent_id=parent_id,
        task_id=task_id,
        keyspace=keyspace,
        table=table,
        entity=entity,
    )
    bodies = _bodies(manager)
    bodies[created.task_id] = impl
    impl._bodies = bodies
    await manager.start_task(created.task_id)
    return created.task_id


async def finish_test_task(manager: TaskManager, task_id: UUID, error: str | None = None) -> None:
    """Finishes a test task (failed if ``error`` is given); a finished one is left as it is.

    Returns once the task's completion has resolved.

    Raises:
        InvalidArgumentError: an error text over ``MAX_TEXT_LENGTH``.
        TaskNotFoundError: no such task.
        InvalidStateError: the task is not a test task.
    """
    if error is not None:
        check_length("error", error, MAX_TEXT_LENGTH)
    status = await manager.get_status(task_id)
    body = _bodies(manager).get(task_id)
    if body is None:
        # A test task has its body until it finishes: one without, unfinished,
        # is some producer's task that merely shares the module and type.
        is_test = status.module == TEST_MODULE and status.type == TestTaskImpl.type
        if not is_test or not status.state.is_final:
            raise InvalidStateError(f"task with id {task_id} is not a test task")
        return  # finished already: nothing changes
    body.finish(error)
    await manager.wait_done(task_id)


async def delete_test_task(manager: TaskManager, task_id: UUID) -> None:
    """Finishes a running test task successfully, waits for it, then unregisters it."""
    await finish_test_task(manager, task_id)
    await manager.unregister_task(task_id)
