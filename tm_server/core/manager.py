"""The task manager: a sharded registry of modules and tasks, plus virtual task groups.

The manager is the registry's front: everything outside the core (the
servicers, the producer API, the test module, embedding code) calls it, and
it reaches the shards only through their ports (``port.py``), looking an id
up one way on every path: the id's home shard first, then the others, then
the virtual groups. Walks over trees that cross shards (abort, release,
progress roll-up, change notification) are loops of one port call a task.
Its reads (``reading``) and waits (``waiting``) are its bases.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from uuid import UUID

from .clock import Clock, SystemClock
from .errors import (
    ModuleLimitError,
    TaskAlreadyExistsError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
)
from .feed import DEFAULT_WATCH_WINDOW
from .handle import TaskHandle
from .journal import NO_JOURNAL, TTL_KEY, Journal, module_key
from .module_watch import (
    DEFAULT_WATCH_INTERVAL,
    DEFAULT_WATCH_MAX_INTERVAL,
    ModuleWatches,
    VirtualChanges,
)
from .observe import NO_OBSERVER, TaskObserver
from .paging import PageTokens
from .port import AttachResult, NewTask, ParentKind, ParentLink, ShardPort
from .quotas import ShardQuotas, TaskQuotas
from .remote import RemoteTasks
from .shard import Shard, TtlConfig
from .task import TaskImpl
from .types import AbortRequest, TaskIdentity, TaskStatus, new_task_id
from .validation import (
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    check_length,
    check_name,
    check_ttl,
)
from .virtual import VirtualGroups, VirtualTaskGroup
from .waiting import Waiting

#: Modules a server holds at most, unless told otherwise (``--max-modules``).
DEFAULT_MAX_MODULES = 1000
#: Children a status lists at most (``--max-status-children``); ListTaskChildren pages all.
DEFAULT_MAX_STATUS_CHILDREN = 1000


@dataclass(frozen=True, slots=True)
class Created:
    """A task just created: its id, its shard, and whether it was aborted at once."""

    task_id: UUID
    shard: int
    abort_pending: bool
    handled: bool = False


class TaskManager(Waiting):
    """A node's task manager: ``shards`` shards, each owning its tasks; virtual groups on shard 0.

    Everything runs on one asyncio loop; the shards reach each other only
    through their ports.
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
        journal: Journal = NO_JOURNAL,
        quotas: TaskQuotas | None = None,
        watch_window: int = DEFAULT_WATCH_WINDOW,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
        watch_max_interval: float = DEFAULT_WATCH_MAX_INTERVAL,
        observer: TaskObserver = NO_OBSERVER,
    ) -> None:
        if shards < 1:
            raise ValueError("a task manager needs at least one shard")
        if max_modules < 1 or max_status_children < 1:
            raise ValueError("max_modules and max_status_children must be at least 1")
        check_ttl("task_ttl", task_ttl)
        check_ttl("user_task_ttl", user_task_ttl)
        clock = clock or SystemClock()
        shard_window = max(1024, -(-watch_window // shards))
        self.max_modules = max_modules
        self.max_status_children = max_status_children
        self._task_ttl = task_ttl
        self._user_task_ttl = user_task_ttl
        # The TTLs the server was started with: a TTL set through the API is
        # journaled with them, and applies after a restart only while they
        # are unchanged (an operator's new flag wins over an old API call).
        self._ttl_flags = (task_ttl, user_task_ttl)
        self.journal = journal
        self.quotas = quotas or TaskQuotas()
        local = [
            Shard(
                i,
                clock=clock,
                node=node,
                ttl=TtlConfig(task_ttl, user_task_ttl),
                max_status_children=max_status_children,
                host=self,
                journal=journal,
                quotas=ShardQuotas(self.quotas, shards),
                # The node's window, split: a watch reads every shard's.
                window=shard_window,
                observer=observer,
            )
            for i in range(shards)
        ]
        # Recovery fills the shards in this process before the node serves
        # (a shard in a process of its own would replay its own journal).
        self.local_shards: tuple[Shard, ...] = tuple(local)
        ports: list[ShardPort] = list(local)
        for port in ports:
            port.connect(ports)
        super().__init__(ports, VirtualGroups(clock, max_status_children), clock, node)
        self._page_tokens = PageTokens()
        self._remote: RemoteTasks | None = None
        # Cluster tasks change in the store; the node hears of it (``virtual_task_changed``).
        self._virtual_changes = VirtualChanges(self._virtual_status, shard_window)
        self.module_watches = ModuleWatches(
            [*self._shards, self._virtual_changes],
            clock,
            interval=watch_interval,
            max_interval=watch_max_interval,
            window=watch_window,
            shard_window=shard_window,
        )

    def set_observer(self, observer: TaskObserver) -> None:
        """Tells ``observer`` of the tasks created, finished and expired from now on.

        For a server given an application's own manager (its metrics); the
        shards are this process's.
        """
        for shard in self.local_shards:
            shard.set_observer(observer)

    @property
    def remote(self) -> RemoteTasks | None:
        """Other nodes' tasks, asked last in the lookup order (a cluster sets it)."""
        return self._remote

    @remote.setter
    def remote(self, remote: RemoteTasks | None) -> None:
        self._remote = remote
        self._groups.held_elsewhere = None if remote is None else self._held_elsewhere

    async def _held_elsewhere(self, task_id: UUID) -> bool:
        return self._remote is not None and await self._remote.get_status(task_id) is not None

    @property
    def shards(self) -> tuple[ShardPort, ...]:
        """The shards' ports, by index, for diagnostics and tests (the API is the manager's)."""
        return self._shards

    # ---- modules -----------------------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers a module on every shard; returns False if it already existed.

        Raises:
            ModuleLimitError: ``max_modules`` modules are registered already.
        """
        check_name("module", name)
        first = self._shards[0]
        if await first.has_module(name):
            return False  # registered on every shard already (CreateTask asks every time)
        if len(await first.list_modules()) >= self.max_modules:
            raise ModuleLimitError(name, self.max_modules)
        results = [await shard.register_module(name) for shard in self._shards]
        self.journal.put(module_key(name), name)
        return results[0]

    async def unregister_module(self, name: str) -> None:
        """Stops a module as ScyllaDB does: aborts its tasks, waits for them, unregisters all.

        Raises:
            UnknownModuleError: no such module.
        """
        await self._check_module(name)
        self._groups.remove_module(name)
        for shard in self._shards:
            await self._abort_all(await shard.abort_module(name))
        # Producers were told of the abort; their tasks cannot outlive the module.
        for shard in self._shards:
            await shard.fail_external_tasks(name, f"aborted: module {name} was unregistered")
        for shard in self._shards:
            await shard.wait_module_idle(name)
        for shard in self._shards:
            await shard.remove_module(name)
        self.journal.delete(module_key(name))

    async def list_modules(self) -> list[str]:
        """Returns the registered module names, sorted (with those of virtual tasks)."""
        for name in (await self._groups.modules()).difference(await self._shards[0].list_modules()):
            try:
                await self.register_module(name)
            except ModuleLimitError:
                continue  # not listed here, as --max-modules says
        return sorted(await self._shards[0].list_modules())

    async def _check_module(self, name: str) -> None:
        check_name("module", name)
        if await self._shards[0].has_module(name):
            return
        # A module only virtual tasks have so far (cluster tasks created
        # through another node) is registered here when first named.
        if name not in await self._groups.modules():
            raise UnknownModuleError(name)
        await self.register_module(name)

    # ---- virtual task groups -----------------------------------------------------------------

    async def register_virtual_group(self, group: VirtualTaskGroup) -> None:
        """Registers a virtual task group (on shard 0, the only place they live).

        Raises:
            UnknownModuleError: the group's module is not registered.
            ValueError: a group with this name is already registered.
        """
        if group.module:
            await self._check_module(group.module)
        self._groups.add(group)

    def unregister_virtual_group(self, name: str) -> None:
        """Removes a virtual task group, if registered."""
        self._groups.remove(name)

    async def local_children_page(
        self, task_id: UUID, page_size: int, page_token: str
    ) -> tuple[list[TaskIdentity], int, str] | None:
        """``list_children`` for a regular task this node holds, else ``None``."""
        if await self._locate(task_id) is None:
            return None
        return await self.list_children(task_id, page_size=page_size, page_token=page_token)

    # ---- creating tasks ----------------------------------------------------------------------

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
            TaskAlreadyExistsError: ``task_id`` is taken, or a registered tree names it.
            TaskNotFoundError: the parent does not exist.
            InvalidStateError: the parent has finished.
        """
        created = await self.create(
            module,
            impl,
            shard=shard,
            parent_id=parent_id,
            task_id=task_id,
            keyspace=keyspace,
            table=table,
            entity=entity,
            progress_total=progress_total,
            handle=True,
        )
        return TaskHandle(self, created.task_id, self._shards[created.shard])

    async def create(
        self,
        module: str,
        impl: TaskImpl,
        *,
        shard: int | None = None,
        parent_id: UUID | None = None,
        task_id: UUID | None = None,
        keyspace: str = "",
        table: str = "",
        entity: str = "",
        progress_total: float | None = None,
        handle: bool = False,
        start: bool = False,
    ) -> Created:
        """Creates a task as ``create_task`` does, without a handle unless asked.

        ``shard`` ``None`` places the task on its id's home shard; ``start``
        starts it at once, on the shard just used (no lookup).
        """
        check_length("keyspace", keyspace, MAX_NAME_LENGTH)
        check_length("table", table, MAX_NAME_LENGTH)
        check_length("entity", entity, MAX_TEXT_LENGTH)
        if task_id is None:
            task_id = new_task_id()  # made here: no other task can have it
        else:
            await self._check_unused(task_id)
        if shard is None:
            shard = self.home_shard(task_id)
        target = self._port(shard)
        # Names repeat across millions of tasks: keep one copy of each.
        module, keyspace, table = sys.intern(module), sys.intern(keyspace), sys.intern(table)
        # A root's shard refuses an unknown module itself, before it changes
        # anything; a child's is asked first, before its parent is told of it.
        if parent_id is not None and not await target.has_module(module):
            raise UnknownModuleError(module)
        link: ParentLink | None = None
        inherited: AttachResult | None = None
        if parent_id is not None:
            parent_shard = await self._locate(parent_id)
            if parent_shard is not None:
                inherited = await parent_shard.attach_child(parent_id, task_id, shard)
                link = ParentLink(parent_id, ParentKind.NODE, parent_shard.index)
            elif (virtual := await self._groups.find(parent_id)) is not None:
                link = ParentLink(parent_id, ParentKind.VIRTUAL, 0)
                if await virtual[0].abort_pending(parent_id, virtual[1]):
                    # A child created under an aborted virtual task is aborted at once.
                    inherited = AttachResult(None, True)
            else:
                raise TaskNotFoundError(parent_id, "parent task")
        spec = NewTask(module, task_id, link, inherited, keyspace, table, entity, progress_total)
        try:
            await target.create_task(spec, impl, handle=handle)
        except BaseException:
            if link is not None and link.kind is ParentKind.NODE:
                await self._shards[link.shard].detach_child(link.id, task_id)
            raise
        if start:
            await target.start_task(task_id)
        return Created(task_id, shard, inherited is not None and inherited.abort_pending, handle)

    async def created_status(self, created: Created) -> TaskStatus:
        """The status of a task just made by ``create``, whose handle (if any) it lets go.

        With a handle it works even when the task already left the registry
        (a child created under an aborting parent and started fails at once).
        """
        port = self._shards[created.shard]
        if not created.handled:
            status = await port.find_status(created.task_id)
        else:
            try:
                status = await port.handle_status(created.task_id)
            finally:
                port.release_handle(created.task_id)
        if status is None:
            raise TaskNotFoundError(created.task_id)
        return status

    async def _check_unused(self, task_id: UUID) -> None:
        # A client-chosen id must name nothing a registered tree still names:
        # reused as a parent's id it could close a cycle (a task its own
        # ancestor), reused as a folded or held child's it would put two
        # tasks with one id into one tree.
        for shard in self._probe(task_id):
            if await shard.contains(task_id):
                raise TaskAlreadyExistsError(task_id)
        for shard in self._probe(task_id):
            if await shard.id_in_use(task_id):
                raise TaskAlreadyExistsError(
                    task_id,
                    ": a registered task tree still refers to it (as a parent, or as a "
                    "finished child); choose another id",
                )

    # ---- driving tasks by id -----------------------------------------------------------------

    async def start_task(self, task_id: UUID, *, reported: bool = False) -> None:
        """Starts a created task (``reported``: only one a producer drives).

        Raises:
            TaskNotFoundError: no such task.
            InvalidStateError: already started, or ``reported`` and run by the server.
        """
        await (await self._owner(task_id)).start_task(task_id, reported=reported)

    async def report_progress(
        self, task_id: UUID, completed: float, total: float | None, *, reported: bool = False
    ) -> bool:
        """Records a running task's own progress; returns whether an abort is pending."""
        # The hot path of progress reports: the id's home shard is asked
        # straight away (reported tasks land there unless their creator chose
        # another), so a report costs one port call; only a miss looks further.
        home = self._probe(task_id)[0]
        try:
            return await home.report_progress(task_id, completed, total, reported=reported)
        except TaskNotFoundError:
            owner = await self._owner(task_id)
            if owner is home:
                raise
        return await owner.report_progress(task_id, completed, total, reported=reported)

    async def finish_task(
        self, task_id: UUID, error: str | None, *, reported: bool = False
    ) -> TaskStatus:
        """Finishes a running task from outside its body; returns its final status."""
        return await (await self._owner(task_id)).finish_task(task_id, error, reported=reported)

    async def fail_task(self, task_id: UUID, error: str) -> bool:
        """Fails an unfinished task (its producer is gone); False if it had finished or is gone."""
        shard = await self._locate(task_id)
        return shard is not None and await shard.fail_task(task_id, error)

    async def wait_done(self, task_id: UUID) -> TaskStatus:
        """Waits until a registered task finishes; returns its final status."""
        status = await (await self._owner(task_id)).wait_done(task_id)
        if status is None:
            raise TaskNotFoundError(task_id)
        return status

    async def unregister_task(self, task_id: UUID) -> None:
        """Unregisters a task now, whatever its TTL (a no-op for an unknown id)."""
        shard = await self._locate(task_id)
        if shard is not None:
            await shard.unregister_task(task_id)

    # ---- abort -------------------------------------------------------------------------------

    async def abort_task(self, task_id: UUID, *, reason: str = "", principal: str = "") -> None:
        """Requests the abort of a task and all its descendants (as the API does).

        Returns once every descendant has been told, not once they stopped.
        ``reason`` and ``principal`` are kept with each of them (who asked
        for the abort, and why), with the time.

        Raises:
            TaskNotFoundError: unknown id.
            TaskNotAbortableError: the task is not abortable.
        """
        check_length("reason", reason, MAX_TEXT_LENGTH)
        request = AbortRequest(self.clock.now(), reason, principal)
        if await self.abort_local(task_id, request):
            return
        found = await self._groups.find(task_id)
        if found is None:
            if self.remote is not None and await self.remote.abort(task_id, request):
                return
            raise TaskNotFoundError(task_id)
        group, hint = found
        if not await group.is_abortable(task_id, hint):
            raise TaskNotAbortableError(task_id)
        await group.abort(task_id, hint, request)

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
        for shard in self._shards:
            await shard.set_ttl(task_ttl=seconds)
        self._journal_ttls()
        return previous

    async def set_user_task_ttl(self, seconds: int) -> int:
        """Sets user_task_ttl on every shard; returns the old value."""
        check_ttl("user_ttl_seconds", seconds)
        previous, self._user_task_ttl = self._user_task_ttl, seconds
        for shard in self._shards:
            await shard.set_ttl(user_task_ttl=seconds)
        self._journal_ttls()
        return previous

    def _journal_ttls(self) -> None:
        self.journal.put(TTL_KEY, [self._task_ttl, self._user_task_ttl, *self._ttl_flags])

    async def restore_ttls(self, value: object) -> None:
        """Applies TTLs journaled by ``set_task_ttl``, if the flags are still those of then."""
        if isinstance(value, list) and len(value) == 4 and tuple(value[2:]) == self._ttl_flags:
            await self.set_task_ttl(int(value[0]))
            await self.set_user_task_ttl(int(value[1]))

    async def drain(self, module: str) -> int:
        """Unregisters the module's finished regular tasks on every shard; returns how many."""
        await self._check_module(module)
        return sum([await shard.drain(module) for shard in self._shards])

    # ---- lifetime ----------------------------------------------------------------------------

    def stats_counts(self) -> list[dict[str, int]]:
        """Registered and held tasks, per shard (for tests and diagnostics)."""
        return [shard.stats_counts() for shard in self._shards]

    async def close(self) -> None:
        """Cancels running task bodies and timers on every shard."""
        await asyncio.gather(*(shard.close() for shard in self._shards))
