"""NodeService: what the other nodes of a cluster ask this one (internal)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tm_client.pb import node_pb2 as npb
from tm_client.pb import node_pb2_grpc as npb_grpc
from tm_server.core import TaskManager, TaskNotFoundError
from tm_server.core.types import AbortRequest

from .convert import (
    children_page_to_pb,
    duration_seconds,
    fill_status,
    require_uuid,
    virtual_child_to_pb,
)
from .handlers import Context, Servicer, streaming, unary


class NodeServicer(Servicer, npb_grpc.NodeServiceServicer):
    """Answers for this node's own tasks only: never asks another node again."""

    def __init__(self, manager: TaskManager) -> None:
        super().__init__()
        self._tm = manager

    @unary
    async def GetLocalStatus(
        self, request: npb.GetLocalStatusRequest, context: Context
    ) -> npb.GetLocalStatusResponse:
        """A regular task's status, if held here."""
        status = await self._tm.local_status(require_uuid("task_id", request.task_id))
        reply = npb.GetLocalStatusResponse(found=status is not None)
        if status is not None:
            fill_status(reply.status, status)
        return reply

    @streaming
    async def WaitLocal(
        self, request: npb.WaitLocalRequest, context: Context
    ) -> AsyncIterator[npb.WaitLocalResponse]:
        """A regular task's watch, if held here."""
        task_id = require_uuid("task_id", request.task_id)
        timeout = None
        if request.HasField("timeout"):
            timeout = duration_seconds("timeout", request.timeout)
        updates = await self._tm.open_local_watch(task_id, timeout)
        if updates is None:
            raise TaskNotFoundError(task_id)
        try:
            async for status in updates:
                reply = npb.WaitLocalResponse()
                fill_status(reply.status, status)
                yield reply
        finally:
            await updates.aclose()

    @unary
    async def AbortLocal(
        self, request: npb.AbortLocalRequest, context: Context
    ) -> npb.AbortLocalResponse:
        """Aborts a regular task, if held here."""
        # Who asked and why came from the node that was asked (the caller
        # here is that node); the time is this node's, where the abort happens.
        found = await self._tm.abort_local(
            require_uuid("task_id", request.task_id),
            AbortRequest(self._tm.clock.now(), request.reason, request.principal),
        )
        return npb.AbortLocalResponse(found=found)

    @streaming
    async def GetLocalTree(
        self, request: npb.GetLocalTreeRequest, context: Context
    ) -> AsyncIterator[npb.GetLocalTreeResponse]:
        """A regular task's tree, if held here."""
        task_id = require_uuid("task_id", request.task_id)
        if await self._tm.local_status(task_id) is None:
            raise TaskNotFoundError(task_id)
        async for depth, status in self._tm.local_tree(task_id):
            reply = npb.GetLocalTreeResponse(depth=depth)
            fill_status(reply.status, status)
            yield reply

    @unary
    async def ListLocalChildren(
        self, request: npb.ListLocalChildrenRequest, context: Context
    ) -> npb.ListLocalChildrenResponse:
        """A page of a regular task's children, if held here."""
        inner = request.request
        page = await self._tm.local_children_page(
            require_uuid("task_id", inner.task_id), inner.page_size, inner.page_token
        )
        if page is None:
            return npb.ListLocalChildrenResponse(found=False)
        reply = npb.ListLocalChildrenResponse(found=True)
        reply.page.CopyFrom(children_page_to_pb(*page))
        return reply

    @unary
    async def GetClusterChildren(
        self, request: npb.GetClusterChildrenRequest, context: Context
    ) -> npb.GetClusterChildrenResponse:
        """This node's children of a cluster task, with their creation times and progress."""
        children = await self._tm.virtual_children_statuses(
            require_uuid("parent_id", request.parent_id)
        )
        reply = npb.GetClusterChildrenResponse()
        for status in children:
            virtual_child_to_pb(reply.children.add(), status)
        return reply
