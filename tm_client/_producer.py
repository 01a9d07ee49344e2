"""The producer API: report a service's own operations into tm as a tree of tasks."""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from types import TracebackType
from typing import Any
from uuid import UUID

import grpc

from ._client import DEFAULT_TARGET, _SyncChannelClient
from ._credentials import Credentials
from ._errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    TmError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from ._ids import new_task_id
from ._resume import TaskId, _Backoff
from ._types import TaskStatus
from .pb import task_manager_pb2 as tm_pb
from .pb import task_manager_pb2_grpc as tm_pb_grpc
from .pb import task_reporting_pb2 as pb
from .pb import task_reporting_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: How long a producer waits for tm to come back before a create or a finish gives up.
DEFAULT_OUTAGE_SECONDS = 60.0
#: How often progress reported while tm was away is tried again.
_FLUSH_INTERVAL = 0.5
#: How long one progress report (or a send of what was held back) waits for tm's
#: answer before it takes tm for away and holds the value back.
PROGRESS_TIMEOUT = 5.0
#: The longest error text a tm server takes (its MAX_TEXT_LENGTH).
MAX_ERROR_LENGTH = 4096
# What ``ReportedTask._ended`` holds for a task that tm ended and then forgot.
_GONE: Any = object()
# Aborts pushed for tasks this producer does not know (yet): kept for a
# create_task still on its way back, up to this many.
_MAX_UNCLAIMED_ABORTS = 1024


def truncate_error(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Shortens an error text to at most ``limit`` characters, keeping its start and its end.

    A traceback's start says where it came from and its end says what went
    wrong; the middle gives way, with a note of how much was cut.
    """
    if len(text) <= limit:
        return text
    # The note's length depends on the number in it: reserve the most digits.
    keep = limit - len("\n[...  characters cut ...]\n") - len(str(len(text)))
    marker = f"\n[... {len(text) - keep} characters cut ...]\n"
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]


class TaskAbortedError(Exception):
    """Raised inside a task's block once tm asked for the task to be aborted.

    ``ReportedTask.check_abort`` and ``ReportedTask.progress`` raise it; leaving
    the block with it finishes the task, which tm then marks failed ("abort
    requested").
    """

    def __init__(self, task_id: UUID, reason: str = "", principal: str = "") -> None:
        by = f" by {principal}" if principal else ""
        super().__init__(f"task {task_id} was aborted{by}" + (f": {reason}" if reason else ""))
        self.task_id = task_id
        #: Why, as the operator said (AbortTask's reason; "" when none was given).
        self.reason = reason
        #: Who asked ("" when the server checks no callers).
        self.principal = principal


class Producer(_SyncChannelClient):
    """Reports operations of this process into a tm server.

    With ``session=True`` (the default) a background thread keeps a producer
    session open: abort requests are pushed to it at once, it reconnects after
    a broken stream, and if this process dies its unfinished tasks fail once
    the server's lease runs out instead of staying "running" forever.

    ``credentials`` and ``channel`` work as ``TaskManagerClient``'s: without
    either, the environment's credentials (``TM_TOKEN``, ``TM_TLS_CA``, ...)
    are used.

    Example:
        >>> with Producer("127.0.0.1:50051", module="backup") as producer:
        ...     with producer.task("backup", scope="keyspace", keyspace="ks", total=3) as task:
        ...         for table in ("a", "b", "c"):
        ...             with task.child("backup", scope="table", table=table):
        ...                 upload(table)
        ...             task.progress(task.completed + 1)   # raises TaskAbortedError on abort
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        module: str,
        channel: grpc.Channel | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
        session: bool = True,
        outage_seconds: float = DEFAULT_OUTAGE_SECONDS,
        strict: bool = False,
    ) -> None:
        super().__init__(target, channel=channel, credentials=credentials, timeout=timeout)
        self.module = module
        self.outage_seconds = outage_seconds
        self.strict = strict
        # A report (and a send of what was held back) waits this long at most.
        self._progress_timeout = (
            PROGRESS_TIMEOUT if timeout is None else min(timeout, PROGRESS_TIMEOUT)
        )
        # Progress reported while tm was unavailable: the latest value a task.
        self._pending: dict[UUID, pb.ReportProgressRequest] = {}
        # Finishes that gave up waiting for tm: sent once it is back.
        self._unsent: dict[UUID, pb.FinishTaskRequest] = {}
        # Set while tm is away (a report went unanswered): reports are held
        # back without a try until the background thread got through again.
        self._away = False
        # One sender of what was held back at a time (the background thread, or close()).
        self._flushing = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._stub = pb_grpc.TaskReportingServiceStub(self._channel)
        # One Event per task this producer runs, dropped when the task finishes.
        self._aborted: dict[UUID, threading.Event] = {}
        self._unclaimed_aborts: dict[UUID, None] = {}
        # Why and by whom each pushed abort was asked, while its task runs here.
        self._abort_reasons: dict[UUID, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._session_ready = threading.Event()
        self._session_refused: TmError | None = None
        self._session_id = ""
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._patient(self._stub.RegisterModule, pb.RegisterModuleRequest(module=module))
        if session:
            self._thread = threading.Thread(
                target=self._run_session, name="tm-producer-session", daemon=True
            )
            self._thread.start()
            if not self._session_ready.wait(timeout):
                self.close()
                raise TimeoutError("could not open a producer session")
            if self._session_refused is not None:
                self.close()
                raise self._session_refused

    @property
    def session_id(self) -> str:
        """The current session's id ("" without a session)."""
        return self._session_id

    def close(self) -> None:
        """Ends the session cleanly and closes the channel.

        The server ends the session at once, with no lease: tasks of it still
        unfinished fail then ("the producer closed its session"). A producer
        that crashes instead leaves its tasks to the lease.
        """
        if self._pending or self._unsent:
            self._flush_once()  # a last try: a finish held back must not turn into a failure
        for task_id in list(self._unsent):
            log.error("task %s's finish was never sent: tm was unavailable until this "
                      "producer closed", task_id)  # fmt: skip
        self._closing.set()
        if self._session_id:
            try:
                request = pb.CloseSessionRequest(session_id=self._session_id)
                self._unary(self._stub.CloseSession, request)
                self._session_id = ""
            except TmError as exc:  # unreachable, or expired already: the lease does the rest
                log.info("could not close producer session %s: %s", self._session_id, exc)
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(10)
        super().close()

    def _get_status(self, task_id: TaskId) -> TaskStatus:
        stub = tm_pb_grpc.TaskManagerServiceStub(self._channel)
        reply = self._unary(stub.GetTaskStatus, tm_pb.GetTaskStatusRequest(task_id=str(task_id)))
        return TaskStatus.from_pb(reply.status)

    def _reach(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """One call; a call tm did not answer in time counts as tm unavailable.

        A tm that froze, or a network that drops packets, answers nothing: the
        call's deadline is what says it is away, as a refused connection does.
        """
        try:
            return self._unary(method, request, timeout)
        except DeadlineExceededError as exc:
            raise UnavailableError(
                f"tm did not answer in time: {exc.message}", code=grpc.StatusCode.UNAVAILABLE
            ) from exc

    def _patient(self, method: Any, request: Any) -> Any:
        """A call that is safe to repeat, retried while tm is unavailable (``outage_seconds``).

        No try starts once that patience is spent; each may take the
        producer's ``timeout``, as tm may be slow to answer and still alive (a
        busy store), so a tm that answers nothing is given up on after at most
        ``outage_seconds`` plus one ``timeout``.
        """
        backoff = _Backoff(self.outage_seconds)
        while True:
            try:
                return self._reach(method, request)
            except UnavailableError:
                if self._closing.is_set() or not backoff.sleep():
                    raise

    def _defer_progress(self, request: pb.ReportProgressRequest) -> None:
        # tm is away: keep the latest value, and send it once tm is back.
        with self._lock:
            self._pending[UUID(request.task_id)] = request
            self._away = True
            self._start_flusher()

    def _hold_back(self, request: pb.ReportProgressRequest) -> bool:
        """Holds a report back without a try while tm is away, or one of the task's is.

        A task's reports reach tm in order: while an older value waits to be
        sent, a newer one takes its place rather than overtake it.
        """
        task_id = UUID(request.task_id)
        with self._lock:
            if not self._away and task_id not in self._pending:
                return False
            self._pending[task_id] = request
            self._start_flusher()
            return True

    def _defer_finish(self, request: pb.FinishTaskRequest) -> None:
        # A finish gave up waiting for tm: sent once tm is back (after the
        # task's progress held back), so the task does not stay running.
        with self._lock:
            self._unsent[UUID(request.task_id)] = request
            self._start_flusher()

    def _start_flusher(self) -> None:
        # Called with the lock held.
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(
                target=self._flush, name="tm-producer-held-back", daemon=True
            )
            self._flusher.start()

    def _take_pending(self, task_id: UUID) -> pb.ReportProgressRequest | None:
        with self._lock:
            return self._pending.pop(task_id, None)

    def _flush(self) -> None:
        while not self._closing.wait(_FLUSH_INTERVAL):
            with self._lock:
                if not self._pending and not self._unsent:
                    self._flusher = None
                    return
            self._flush_once()

    def _flush_once(self) -> None:
        """Sends what was held back while tm was away: progress first, then finishes."""
        with self._flushing:
            self._send_held_back()

    def _send_held_back(self) -> None:
        with self._lock:
            waiting = list(self._pending.values())
            finishes = list(self._unsent.values())
        for request in waiting:
            try:
                reply = self._reach(self._stub.ReportProgress, request, self._progress_timeout)
            except UnavailableError:
                return  # still away: try again later
            except TmError as exc:  # finished or gone meanwhile: nothing to send
                log.info("dropped progress of task %s held back: %s", request.task_id, exc)
                reply = None
            task_id = UUID(request.task_id)
            with self._lock:
                if self._pending.get(task_id) is request:
                    del self._pending[task_id]
            if reply is not None and reply.abort_requested:
                self._event(task_id).set()
        for finish in finishes:
            try:
                self._reach(self._stub.FinishTask, finish, self._progress_timeout)
                log.info("task %s finished, once tm was back", finish.task_id)
            except UnavailableError:
                return
            except (FailedPreconditionError, NotFoundError) as exc:
                # An earlier try went through after all (and, with a TTL of 0,
                # tm forgot the task), or tm ended the task while it was away.
                log.warning("task %s had ended in tm already: %s", finish.task_id, exc)
            except TmError as exc:
                log.error("could not finish task %s, once tm was back: %s", finish.task_id, exc)
            with self._lock:
                self._unsent.pop(UUID(finish.task_id), None)
        with self._lock:
            self._away = False  # everything held back went through: report directly again

    def _run_session(self) -> None:
        delay = 0.1
        while not self._closing.is_set():
            try:
                call = self._stub.OpenSession(pb.OpenSessionRequest(session_id=self._session_id))
                self._call = call
                for message in call:
                    if message.HasField("opened"):
                        self._session_id = message.opened.session_id
                        self._session_ready.set()
                        delay = 0.1
                    elif message.HasField("abort_requested"):
                        pushed = message.abort_requested
                        self._abort_pushed(UUID(pushed.task_id), pushed.reason, pushed.principal)
            except grpc.RpcError as exc:
                if self._closing.is_set():
                    return
                error = from_rpc_error(exc)
                if isinstance(error, UnauthenticatedError | PermissionDeniedError):
                    if not self._session_ready.is_set():
                        # Retrying will not change the server's mind: the
                        # constructor raises this rather than time out.
                        self._session_refused = error
                        self._session_ready.set()
                        return
                    log.warning("producer session refused (%s); retrying", error)
                elif isinstance(error, NotFoundError):
                    # The lease ran out: those tasks were failed. Start a new session.
                    log.warning("producer session %s expired; opening a new one", self._session_id)
                    self._session_id = ""
                else:
                    log.info("producer session stream broke (%s); reconnecting", exc.code())
            if self._closing.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _abort_pushed(self, task_id: UUID, reason: str = "", principal: str = "") -> None:
        with self._lock:
            if reason or principal:
                self._abort_reasons[task_id] = (reason, principal)
                while len(self._abort_reasons) > _MAX_UNCLAIMED_ABORTS:
                    del self._abort_reasons[next(iter(self._abort_reasons))]
            event = self._aborted.get(task_id)
            if event is None:
                # Its CreateTask reply is still on its way (or it has finished
                # here already): remember it, within bounds.
                self._unclaimed_aborts[task_id] = None
                while len(self._unclaimed_aborts) > _MAX_UNCLAIMED_ABORTS:
                    del self._unclaimed_aborts[next(iter(self._unclaimed_aborts))]
                return
        event.set()

    def _event(self, task_id: UUID) -> threading.Event:
        with self._lock:
            event = self._aborted.get(task_id)
            if event is None:
                event = self._aborted[task_id] = threading.Event()
                if task_id in self._unclaimed_aborts:
                    del self._unclaimed_aborts[task_id]
                    event.set()
            return event

    def _release(self, task_id: UUID) -> None:
        """Forgets a finished task's abort Event."""
        with self._lock:
            self._aborted.pop(task_id, None)
            self._abort_reasons.pop(task_id, None)
            self._unclaimed_aborts.pop(task_id, None)

    def tracked_tasks(self) -> int:
        """How many unfinished tasks this producer holds state for (for leak checks)."""
        with self._lock:
            return len(self._aborted)

    def create_task(
        self,
        type: str,
        *,
        scope: str = "",
        parent: ReportedTask | TaskId | None = None,
        keyspace: str = "",
        table: str = "",
        entity: str = "",
        abortable: bool = False,
        user_task: bool = False,
        internal: bool | None = None,
        progress_units: str = "",
        total: float | None = None,
        task_id: TaskId | None = None,
        shard: int | None = None,
        start: bool = True,
        cluster: bool = False,
    ) -> ReportedTask:
        """Creates (and by default starts) a task; see ``task`` for the block form.

        The task's id is chosen here (a time-ordered UUID) unless ``task_id``
        gives one, so the call is idempotent: while tm is unavailable it is
        retried for up to ``outage_seconds``, and a retry returns the same task.
        With ``cluster`` it is a cluster task: every node of the cluster serves
        it, and it can be advanced and finished through any of them.
        """
        parent_id = parent.id if isinstance(parent, ReportedTask) else parent
        request = pb.CreateTaskRequest(
            module=self.module,
            type=type,
            scope=scope,
            parent_id="" if parent_id is None else str(parent_id),
            shard=shard,
            keyspace=keyspace,
            table=table,
            entity=entity,
            abortable=abortable,
            user_task=user_task,
            internal=internal,
            progress_units=progress_units,
            progress_total=total,
            task_id=str(new_task_id() if task_id is None else task_id),
            session_id=self._session_id,
            start=start,
            cluster=cluster,
        )
        lost = parent if isinstance(parent, ReportedTask) and not self.strict else None
        if lost is not None and lost._ended is not None:
            return ReportedTask._unreported(self, UUID(request.task_id), total)
        try:
            status = TaskStatus.from_pb(self._patient(self._stub.CreateTask, request).status)
        except (FailedPreconditionError, NotFoundError):
            # Refused under a parent tm ended without this producer (its lease
            # ran out while tm was out of reach): the work goes on, unreported.
            if lost is None or lost.finished or lost._ended_in_tm() is None:
                raise
            return ReportedTask._unreported(self, UUID(request.task_id), total)
        task = ReportedTask(self, status)
        if status.abort_requested:
            self._event(status.id).set()
        return task

    def attach(self, task_id: TaskId) -> ReportedTask:
        """A handle on a task created elsewhere, to report its progress and finish it.

        Meant for cluster tasks, which any node advances: a coordinator creates
        one through one node, and whoever carries on (another process, through
        another node) attaches to it here.

        Raises:
            TaskNotFoundError: no such task.
        """
        status = self._get_status(task_id)
        task = ReportedTask(self, status)
        if status.abort_requested:
            self._event(status.id).set()
        return task

    def task(self, type: str, **options: Any) -> ReportedTask:
        """Creates and starts a task to use as a ``with`` block.

        Leaving the block finishes the task: done, or failed with the
        exception's text if the block raised. ``options`` are those of
        ``create_task``.
        """
        return self.create_task(type, **options)


class ReportedTask:
    """A task this process reports: progress, children, abort and finish."""

    def __init__(self, producer: Producer, status: TaskStatus) -> None:
        self.producer = producer
        self.id = status.id
        self.total = status.progress_total if status.progress_total else None
        self.completed = 0.0
        self.finished = False
        self._aborted = producer._event(status.id)
        # tm's final status, once tm ended the task without this handle (its
        # session's lease ran out while tm was out of reach, say).
        self._ended: TaskStatus | None = None

    @classmethod
    def _unreported(cls, producer: Producer, task_id: UUID, total: float | None) -> ReportedTask:
        """A handle on a child tm would not take, its parent ended there: it reports nothing."""
        task = cls.__new__(cls)
        task.producer, task.id, task.total = producer, task_id, total
        task.completed, task.finished = 0.0, False
        task._aborted = producer._event(task_id)
        task._ended = _GONE
        return task

    def __repr__(self) -> str:
        return f"ReportedTask({self.id})"

    def __enter__(self) -> ReportedTask:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished:
            return
        if exc is None:
            self.finish()
            return
        if isinstance(exc, TaskAbortedError):
            error = str(exc)
        else:
            error = "".join(traceback.format_exception_only(exc)).strip() or type(exc).__name__
        try:
            self.finish(error=error)
        except Exception:
            # The block's own exception is what the caller must see; a failed
            # report of it must not take its place.
            log.warning("could not report task %s as failed", self.id, exc_info=True)

    @property
    def abort_requested(self) -> bool:
        """Whether tm asked for this task to be aborted."""
        return self._aborted.is_set()

    @property
    def abort_reason(self) -> tuple[str, str]:
        """Why the abort was asked and by whom, as tm pushed it (("", "") when it did not say)."""
        with self.producer._lock:
            return self.producer._abort_reasons.get(self.id, ("", ""))

    def wait_abort(self, timeout: float | None = None) -> bool:
        """Blocks until an abort is requested (True) or ``timeout`` passes (False)."""
        return self._aborted.wait(timeout)

    def check_abort(self) -> None:
        """Raises ``TaskAbortedError`` if an abort was requested."""
        if self._aborted.is_set():
            raise TaskAbortedError(self.id, *self.abort_reason)

    def progress(self, completed: float, total: float | None = None) -> None:
        """Reports progress; then raises ``TaskAbortedError`` if an abort is pending.

        It does not wait for tm: while tm is away (or answers nothing within
        ``PROGRESS_TIMEOUT`` seconds) the latest value is kept and sent, in
        order, by a background thread once tm is back (or with the finish).
        A task that tm ended meanwhile without this producer (its session's
        lease ran out during a longer outage) is logged once; its later
        reports are dropped, children created under it report nothing, and
        the producer's work goes on.
        """
        request = pb.ReportProgressRequest(task_id=str(self.id), completed=completed, total=total)
        self.completed = completed
        if total is not None:
            self.total = total
        producer = self.producer
        if self._ended is None and not producer._hold_back(request):
            try:
                response = producer._reach(
                    producer._stub.ReportProgress, request, producer._progress_timeout
                )
            except UnavailableError:
                producer._defer_progress(request)
            except (FailedPreconditionError, NotFoundError):
                if self.finished or self._ended_in_tm() is None:
                    raise
            else:
                if response.abort_requested:
                    self._aborted.set()
        self.check_abort()

    def _ended_in_tm(self) -> TaskStatus | None:
        """After a refusal: tm's final status if tm ended the task without this handle."""
        try:
            status = self.producer._get_status(self.id)
        except NotFoundError:  # ended, and forgotten (a TTL of 0)
            status = None
        except TmError:
            return None
        if status is not None and not status.state.is_final:
            return None
        if self._ended is None:
            how = "and forgot it" if status is None else f"({status.state.value}: {status.error})"
            log.warning(
                "tm had ended task %s %s without this producer (its session's lease ran out "
                "while tm was out of reach, or another process finished it): its reports are "
                "dropped and its finish is tm's",
                self.id,
                how,
            )
        self._ended = status if status is not None else _GONE
        return self._ended

    def child(self, type: str, **options: Any) -> ReportedTask:
        """Creates and starts a child task (same options as ``Producer.create_task``)."""
        return self.producer.create_task(type, parent=self, **options)

    def finish(self, error: str | None = None, *, suspended: bool = False) -> TaskStatus | None:
        """Finishes the task (failed with ``error`` if given); returns the final status.

        ``suspended`` ends a cluster task SUSPENDED: its operation was revoked.
        It returns ``None`` when tm has no status to give: it stayed away (below),
        or it had ended and forgotten the task (a TTL of 0) by the time a retry
        reached it.

        An error text longer than the server takes (``MAX_ERROR_LENGTH``) is
        shortened, keeping its start and its end, so the finish goes through.

        While tm is unavailable (or answers nothing) the finish, with any
        progress held back, is retried for up to the producer's
        ``outage_seconds``; if tm stays away, that is logged and ``None``
        returned, so the caller's own work goes on, unless the producer is
        ``strict``, which raises ``UnavailableError``. A finish that gave up is
        sent in the background once tm is back, and tried once more by
        ``Producer.close``. A task that tm ended meanwhile without this
        producer (its lease ran out) returns tm's final status, logged, unless
        ``strict``, which raises the ``FailedPreconditionError``.
        """
        producer = self.producer
        if error is not None:
            error = truncate_error(error)
        held_back = producer._take_pending(self.id)
        request = pb.FinishTaskRequest(task_id=str(self.id), error=error, suspended=suspended)
        first = not self.finished  # a second finish of one handle is the caller's error
        try:
            if self._ended is not None and first and not producer.strict:
                status = None if self._ended is _GONE else self._ended
            else:
                if held_back is not None:
                    with contextlib.suppress(FailedPreconditionError, NotFoundError):
                        # Refused: the task ended in tm; the finish says how.
                        producer._patient(producer._stub.ReportProgress, held_back)
                status = self._finish(request)
        except (FailedPreconditionError, NotFoundError):
            ended = self._ended_in_tm() if first and not producer.strict else None
            if ended is None:
                raise
            status = None if ended is _GONE else ended
        except UnavailableError as exc:
            if producer.strict:
                raise
            log.error("could not report task %s finished: tm stayed unavailable for %gs (%s); "
                      "it is sent once tm is back",
                      self.id, producer.outage_seconds, exc)  # fmt: skip
            if held_back is not None:
                producer._defer_progress(held_back)
            producer._defer_finish(request)
            status = None
        self.finished = True
        producer._release(self.id)
        return status

    def _finish(self, request: pb.FinishTaskRequest) -> TaskStatus | None:
        producer = self.producer
        backoff = _Backoff(producer.outage_seconds)
        retried = False
        while True:
            try:
                response = producer._reach(producer._stub.FinishTask, request)
                return TaskStatus.from_pb(response.status)
            except UnavailableError:
                if producer._closing.is_set() or not backoff.sleep():
                    raise
                retried = True
            except (FailedPreconditionError, NotFoundError):
                if not retried:
                    raise
                # An earlier try went through, and only its reply was lost
                # (or tm answered UNAVAILABLE after making the change).
                try:
                    status = producer._get_status(self.id)
                except NotFoundError:
                    # Finished, and forgotten at once (a TTL of 0).
                    log.info("task %s finished; tm has forgotten it already", self.id)
                    return None
                if not status.state.is_final:
                    raise
                return status
