"""A node's tasks over its shards: the one lookup order, and what other nodes ask of them.

The base of ``TaskManager``: it holds the shards' ports and the virtual
groups, finds the shard that holds an id (its home shard first, then the
others), and answers the node-local questions a cluster's peers ask (this
node's status of an id, its children of a virtual task, its part of a tree),
which never look beyond this node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Sequence
from uuid import UUID

from .clock import Clock
from .errors import InvalidArgumentError, TaskNotFoundError
from .port import ChildRef, Deadline, ShardPort
from .types import AbortRequest, FoldedTask, TaskIdentity, TaskOwner, TaskStatus
from .virtual import VirtualGroups


class NodeTasks:
    """This node's shards and virtual groups, reached in the one lookup order."""

    def __init__(
        self, ports: Sequence[ShardPort], groups: VirtualGroups, clock: Clock, node: str
    ) -> None:
        self.clock = clock
        self.node = node
        self._shards: tuple[ShardPort, ...] = tuple(ports)
        # The one lookup order, per home shard: that shard first, then the others.
        self._orders = tuple(
            (home, *(p for p in self._shards if p is not home)) for home in self._shards
        )
        self._groups = groups

    # ---- virtual tasks' children on this node ------------------------------------------------

    def virtual_child_changed(self, parent_id: UUID) -> None:
        """Tells the virtual groups that a child of ``parent_id`` here changed."""
        self._groups.child_changed(parent_id)

    def virtual_child_finished(self, parent_id: UUID, status: TaskStatus) -> None:
        """Tells the virtual groups that a child of ``parent_id`` here finished."""
        self._groups.child_finished(parent_id, status)

    async def get_children(self, parent_id: UUID) -> list[TaskIdentity]:
        """Identities of this node's tasks whose parent is the virtual task ``parent_id``."""
        out: list[TaskIdentity] = []
        for shard in self._shards:
            out.extend(
                TaskIdentity(c, self.node) for c in await shard.virtual_children_of(parent_id)
            )
        return out

    async def virtual_children_statuses(self, parent_id: UUID) -> list[TaskStatus]:
        """Statuses of this node's tasks whose parent is the virtual task ``parent_id``."""
        out: list[TaskStatus] = []
        for shard in self._shards:
            for child in await shard.virtual_children_of(parent_id):
                status = await shard.find_status(child)
                if status is not None:
                    out.append(status)
        return out

    async def virtual_parents(self) -> set[UUID]:
        """The virtual tasks that tasks of this node have as their parent."""
        return {parent for shard in self._shards for parent in await shard.virtual_parents()}

    async def abort_virtual_children(
        self, parent_id: UUID, request: AbortRequest | None = None
    ) -> None:
        """Aborts this node's children of the virtual task ``parent_id``, and their trees.

        Their own abortable flags do not matter, as for any descendant;
        ``request`` (who asked, when, why) is kept with each.
        """
        children = [
            (child, shard.index)
            for shard in self._shards
            for child in await shard.virtual_children_of(parent_id)
        ]
        await self._abort_all(children, request)

    # ---- this node's tasks only (what other nodes ask) ---------------------------------------

    async def local_status(self, task_id: UUID) -> TaskStatus | None:
        """A regular task's status if this node holds it."""
        for shard in self._probe(task_id):
            status = await shard.find_status(task_id)
            if status is not None:
                return status
        return None

    async def open_local_watch(
        self, task_id: UUID, timeout: float | None
    ) -> AsyncGenerator[TaskStatus, None] | None:
        """A regular task's watch (as ``open_watch``) if this node holds it."""
        shard = await self._locate(task_id)
        if shard is None:
            return None
        deadline = None if timeout is None else Deadline(self.clock.now() + timeout, timeout)
        return shard.watch(task_id, deadline)

    async def abort_local(self, task_id: UUID, request: AbortRequest | None = None) -> bool:
        """Aborts a regular task this node holds (as ``abort_task``); False if it holds none."""
        shard = await self._locate(task_id)
        if shard is None:
            return False
        children = await shard.abort(task_id, check_abortable=True, request=request)
        await self._abort_all(
            children, None if request is None else request._replace(origin=task_id)
        )
        return True

    async def task_owner(self, task_id: UUID) -> TaskOwner | None:
        """A regular task's module and owner if this node holds it (for access checks)."""
        for shard in self._probe(task_id):
            found = await shard.owner_of(task_id)
            if found is not None:
                return found
        return None

    # ---- lookup ------------------------------------------------------------------------------

    def home_shard(self, task_id: UUID) -> int:
        """The shard a task goes to when its creator names none (spreads ids evenly)."""
        return task_id.int % len(self._shards)

    def _probe(self, task_id: UUID) -> tuple[ShardPort, ...]:
        # The one lookup order: the id's home shard (where reported tasks land
        # unless told otherwise) first, then the others.
        return self._orders[task_id.int % len(self._shards)]

    async def _locate(self, task_id: UUID) -> ShardPort | None:
        for shard in self._probe(task_id):
            if await shard.contains(task_id):
                return shard
        return None

    async def _owner(self, task_id: UUID) -> ShardPort:
        shard = await self._locate(task_id)
        if shard is None:
            raise TaskNotFoundError(task_id)
        return shard

    def _port(self, shard: int) -> ShardPort:
        if not 0 <= shard < len(self._shards):
            raise InvalidArgumentError(
                "shard", f"must be between 0 and {len(self._shards) - 1}, got {shard}"
            )
        return self._shards[shard]

    async def local_tree(self, task_id: UUID) -> AsyncGenerator[tuple[int, TaskStatus], None]:
        """This node's part of a tree, as (depth, status) in BFS order.

        For a regular root, its whole tree (a regular task's children are on
        its node); for a virtual one, the virtual task and this node's tasks
        under it.

        Raises:
            TaskNotFoundError: unknown id.
        """
        queue: deque[tuple[int, ChildRef | FoldedTask]] = deque()
        shard = await self._locate(task_id)
        if shard is not None:
            root = await shard.get_tree_node(task_id)
            if root is None:
                raise TaskNotFoundError(task_id)
            yield 0, root.status
            queue.extend((1, c) for c in root.live_children)
            queue.extend((1, f) for f in root.folded_children)
        else:
            status = await self._groups.status(task_id)
            if status is None:
                raise TaskNotFoundError(task_id)
            yield 0, status
            for port in self._shards:
                queue.extend((1, (c, port.index)) for c in await port.virtual_children_of(task_id))
        while queue:
            depth, item = queue.popleft()
            if isinstance(item, FoldedTask):
                yield depth, item.status
                queue.extend((depth + 1, f) for f in item.failed_children)
                continue
            child_id, child_shard = item
            node = await self._shards[child_shard].get_tree_node(child_id)
            if node is None:
                continue  # already gone
            yield depth, node.status
            queue.extend((depth + 1, c) for c in node.live_children)
            queue.extend((depth + 1, f) for f in node.folded_children)

    async def _abort_all(
        self, children: Sequence[ChildRef], request: AbortRequest | None = None
    ) -> None:
        # Down the tree one port call a task, breadth first, whatever the
        # children's own abortable flags say; each descendant is told whose
        # abort reached it (``request.origin``).
        queue = deque(children)
        while queue:
            child_id, child_shard = queue.popleft()
            queue.extend(
                await self._shards[child_shard].abort(
                    child_id, check_abortable=False, request=request
                )
            )
