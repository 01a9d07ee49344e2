"""Typed clients over the tm.v1 stubs: a sync one and an asyncio one with the same methods."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self
from uuid import UUID

import grpc
from google.protobuf import duration_pb2

from ._credentials import Credentials
from ._errors import InternalError, UnavailableError, from_rpc_error
from ._types import Node, TaskIdentity, TaskStats, TaskStatus
from .pb import task_manager_pb2 as pb
from .pb import task_manager_pb2_grpc as pb_grpc
from .pb import task_manager_test_pb2 as test_pb
from .pb import task_manager_test_pb2_grpc as test_pb_grpc

TaskId = str | UUID
DEFAULT_TARGET = "127.0.0.1:50051"
#: How long ``watch()`` and ``wait()`` keep trying to resume a broken stream.
DEFAULT_RESUME_SECONDS = 30.0


class _Backoff:
    """Exponential backoff with full jitter, until ``patience`` seconds have passed."""

    def __init__(self, patience: float) -> None:
        self._deadline = time.monotonic() + patience
        self._delay = 0.05

    def next_delay(self) -> float | None:
        """How long to wait before the next try; ``None`` once patience is spent."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            return None
        delay = min(left, random.uniform(0, self._delay))
        self._delay = min(self._delay * 2, 2.0)
        return delay

    def sleep(self) -> bool:
        """Sleeps before the next try; False (without sleeping) once patience is spent."""
        delay = self.next_delay()
        if delay is None:
            return False
        time.sleep(delay)
        return True


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _list_request(
    module: str, internal: bool, keyspace: str, table: str, page_size: int, page_token: str
) -> pb.ListModuleTasksRequest:
    return pb.ListModuleTasksRequest(
        module=module,
        internal=internal,
        keyspace=keyspace,
        table=table,
        page_size=page_size,
        page_token=page_token,
    )


def _abort_request(task_id: TaskId, reason: str) -> pb.AbortTaskRequest:
    return pb.AbortTaskRequest(task_id=str(task_id), reason=reason)


def _page(response: pb.ListModuleTasksResponse) -> tuple[list[TaskStats], str]:
    return [TaskStats.from_pb(t) for t in response.tasks], response.next_page_token


def _children_page(
    response: pb.ListTaskChildrenResponse,
) -> tuple[list[TaskIdentity], int, str]:
    children = [TaskIdentity(UUID(c.task_id), c.node) for c in response.children]
    return children, response.children_count, response.next_page_token


class _FinalCheck:
    """Follows a watch's statuses; raises if the stream ended on a state that is not final.

    tm ends every wait that ends with OK on a final state; a stream that ends
    otherwise (a server without that guarantee) must not pass for a finished
    task: ``wait()`` would hand back a RUNNING status as the final one.
    """

    def __init__(self, task_id: TaskId) -> None:
        self.task_id = task_id
        self.last: TaskStatus | None = None

    def ended(self) -> None:
        if self.last is None or not self.last.state.is_final:
            state = "no status" if self.last is None else f"state {self.last.state.value}"
            raise InternalError(
                f"the server ended the wait for task {self.task_id} on {state}, "
                "not on a final state",
                reason="WAIT_ENDED_EARLY",
            )


class _Resume(_FinalCheck):
    """A watch across the streams it resumes: the deadline, what was seen, the backoff."""

    def __init__(self, task_id: TaskId, timeout: float | None, patience: float) -> None:
        super().__init__(task_id)
        self._ends = None if timeout is None else time.monotonic() + timeout
        self._patience = patience
        self._backoff: _Backoff | None = None

    def request(self) -> pb.WaitTaskRequest:
        """The next stream's request, with what is left of the wait's timeout."""
        left = None if self._ends is None else max(0.0, self._ends - time.monotonic())
        return pb.WaitTaskRequest(task_id=str(self.task_id), timeout=_duration(left))

    def seen(self, status: TaskStatus) -> bool:
        """Records a status; False if it is the one seen last (a resumed stream's first)."""
        self._backoff = None  # the stream is back
        if status == self.last:
            return False
        self.last = status
        return True

    def broken(self) -> float | None:
        """After a break: the wait before resuming, or ``None`` to give up."""
        if self._backoff is None:
            self._backoff = _Backoff(self._patience)
        return self._backoff.next_delay()

    @property
    def final_seen(self) -> bool:
        """Whether the final status arrived (a break after it leaves nothing to resume)."""
        return self.last is not None and self.last.state.is_final


def _no_channel_and_credentials(channel: object, credentials: Credentials | None) -> None:
    # A channel of the caller's carries its own security: credentials given
    # with it would be silently ignored.
    if channel is not None and credentials is not None:
        raise ValueError("give the client credentials or a channel, not both")


def _sync_channel(
    target: str, channel: grpc.Channel | None, credentials: Credentials | None
) -> grpc.Channel:
    _no_channel_and_credentials(channel, credentials)
    if channel is not None:
        return channel
    return (credentials if credentials is not None else Credentials.from_env()).channel(target)


class _SyncChannelClient:
    """A blocking channel owner: context management and unary calls with typed errors."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self._channel = _sync_channel(target, channel, credentials)
        self._timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc


class TaskManagerClient(_SyncChannelClient):
    """A blocking client of TaskManagerService.

    Every method raises a ``TmError`` subclass (keyed by status code) on
    failure, never ``grpc.RpcError``. Unary calls use ``timeout`` seconds as
    their deadline; streams run until they end.

    ``credentials`` say how to reach a server that checks its callers (TLS,
    a client certificate, a token); without them the environment's are used
    (``Credentials.from_env``: ``TM_TOKEN``, ``TM_TLS_CA``, ...), which is
    plaintext and no token when none is set. Pass ``channel`` instead to use
    a channel of your own as it is (the environment is not read then); it is
    closed with the client.

    ``watch()`` and ``wait()`` resume a stream that breaks with
    ``UNAVAILABLE`` (the server restarting or shutting down, a node behind a
    load balancer going away, the network) for up to ``resume_seconds``,
    without repeating a status or missing the final one; 0 turns that off.

    Example:
        >>> with TaskManagerClient("127.0.0.1:50051") as tm:
        ...     status = tm.wait(task_id, timeout=60)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
        resume_seconds: float = DEFAULT_RESUME_SECONDS,
    ) -> None:
        super().__init__(target, channel=channel, credentials=credentials, timeout=timeout)
        self._stub = pb_grpc.TaskManagerServiceStub(self._channel)
        self._resume_seconds = resume_seconds

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        call = method(request)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()  # a no-op once the stream ended; frees it if the caller stopped early

    def task(self, task_id: TaskId) -> Task:
        """Returns a handle on a task."""
        return Task(self, UUID(str(task_id)))

    def list_modules(self) -> list[str]:
        """Returns the registered module names."""
        return list(self._unary(self._stub.ListModules, pb.ListModulesRequest()).modules)

    def list_tasks_page(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[TaskStats], str]:
        """Returns one page of a module's tasks and the next page's token ("" at the end)."""
        request = _list_request(module, internal, keyspace, table, page_size, page_token)
        return _page(self._unary(self._stub.ListModuleTasks, request))

    def list_tasks(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
    ) -> Iterator[TaskStats]:
        """Iterates over all of a module's tasks, fetching pages as needed."""
        token = ""
        while True:
            entries, token = self.list_tasks_page(
                module,
                internal=internal,
                keyspace=keyspace,
                table=table,
                page_size=page_size,
                page_token=token,
            )
            yield from entries
            if not token:
                return

    def get_status(self, task_id: TaskId) -> TaskStatus:
        """Returns a task's status."""
        request = pb.GetTaskStatusRequest(task_id=str(task_id))
        return TaskStatus.from_pb(self._unary(self._stub.GetTaskStatus, request).status)

    def abort(self, task_id: TaskId, reason: str = "") -> None:
        """Requests the abort of a task and its descendants.

        ``reason`` (optional) is shown in the task's status and sent to its producer.
        """
        self._unary(self._stub.AbortTask, _abort_request(task_id, reason))

    def watch(self, task_id: TaskId, *, timeout: float | None = None) -> Iterator[TaskStatus]:
        """Yields the task's status now and after every change, ending on its final state.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        state = _Resume(task_id, timeout, self._resume_seconds)
        while True:
            try:
                for response in self._stream(self._stub.WaitTask, state.request()):
                    status = TaskStatus.from_pb(response.status)
                    if state.seen(status):
                        yield status
                state.ended()
                return
            except UnavailableError:
                if state.final_seen:
                    return
                delay = state.broken()
                if delay is None:
                    raise
                time.sleep(delay)

    def wait(self, task_id: TaskId, *, timeout: float | None = None) -> TaskStatus:
        """Waits until the task finishes and returns its final status (failed is no error).

        The status returned always has a final state (done, failed or suspended).
        """
        last: TaskStatus | None = None
        for last in self.watch(task_id, timeout=timeout):  # noqa: B007
            pass
        assert last is not None  # watch() raised otherwise
        return last

    def get_status_recursive(self, task_id: TaskId) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        request = pb.GetTaskStatusRecursiveRequest(task_id=str(task_id))
        return [
            TaskStatus.from_pb(r.status)
            for r in self._stream(self._stub.GetTaskStatusRecursive, request)
        ]

    def list_children_page(
        self, task_id: TaskId, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskIdentity], int, str]:
        """Returns one page of a task's children (by id), how many it has, and the next token."""
        request = pb.ListTaskChildrenRequest(
            task_id=str(task_id), page_size=page_size, page_token=page_token
        )
        return _children_page(self._unary(self._stub.ListTaskChildren, request))

    def list_children(self, task_id: TaskId, *, page_size: int = 0) -> Iterator[TaskIdentity]:
        """Iterates over all of a task's children, fetching pages as needed.

        A status lists at most the server's ``--max-status-children``; this lists all.
        """
        token = ""
        while True:
            children, _, token = self.list_children_page(
                task_id, page_size=page_size, page_token=token
            )
            yield from children
            if not token:
                return

    def list_nodes(self) -> list[Node]:
        """Returns the cluster's nodes (a server without a cluster store lists itself)."""
        reply = self._unary(self._stub.ListNodes, pb.ListNodesRequest())
        return [Node.from_pb(n) for n in reply.nodes]

    def get_ttl(self) -> int:
        """Returns task_ttl in seconds."""
        return int(self._unary(self._stub.GetTtl, pb.GetTtlRequest()).ttl_seconds)

    def set_ttl(self, seconds: int) -> int:
        """Sets task_ttl; returns the previous value."""
        response = self._unary(self._stub.SetTtl, pb.SetTtlRequest(ttl_seconds=seconds))
        return int(response.previous_ttl_seconds)

    def get_user_ttl(self) -> int:
        """Returns user_task_ttl in seconds."""
        return int(self._unary(self._stub.GetUserTtl, pb.GetUserTtlRequest()).user_ttl_seconds)

    def set_user_ttl(self, seconds: int) -> int:
        """Sets user_task_ttl; returns the previous value."""
        request = pb.SetUserTtlRequest(user_ttl_seconds=seconds)
        return int(self._unary(self._stub.SetUserTtl, request).previous_user_ttl_seconds)

    def drain(self, module: str) -> int:
        """Unregisters the module's finished tasks; returns how many."""
        request = pb.DrainModuleTasksRequest(module=module)
        return int(self._unary(self._stub.DrainModuleTasks, request).drained_count)


class Task:
    """A handle on one task of a ``TaskManagerClient``."""

    def __init__(self, client: TaskManagerClient, task_id: UUID) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"Task({self.id})"

    def status(self) -> TaskStatus:
        """Returns the task's status."""
        return self.client.get_status(self.id)

    def abort(self, reason: str = "") -> None:
        """Requests the abort of the task and its descendants (``reason`` is optional)."""
        self.client.abort(self.id, reason)

    def watch(self, *, timeout: float | None = None) -> Iterator[TaskStatus]:
        """Yields status updates until the task finishes."""
        return self.client.watch(self.id, timeout=timeout)

    def wait(self, *, timeout: float | None = None) -> TaskStatus:
        """Waits for the final status."""
        return self.client.wait(self.id, timeout=timeout)

    def tree(self) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        return self.client.get_status_recursive(self.id)

    def children(self) -> list[TaskIdentity]:
        """Returns all the task's children (by id), however many."""
        return list(self.client.list_children(self.id))


class AsyncTaskManagerClient:
    """The asyncio twin of ``TaskManagerClient``: the same methods, awaited.

    ``credentials`` and ``channel`` (an asyncio one) work as ``TaskManagerClient``'s.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
        resume_seconds: float = DEFAULT_RESUME_SECONDS,
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

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        call = method(request)
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
        return list((await self._unary(self._stub.ListModules, pb.ListModulesRequest())).modules)

    async def list_tasks_page(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[TaskStats], str]:
        """Returns one page of a module's tasks and the next page's token ("" at the end)."""
        request = _list_request(module, internal, keyspace, table, page_size, page_token)
        return _page(await self._unary(self._stub.ListModuleTasks, request))

    async def list_tasks(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[TaskStats]:
        """Iterates over all of a module's tasks, fetching pages as needed."""
        token = ""
        while True:
            entries, token = await self.list_tasks_page(
                module,
                internal=internal,
                keyspace=keyspace,
                table=table,
                page_size=page_size,
                page_token=token,
            )
            for entry in entries:
                yield entry
            if not token:
                return

    async def get_status(self, task_id: TaskId) -> TaskStatus:
        """Returns a task's status."""
        request = pb.GetTaskStatusRequest(task_id=str(task_id))
        return TaskStatus.from_pb((await self._unary(self._stub.GetTaskStatus, request)).status)

    async def abort(self, task_id: TaskId, reason: str = "") -> None:
        """Requests the abort of a task and its descendants (``reason`` is optional)."""
        await self._unary(self._stub.AbortTask, _abort_request(task_id, reason))

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
                async for response in self._stream(self._stub.WaitTask, state.request()):
                    status = TaskStatus.from_pb(response.status)
                    if state.seen(status):
                        yield status
                state.ended()
                return
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

    async def get_status_recursive(self, task_id: TaskId) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        request = pb.GetTaskStatusRecursiveRequest(task_id=str(task_id))
        return [
            TaskStatus.from_pb(r.status)
            async for r in self._stream(self._stub.GetTaskStatusRecursive, request)
        ]

    async def list_children_page(
        self, task_id: TaskId, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskIdentity], int, str]:
        """Returns one page of a task's children (by id), how many it has, and the next token."""
        request = pb.ListTaskChildrenRequest(
            task_id=str(task_id), page_size=page_size, page_token=page_token
        )
        return _children_page(await self._unary(self._stub.ListTaskChildren, request))

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
        reply = await self._unary(self._stub.ListNodes, pb.ListNodesRequest())
        return [Node.from_pb(n) for n in reply.nodes]

    async def get_ttl(self) -> int:
        """Returns task_ttl in seconds."""
        return int((await self._unary(self._stub.GetTtl, pb.GetTtlRequest())).ttl_seconds)

    async def set_ttl(self, seconds: int) -> int:
        """Sets task_ttl; returns the previous value."""
        response = await self._unary(self._stub.SetTtl, pb.SetTtlRequest(ttl_seconds=seconds))
        return int(response.previous_ttl_seconds)

    async def get_user_ttl(self) -> int:
        """Returns user_task_ttl in seconds."""
        response = await self._unary(self._stub.GetUserTtl, pb.GetUserTtlRequest())
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


class TestServiceClient(_SyncChannelClient):
    """A blocking client of TaskManagerTestService (servers started with the test service).

    ``credentials`` and ``channel`` work as ``TaskManagerClient``'s.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        super().__init__(target, channel=channel, credentials=credentials, timeout=timeout)
        self._stub = test_pb_grpc.TaskManagerTestServiceStub(self._channel)

    def register_module(self) -> None:
        """Registers module "test"."""
        self._unary(self._stub.RegisterTestModule, test_pb.RegisterTestModuleRequest())

    def unregister_module(self) -> None:
        """Stops module "test"."""
        self._unary(self._stub.UnregisterTestModule, test_pb.UnregisterTestModuleRequest())

    def create_task(
        self,
        *,
        task_id: TaskId | None = None,
        shard: int | None = None,
        parent_id: TaskId | None = None,
        keyspace: str = "",
        table: str = "",
        entity: str = "",
        user_task: bool = False,
    ) -> UUID:
        """Creates and starts a test task; returns its id."""
        request = test_pb.CreateTestTaskRequest(
            task_id="" if task_id is None else str(task_id),
            shard=shard,
            parent_id="" if parent_id is None else str(parent_id),
            keyspace=keyspace,
            table=table,
            entity=entity,
            user_task=user_task,
        )
        return UUID(self._unary(self._stub.CreateTestTask, request).task_id)

    def finish_task(self, task_id: TaskId, error: str | None = None) -> None:
        """Finishes a test task, failed with ``error`` if given."""
        request = test_pb.FinishTestTaskRequest(task_id=str(task_id), error=error)
        self._unary(self._stub.FinishTestTask, request)

    def delete_task(self, task_id: TaskId) -> None:
        """Finishes a running test task and unregisters it."""
        self._unary(self._stub.DeleteTestTask, test_pb.DeleteTestTaskRequest(task_id=str(task_id)))
