"""Virtual (cluster-wide) tasks: the group contract, and the registry that serves them.

As in ScyllaDB, a virtual task's status is not kept but computed on demand by
its group, and the groups live on shard 0 only; the manager asks them after
the shards, so regular tasks win a lookup.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from .clock import Clock
from .errors import (
    ShuttingDownError,
    StoreUnavailableError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from .port import Deadline
from .types import (
    AbortRequest,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskKind,
    TaskStats,
    TaskStatus,
)
from .validation import finite_or_zero

T = TypeVar("T")

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
        """The module whose listings show the group's tasks.

        "" for a group whose tasks belong to modules of their own (each status
        says which, and ``module_stats`` lists a module's).
        """

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

    async def abort(
        self, task_id: UUID, hint: VirtualTaskHint, request: AbortRequest | None = None
    ) -> None:
        """Aborts the operation; never raises. By default does nothing.

        ``request`` says who asked, when and why (a group may keep it, to show
        in its statuses' ``extras.abort``).
        """
        return None

    async def abort_pending(self, task_id: UUID, hint: VirtualTaskHint) -> bool:
        """Whether an abort was requested: a child created under it is aborted at once.

        By default no virtual task has one pending.
        """
        return False

    def changes(self, task_id: UUID, hint: VirtualTaskHint) -> AsyncIterator[None] | None:
        """A subscription to the operation's changes, or ``None`` (the default).

        A group that can tell when an operation may have changed returns an
        async iterator, subscribed when this returns, that yields after each
        change (spurious wake-ups are fine: the status is read again); a watch
        then streams every change, not only the final status of ``wait``.
        """
        return None

    def child_changed(self, parent_id: UUID) -> None:
        """A task of this node whose parent is ``parent_id`` (maybe of this group) changed.

        By default nothing happens: a group whose children other nodes watch
        tells them.
        """
        return None

    def child_finished(self, parent_id: UUID, status: TaskStatus) -> None:
        """A task of this node whose parent is ``parent_id`` finished, with this final status.

        Called once per child, just before it leaves the registry (a child of
        a virtual parent is not kept for a TTL). By default nothing happens: a
        group whose children must outlive this node keeps the status elsewhere.
        """
        return None

    def walk(
        self, task_id: UUID, hint: VirtualTaskHint
    ) -> AsyncIterator[tuple[int, TaskStatus]] | None:
        """The operation's tree for recursive status, as (depth, status) in BFS order.

        ``None`` (the default) lets the manager walk it: the virtual task, then
        this node's tasks under it.
        """
        return None

    @abc.abstractmethod
    async def get_stats(self) -> list[TaskStats]:
        """Returns the list entries of the group's operations."""

    async def modules(self) -> list[str]:
        """The modules the group's operations belong to (by default, its ``module``).

        A module named here is registered on this node when a caller first
        names it, so a group whose operations come from elsewhere (a cluster
        store) is listed in modules this node never registered itself.
        """
        return [self.module] if self.module else []

    async def module_stats(self, module: str) -> list[TaskStats]:
        """The list entries of the group's operations in ``module``.

        By default ``get_stats`` for the group's own module, nothing for others.
        """
        return await self.get_stats() if module == self.module else []


class VirtualGroups:
    """The registered groups, asked in registration order, and what the API needs of them."""

    def __init__(self, clock: Clock, max_status_children: int) -> None:
        self._clock = clock
        self._max_children = max_status_children
        self._groups: dict[str, VirtualTaskGroup] = {}
        self._stopping: asyncio.Future[None] | None = None
        # Whether another node holds an id as a regular task (a cluster sets it).
        self.held_elsewhere: Callable[[UUID], Awaitable[bool]] | None = None

    def add(self, group: VirtualTaskGroup) -> None:
        """Registers a group.

        Raises:
            ValueError: a group with this name is already registered.
        """
        if group.name in self._groups:
            raise ValueError(f"virtual task group {group.name} is already registered")
        self._groups[group.name] = group

    def remove(self, name: str) -> None:
        """Removes a group, if registered."""
        self._groups.pop(name, None)

    def remove_module(self, module: str) -> None:
        """Removes every group of a module (the module is being unregistered)."""
        for name in [g.name for g in self._groups.values() if g.module and g.module == module]:
            del self._groups[name]

    async def find(self, task_id: UUID) -> tuple[VirtualTaskGroup, VirtualTaskHint] | None:
        """The first group that has the operation, with its hint.

        Raises:
            StoreUnavailableError: a group's store is down, so it cannot say
                whether the id is its own, and no other node holds it either.
        """
        for group in list(self._groups.values()):
            try:
                hint = await group.contains(task_id)
            except StoreUnavailableError:
                # Another node's regular task is still answered while the
                # store is down; only an id nobody holds gets the store's error.
                if self.held_elsewhere is not None and await self.held_elsewhere(task_id):
                    return None
                raise
            if hint is not None:
                return group, hint
        return None

    async def modules(self) -> set[str]:
        """Every module some group has operations in (a group whose store is down: none)."""
        names: set[str] = set()
        for group in list(self._groups.values()):
            try:
                names.update(await group.modules())
            except StoreUnavailableError:
                continue
        return names

    def child_changed(self, parent_id: UUID) -> None:
        """Tells every group of a change under ``parent_id`` (cheap: no lookup)."""
        for group in self._groups.values():
            group.child_changed(parent_id)

    def child_finished(self, parent_id: UUID, status: TaskStatus) -> None:
        """Tells every group that a child of ``parent_id`` finished (see the group's method)."""
        for group in self._groups.values():
            group.child_finished(parent_id, status)

    def normalize(self, group: VirtualTaskGroup, status: TaskStatus) -> TaskStatus:
        """A group's status with the fields every virtual task shares, and sane values."""
        progress = status.progress
        return status._replace(
            # The group's numbers are the application's: the wire never carries inf or NaN.
            progress=Progress(finite_or_zero(progress.completed), finite_or_zero(progress.total)),
            kind=TaskKind.CLUSTER,
            shard=0,
            sequence_number=0,
            module=group.module or status.module,
            internal=False,
            children=status.children[: self._max_children],
            children_count=max(status.children_count, len(status.children)),
        )

    async def status(self, task_id: UUID, *, raw: bool = False) -> TaskStatus | None:
        """The status of a virtual task (``raw``: as its group made it), or ``None``."""
        found = await self.find(task_id)
        if found is None:
            return None
        group, hint = found
        status = await group.get_status(task_id, hint)
        if status is None or raw:
            return status
        return self.normalize(group, status)

    async def children_page(
        self, task_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[TaskIdentity], int] | None:
        """A page of a virtual task's children by id, and how many it has; ``None`` if unknown."""
        status = await self.status(task_id, raw=True)
        if status is None:
            return None
        children = sorted(status.children, key=lambda c: c.task_id.int)
        floor = -1 if after is None else after.int
        return [c for c in children if c.task_id.int > floor][:limit], len(children)

    async def stats(
        self, module: str, flt: ListFilter, after: UUID | None, limit: int
    ) -> list[TaskStats]:
        """A page of the module's virtual tasks by id, after ``after``."""
        entries: list[TaskStats] = []
        for group in list(self._groups.values()):
            for stats in await group.module_stats(module):
                # The internal filter never hides virtual tasks; the others do.
                if not flt.admits(stats, False):
                    continue
                if after is not None and stats.task_id <= after:
                    continue
                entries.append(stats._replace(kind=TaskKind.CLUSTER, shard=0, sequence_number=0))
        entries.sort(key=lambda s: s.task_id)
        return entries[:limit]

    async def watch(
        self, task_id: UUID, deadline: Deadline | None
    ) -> AsyncGenerator[TaskStatus, None]:
        """A virtual task's status now, then its final one (as ``Watches.follow`` does).

        Raises:
            TaskNotFoundError: unknown id, or a task its group stopped tracking.
            WaitTimeoutError: ``deadline`` passed first.
            ShuttingDownError: the server is stopping.
        """
        found = await self.find(task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        group, hint = found
        changes = group.changes(task_id, hint)  # subscribed before the first read
        if changes is not None:
            async for status in self._follow(group, hint, task_id, changes, deadline):
                yield status
            return
        first = await group.get_status(task_id, hint)
        if first is None:
            raise TaskNotFoundError(task_id)
        first = self.normalize(group, first)
        yield first
        if first.state.is_final:
            return
        if deadline is not None and self._clock.now() >= deadline.at:
            raise WaitTimeoutError(task_id, deadline.timeout)
        final = await self._wait(group.wait(task_id, hint), task_id, deadline)
        if final is None:
            raise TaskNotFoundError(task_id)
        if not final.state.is_final:
            # The stream must not end OK on a state that is not final.
            raise RuntimeError(
                f"virtual task group {group.name} returned a {final.state.value} status "
                f"from wait() for task {task_id}; wait() must return a final one"
            )
        final = self.normalize(group, final)
        if final != first:
            yield final

    async def _follow(
        self,
        group: VirtualTaskGroup,
        hint: VirtualTaskHint,
        task_id: UUID,
        changes: AsyncIterator[None],
        deadline: Deadline | None,
    ) -> AsyncGenerator[TaskStatus, None]:
        # Every change, coalesced to the latest, ending on a final status.
        last: TaskStatus | None = None
        try:
            while True:
                status = await group.get_status(task_id, hint)
                if status is None:
                    raise TaskNotFoundError(task_id)
                status = self.normalize(group, status)
                if status != last:
                    yield status
                    last = status
                if status.state.is_final:
                    return
                if deadline is not None and self._clock.now() >= deadline.at:
                    raise WaitTimeoutError(task_id, deadline.timeout)
                await self._wait(anext(changes), task_id, deadline)
        finally:
            aclose = getattr(changes, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _wait(self, wait: Awaitable[T], task_id: UUID, deadline: Deadline | None) -> T:
        # A group's wait, ended early by shutdown or by the deadline (its own
        # work goes on: as in ScyllaDB, a timeout abandons the wait only).
        stopping = self._stopping_future()
        if stopping.done():
            raise ShuttingDownError()
        waiter = asyncio.ensure_future(wait)
        timeout = asyncio.get_running_loop().create_future()
        timer = None
        if deadline is not None:

            def expire() -> None:
                if not timeout.done():
                    timeout.set_result(None)

            timer = self._clock.call_at(deadline.at, expire)
        try:
            pending: list[asyncio.Future[Any]] = [waiter, stopping, timeout]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        if timeout.done() and deadline is not None:
            raise WaitTimeoutError(task_id, deadline.timeout)
        raise ShuttingDownError()

    def _stopping_future(self) -> asyncio.Future[None]:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        return self._stopping

    def stop(self) -> None:
        """Ends every wait on a group with ``ShuttingDownError``; new ones fail at once."""
        stopping = self._stopping_future()
        if not stopping.done():
            stopping.set_result(None)
