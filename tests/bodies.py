"""Task bodies the tests drive: they finish when told and notice aborts."""

from __future__ import annotations

import asyncio

from tm_server.core import TaskContext, TaskImpl


class Controlled(TaskImpl):
    """A task body driven by the test: finishes when told, notices aborts."""

    type = "ctl"
    scope = "node"
    progress_units = "ranges"

    def __init__(
        self,
        *,
        abortable: bool = True,
        user_task: bool = False,
        internal: bool | None = None,
        expected: float | None = None,
        ignore_abort: bool = False,
    ) -> None:
        self.abortable = abortable
        self.user_task = user_task
        self.internal = internal
        self.expected = expected
        self.ignore_abort = ignore_abort
        self.release = asyncio.Event()
        self.error: BaseException | None = None
        self.ran = False
        self.ctx: TaskContext | None = None

    def expected_total_workload(self) -> float | None:
        return self.expected

    async def run(self, ctx: TaskContext) -> None:
        self.ran = True
        self.ctx = ctx
        if self.ignore_abort:
            await self.release.wait()
        else:
            waiter = asyncio.ensure_future(ctx.aborted())
            released = asyncio.ensure_future(self.release.wait())
            await asyncio.wait([waiter, released], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            released.cancel()
            ctx.check_abort()
        if self.error is not None:
            raise self.error

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.release.set()
