"""Waiting for tasks and watching them: one task's stream, and module watches.

The waiting half of ``TaskManager`` (its base): a task's watch goes to the
shard that holds it, a virtual group, or the node that holds it; a module
watch reads every shard's window of changes and the virtual tasks' (see
``module_watch``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from uuid import UUID

from .errors import InvalidArgumentError, TaskNotFoundError, UnknownModuleError
from .module_watch import ModuleWatches, VirtualChanges, WatchBatch, WatchQuery
from .port import Deadline
from .reading import Reading
from .types import ListFilter, TaskStats, TaskStatus
from .validation import MAX_PAGE_SIZE, check_filter


class Waiting(Reading):
    """Waits and watches over a node's shards and virtual groups (``TaskManager`` sets them up)."""

    module_watches: ModuleWatches
    _virtual_changes: VirtualChanges

    # What the manager provides, read here.

    async def list_modules(self) -> list[str]:
        """The module names (``TaskManager``'s)."""
        raise NotImplementedError

    # ---- waiting -----------------------------------------------------------------------------

    async def watch_task(
        self, task_id: UUID, timeout: float | None = None
    ) -> AsyncGenerator[TaskStatus, None]:
        """Yields a task's status now and after each change; ends after a final state.

        Raises:
            TaskNotFoundError: unknown id (before anything is yielded), or a
                virtual task that its group stopped tracking.
            WaitTimeoutError: ``timeout`` seconds passed (on the injected clock)
                before a final status; 0 means "tell me now".
        """
        async for status in await self.open_watch(task_id, timeout):
            yield status

    async def open_watch(
        self, task_id: UUID, timeout: float | None = None
    ) -> AsyncGenerator[TaskStatus, None]:
        """Returns ``watch_task``'s stream without a layer of its own (for servers).

        A regular task's stream is its shard's own watch: with 10,000 watchers
        woken by one change, one generator layer less is 10,000 resumptions less.
        """
        deadline = None if timeout is None else Deadline(self.clock.now() + timeout, timeout)
        shard = await self._locate(task_id)
        if shard is not None:
            return shard.watch(task_id, deadline)
        if self.remote is not None and await self._groups.find(task_id) is None:
            elsewhere = await self.remote.watch(task_id, timeout)
            if elsewhere is not None:
                return elsewhere
        return self._groups.watch(task_id, deadline)

    async def wait_task(self, task_id: UUID, timeout: float | None = None) -> TaskStatus:
        """Waits until a task finishes; returns its final status (failed is not an error)."""
        last: TaskStatus | None = None
        async for status in self.watch_task(task_id, timeout):
            last = status
        assert last is not None  # watch_task yields at least once or raises
        return last

    def stop_watches(self) -> None:
        """Ends every open watch with ``ShuttingDownError``; new ones fail at once."""
        self.module_watches.stop()
        self._virtual_changes.stop()
        for shard in self._shards:
            shard.stop_watches()
        self._groups.stop()

    async def watch_tasks(
        self,
        module: str | None,
        flt: ListFilter,
        *,
        snapshot: bool = False,
        full_status: bool = False,
        cursor: str = "",
    ) -> AsyncGenerator[WatchBatch, None]:
        """Yields a module's (or, for ``None``, every module's) task changes, in batches.

        See ``module_watch``: the snapshot first if asked, then a batch of
        changes a tick, each batch with the cursor to resume after it.

        Raises:
            InvalidArgumentError: a bad name, a malformed cursor, a snapshot with a cursor.
            UnknownModuleError: no such module.
            CursorExpiredError: the cursor is too old, or from before a restart.
            WatchFellBehindError: the reader fell more than the window behind.
            ShuttingDownError: the server is stopping.
        """
        stream = await self.open_module_watch(
            module, flt, snapshot=snapshot, full_status=full_status, cursor=cursor
        )
        async for batch in stream:
            yield batch

    async def open_module_watch(
        self,
        module: str | None,
        flt: ListFilter,
        *,
        snapshot: bool = False,
        full_status: bool = False,
        cursor: str = "",
    ) -> AsyncGenerator[WatchBatch, None]:
        """Checks a module watch's request, then returns its stream (``watch_tasks``'s).

        Without a layer of its own, as ``open_watch``: each layer is a
        resumption per batch per watcher.
        """
        if module is not None:
            await self._check_module(module)
        check_filter(flt)
        if snapshot and cursor:
            raise InvalidArgumentError(
                "snapshot", "a watch resumed from a cursor takes no snapshot; pass one or the other"
            )
        if cursor:
            self.module_watches.decode(cursor)  # a malformed or stale one: refused here
        return self.module_watches.watch(
            WatchQuery(module, flt, full_status),
            snapshot=self._snapshot if snapshot else None,
            cursor=cursor,
            read_status=self._status_or_none,
        )

    async def _snapshot(self, query: WatchQuery) -> AsyncIterator[list[TaskStats]]:
        modules = [query.module] if query.module is not None else await self.list_modules()
        for module in modules:
            token = ""
            while True:
                try:
                    page, token = await self.list_module_tasks(
                        module, query.flt, page_size=MAX_PAGE_SIZE, page_token=token
                    )
                except UnknownModuleError:
                    break  # unregistered meanwhile
                yield page
                if not token:
                    break

    def virtual_task_changed(self, task_id: UUID) -> None:
        """A virtual (cluster) task may have changed: module watches read it again."""
        self._virtual_changes.changed(task_id)

    async def _virtual_status(self, task_id: UUID) -> TaskStatus | None:
        return await self._groups.status(task_id)

    async def _status_or_none(self, task_id: UUID) -> TaskStatus | None:
        try:
            return await self.get_status(task_id)
        except TaskNotFoundError:
            return None

    async def task_counts(self) -> dict[tuple[str, str], int]:
        """Registered regular tasks by module and state value, over every shard (for metrics)."""
        out: dict[tuple[str, str], int] = {}
        for shard in self._shards:
            for (module, state), n in (await shard.state_counts()).items():
                key = (module, state.value)
                out[key] = out.get(key, 0) + n
        return out

    def watcher_count(self) -> int:
        """How many watches are parked on tasks, over all shards (for leak checks)."""
        return sum(shard.watcher_count() for shard in self._shards)
