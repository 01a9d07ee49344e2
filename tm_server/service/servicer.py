"""TaskManagerService: decodes requests, calls the core, encodes replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc
from tm_server.core import TaskManager, TaskStatus

from .auth import caller_name
from .convert import (
    children_page_to_pb,
    duration_seconds,
    fill_status,
    filter_from_pb,
    nodes_to_pb,
    page_to_pb,
    require_uuid,
    watch_batch_to_pb,
)
from .handlers import Context, Servicer, streaming, unary

#: Statuses of a recursive status stream encoded ahead of their writes.
_RECURSIVE_BATCH = 256


class NodeView(Protocol):
    """What a listing of nodes shows of each (the cluster store's rows are these)."""

    @property
    def name(self) -> str:
        """The node's name."""

    @property
    def address(self) -> str:
        """Where it is reached."""

    @property
    def version(self) -> str:
        """The tm version it runs."""

    @property
    def started_at(self) -> float:
        """When it joined (epoch seconds)."""

    @property
    def heartbeat_at(self) -> float:
        """When its heartbeat was last renewed."""

    @property
    def left(self) -> bool:
        """Whether it left cleanly."""

    @property
    def alive(self) -> bool:
        """Whether its heartbeat is fresh."""


class TaskManagerServicer(Servicer, pb_grpc.TaskManagerServiceServicer):
    """The public API, one RPC per ScyllaDB /task_manager endpoint."""

    def __init__(
        self, manager: TaskManager, nodes: Callable[[], Awaitable[Sequence[NodeView]]]
    ) -> None:
        super().__init__()
        self._tm = manager
        self._nodes = nodes
        self._last_wait: tuple[TaskStatus, pb.WaitTaskResponse] | None = None

    @unary
    async def ListModules(
        self, request: pb.ListModulesRequest, context: Context
    ) -> pb.ListModulesResponse:
        """Lists module names."""
        return pb.ListModulesResponse(modules=await self._tm.list_modules())

    @unary
    async def ListModuleTasks(
        self, request: pb.ListModuleTasksRequest, context: Context
    ) -> pb.ListModuleTasksResponse:
        """Lists one page of a module's tasks."""
        entries, token = await self._tm.list_module_tasks(
            request.module,
            filter_from_pb(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return page_to_pb(entries, token)

    @unary
    async def GetTaskStatus(
        self, request: pb.GetTaskStatusRequest, context: Context
    ) -> pb.GetTaskStatusResponse:
        """Returns a task's status."""
        status = await self._tm.get_status(require_uuid("task_id", request.task_id))
        response = pb.GetTaskStatusResponse()
        fill_status(response.status, status)
        return response

    @unary
    async def AbortTask(
        self, request: pb.AbortTaskRequest, context: Context
    ) -> pb.AbortTaskResponse:
        """Requests the abort of a task and its descendants."""
        await self._tm.abort_task(
            require_uuid("task_id", request.task_id), reason=request.reason, principal=caller_name()
        )
        return pb.AbortTaskResponse()

    @streaming
    async def WaitTask(
        self, request: pb.WaitTaskRequest, context: Context
    ) -> AsyncIterator[pb.WaitTaskResponse]:
        """Streams status updates until the task finishes, times out or the server stops.

        An unset timeout waits as long as it takes; zero sends the current
        status, then DEADLINE_EXCEEDED unless the task has finished. The
        timeout runs on the core's clock, and a stream costs no helper task;
        shutdown ends the core's watches (``ShuttingDownError``, UNAVAILABLE).
        """
        task_id = require_uuid("task_id", request.task_id)
        timeout = (
            duration_seconds("timeout", request.timeout) if request.HasField("timeout") else None
        )
        updates = await self._tm.open_watch(task_id, timeout)
        try:
            async for status in updates:
                yield self._wait_response(status)
        finally:
            # However the stream ended (the client went away included), release
            # the watch so nothing stays parked on the task.
            await updates.aclose()

    def _wait_response(self, status: TaskStatus) -> pb.WaitTaskResponse:
        # Watchers woken by one change share one status object: encode it once
        # for all of them (10,000 watchers of a task finishing need one encoding).
        cached = self._last_wait
        if cached is not None and cached[0] is status:
            return cached[1]
        response = pb.WaitTaskResponse()
        fill_status(response.status, status)
        self._last_wait = (status, response)
        return response

    @streaming
    async def WatchTasks(  # type: ignore[override]
        self, request: pb.WatchTasksRequest, context: Context
    ) -> AsyncIterator[bytes | pb.WatchTasksResponse]:
        """Streams a module's task changes (see ``module_watch``).

        Every watcher sent the same batch shares its encoding: the batch
        keeps it, and the method's serializer passes bytes through
        (``sends_encoded``).
        """
        batches = await self._tm.open_module_watch(
            request.module or None,
            filter_from_pb(request),
            snapshot=request.snapshot,
            full_status=request.full_status,
            cursor=request.cursor,
        )
        try:
            async for batch in batches:
                wire = batch.wire
                if not isinstance(wire, bytes):
                    wire = batch.wire = watch_batch_to_pb(batch).SerializeToString()
                yield wire
        finally:
            await batches.aclose()

    WatchTasks.sends_encoded = True  # type: ignore[attr-defined]

    @streaming
    async def GetTaskStatusRecursive(
        self, request: pb.GetTaskStatusRecursiveRequest, context: Context
    ) -> AsyncIterator[pb.GetTaskStatusRecursiveResponse]:
        """Streams the task and its descendants in BFS order.

        Statuses are computed and encoded ``_RECURSIVE_BATCH`` at a time, then
        written: interleaving one status's work with each write cost about
        three times that work in server CPU a message (measured: 157 vs
        106 us a message against 65 for a bare stream), as grpcio's write
        path runs cold after it.
        """
        task_id = require_uuid("task_id", request.task_id)
        batch: list[pb.GetTaskStatusRecursiveResponse] = []
        async for status in self._tm.get_status_recursive(task_id):
            response = pb.GetTaskStatusRecursiveResponse()
            fill_status(response.status, status)
            batch.append(response)
            if len(batch) == _RECURSIVE_BATCH:
                for response in batch:
                    yield response
                batch.clear()
        for response in batch:
            yield response

    @unary
    async def GetTtl(self, request: pb.GetTtlRequest, context: Context) -> pb.GetTtlResponse:
        """Returns task_ttl."""
        return pb.GetTtlResponse(ttl_seconds=self._tm.task_ttl)

    @unary
    async def SetTtl(self, request: pb.SetTtlRequest, context: Context) -> pb.SetTtlResponse:
        """Sets task_ttl; returns the previous value."""
        previous = await self._tm.set_task_ttl(request.ttl_seconds)
        return pb.SetTtlResponse(previous_ttl_seconds=previous)

    @unary
    async def GetUserTtl(
        self, request: pb.GetUserTtlRequest, context: Context
    ) -> pb.GetUserTtlResponse:
        """Returns user_task_ttl."""
        return pb.GetUserTtlResponse(user_ttl_seconds=self._tm.user_task_ttl)

    @unary
    async def SetUserTtl(
        self, request: pb.SetUserTtlRequest, context: Context
    ) -> pb.SetUserTtlResponse:
        """Sets user_task_ttl; returns the previous value."""
        previous = await self._tm.set_user_task_ttl(request.user_ttl_seconds)
        return pb.SetUserTtlResponse(previous_user_ttl_seconds=previous)

    @unary
    async def DrainModuleTasks(
        self, request: pb.DrainModuleTasksRequest, context: Context
    ) -> pb.DrainModuleTasksResponse:
        """Unregisters a module's finished tasks."""
        count = await self._tm.drain(request.module)
        return pb.DrainModuleTasksResponse(drained_count=count)

    @unary
    async def ListTaskChildren(
        self, request: pb.ListTaskChildrenRequest, context: Context
    ) -> pb.ListTaskChildrenResponse:
        """Lists one page of a task's children."""
        children, count, token = await self._tm.list_children(
            require_uuid("task_id", request.task_id),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return children_page_to_pb(children, count, token)

    @unary
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: Context
    ) -> pb.ListNodesResponse:
        """Lists the cluster's nodes."""
        return nodes_to_pb(await self._nodes())
