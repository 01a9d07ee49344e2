"""The blocking typed client over the tm.v1 stubs (``_async_client`` has its asyncio twin)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self, TypeVar
from uuid import UUID

import grpc

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
from ._types import (
    Node,
    TaskIdentity,
    TaskState,
    TaskStats,
    TaskStatus,
    state_filter,
    type_filter,
    wire_states,
)
from ._watch import TaskWatch, _WatchState
from .pb import task_manager_pb2 as pb
from .pb import task_manager_pb2_grpc as pb_grpc
from .pb import task_manager_test_pb2 as test_pb
from .pb import task_manager_test_pb2_grpc as test_pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"

T = TypeVar("T")


def _list_request(
    module: str,
    internal: bool,
    keyspace: str,
    table: str,
    page_size: int,
    page_token: str,
    states: Iterable[TaskState | str] = (),
    types: Iterable[str] = (),
) -> pb.ListModuleTasksRequest:
    return pb.ListModuleTasksRequest(
        module=module,
        internal=internal,
        keyspace=keyspace,
        table=table,
        page_size=page_size,
        page_token=page_token,
        states=wire_states(states),
        types=type_filter(types),
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

    def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """One call with typed errors; ``timeout`` (when given) in place of the client's."""
        try:
            return method(request, timeout=self._timeout if timeout is None else timeout)
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

    ``watch()``, ``wait()`` and ``watch_tasks()`` resume a stream that breaks with
    ``UNAVAILABLE`` (the server restarting or shutting down, a node behind a
    load balancer going away, the network) for up to ``resume_seconds``,
    without repeating a status or missing the final one; 0 turns that off.
    Reads (statuses, listings, TTLs, nodes) and aborts, which are safe to
    repeat, are retried with backoff and jitter while tm is unreachable or
    restarting, for up to ``retry_seconds``; 0 turns that off. Calls that
    change something otherwise (TTL changes, drains) are not retried.

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
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        super().__init__(target, channel=channel, credentials=credentials, timeout=timeout)
        self._stub = pb_grpc.TaskManagerServiceStub(self._channel)
        self._resume_seconds = resume_seconds
        self._retry_seconds = retry_seconds

    def _retrying(self, call: Callable[[], T]) -> T:
        """Runs a call that is safe to repeat, again while tm is unreachable (``retry_seconds``)."""
        backoff = _Backoff(self._retry_seconds)
        while True:
            try:
                return call()
            except UnavailableError as exc:
                if not unreachable(exc) or not backoff.sleep():
                    raise

    def _read(self, method: Any, request: Any) -> Any:
        return self._retrying(lambda: self._unary(method, request))

    def _stream(self, method: Any, request: Any, timeout: float | None = None) -> Iterator[Any]:
        call = method(request, timeout=timeout)
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
        return list(self._read(self._stub.ListModules, pb.ListModulesRequest()).modules)

    def list_tasks_page(
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

        ``states`` and ``types`` keep only the tasks in one of those states
        (``TaskState`` or its value, "running") and of one of those types;
        empty keeps all. A page token is only valid with the same filters.
        """
        request = _list_request(
            module, internal, keyspace, table, page_size, page_token, states, types
        )
        return _page(self._read(self._stub.ListModuleTasks, request))

    def list_tasks(
        self,
        module: str,
        *,
        internal: bool = False,
        keyspace: str = "",
        table: str = "",
        page_size: int = 0,
        states: Iterable[TaskState | str] = (),
        types: Iterable[str] = (),
    ) -> Iterator[TaskStats]:
        """Iterates over all of a module's tasks, fetching pages as needed.

        ``states`` and ``types`` filter as ``list_tasks_page``'s.
        """
        states, types = state_filter(states), type_filter(types)  # checked before the first page
        token = ""
        while True:
            entries, token = self.list_tasks_page(
                module,
                internal=internal,
                keyspace=keyspace,
                table=table,
                page_size=page_size,
                page_token=token,
                states=states,
                types=types,
            )
            yield from entries
            if not token:
                return

    def get_status(self, task_id: TaskId) -> TaskStatus:
        """Returns a task's status."""
        request = pb.GetTaskStatusRequest(task_id=str(task_id))
        return TaskStatus.from_pb(self._read(self._stub.GetTaskStatus, request).status)

    def abort(self, task_id: TaskId, reason: str = "") -> None:
        """Requests the abort of a task and its descendants.

        ``reason`` (optional) is shown in the task's status and sent to its producer.
        """
        self._read(self._stub.AbortTask, _abort_request(task_id, reason))

    def watch(self, task_id: TaskId, *, timeout: float | None = None) -> Iterator[TaskStatus]:
        """Yields the task's status now and after every change, ending on its final state.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
            UnavailableError: tm stayed unreachable for ``resume_seconds``, or
                until the wait's ``timeout`` (with a few seconds' grace when tm
                does not answer at all, frozen or behind a dropping network).
        """
        state = _Resume(task_id, timeout, self._resume_seconds)
        while True:
            try:
                stream = self._stream(self._stub.WaitTask, state.request(), state.call_timeout())
                for response in stream:
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
    ) -> TaskWatch:
        """Watches the changes of a module's tasks, or of every module's.

        The watch yields ``WatchBatch``es of ``TaskEvent``s in order: first,
        with ``snapshot``, the matching tasks as they are (``EXISTING``) up to
        the batch with ``snapshot_complete``; then one event per change
        (``CREATED``, ``CHANGED``, ``FINISHED``, ``REMOVED``). Events of one
        task not received yet are coalesced into one, with its latest state.
        It runs until closed; it never ends by itself.

        A stream that breaks with ``UNAVAILABLE`` (a network outage, the
        server shutting down) is resumed for up to ``resume_seconds`` with the
        cursor of the last batch handed out, so no event is missed or
        repeated (one that breaks within the snapshot starts the snapshot
        again, flagged ``restarted``). ``watch.cursor`` resumes a later watch.

        Args:
            module: the module to watch; ``None`` (or "") watches every module.
            internal: include internal tasks.
            keyspace: only tasks of this keyspace ("" is any).
            table: only tasks of this table ("" is any).
            states: only tasks in one of these states (a task that leaves
                them is reported once more, with its new state); empty is any.
            types: only tasks of one of these types; empty is any.
            snapshot: start with the matching tasks as they are; not with ``cursor``.
            full_status: carry each task's ``TaskStatus`` in its events (a
                status read per event on the server).
            cursor: resume after this cursor (a ``WatchBatch.cursor``);
                ``None`` starts from now.
            resnapshot: on an expired cursor or a reader that fell behind,
                start again with a snapshot (its first batch ``restarted``)
                rather than raise: a long-running view heals itself.

        Returns:
            A ``TaskWatch``: iterate over it for batches; close it when done.
            The call itself sends nothing: the errors below but ``ValueError``
            come from iterating.

        Raises:
            CursorExpiredError: the cursor is older than the server's window,
                or from before it restarted (without ``resnapshot``).
            WatchFellBehindError: the reader fell more than the server's
                window behind (without ``resnapshot``).
            UnknownModuleError: no such module.
            InvalidArgumentError: a bad name, a malformed cursor, or a
                snapshot asked with a cursor.
            ValueError: a state that names no ``TaskState`` (at once).
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
        return TaskWatch(self._stub.WatchTasks, state)

    def get_status_recursive(self, task_id: TaskId) -> list[TaskStatus]:
        """Returns the task and its descendants in BFS order."""
        request = pb.GetTaskStatusRecursiveRequest(task_id=str(task_id))
        return self._retrying(
            lambda: [
                TaskStatus.from_pb(r.status)
                for r in self._stream(self._stub.GetTaskStatusRecursive, request)
            ]
        )

    def list_children_page(
        self, task_id: TaskId, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskIdentity], int, str]:
        """Returns one page of a task's children (by id), how many it has, and the next token."""
        request = pb.ListTaskChildrenRequest(
            task_id=str(task_id), page_size=page_size, page_token=page_token
        )
        return _children_page(self._read(self._stub.ListTaskChildren, request))

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
        reply = self._read(self._stub.ListNodes, pb.ListNodesRequest())
        return [Node.from_pb(n) for n in reply.nodes]

    def get_ttl(self) -> int:
        """Returns task_ttl in seconds."""
        return int(self._read(self._stub.GetTtl, pb.GetTtlRequest()).ttl_seconds)

    def set_ttl(self, seconds: int) -> int:
        """Sets task_ttl; returns the previous value."""
        response = self._unary(self._stub.SetTtl, pb.SetTtlRequest(ttl_seconds=seconds))
        return int(response.previous_ttl_seconds)

    def get_user_ttl(self) -> int:
        """Returns user_task_ttl in seconds."""
        return int(self._read(self._stub.GetUserTtl, pb.GetUserTtlRequest()).user_ttl_seconds)

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
