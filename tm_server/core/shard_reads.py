"""What a shard answers of its tasks: statuses, progress, listings, watches and changes.

The reading half of a shard (``shard.py`` holds the lifecycle): every method
here reads the shard's records and changes nothing in them but caches (a
rolled-up sum, a watch's shared status) and the pace of running tasks, which
is sampled as statuses are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from uuid import UUID

from .clock import Clock
from .feed import ChangeFeed
from .port import (
    Deadline,
    ProgressStep,
    ShardChanges,
    ShardPort,
    TreeNode,
    WatchChange,
)
from .progress import finish_step, first_step, leaf_progress, roll_up_from
from .rate import RateTracker
from .record import Task
from .status import build_status, children_page, list_entry, listed_children
from .store import TaskStore
from .types import (
    NO_PROGRESS,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskOwner,
    TaskState,
    TaskStats,
    TaskStatus,
)
from .watch import Watches


class ShardReads(ShardPort):
    """The reading methods of ``Shard`` (which sets these attributes)."""

    index: int
    _clock: Clock
    _node: str
    _max_children: int
    _peers: Sequence[ShardPort]
    _store: TaskStore
    _by_id: dict[int, Task]
    _watches: Watches
    _feed: ChangeFeed

    # ---- progress ----------------------------------------------------------------------------

    async def progress_step(self, task_id: UUID) -> ProgressStep:
        """The first step of a reachable task's progress; zero for a task that is gone."""
        task = self._store.reachable(task_id)
        return ProgressStep(NO_PROGRESS) if task is None else first_step(task)

    async def progress_done(self, task_id: UUID, version: int, children_sum: Progress) -> Progress:
        """Caches a roll-up's sum (if nothing changed since); returns the task's progress."""
        task = self._store.reachable(task_id)
        return children_sum if task is None else finish_step(task, version, children_sum)

    # ---- reading -----------------------------------------------------------------------------

    async def _status(self, task: Task) -> TaskStatus:
        # Every status read comes through here: a leaf (most tasks) costs no
        # further coroutine for its progress.
        abort = self._store.aborts.get(task.id.int) if task.abort_requested else None
        paces = self._store.paces
        if not task.live_children and not task.folded_children:
            own = leaf_progress(task)
            tracker = paces.get(task.id.int) if paces else None
            return build_status(
                task,
                self.index,
                self._node,
                own,
                abort=abort,
                pace=None if tracker is None else tracker.read(own.total),
            )
        step = first_step(task)
        progress = step.progress
        if progress is None:
            progress = await roll_up_from(self._peers, task.id, self.index, step)
        pace = None
        if task.state is TaskState.RUNNING:
            # A parent's pace is its rolled-up progress's, sampled as it is read.
            self._sample_pace(task, progress.completed)
            pace = paces[task.id.int].read(progress.total)
        children, count = listed_children(task, self._node, self._max_children)
        return build_status(task, self.index, self._node, progress, children, count, abort, pace)

    def _sample_pace(self, task: Task, completed: float) -> None:
        paces = self._store.paces
        key = task.id.int
        now = self._clock.now()
        pace = paces.get(key)
        if pace is None:
            # Anchored at the start with nothing done: the first report gives a rate.
            start = task.start_time
            pace = paces[key] = RateTracker(now if start is None else start, 0.0)
        pace.sample(now, completed)

    async def owner_of(self, task_id: UUID) -> TaskOwner | None:
        """A registered task's module and owner, or ``None`` when it is not here."""
        task = self._by_id.get(task_id.int)
        return None if task is None else TaskOwner(task.module, task.impl.owner)

    async def children_page(
        self, task_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[TaskIdentity], int] | None:
        """A page of a registered task's children by id, and how many it has.

        ``None`` when no such task is registered here.
        """
        task = self._store.tasks.get(task_id.int)
        return None if task is None else children_page(task, self._node, after, limit)

    async def find_status(self, task_id: UUID) -> TaskStatus | None:
        """Returns a registered task's status, or ``None`` when it is not here.

        One call where ``contains`` then a status read would be two: the
        manager asks shards this for every status read.
        """
        task = self._by_id.get(task_id.int)
        return None if task is None else await self._status(task)

    async def handle_status(self, task_id: UUID) -> TaskStatus | None:
        """The status of a task registered, held or handled here, or ``None``."""
        task = self._store.handled_task(task_id)
        return None if task is None else await self._status(task)

    async def wait_done(self, task_id: UUID) -> TaskStatus | None:
        """Waits until a task registered, held or handled here finishes; its final status."""
        task = self._store.handled_task(task_id)
        if task is None:
            return None
        # Shielded: the future is every waiter's, and one giving up (a
        # cancelled call) must not cancel it for the others.
        await asyncio.shield(self._done_future(task))
        return await self._status(task)

    def release_handle(self, task_id: UUID) -> None:
        """The last handle of a task went away: stop keeping it for one."""
        self._store.release_handle(task_id)

    async def abort_requested(self, task_id: UUID) -> bool:
        """Whether an abort was requested for a task registered, held or handled here."""
        task = self._store.handled_task(task_id)
        return task is not None and task.abort_requested

    async def get_tree_node(self, task_id: UUID) -> TreeNode | None:
        """Returns a reachable task's status and children, as recursive status walks them."""
        task = self._store.reachable(task_id)
        if task is None:
            return None
        return TreeNode(
            await self._status(task),
            tuple((task.live_children or {}).items()),
            tuple(task.folded_children or ()),
        )

    async def virtual_parents(self) -> list[UUID]:
        """The virtual tasks that tasks here have as their parent."""
        return [UUID(int=key) for key in self._store.virtual_children]

    async def virtual_children_of(self, parent_id: UUID) -> list[UUID]:
        """Ids of the registered tasks here whose parent is the virtual task ``parent_id``."""
        return list(self._store.virtual_children.get(parent_id.int, ()))

    async def list_tasks(
        self, module: str, flt: ListFilter, after: UUID | None, limit: int
    ) -> list[TaskStats]:
        """Up to ``limit`` matching tasks of the module, by id, after ``after``."""
        tasks = self._store.module(module).tasks
        keys = tasks.irange(minimum=None if after is None else after.int, inclusive=(False, False))
        out: list[TaskStats] = []
        for key in keys:
            task = tasks[key]
            if task.internal and not flt.internal:
                continue
            entry = list_entry(task, self.index)
            if flt.admits(entry, task.internal):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    # ---- waiting and watching ----------------------------------------------------------------

    def _done_future(self, task: Task) -> asyncio.Future[None]:
        sync = task.get_sync()
        if sync.done is None:
            sync.done = asyncio.get_running_loop().create_future()
            if task.state.is_complete:
                sync.done.set_result(None)
        return sync.done

    def watch(self, task_id: UUID, deadline: Deadline | None) -> AsyncGenerator[TaskStatus, None]:
        """Yields the task's status now and after every change, until it has finished.

        The generator is the shard's own (no layer of the caller's): with
        10,000 watchers woken by one change, a layer less is 10,000
        resumptions less.

        Raises:
            TaskNotFoundError: no such registered task (on the first step).
            ShuttingDownError: the server is stopping.
            WaitTimeoutError: ``deadline`` (injected clock) passed first.
        """
        return self._watches.follow(task_id, self._store.registered, self._status, deadline)

    def stop_watches(self) -> None:
        """Ends every watch on this shard with ``ShuttingDownError`` (server shutdown)."""
        self._watches.stop()
        self._feed.stop()

    async def change_head(self) -> int:
        """The number of the last change here."""
        return self._feed.head

    async def changes(self, module: str | None, after: int) -> ShardChanges:
        """The module's changes after ``after``, each with the task's entry now.

        Raises:
            CursorExpiredError: some of them left the window.
        """
        feed = self._feed
        head = feed.head
        by_id = self._by_id
        out: list[WatchChange] = []
        for change in feed.since(after):
            task = by_id.get(change.task_id.int) if change.gone is None else change.gone
            if not isinstance(task, Task) or (module is not None and task.module != module):
                continue
            out.append(
                WatchChange(change.kind, change.before, list_entry(task, self.index), change.seq)
            )
        return ShardChanges(head, tuple(out))

    def change_waiter(self, after: int) -> asyncio.Future[None]:
        """A future done once there is a change after ``after``, or the watches stop."""
        return self._feed.waiter(after)

    async def state_counts(self) -> dict[tuple[str, TaskState], int]:
        """Registered tasks here by module and state."""
        states = list(TaskState)
        return {
            (module, states[i]): n
            for module, counts in self._store.states.items()
            for i, n in enumerate(counts)
            if n
        }

    def watcher_count(self) -> int:
        """How many watch futures are parked on this shard's tasks (for leak checks)."""
        return self._watches.count()
