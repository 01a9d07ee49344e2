"""The remote port: regular tasks that other nodes of a cluster hold, reached by id.

A node's manager asks this port last, when neither its shards nor its virtual
groups know an id, so that any node answers for any task (clients may sit
behind one address or a load balancer). What stands behind it (gRPC calls to
the live nodes of a cluster) is the cluster layer's; the core sees only ids
and plain data.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol
from uuid import UUID

from .types import AbortRequest, TaskIdentity, TaskStatus


class RemoteTasks(Protocol):
    """Regular tasks held by other nodes.

    Each method answers ``None`` (or False) when no other node holds the id.
    """

    async def get_status(self, task_id: UUID) -> TaskStatus | None:
        """The task's status from the node that holds it."""

    async def watch(
        self, task_id: UUID, timeout: float | None
    ) -> AsyncGenerator[TaskStatus, None] | None:
        """The task's status stream (as ``TaskManager.watch_task``) from its node."""

    async def abort(self, task_id: UUID, request: AbortRequest | None = None) -> bool:
        """Requests the abort on the task's node (who asked, why); False if no node holds it."""

    async def tree(self, task_id: UUID) -> AsyncIterator[tuple[int, TaskStatus]] | None:
        """The task's tree, as (depth, status) in BFS order, from its node."""

    async def children_page(
        self, task_id: UUID, page_size: int, page_token: str
    ) -> tuple[list[TaskIdentity], int, str] | None:
        """A page of the task's children, from its node."""
