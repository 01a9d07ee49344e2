"""One shard of the registry: it owns its tasks, module instances, sequence counters and TTLs.

A shard implements ``ShardPort`` and is reached only through it; it reaches
its peers (for a parent or a child on another shard) through their ports,
one call per task, and holds no reference to the manager. The task record,
progress roll-up, expiry queues and watches live in modules of their own, as
do its reads (``shard_reads``) and how a change goes up the tree
(``shard_tree``); this one holds the lifecycle of tasks and the parent/child
bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from .clock import Clock
from .errors import (
    InvalidArgumentError,
    InvalidStateError,
    TaskAbortedError,
    TaskFailedError,
    TaskNotAbortableError,
    TaskNotFoundError,
)
from .feed import DEFAULT_WATCH_WINDOW, state_code
from .journal import ABORT_KEY, NO_JOURNAL, Journal, abort_record
from .logs import RateLimitedLog
from .observe import NO_OBSERVER, TaskObserver
from .port import (
    AttachResult,
    ChildRef,
    NewTask,
    ShardHost,
    ShardPort,
)
from .progress import known_total
from .quotas import ShardQuotas
from .record import ModuleState, Task
from .shard_tree import ShardTree
from .status import folded_record
from .store import TaskStore, forgotten_keys
from .task import TaskContext, TaskImpl
from .types import (
    AbortRequest,
    FoldedTask,
    Progress,
    TaskKind,
    TaskState,
    TaskStatus,
)
from .validation import check_progress
from .watch import Watches

log = logging.getLogger(__name__)

ABORT_ERROR = "abort requested"
# An Enum member read off its class goes through the metaclass; every status
# built here reads this one.
_NODE = TaskKind.NODE
_CREATED_CODE = state_code(TaskState.CREATED)


@dataclass(slots=True)
class TtlConfig:
    """The retention settings a shard reads when a task finishes."""

    task_ttl: int
    user_task_ttl: int


class Shard(ShardTree):
    """One shard: tasks, module instances, sequence counters and TTL expiry."""

    def __init__(
        self,
        index: int,
        *,
        clock: Clock,
        node: str,
        ttl: TtlConfig,
        max_status_children: int,
        host: ShardHost,
        journal: Journal = NO_JOURNAL,
        quotas: ShardQuotas | None = None,
        window: int = DEFAULT_WATCH_WINDOW,
        observer: TaskObserver = NO_OBSERVER,
    ) -> None:
        self.index = index
        self._clock = clock
        self._node = node
        self._ttl = ttl
        self._max_children = max_status_children
        # What bodies running here create their children through, and whom a
        # virtual parent's changes are told to.
        self.host = host
        self._peers: Sequence[ShardPort] = ()
        self._journal = journal
        self._store = TaskStore(
            clock,
            self._after_drop,
            shard=index,
            journal=journal,
            quotas=quotas,
            window=window,
            observer=observer,
        )
        self._feed = self._store.feed
        # The store's registered-task map, bound once: every status read looks here.
        self._by_id = self._store.tasks
        self._watches = Watches(clock)
        self._background: set[asyncio.Task[None]] = set()
        # Bodies that fail the same way log their traceback once an interval.
        self._body_log = RateLimitedLog(log)

    def set_observer(self, observer: TaskObserver) -> None:
        """Who is told of tasks created, finished and expired here (not a port method)."""
        self._store.observer = observer

    def connect(self, peers: Sequence[ShardPort]) -> None:
        """Gives the shard every shard's port, by index (its own included)."""
        self._peers = peers

    # ---- modules -----------------------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers the module here; returns False if it already was."""
        if name in self._store.modules:
            return False
        self._store.modules[name] = ModuleState(name)
        return True

    async def list_modules(self) -> list[str]:
        """Returns the module names registered on this shard."""
        return list(self._store.modules)

    async def has_module(self, name: str) -> bool:
        """Whether the module is registered here."""
        return name in self._store.modules

    def _module_tasks(self, name: str) -> list[Task]:
        return list(self._store.module(name).tasks.values())

    async def abort_module(self, name: str) -> list[ChildRef]:
        """Aborts every task of the module here (a second abort is a no-op).

        Not only its roots: a task whose parent is another module's would
        follow that parent's abort, and the module's stop would wait for it
        for as long as that parent runs. Returns their live children, to be
        aborted next (on any shard).
        """
        children: list[ChildRef] = []
        for task in self._module_tasks(name):
            children.extend(await self._abort(task))
        return children

    async def fail_external_tasks(self, module: str, error: str) -> None:
        """Fails the module's unfinished externally driven tasks here."""
        for task in self._module_tasks(module):
            if task.impl.external and not task.state.is_complete:
                await self._finish(task, error)

    async def wait_module_idle(self, name: str) -> None:
        """Waits until every task of the module on this shard has finished."""
        for task in self._module_tasks(name):
            if not task.state.is_complete:
                await asyncio.shield(self._done_future(task))

    async def remove_module(self, name: str) -> None:
        """Unregisters the module's tasks (cutting TTLs short) and the module itself."""
        self._store.remove_module(name)

    async def set_ttl(self, task_ttl: int | None = None, user_task_ttl: int | None = None) -> None:
        """Sets the TTLs read by tasks that finish from now on."""
        if task_ttl is not None:
            self._ttl.task_ttl = task_ttl
        if user_task_ttl is not None:
            self._ttl.user_task_ttl = user_task_ttl

    async def contains(self, task_id: UUID) -> bool:
        """Whether a regular task with this id is registered here."""
        return task_id.int in self._store.tasks

    async def id_in_use(self, task_id: UUID) -> bool:
        """Whether a tree here still names this id.

        It does if a task with this id is registered, held or handled here, if
        tasks here point to it as their parent, or if it was folded into a
        parent here.
        """
        return self._store.id_in_use(task_id)

    # ---- creation ----------------------------------------------------------------------------

    async def attach_child(self, parent_id: UUID, child_id: UUID, child_shard: int) -> AttachResult:
        """Adds a child to a registered parent here; returns what the child inherits.

        Raises:
            TaskNotFoundError: the parent is not registered here.
            InvalidStateError: the parent has already finished.
        """
        parent = self._store.tasks.get(parent_id.int)
        if parent is None:
            raise TaskNotFoundError(parent_id, "parent task")
        if parent.state.is_complete:
            raise InvalidStateError(
                f"parent task with id {parent_id} is {parent.state.value}: "
                "a finished task takes no new children"
            )
        live = parent.live_children
        self._store.quotas.check_children(
            str(parent_id), (len(live) if live else 0) + len(parent.folded_children or ())
        )
        if live is None:
            live = parent.live_children = {}
        live[child_id] = child_shard
        await self._changed(parent)
        return AttachResult(parent.sequence_number, parent.abort_requested)

    async def detach_child(self, parent_id: UUID, child_id: UUID) -> None:
        """Undoes ``attach_child`` when the child could not be created."""
        parent = self._store.reachable(parent_id)
        if (
            parent is not None
            and parent.live_children is not None
            and parent.live_children.pop(child_id, None) is not None
        ):
            await self._changed(parent)

    async def create_task(self, spec: NewTask, impl: TaskImpl, *, handle: bool) -> None:
        """Builds and registers a task here, in state ``created``.

        With ``handle`` the task is kept for an in-process handle until
        ``release_handle``, even after it leaves the registry.
        """
        self._store.add(spec, impl, handle=handle)

    # ---- running -----------------------------------------------------------------------------

    def _driven(self, task_id: UUID, reported: bool) -> Task:
        task = self._store.registered(task_id)
        if reported and not task.impl.external:
            raise InvalidStateError(
                f"task with id {task_id} is run by the server, not reported by a producer"
            )
        return task

    async def start_task(self, task_id: UUID, *, reported: bool = False) -> None:
        """Starts a created task: its body runs in the background.

        Raises:
            InvalidStateError: the task was already started (or, ``reported``,
                the server runs its body).
        """
        task = self._driven(task_id, reported)
        if task.state is not TaskState.CREATED:
            raise InvalidStateError(
                f"task with id {task_id} was already started (state {task.state.value})"
            )
        task.start_time = self._clock.now()
        if task.abort_requested:
            # Aborted before start: fail at once, the body never runs.
            await self._finish(task, ABORT_ERROR)
            return
        task.state = TaskState.RUNNING
        self._store.started(task)
        self._journal.record(self.index, task)
        await self._changed(task, _CREATED_CODE)
        if not task.impl.external:
            task.get_sync().runner = asyncio.get_running_loop().create_task(
                self._run_to_completion(task), name=f"tm-task-{task_id}"
            )

    async def _run_to_completion(self, task: Task) -> None:
        error: str | None
        try:
            await task.impl.run(TaskContext(self, task))
        except (TaskFailedError, TaskAbortedError) as exc:
            error = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            error = "task cancelled: the server is shutting down"
        except Exception as exc:
            self._body_log.log(
                logging.WARNING,
                (type(task.impl), type(exc)),
                "task %s failed: %s",
                task.id,
                type(exc).__name__,
                exc_info=exc,
            )
            try:
                error = f"{type(exc).__name__} ({exc})"
            except Exception:
                error = "Failed to get error message"
        else:
            # A body that returns after an abort request still fails.
            error = ABORT_ERROR if task.abort_requested else None
        task.get_sync().runner = None
        await self._finish(task, error)

    def _running(self, task_id: UUID, action: str, reported: bool) -> Task:
        task = self._driven(task_id, reported)
        if task.state is not TaskState.RUNNING:
            hint = ": start it first" if task.state is TaskState.CREATED else ""
            raise InvalidStateError(
                f"cannot {action} task with id {task_id}: it is {task.state.value}{hint}"
            )
        return task

    async def finish_task(
        self, task_id: UUID, error: str | None, *, reported: bool = False
    ) -> TaskStatus:
        """Finishes a running task from outside its body (done, or failed with ``error``).

        A task with an abort pending fails with the abort error whatever ``error`` says.

        Raises:
            TaskNotFoundError: no such registered task here.
            InvalidStateError: the task is not running.
        """
        task = self._running(task_id, "finish", reported)
        if error is None and task.abort_requested:
            error = ABORT_ERROR
        await self._finish(task, error)
        return await self._status(task)

    async def fail_task(self, task_id: UUID, error: str) -> bool:
        """Fails a created or running task (its producer is gone); False if it had finished."""
        task = self._store.tasks.get(task_id.int)
        if task is None or task.state.is_complete:
            return False
        await self._finish(task, error)
        return True

    async def set_progress(self, task: Task, completed: float, total: float | None) -> None:
        """Records a task's own progress (used by its body or its producer)."""
        if total is None:
            total = known_total(task) or 0.0
        else:
            task.reported_total = total
        task.reported = Progress(completed, total)
        self._journal.progress(self.index, task)
        self._sample_pace(task, completed)
        await self._changed(task)

    async def report_progress(
        self, task_id: UUID, completed: float, total: float | None, *, reported: bool = False
    ) -> bool:
        """Records the progress of a running task by id; returns whether an abort is pending.

        Raises:
            InvalidArgumentError: negative or non-finite values, or completed above the total.
            InvalidStateError: the task is not running.
        """
        task = self._running(task_id, "report progress of", reported)
        check_progress(completed, total)
        effective_total = total if total is not None else known_total(task)
        if effective_total is not None and completed > effective_total:
            raise InvalidArgumentError(
                "completed", f"{completed:g} is above the total {effective_total:g}"
            )
        await self.set_progress(task, completed, total)
        return task.abort_requested

    async def _finish(self, task: Task, error: str | None) -> None:
        if task.state.is_complete:
            return
        before = task.state
        task.end_time = self._clock.now()
        task.state = TaskState.DONE if error is None else TaskState.FAILED
        task.error = error or ""
        self._store.finished(task, before)
        parent = task.regular_parent
        final: Progress | None = None
        if parent is not None:
            if task.internal and not task.live_children:
                record = await self._folded(task)
                folded, up = await self._peers[parent.shard].fold_child(parent.id, task.id, record)
                task.folded_into_parent = folded
                if folded:
                    final = record.status.progress
                    # Its id stays named by the parent's record; the records of
                    # its successful children are forgotten (only failed ones
                    # go up with it).
                    self._store.count_folded(task.id)
                    done = [f for f in task.folded_children or () if not f.has_failure]
                    await self._forget(forgotten_keys(done))
                else:  # the parent finished first and is gone
                    log.debug("task %s could not fold into parent %s", task.id, parent.id)
                await self._propagate(up)
            else:
                await self._propagate(parent)
        elif task.parent is not None:  # a virtual parent, which other nodes may watch
            self.host.virtual_child_finished(task.parent.id, await self._status(task))
            self.host.virtual_child_changed(task.parent.id)
        sync = task.sync
        if sync is not None and sync.done is not None and not sync.done.done():
            sync.done.set_result(None)
        task.impl.notify_finished(task.id)
        self._journal.record(self.index, task, final)
        if parent is not None or task.internal:
            task.expire_at = task.end_time
            self._store.unregister(task)
        else:
            ttl = self._ttl.user_task_ttl if task.impl.user_task else self._ttl.task_ttl
            task.expire_at = task.end_time + ttl
            if ttl <= 0:
                self._store.unregister(task)
            else:
                self._store.expire_later(ttl, task)
        self._bump(task, None)

    async def _folded(self, task: Task) -> FoldedTask:
        return folded_record(await self._status(task), task, self._node, self._max_children)

    # ---- abort down the tree -----------------------------------------------------------------

    async def abort(
        self, task_id: UUID, *, check_abortable: bool, request: AbortRequest | None = None
    ) -> list[ChildRef]:
        """Requests the abort of a task; returns its live children, to abort next.

        ``request`` says who asked, when and why (kept with the task while it
        is reachable, and shown in its status).

        Raises:
            TaskNotFoundError: ``check_abortable`` and no such registered task here.
            TaskNotAbortableError: ``check_abortable`` and the task is not abortable.
        """
        store = self._store
        task = store.tasks.get(task_id.int) if check_abortable else store.reachable(task_id)
        if task is None:
            if check_abortable:
                raise TaskNotFoundError(task_id)
            return []
        if check_abortable and not task.impl.abortable:
            raise TaskNotAbortableError(task_id)
        return await self._abort(task, request)

    async def _abort(self, task: Task, request: AbortRequest | None = None) -> list[ChildRef]:
        if task.abort_requested:
            return []  # a second abort is a no-op
        if not task.state.is_complete:
            task.abort_requested = True
            if request is not None:
                key = task.id.int
                self._store.aborts[key] = request
                self._journal.put(f"{ABORT_KEY}{key:032x}", abort_record(request))
            self._journal.record(self.index, task)
            if task.sync is not None and task.sync.abort_event is not None:
                task.sync.abort_event.set()
            task.impl.notify_abort(task.id)
            await self._changed(task)
        # Descendants are aborted whatever their own abortable flag says.
        return list((task.live_children or {}).items())

    async def wait_abort(self, task: Task) -> None:
        """Returns once an abort is requested for ``task`` (for its body)."""
        if task.abort_requested:
            return
        sync = task.get_sync()
        if sync.abort_event is None:
            sync.abort_event = asyncio.Event()
        await sync.abort_event.wait()

    # ---- release and unregistering ----------------------------------------------------------

    def _after_drop(self, children: list[ChildRef], forgotten: dict[int, list[int]]) -> None:
        # Called as a task leaves the registry (from a timer, too): its
        # children are released and the folded ids it named forgotten, in the
        # background, on whichever shards they are.
        self._spawn(self._release_all(children, forgotten))

    async def _release_all(
        self, children: Iterable[ChildRef], forgotten: dict[int, list[int]]
    ) -> None:
        await self._forget(forgotten)
        # Down the subtree one port call a task: a dropped task's held
        # children are dropped in turn, live ones only learn they are orphans.
        queue = deque(children)
        while queue:
            child_id, child_shard = queue.popleft()
            queue.extend(await self._peers[child_shard].release(child_id))

    async def _forget(self, forgotten: dict[int, list[int]]) -> None:
        for shard, keys in forgotten.items():
            await self._peers[shard].forget_folded(keys)

    async def forget_folded(self, keys: list[int]) -> None:
        """The last records naming these folded tasks of this shard were forgotten."""
        self._store.forget_folded(keys)

    async def release(self, task_id: UUID) -> list[ChildRef]:
        """Forgets a held task whose parent went away (or marks a live one orphaned).

        Returns the dropped task's own children, to release next.
        """
        return self._store.release(task_id)

    async def unregister_task(self, task_id: UUID) -> None:
        """Unregisters a task now, whatever its TTL."""
        task = self._store.tasks.get(task_id.int)
        if task is not None:
            self._store.unregister(task)

    async def drain(self, module: str) -> int:
        """Unregisters the module's finished regular tasks here; returns how many."""
        return self._store.drain(module)

    # ---- recovery ----------------------------------------------------------------------------

    def restore(
        self,
        tasks: dict[str, list[tuple[int, Task]]],
        folded: list[UUID],
        sequences: dict[str, int],
        aborts: dict[int, AbortRequest] | None = None,
    ) -> None:
        """Takes tasks rebuilt from the journal (see ``recovery``), before the node serves.

        Not a port method: recovery runs in the process that holds the
        shards; a shard of its own process would replay its own journal.
        """
        self._store.restore(tasks, folded, sequences, aborts)

    async def settle_restored(self, restarted_error: str) -> dict[str, int]:
        """Applies the restart to the restored tasks; returns counts by kind, for the log.

        A task whose body ran here fails with ``restarted_error`` (see
        ``TaskStore.settle_restored`` for the others).
        """
        ended, counts = self._store.settle_restored(self._clock.now())
        for task in ended:
            await self._finish(task, restarted_error)
        counts["failed by the restart"] = len(ended)
        return counts

    # ---- background work and lifetime --------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def runner() -> None:
            await coro

        bg = asyncio.get_running_loop().create_task(runner())
        self._background.add(bg)
        bg.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancels the bodies still running and the expiry timer."""
        self._store.expiry.cancel()
        runners = [t.runner for t in self._store.tasks.values() if t.runner is not None]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def stats_counts(self) -> dict[str, int]:
        """Counts of registered and held tasks (for tests and diagnostics)."""
        return {"registered": len(self._store.tasks), "held": len(self._store.held)}
