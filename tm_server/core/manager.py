"""The task manager: a sharded registry of modules and tasks plus virtual task groups on shard 0."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from .clock import Clock, SystemClock
from .errors import (
    InvalidArgumentError,
    ModuleLimitError,
    ShuttingDownError,
    TaskAlreadyExistsError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
)
from .paging import (
    PAGE_BYTES,
    PHASE_REGULAR,
    PHASE_VIRTUAL,
    PagePosition,
    PageTokens,
    entry_bytes,
)
from .shard import AttachResult, ParentKind, ParentLink, Shard, Task, TtlConfig
from .task import TaskImpl
from .types import (
    FoldedTask,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskKind,
    TaskStats,
    TaskStatus,
    new_task_id,
)
from .validation import (
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    check_length,
    check_name,
    check_page_size,
    check_ttl,
    finite_or_zero,
)
from .virtual import VirtualTaskGroup, VirtualTaskHint

T = TypeVar("T")

#: Modules a server holds at most, unless told otherwise (``--max-modules``).
DEFAULT_MAX_MODULES = 1000
#: Children a status lists at most (``--max-status-children``); ListTaskChildren pages all.
DEFAULT_MAX_STATUS_CHILDREN = 1000


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A created task, for the code that created it.

    Like the task pointer a ScyllaDB creator holds, the handle keeps the task
    object: ``status`` and ``wait`` work even after the task was unregistered
    (an internal child is, as soon as it finishes).
    """

    manager: TaskManager
    id: UUID
    shard: int
    _task: Task = field(repr=False, compare=False)

    @property
    def abort_requested(self) -> bool:
        """Whether an abort was requested (a child created under an aborting parent is)."""
        return self._task.abort_requested

    async def start(self) -> None:
        """Starts the task; its body runs in the background."""
        await self.manager.shards[self.shard].start_task(self.id)

    async def status(self) -> TaskStatus:
        """Returns the task's status."""
        return await self.manager.shards[self.shard].status_of(self._task)

    async def wait(self) -> TaskStatus:
        """Waits until the task finishes and returns its final status."""
        return await self.manager.shards[self.shard].wait_done(self._task)

    async def abort(self) -> None:
        """Requests the abort of the task and its descendants, as the API does."""
        await self.manager.abort_task(self.id)


class TaskManager:
    """A node's task manager: ``shards`` shards, each owning its tasks; virtual groups on shard 0.

    Everything runs on one asyncio loop; shards reach each other only through
    their ``async`` methods.
    """

    def __init__(
        self,
        *,
        shards: int = 1,
        node: str = "localhost",
        clock: Clock | None = None,
        task_ttl: int = 0,
        user_task_ttl: int = 3600,
        max_modules: int = DEFAULT_MAX_MODULES,
        max_status_children: int = DEFAULT_MAX_STATUS_CHILDREN,
    ) -> None:
        if shards < 1:
            raise ValueError("a task manager needs at least one shard")
        if max_modules < 1 or max_status_children < 1:
            raise ValueError("max_modules and max_status_children must be at least 1")
        self.max_modules = max_modules
        self.max_status_children = max_status_children
        check_ttl("task_ttl", task_ttl)
        check_ttl("user_task_ttl", user_task_ttl)
        self.clock: Clock = clock or SystemClock()
        self.node = node
        self._task_ttl = task_ttl
        self._user_task_ttl = user_task_ttl
        self.shards = [
            Shard(
                i, self, self.clock, node, TtlConfig(task_ttl, user_task_ttl), max_status_children
            )
            for i in range(shards)
        ]
        self._groups: dict[str, VirtualTaskGroup] = {}
        self._page_tokens = PageTokens()
        self._stopping: asyncio.Future[None] | None = None

    # ---- modules -----------------------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers a module on every shard; returns False if it already existed."""
        check_name("module", name)
        first = self.shards[0]
        if not await first.has_module(name) and len(await first.list_modules()) >= self.max_modules:
            raise ModuleLimitError(name, self.max_modules)
        results = [await shard.register_module(name) for shard in self.shards]
        return results[0]

    async def unregister_module(self, name: str) -> None:
        """Stops a module as ScyllaDB does: aborts its tasks, waits for them, unregisters all.

        Raises:
            UnknownModuleError: no such module.
        """
        await self._check_module(name)
        for group_name in [g.name for g in self._groups.values() if g.module == name]:
            del self._groups[group_name]
        for shard in self.shards:
            await shard.abort_module(name)
        # Producers were told of the abort; their tasks cannot outlive the module.
        for shard in self.shards:
            await shard.fail_external_tasks(name, f"aborted: module {name} was unregistered")
        for shard in self.shards:
            await shard.wait_module_idle(name)
        for shard in self.shards:
            await shard.remove_module(name)

    async def list_modules(self) -> list[str]:
        """Returns the registered module names, sorted."""
        return sorted(await self.shards[0].list_modules())

    async def _check_module(self, name: str) -> None:
        if not await self.shards[0].has_module(name):
            raise UnknownModuleError(name)

    # ---- virtual task groups -----------------------------------------------------------------

    async def register_virtual_group(self, group: VirtualTaskGroup) -> None:
        """Registers a virtual task group (on shard 0, the only place they live).

        Raises:
            UnknownModuleError: the group's module is not registered.
            ValueError: a group with this name is already registered.
        """
        await self._check_module(group.module)
        if group.name in self._groups:
            raise ValueError(f"virtual task group {group.name} is already registered")
        self._groups[group.name] = group

    def unregister_virtual_group(self, name: str) -> None:
        """Removes a virtual task group, if registered."""
        self._groups.pop(name, None)

    def _normalize(self, group: VirtualTaskGroup, status: TaskStatus) -> TaskStatus:
        progress = status.progress
        return status._replace(
            # The group's numbers are the application's: the wire never carries inf or NaN.
            progress=Progress(finite_or_zero(progress.completed), finite_or_zero(progress.total)),
            kind=TaskKind.CLUSTER,
            shard=0,
            sequence_number=0,
            module=group.module,
            internal=False,
            children=status.children[: self.max_status_children],
            children_count=max(status.children_count, len(status.children)),
        )

    async def get_children(self, parent_id: UUID) -> list[TaskIdentity]:
        """Identities of this node's tasks whose parent is the virtual task ``parent_id``."""
        out: list[TaskIdentity] = []
        for shard in self.shards:
            out.extend(
                TaskIdentity(c, self.node) for c in await shard.virtual_children_of(parent_id)
            )
        return out

    # ---- lookup ------------------------------------------------------------------------------

    async def _find_shard(self, task_id: UUID) -> Shard | None:
        found = [shard for shard in self.shards if await shard.contains(task_id)]
        if len(found) > 1:
            raise RuntimeError(f"task {task_id} is registered on shards {[s.index for s in found]}")
        return found[0] if found else None

    async def _find_virtual(self, task_id: UUID) -> tuple[VirtualTaskGroup, VirtualTaskHint] | None:
        for group in list(self._groups.values()):
            hint = await group.contains(task_id)
            if hint is not None:
                return group, hint
        return None

    # ---- tasks -------------------------------------------------------------------------------

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
        """Creates a task (state ``created``) on ``shard``; ``start`` it through the handle.

        A child of a regular parent inherits the parent's sequence number and is
        aborted at once if the parent has an abort pending; a child of a
        virtual parent gets a fresh sequence number.

        Raises:
            InvalidArgumentError: bad shard or over-long strings.
            UnknownModuleError: the module is not registered.
            TaskAlreadyExistsError: ``task_id`` is taken.
            TaskNotFoundError: the parent does not exist.
            InvalidStateError: the parent has finished.
        """
        if not 0 <= shard < len(self.shards):
            raise InvalidArgumentError(
                "shard", f"must be between 0 and {len(self.shards) - 1}, got {shard}"
            )
        check_length("keyspace", keyspace, MAX_NAME_LENGTH)
        check_length("table", table, MAX_NAME_LENGTH)
        check_length("entity", entity, MAX_TEXT_LENGTH)
        # Names repeat across millions of tasks: keep one copy of each.
        module, keyspace, table = sys.intern(module), sys.intern(keyspace), sys.intern(table)
        target = self.shards[shard]
        if not await target.has_module(module):
            raise UnknownModuleError(module)
        if task_id is None:
            task_id = new_task_id()
        else:
            await self._check_unused(task_id)
        link: ParentLink | None = None
        inherited: AttachResult | None = None
        if parent_id is not None:
            parent_shard = await self._find_shard(parent_id)
            if parent_shard is not None:
                inherited = await parent_shard.attach_child(parent_id, task_id, shard)
                link = ParentLink(parent_id, ParentKind.NODE, parent_shard.index)
            elif await self._find_virtual(parent_id) is not None:
                link = ParentLink(parent_id, ParentKind.VIRTUAL, 0)
            else:
                raise TaskNotFoundError(parent_id, "parent task")
        try:
            task = await target.create_task(
                module, impl, task_id, link, inherited, keyspace, table, entity, progress_total
            )
        except BaseException:
            if link is not None and link.kind is ParentKind.NODE:
                await self.shards[link.shard].detach_child(link.id, task_id)
            raise
        return TaskHandle(self, task_id, shard, task)

    async def _check_unused(self, task_id: UUID) -> None:
        # A client-chosen id must name nothing a registered tree still names:
        # reused as a parent's id it could close a cycle (a task its own
        # ancestor), reused as a folded or held child's it would put two
        # tasks with one id into one tree.
        for shard in self.shards:
            if await shard.contains(task_id):
                raise TaskAlreadyExistsError(task_id)
        for shard in self.shards:
            if await shard.id_in_use(task_id):
                raise TaskAlreadyExistsError(
                    task_id,
                    ": a registered task tree still refers to it (as a parent, or as a "
                    "finished child); choose another id",
                )

    def home_shard(self, task_id: UUID) -> int:
        """The shard a task goes to when its creator names none (spreads ids evenly)."""
        return task_id.int % len(self.shards)

    async def locate(self, task_id: UUID) -> Shard:
        """Returns the shard holding the regular task ``task_id``.

        Raises:
            TaskNotFoundError: no shard has it.
        """
        shard = await self._find_shard(task_id)
        if shard is None:
            raise TaskNotFoundError(task_id)
        return shard

    async def get_status(self, task_id: UUID) -> TaskStatus:
        """Returns a task's status: regular tasks first, then the virtual groups.

        Raises:
            TaskNotFoundError: unknown id.
        """
        # The hot path of status reads: one call a shard, first found wins
        # (creation keeps ids unique across shards), starting with the id's
        # home shard, where reported tasks land unless told otherwise.
        home = self.shards[self.home_shard(task_id)]
        status = await home.find_status(task_id)
        if status is not None:
            return status
        for shard in self.shards:
            if shard is not home:
                status = await shard.find_status(task_id)
                if status is not None:
                    return status
        found = await self._find_virtual(task_id)
        if found is not None:
            group, hint = found
            status = await group.get_status(task_id, hint)
            if status is not None:
                return self._normalize(group, status)
        raise TaskNotFoundError(task_id)

    async def list_children(
        self, task_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskIdentity], int, str]:
        """Returns one page of a task's children by id, how many it has, and the next token.

        A status lists at most ``max_status_children`` children; this lists
        them all, a page at a time, for regular and virtual tasks alike.

        Raises:
            InvalidArgumentError: bad page size or token.
            TaskNotFoundError: unknown id.
        """
        size = check_page_size(page_size)
        scope = f"children of {task_id}"
        pos = self._page_tokens.decode(page_token, scope, None, len(self.shards))
        after = None if pos is None else pos.after
        page: list[TaskIdentity] | None = None
        count = 0
        for shard in self._probe_order(task_id):
            found = await shard.children_page(task_id, after, size + 1)
            if found is not None:
                page, count = found
                break
        if page is None:
            virtual = await self._find_virtual(task_id)
            status = None if virtual is None else await virtual[0].get_status(task_id, virtual[1])
            if status is None:
                raise TaskNotFoundError(task_id)
            children = sorted(status.children, key=lambda c: c.task_id.int)
            count = len(children)
            page = [c for c in children if after is None or c.task_id.int > after.int][: size + 1]
        if len(page) <= size:
            return page, count, ""
        page = page[:size]
        token = self._page_tokens.encode(scope, None, PagePosition(0, 0, page[-1].task_id))
        return page, count, token

    def _probe_order(self, task_id: UUID) -> list[Shard]:
        # The id's home shard first (where reported tasks land unless told
        # otherwise), then the others.
        home = self.shards[self.home_shard(task_id)]
        return [home, *(shard for shard in self.shards if shard is not home)]

    async def abort_task(self, task_id: UUID) -> None:
        """Requests the abort of a task and all its descendants (as the API does).

        Returns once every descendant has been told, not once they stopped.

        Raises:
            TaskNotFoundError: unknown id.
            TaskNotAbortableError: the task is not abortable.
        """
        shard = await self._find_shard(task_id)
        if shard is not None:
            await shard.abort_task(task_id, check_abortable=True)
            return
        found = await self._find_virtual(task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        group, hint = found
        if not await group.is_abortable(task_id, hint):
            raise TaskNotAbortableError(task_id)
        await group.abort(task_id, hint)

    async def watch_task(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        """Yields a task's status now and after each change; ends after a final state.

        Raises:
            TaskNotFoundError: unknown id (before anything is yielded), or a
                virtual task that its group stopped tracking.
        """
        async for status in await self.open_watch(task_id):
            yield status

    async def open_watch(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        """Returns ``watch_task``'s stream without a layer of its own (for servers).

        A regular task's stream is its shard's own watch: with 10,000 watchers
        woken by one change, one generator layer less is 10,000 resumptions less.
        """
        shard = await self._find_shard(task_id)
        if shard is not None:
            return shard.watch(task_id)
        return self._watch_virtual(task_id)

    async def _watch_virtual(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        found = await self._find_virtual(task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        group, hint = found
        first = await group.get_status(task_id, hint)
        if first is None:
            raise TaskNotFoundError(task_id)
        first = self._normalize(group, first)
        yield first
        if first.state.is_final:
            return
        final = await self._unless_stopping(group.wait(task_id, hint))
        if final is None:
            raise TaskNotFoundError(task_id)
        if not final.state.is_final:
            # The stream must not end OK on a state that is not final.
            raise RuntimeError(
                f"virtual task group {group.name} returned a {final.state.value} status "
                f"from wait() for task {task_id}; wait() must return a final one"
            )
        final = self._normalize(group, final)
        if final != first:
            yield final

    async def _unless_stopping(self, wait: Awaitable[T]) -> T:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        if self._stopping.done():
            raise ShuttingDownError()
        waiter = asyncio.ensure_future(wait)
        try:
            pending: list[asyncio.Future[Any]] = [waiter, self._stopping]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        if not waiter.done() or waiter.cancelled():
            raise ShuttingDownError()
        return waiter.result()

    def stop_watches(self) -> None:
        """Ends every open watch with ``ShuttingDownError``; new ones fail at once."""
        for shard in self.shards:
            shard.stop_watches()
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        if not self._stopping.done():
            self._stopping.set_result(None)

    async def wait_task(self, task_id: UUID) -> TaskStatus:
        """Waits until a task finishes; returns its final status (failed is not an error)."""
        last: TaskStatus | None = None
        async for status in self.watch_task(task_id):
            last = status
        assert last is not None  # watch_task yields at least once or raises
        return last

    async def get_status_recursive(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        """Yields the task and all its descendants in ScyllaDB's BFS order.

        Within each parent, live children come first (in creation order), then
        folded ones in finishing order; a folded task's children are its failed
        descendants. A virtual root's children are this node's tasks under it.

        Raises:
            TaskNotFoundError: unknown id.
        """
        queue: deque[tuple[UUID, int] | FoldedTask] = deque()
        shard = await self._find_shard(task_id)
        if shard is not None:
            root = await shard.get_tree_node(task_id)
            if root is None:
                raise TaskNotFoundError(task_id)
            yield root.status
            queue.extend(root.live_children)
            queue.extend(root.folded_children)
        else:
            status = await self.get_status(task_id)
            yield status
            for shard in self.shards:
                queue.extend((c, shard.index) for c in await shard.virtual_children_of(task_id))
        while queue:
            item = queue.popleft()
            if isinstance(item, FoldedTask):
                yield item.status
                queue.extend(item.failed_children)
                continue
            child_id, child_shard = item
            node = await self.shards[child_shard].get_tree_node(child_id)
            if node is None:
                continue  # already gone
            yield node.status
            queue.extend(node.live_children)
            queue.extend(node.folded_children)

    # ---- listing -----------------------------------------------------------------------------

    async def list_module_tasks(
        self, module: str, flt: ListFilter, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskStats], str]:
        """Returns one page of a module's tasks and the token of the next page ("" at the end).

        The order is stable: shard by shard, each shard's regular tasks by id,
        then on shard 0 the virtual tasks by id. A page never scans entries
        before its token, so deep pages cost what shallow ones do.

        Raises:
            InvalidArgumentError: bad page size or token.
            UnknownModuleError: no such module.
        """
        size = check_page_size(page_size)
        await self._check_module(module)
        pos = self._page_tokens.decode(page_token, module, flt, len(self.shards))
        out: list[tuple[int, int, TaskStats]] = []
        for shard in self.shards[pos.shard if pos else 0 :]:
            phases = (PHASE_REGULAR, PHASE_VIRTUAL) if shard.index == 0 else (PHASE_REGULAR,)
            for phase in phases:
                here = (shard.index, phase)
                if pos is not None and here < (pos.shard, pos.phase):
                    continue
                after = pos.after if pos is not None and here == (pos.shard, pos.phase) else None
                need = size + 1 - len(out)
                if phase == PHASE_REGULAR:
                    entries = await shard.list_tasks(module, flt, after, need)
                else:
                    entries = await self._virtual_stats(module, flt, after, need)
                out.extend((shard.index, phase, e) for e in entries)
                if len(out) > size:
                    break
            if len(out) > size:
                break
        # A page ends at page_size entries, or before the reply would pass
        # PAGE_BYTES (4 KB entities make 1,000 entries larger than a client accepts).
        end, used = 0, 0
        while end < len(out) and end < size:
            used += entry_bytes(out[end][2])
            if used > PAGE_BYTES and end > 0:
                break
            end += 1
        if end == len(out):
            return [e for _, _, e in out], ""
        s, p, last = out[end - 1]
        token = self._page_tokens.encode(module, flt, PagePosition(s, p, last.task_id))
        return [e for _, _, e in out[:end]], token

    async def _virtual_stats(
        self, module: str, flt: ListFilter, after: UUID | None, limit: int
    ) -> list[TaskStats]:
        entries: list[TaskStats] = []
        for group in list(self._groups.values()):
            if group.module != module:
                continue
            for stats in await group.get_stats():
                # The internal filter never hides virtual tasks; keyspace and table do.
                if flt.keyspace and stats.keyspace != flt.keyspace:
                    continue
                if flt.table and stats.table != flt.table:
                    continue
                if after is not None and stats.task_id <= after:
                    continue
                entries.append(stats._replace(kind=TaskKind.CLUSTER, shard=0, sequence_number=0))
        entries.sort(key=lambda s: s.task_id)
        return entries[:limit]

    # ---- ttl and drain -----------------------------------------------------------------------

    @property
    def task_ttl(self) -> int:
        """Seconds a finished non-user root task is kept."""
        return self._task_ttl

    @property
    def user_task_ttl(self) -> int:
        """Seconds a finished user task is kept."""
        return self._user_task_ttl

    async def set_task_ttl(self, seconds: int) -> int:
        """Sets task_ttl on every shard for tasks that finish from now on; returns the old value."""
        check_ttl("ttl_seconds", seconds)
        previous, self._task_ttl = self._task_ttl, seconds
        for shard in self.shards:
            await shard.set_ttl(task_ttl=seconds)
        return previous

    async def set_user_task_ttl(self, seconds: int) -> int:
        """Sets user_task_ttl on every shard; returns the old value."""
        check_ttl("user_ttl_seconds", seconds)
        previous, self._user_task_ttl = self._user_task_ttl, seconds
        for shard in self.shards:
            await shard.set_ttl(user_task_ttl=seconds)
        return previous

    async def drain(self, module: str) -> int:
        """Unregisters the module's finished regular tasks on every shard; returns how many."""
        await self._check_module(module)
        return sum([await shard.drain(module) for shard in self.shards])

    # ---- lifetime ----------------------------------------------------------------------------

    def watcher_count(self) -> int:
        """How many watches are parked on tasks, over all shards (for leak checks)."""
        return sum(shard.watcher_count() for shard in self.shards)

    async def close(self) -> None:
        """Cancels running task bodies and timers on every shard."""
        await asyncio.gather(*(shard.close() for shard in self.shards))
