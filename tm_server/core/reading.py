"""Reading tasks across a node: statuses, children, trees and module listings.

The reading half of ``TaskManager`` (the base of its waiting half): every
read looks an id up the one way, the id's home shard first, then the other
shards, the virtual groups and last the cluster's other nodes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from uuid import UUID

from .errors import TaskNotFoundError
from .listing import list_page
from .node_tasks import NodeTasks
from .paging import PagePosition, PageTokens
from .remote import RemoteTasks
from .types import ListFilter, TaskIdentity, TaskStats, TaskStatus
from .validation import check_filter, check_page_size


class Reading(NodeTasks):
    """Reads over a node's shards, virtual groups and peers (``TaskManager`` sets them up)."""

    _page_tokens: PageTokens

    # What the manager provides, read here.

    @property
    def remote(self) -> RemoteTasks | None:
        """The cluster's other nodes (``TaskManager``'s)."""
        raise NotImplementedError

    async def _check_module(self, name: str) -> None:
        raise NotImplementedError

    async def get_status(self, task_id: UUID) -> TaskStatus:
        """Returns a task's status: regular tasks first, then the virtual groups.

        Raises:
            TaskNotFoundError: unknown id.
        """
        # The hot path of status reads: one call a shard in the lookup order,
        # the first found wins (creation keeps ids unique across shards).
        for shard in self._orders[task_id.int % len(self._shards)]:
            status = await shard.find_status(task_id)
            if status is not None:
                return status
        status = await self._groups.status(task_id)
        if status is None and self.remote is not None:
            status = await self.remote.get_status(task_id)
        if status is None:
            raise TaskNotFoundError(task_id)
        return status

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
        pos = self._page_tokens.decode(page_token, scope, None, len(self._shards))
        after = None if pos is None else pos.after
        page: list[TaskIdentity] | None = None
        count = 0
        for shard in self._probe(task_id):
            found = await shard.children_page(task_id, after, size + 1)
            if found is not None:
                page, count = found
                break
        if page is None:
            found = await self._groups.children_page(task_id, after, size + 1)
            if found is None:
                elsewhere = None
                if self.remote is not None:
                    elsewhere = await self.remote.children_page(task_id, page_size, page_token)
                if elsewhere is None:
                    raise TaskNotFoundError(task_id)
                return elsewhere
            page, count = found
        if len(page) <= size:
            return page, count, ""
        page = page[:size]
        token = self._page_tokens.encode(scope, None, PagePosition(0, 0, page[-1].task_id))
        return page, count, token

    async def get_status_recursive(self, task_id: UUID) -> AsyncGenerator[TaskStatus, None]:
        """Yields the task and all its descendants in ScyllaDB's BFS order.

        Within each parent, live children come first (in creation order), then
        folded ones in finishing order; a folded task's children are its failed
        descendants. A virtual root's children are this node's tasks under it
        (or whatever its group's ``walk`` gives: a cluster's, every node's).

        Raises:
            TaskNotFoundError: unknown id.
        """
        async for _, status in await self.tree_levels(task_id):
            yield status

    async def tree_levels(self, task_id: UUID) -> AsyncIterator[tuple[int, TaskStatus]]:
        """``get_status_recursive`` with each status's depth (the root's is 0).

        Raises:
            TaskNotFoundError: unknown id (when the stream is read).
        """
        if await self._locate(task_id) is not None:
            return self.local_tree(task_id)
        found = await self._groups.find(task_id)
        if found is not None:
            walk = found[0].walk(task_id, found[1])
            if walk is not None:
                return walk
            return self.local_tree(task_id)
        if self.remote is not None:
            elsewhere = await self.remote.tree(task_id)
            if elsewhere is not None:
                return elsewhere
        return self.local_tree(task_id)  # raises TaskNotFoundError when read

    async def list_module_tasks(
        self, module: str, flt: ListFilter, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskStats], str]:
        """Returns one page of a module's tasks and the token of the next page ("" at the end).

        See ``listing.list_page`` for the order and the page bounds.

        Raises:
            InvalidArgumentError: bad page size or token.
            UnknownModuleError: no such module.
        """
        size = check_page_size(page_size)
        await self._check_module(module)
        check_filter(flt)
        return await list_page(
            self._shards, self._groups, self._page_tokens, module, flt, size, page_token
        )
