"""The other nodes of the cluster, asked through their NodeService.

``Peers`` is what the manager's remote port (``core.remote.RemoteTasks``) and
the cluster tasks use to reach the live nodes: a regular task another node
holds is found by asking them all at once, and a cluster task's children are
gathered from each. A node that does not answer within ``timeout`` seconds is
reported as unreachable, never waited on for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tm_client import from_rpc_error
from tm_client.pb import node_pb2 as npb
from tm_client.pb import node_pb2_grpc as npb_grpc
from tm_client.pb import task_manager_pb2 as pb
from tm_server.core import (
    NodeUnavailableError,
    TaskIdentity,
    TaskManagerError,
    TaskNotAbortableError,
    TaskNotFoundError,
    TaskStatus,
    VirtualChild,
    WaitTimeoutError,
)
from tm_server.core.types import AbortRequest
from tm_server.service.convert import (
    lease_duration,
    require_uuid,
    status_from_pb,
    virtual_child_from_pb,
)

from .membership import Membership
from .store import NodeRow

T = TypeVar("T")


def _core_error(exc: grpc.RpcError, node: str, task_id: UUID) -> TaskManagerError:
    """The domain error a node answered with, as this node raises it again."""
    error = from_rpc_error(exc)
    if error.reason == "TASK_NOT_FOUND":
        return TaskNotFoundError(task_id)
    if error.reason == "TASK_NOT_ABORTABLE":
        return TaskNotAbortableError(task_id)
    if error.reason == "WAIT_TIMEOUT":
        return WaitTimeoutError(task_id)
    return NodeUnavailableError(node, error.message)


async def node_answers(
    address: str, timeout: float, channels: Callable[[str], grpc.aio.Channel] | None = None
) -> bool:
    """Whether a tm node at ``address`` answers a health check within ``timeout`` seconds."""
    async with (channels or grpc.aio.insecure_channel)(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _relay(
    call: Any, node: str, task_id: UUID, decode: Callable[[Any], T]
) -> AsyncGenerator[T, None]:
    """A node's answer stream, decoded, with its errors as this node raises them."""
    try:
        async for reply in call:
            yield decode(reply)
    except grpc.RpcError as exc:
        raise _core_error(exc, node, task_id) from None
    finally:
        call.cancel()


class Peers:
    """Channels to the other live nodes; implements the manager's ``RemoteTasks``."""

    def __init__(
        self,
        membership: Membership,
        *,
        timeout: float = 2.0,
        channels: Callable[[str], grpc.aio.Channel] | None = None,
        on_unreachable: Callable[[str, int], None] | None = None,
        kept: Callable[[UUID], Awaitable[TaskStatus | None]] | None = None,
    ) -> None:
        self._membership = membership
        # The final status the store keeps of a cluster task's child that
        # finished on its node: what answers for it once no live node holds it.
        self._kept = kept
        self.timeout = timeout
        # Told (operation, how many) when live nodes do not answer in time.
        self._on_unreachable = on_unreachable
        self._open_channel = channels or grpc.aio.insecure_channel
        # The stubs are typed for the blocking API: their asyncio calls are Any here.
        self._stubs: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    def _stub(self, node: NodeRow) -> Any:
        known = self._stubs.get(node.address)
        if known is None:
            channel = self._open_channel(node.address)
            known = self._stubs[node.address] = (channel, npb_grpc.NodeServiceStub(channel))
        return known[1]

    async def close(self) -> None:
        """Closes the channels."""
        for channel, _ in self._stubs.values():
            await channel.close(None)
        self._stubs.clear()

    async def _each(
        self, operation: str, call: Callable[[Any], Awaitable[T]]
    ) -> tuple[list[tuple[NodeRow, T]], list[str]]:
        """Calls every live peer at once; the answers, and the nodes that gave none in time."""
        peers = await self._membership.alive_peers()

        async def one(node: NodeRow) -> T:
            return await asyncio.wait_for(call(self._stub(node)), self.timeout)

        results = await asyncio.gather(*(one(n) for n in peers), return_exceptions=True)
        answers: list[tuple[NodeRow, T]] = []
        unreachable: list[str] = []
        for node, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                unreachable.append(node.name)
            else:
                answers.append((node, result))
        if unreachable and self._on_unreachable is not None:
            self._on_unreachable(operation, len(unreachable))
        return answers, unreachable

    async def _owner(self, task_id: UUID) -> tuple[NodeRow, TaskStatus] | None:
        request = npb.GetLocalStatusRequest(task_id=str(task_id))
        answers, _ = await self._each("GetLocalStatus", lambda stub: stub.GetLocalStatus(request))
        for node, reply in answers:
            if reply.found:
                return node, status_from_pb(reply.status)
        return None

    # ---- RemoteTasks -------------------------------------------------------------------------

    async def get_status(self, task_id: UUID) -> TaskStatus | None:
        """The status from the node that holds the task (else the final one the store keeps)."""
        found = await self._owner(task_id)
        if found is not None:
            return found[1]
        return None if self._kept is None else await self._kept(task_id)

    async def watch(
        self, task_id: UUID, timeout: float | None
    ) -> AsyncGenerator[TaskStatus, None] | None:
        """The task's stream from the node that holds it."""
        found = await self._owner(task_id)
        if found is None:
            kept = None if self._kept is None else await self._kept(task_id)
            return None if kept is None else _once(kept)
        node = found[0]
        request = npb.WaitLocalRequest(task_id=str(task_id))
        if timeout is not None:
            request.timeout.CopyFrom(lease_duration(timeout))
        call = self._stub(node).WaitLocal(request)
        return _relay(call, node.name, task_id, lambda reply: status_from_pb(reply.status))

    async def abort(self, task_id: UUID, request: AbortRequest | None = None) -> bool:
        """Aborts the task on the node that holds it, with who asked and why."""
        found = await self._owner(task_id)
        if found is None:
            return False
        message = npb.AbortLocalRequest(task_id=str(task_id))
        if request is not None:
            message.reason = request.reason
            message.principal = request.principal
        try:
            reply = await self._stub(found[0]).AbortLocal(message, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _core_error(exc, found[0].name, task_id) from None
        return bool(reply.found)

    async def tree(self, task_id: UUID) -> AsyncIterator[tuple[int, TaskStatus]] | None:
        """The task's tree from the node that holds it."""
        found = await self._owner(task_id)
        if found is None:
            return None
        return self.subtree(found[0], task_id)

    def subtree(self, node: NodeRow, task_id: UUID) -> AsyncGenerator[tuple[int, TaskStatus], None]:
        """The tree of a regular task a given node holds, as (depth, status)."""
        call = self._stub(node).GetLocalTree(npb.GetLocalTreeRequest(task_id=str(task_id)))
        return _relay(
            call, node.name, task_id, lambda reply: (reply.depth, status_from_pb(reply.status))
        )

    async def children_page(
        self, task_id: UUID, page_size: int, page_token: str
    ) -> tuple[list[TaskIdentity], int, str] | None:
        """A page of the task's children from the node that holds it."""
        request = npb.ListLocalChildrenRequest(
            request=pb.ListTaskChildrenRequest(
                task_id=str(task_id), page_size=page_size, page_token=page_token
            )
        )
        answers, _ = await self._each(
            "ListLocalChildren", lambda stub: stub.ListLocalChildren(request)
        )
        for _, reply in answers:
            if reply.found:
                children = [
                    TaskIdentity(require_uuid("task_id", c.task_id), c.node)
                    for c in reply.page.children
                ]
                return children, reply.page.children_count, reply.page.next_page_token
        return None

    # ---- cluster tasks -----------------------------------------------------------------------

    async def cluster_children(self, parent_id: UUID) -> tuple[list[VirtualChild], list[str]]:
        """The other nodes' children of a cluster task, and the nodes that did not answer."""
        request = npb.GetClusterChildrenRequest(parent_id=str(parent_id))
        answers, unreachable = await self._each(
            "GetClusterChildren", lambda stub: stub.GetClusterChildren(request)
        )
        children = [
            virtual_child_from_pb(c, node.name) for node, reply in answers for c in reply.children
        ]
        return children, unreachable

    def node(self, name: str) -> NodeRow | None:
        """A peer by name, alive at the last read of the nodes (a walk's gather just did one)."""
        return self._membership.known_peer(name)


async def _once(status: TaskStatus) -> AsyncGenerator[TaskStatus, None]:
    # A finished task's watch: its final status, and the end.
    yield status
