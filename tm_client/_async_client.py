"""The asyncio typed client: ``TaskManagerClient``'s methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

import grpc

from ._client import (
    DEFAULT_TARGET,
    _abort_request,
    _children_page,
    _list_request,
    _no_channel_and_credentials,
    _page,
)
from ._credentials import Credentials
from ._errors import DeadlineExceededError, UnavailableError, WaitTimeoutError, from_rpc_error
from ._resume import (
    DEFAULT_RESUME_SECONDS,
    DEFAULT_RETRY_SECONDS,
    TaskId,
    _Backoff,
    _Resume,
    unreachable,
)
from ._types import Node, TaskIdentity, TaskState, TaskStats, TaskStatus, state_filter, type_filter
from ._watch import AsyncTaskWatch, _WatchState
from .pb import task_manager_pb2 as pb
from .pb import task_manager_pb2_grpc as pb_grpc

T = TypeVar("T")


class AsyncTaskManagerClient:
    """The asyncio twin of ``TaskManagerClient``: the same methods, awaited.

    ``credentials`` and ``channel`` (an asyncio one) work as ``TaskManagerClient``'s,
    and so do ``resume_seconds`` and ``retry_seconds``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
        resume_seconds: float = DEFAULT_RESUME_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        _no_channel_and_credentials(channel, credentials)
        if channel is None:
            if credentials is None:
                credentials = Credentials.from_env()
            channel = credentials.aio_channel(target)
        self._channel = channel
        self._stub = pb_grpc.TaskManagerServiceStub(self._channel)
        self._timeout = timeout
        self._resume_seconds = resume_seconds
        self._retry_seconds = retry_seconds

    async def __aenter__(self) -> AsyncTaskManagerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close(None)

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Awaits a call that is safe to repeat, again while tm is unreachable."""
        backoff = _Backoff(self._retry_seconds)
        while True:
            try:
                return await call()
            except UnavailableError as exc:
                delay = backoff.next_delay() if unreachable(exc) else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _read(self, method: Any, request: Any) -> Any:
        return await self._retrying(lambda: self._unary(method, request))

    async def _stream(
        self, method: Any, request: Any, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def task(self, task_id: TaskId) -> AsyncTask:
        """Returns a handle on a task."""
        return AsyncTask(self, UUID(str(task_id)))

    async def list_modules(self) -> list[str]:
        """Returns the registered module names."""
        return list((await self._read(self._stub.ListModules, pb.ListModulesRequest())).modules)

    async def list_tasks_page(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
        page_token: str = "",
        states: Iterable[TaskState | str] = (),
        types: Iterable[str] = (),
    ) -> tuple[list[TaskStats], str]:
        """Returns one page of a module's tasks and the next page's token ("" at the end).

        ``states`` and ``types`` filter as ``TaskManagerClient.list_tasks_page``'s.
        """
        request = _list_request(
            module, internal, keyspace, table, page_size, page_token, states, types
        )
        return _page(await self._read(self._stub.ListModuleTasks, request))

    async def list_tasks(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
        states: Iterable[TaskState | str] = (),
        types: Iterable[str] = (),
    ) -> AsyncIterator[TaskStats]:
        """Iterates over all of a module's tasks, fetching pages as needed."""
        states, types = state_filter(states), type_filter(types)
        token = ""
        while True:
            entries, token = await self.list_tasks_page(
                module,
                internal=internal,
                keyspace=keyspace,
                table=table,
                page_size=page_size,
                page_token=token,
                states=states,
                types=types,
            )
            for entry in entries:
                yield entry
            if not token:
                return

    async def get_status(self, task_id: TaskId) -> TaskStatus:
        """Returns a task's status."""
        request = pb.GetTaskStatusRequest(task_id=str(task_id))
        return TaskStatus.from_pb((await self._read(self._stub.GetTaskStatus, request)).status)

    async def abort(self, task_id: TaskId, reason: str = "") -> None:
        """Requests the abort of a task and its descendants (``reason`` is optional)."""
        await self._read(self._stub.AbortTask, _abort_request(task_id, reason))

    async def watch(
        self, task_id: TaskId, *, timeout: float | None = None
    ) -> AsyncIterator[TaskStatus]:
        """Yields the task's status now and after every change, ending on its final state.

        A stream that breaks with ``UNAVAILABLE`` is resumed as ``TaskManagerClient.watch``
        resumes it.
        """
        state = _Resume(task_id, timeout, self._resume_seconds)
        while True:
            try:
                stream = self._stream(self._stub.WaitTask, state.request(), state.call_timeout())
                async for response in stream:
                    status = TaskStatus.from_pb(response.status)
                    if state.seen(status):
                        yield status
                state.ended()
                return
            except WaitTimeoutError:
                raise
            except DeadlineExceededError as exc:  # the client's deadline: tm did not answer
                raise state.unanswered(exc) from exc
            except UnavailableError:
                if state.final_seen:
                    return
                delay = state.broken()
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def wait(self, task_id: TaskId, *, timeout: float | None = None) -> TaskStatus:
        """Waits until the task finishes and returns its final status."""
        last: TaskStatus | None = None
        async for last in self.watch(task_id, timeout=timeout):  # noqa: B007
            pass
        assert last is not None
        return last

    def watch_tasks(
        self,
        module: str | None = None,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        states: Iterable[TaskState | str] = (),
        types: Iterable[str] = (),
        snapshot: bool = False,
        full_status: bool = False,
        cursor: str | None = None,
        resnapshot: bool = False,
    ) -> AsyncTaskWatch:
        """Watches the changes of a module's tasks, or of every module's.

        The same watch as ``TaskManagerClient.watch_tasks`` (the same
        arguments, resumes and errors), iterated with ``async for``.
        """
        state = _WatchState(
            module=module,
            internal=internal,
            keyspace=keyspace,
            table=table,
            states=states,
            types=types,
            snapshot=snapshot,
            full_status=full_status,
            cursor=cursor,
            resnapshot=resnapshot,
            patience=self._resume_seconds,
        )
        return AsyncTaskWatch(self._stub.WatchTasks, state)

    async def get_status_recursive(self, task_id: TaskId) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        request = pb.GetTaskStatusRecursiveRequest(task_id=str(task_id))

        async def read_all() -> list[TaskStatus]:
            return [
                TaskStatus.from_pb(r.status)
                async for r in self._stream(self._stub.GetTaskStatusRecursive, request)
            ]

        return await self._retrying(read_all)

    async def list_children_page(
        self, task_id: TaskId, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskIdentity], int, str]:
        """Returns one page of a task's children (by id), how many it has, and the next token."""
        request = pb.ListTaskChildrenRequest(
            task_id=str(task_id), page_size=page_size, page_token=page_token
        )
        return _children_page(await self._read(self._stub.ListTaskChildren, request))

    async def list_children(
        self, task_id: TaskId, *, page_size: int = 0
    ) -> AsyncIterator[TaskIdentity]:
        """Iterates over all of a task's children, fetching pages as needed."""
        token = ""
        while True:
            children, _, token = await self.list_children_page(
                task_id, page_size=page_size, page_token=token
            )
            for child in children:
                yield child
            if not token:
                return

    async def list_nodes(self) -> list[Node]:
        """Returns the cluster's nodes (a server without a cluster store lists itself)."""
        reply = await self._read(self._stub.ListNodes, pb.ListNodesRequest())
        return [Node.from_pb(n) for n in reply.nodes]

    async def get_ttl(self) -> int:
        """Returns task_ttl in seconds."""
        return int((await self._read(self._stub.GetTtl, pb.GetTtlRequest())).ttl_seconds)

    async def set_ttl(self, seconds: int) -> int:
        """Sets task_ttl; returns the previous value."""
        response = await self._unary(self._stub.SetTtl, pb.SetTtlRequest(ttl_seconds=seconds))
        return int(response.previous_ttl_seconds)

    async def get_user_ttl(self) -> int:
        """Returns user_task_ttl in seconds."""
        response = await self._read(self._stub.GetUserTtl, pb.GetUserTtlRequest())
        return int(response.user_ttl_seconds)

    async def set_user_ttl(self, seconds: int) -> int:
        """Sets user_task_ttl; returns the previous value."""
        request = pb.SetUserTtlRequest(user_ttl_seconds=seconds)
        return int((await self._unary(self._stub.SetUserTtl, request)).previous_user_ttl_seconds)

    async def drain(self, module: str) -> int:
        """Unregisters the module's finished tasks; returns how many."""
        request = pb.DrainModuleTasksRequest(module=module)
        return int((await self._unary(self._stub.DrainModuleTasks, request)).drained_count)


class AsyncTask:
    """A handle on one task of an ``AsyncTaskManagerClient``."""

    def __init__(self, client: AsyncTaskManagerClient, task_id: UUID) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncTask({self.id})"

    async def status(self) -> TaskStatus:
        """Returns the task's status."""
        return await self.client.get_status(self.id)

    async def abort(self, reason: str = "") -> None:
        """Requests the abort of the task and its descendants (``reason`` is optional)."""
        await self.client.abort(self.id, reason)

    def watch(self, *, timeout: float | None = None) -> AsyncIterator[TaskStatus]:
        """Yields status updates until the task finishes."""
        return self.client.watch(self.id, timeout=timeout)

    async def wait(self, *, timeout: float | None = None) -> TaskStatus:
        """Waits for the final status."""
        return await self.client.wait(self.id, timeout=timeout)

    async def tree(self) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        return await self.client.get_status_recursive(self.id)

    async def children(self) -> list[TaskIdentity]:
        """Returns all the task's children (by id), however many."""
        return [child async for child in self.client.list_children(self.id)]
