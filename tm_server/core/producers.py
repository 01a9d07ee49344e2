"""Producers: tasks reported from outside the server, producer sessions with leases, abort push."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID, uuid4

from .clock import Clock
from .counts import count
from .errors import (
    InvalidArgumentError,
    QuotaExceededError,
    SessionNotFoundError,
    ShuttingDownError,
    TaskAlreadyExistsError,
    TaskNotFoundError,
)
from .journal import SESSION_KEY, TASK_SESSION_KEY
from .manager import TaskManager
from .sessions import STOP, ProducerSession, SessionStream
from .task import TaskContext, TaskImpl, TaskShape
from .types import TaskKind, TaskState, TaskStatus
from .validation import (
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    check_length,
    check_name,
    check_progress_value,
)

log = logging.getLogger(__name__)

#: Sessions one principal may have open at once (``--max-sessions-per-principal``).
DEFAULT_MAX_SESSIONS_PER_PRINCIPAL = 1_000


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a producer asks for when it creates a task."""

    module: str
    type: str
    scope: str = ""
    parent_id: UUID | None = None
    shard: int | None = None
    keyspace: str = ""
    table: str = ""
    entity: str = ""
    abortable: bool = False
    user_task: bool = False
    internal: bool | None = None
    progress_units: str = ""
    progress_total: float | None = None
    task_id: UUID | None = None
    #: A cluster task: a row in the cluster store every node serves.
    cluster: bool = False
    #: The principal creating it ("" without access checks).
    owner: str = ""

    def validate(self) -> None:
        """Checks lengths and values.

        Raises:
            InvalidArgumentError: naming the bad field.
        """
        # What the manager does not check itself (the module when it is
        # registered, keyspace, table and entity when the task is made).
        check_name("type", self.type)
        check_length("scope", self.scope, MAX_NAME_LENGTH)
        check_length("progress_units", self.progress_units, MAX_NAME_LENGTH)
        if self.progress_total is not None:
            check_progress_value("progress_total", self.progress_total)


class RemoteTaskImpl(TaskImpl):
    """How reported tasks of one shape behave: no body runs here, the producer reports.

    One object serves every task with the same type, scope, units and flags
    (a flyweight), so a million reported tasks do not cost a million of these;
    the per-task session lives in ``Producers``.
    """

    __slots__ = ("_producers", "abortable", "internal", "owner", "progress_units", "scope",
                 "type", "user_task")  # fmt: skip
    external = True

    def __init__(self, shape: TaskShape, producers: Producers) -> None:
        shape.apply(self)
        self._producers = producers

    def notify_abort(self, task_id: UUID) -> None:
        """Pushes the abort request to the task's producer session, if it has one."""
        session = self._producers.session_of(task_id)
        if session is not None:
            session.push_abort(task_id)

    def notify_finished(self, task_id: UUID) -> None:
        """Forgets the task in its session: nothing is left to fail or abort."""
        session = self._producers.forget_task(task_id)
        if session is not None:
            session.forget(task_id)

    async def run(self, ctx: TaskContext) -> None:
        """Never called: an external task has no body in the server."""
        raise AssertionError("an external task has no body")


#: Shapes of recent creates kept at hand (the weak map holds the rest while tasks use them).
_RECENT_SHAPES = 256


class ClusterTasks(Protocol):
    """Cluster tasks, for producers: rows in a cluster store that every node serves.

    The cluster layer implements it; the core sees plain data. The methods
    that take an id answer ``None`` when it is no cluster task.
    """

    async def create(
        self, spec: TaskSpec, *, session_id: UUID | None, start: bool
    ) -> tuple[TaskStatus, bool]:
        """Creates (maybe starts) a cluster task; its status and whether it is new."""

    async def start(self, task_id: UUID) -> TaskStatus | None:
        """Starts a created cluster task."""

    async def report_progress(
        self, task_id: UUID, completed: float, total: float | None
    ) -> bool | None:
        """Records a running cluster task's own progress; whether an abort is pending."""

    async def finish(self, task_id: UUID, error: str | None, suspended: bool) -> TaskStatus | None:
        """Finishes a running cluster task: done, failed or suspended."""

    async def fail_session(self, session_id: UUID, error: str) -> int:
        """Fails the unfinished cluster tasks of a producer session; how many."""


class Producers:
    """The producer API of the task manager: remote tasks and producer sessions."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        lease_seconds: float = 30.0,
        max_sessions_per_principal: int = DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("the producer lease must be positive")
        if max_sessions_per_principal < 1:
            raise ValueError("max_sessions_per_principal must be at least 1")
        self.manager = manager
        self.lease_seconds = lease_seconds
        self.max_sessions_per_principal = max_sessions_per_principal
        # Live sessions by owner, for the quota (the anonymous caller included).
        self._owned_sessions: dict[str, int] = {}
        self._clock: Clock = manager.clock
        self._sessions: dict[UUID, ProducerSession] = {}
        # The session of each unfinished session task (by id int).
        self._task_sessions: dict[int, ProducerSession] = {}
        # Held weakly: a shape's object goes with the last task of that shape,
        # so clients inventing types without end do not grow it without end.
        self._impls: weakref.WeakValueDictionary[TaskShape, RemoteTaskImpl] = (
            weakref.WeakValueDictionary()
        )
        # The shapes created with lately, held strongly (at most _RECENT_SHAPES).
        self._recent_impls: dict[tuple[object, ...], RemoteTaskImpl] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Cluster tasks, when the server has a cluster store (the cluster layer sets it).
        self.cluster: ClusterTasks | None = None
        #: Sessions whose lease ran out before a stream resumed them (for metrics).
        self.lease_expiries = 0

    def stop_streams(self) -> None:
        """Ends every open session stream with ``ShuttingDownError``; new ones fail at once."""
        self._stopping = True
        for session in self._sessions.values():
            if session.queue is not None:
                session.queue.put_nowait(STOP)

    def session_of(self, task_id: UUID) -> ProducerSession | None:
        """The session a task belongs to, if any."""
        return self._task_sessions.get(task_id.int)

    def forget_task(self, task_id: UUID) -> ProducerSession | None:
        """Drops a finished task's session link; returns the session it had."""
        session = self._task_sessions.pop(task_id.int, None)
        if session is not None:
            self.manager.journal.delete(TASK_SESSION_KEY + task_id.hex)
        return session

    def _link(self, session: ProducerSession, task_id: UUID) -> None:
        session.tasks[task_id] = None
        self._task_sessions[task_id.int] = session
        # Durable with the create: after a restart the task is still the
        # session's, to fail if its producer does not come back.
        self.manager.journal.put(TASK_SESSION_KEY + task_id.hex, session.id.hex)

    def restore(
        self, sessions: list[tuple[UUID, str]], links: list[tuple[UUID, UUID, bool]]
    ) -> int:
        """Brings back journaled sessions, each with a fresh lease, and their tasks.

        ``sessions`` are (id, owner); ``links`` are (task, session, abort
        requested) of unfinished tasks; a
        link to a session that is gone is dropped, and a task's abort is sent
        again when its producer resumes. Returns how many sessions came back.
        """
        for session_id, owner in sessions:
            session = ProducerSession(session_id, owner)
            self._add_session(session)
            self._start_lease(session)
        for task_id, session_id, aborting in links:
            found = self._sessions.get(session_id)
            if found is None:
                self.manager.journal.delete(TASK_SESSION_KEY + task_id.hex)
            else:
                found.tasks[task_id] = None
                self._task_sessions[task_id.int] = found
                if aborting:
                    found.push_abort(task_id)
        return len(sessions)

    def renew_leases(self) -> None:
        """Starts the lease of every session waiting for its producer again, from now.

        For a node that starts serving: the leases recovered sessions got
        began before it could be reached (joining the cluster can take
        seconds), and a producer has the whole lease to come back in.
        """
        for session in self._sessions.values():
            if session.lease_timer is not None and not session.connected:
                session.lease_timer.cancel()
                self._start_lease(session)

    def session_tasks(self) -> list[UUID]:
        """The unfinished tasks of every session here."""
        return [task_id for s in self._sessions.values() for task_id in s.tasks]

    def task_aborted(self, task_id: UUID) -> None:
        """An abort was requested for a task of a session here: its producer is told."""
        session = self.session_of(task_id)
        if session is not None:
            session.push_abort(task_id)

    def task_finished(self, task_id: UUID) -> None:
        """A task of a session here finished: nothing is left to fail or abort."""
        session = self.forget_task(task_id)
        if session is not None:
            session.forget(task_id)

    def _cluster(self) -> ClusterTasks:
        if self.cluster is None:
            raise InvalidArgumentError(
                "cluster", "this server runs without a cluster store, so it has no cluster tasks"
            )
        return self.cluster

    def impl_of(self, shape: TaskShape) -> RemoteTaskImpl:
        """The implementation of reported tasks of this shape (shared by all of them)."""
        impl = self._impls.get(shape)
        if impl is None:
            impl = self._impls[shape] = RemoteTaskImpl(shape, self)
        return impl

    def _impl(self, spec: TaskSpec) -> RemoteTaskImpl:
        # By the shape's fields as a plain tuple first: every create asks, and
        # a frozen TaskShape and the weak map's lookup cost ~3 us of it.
        key = (spec.type, spec.scope, spec.progress_units, spec.abortable, spec.user_task,
               spec.internal, spec.owner)  # fmt: skip
        impl = self._recent_impls.get(key)
        if impl is None:
            impl = self.impl_of(TaskShape(*key))
            if len(self._recent_impls) >= _RECENT_SHAPES:
                self._recent_impls.clear()
            self._recent_impls[key] = impl
        return impl

    # ---- modules -----------------------------------------------------------------------------

    async def register_module(self, name: str) -> bool:
        """Registers a module on every shard; returns False if it existed."""
        return await self.manager.register_module(name)

    async def unregister_module(self, name: str) -> None:
        """Stops a module: aborts its tasks, fails unfinished reported ones, unregisters all."""
        await self.manager.unregister_module(name)

    # ---- tasks -------------------------------------------------------------------------------

    async def create_task(
        self, spec: TaskSpec, *, session_id: UUID | None = None, start: bool = False
    ) -> tuple[TaskStatus, bool]:
        """Creates (maybe starts) a reported task; returns its status and whether it is new.

        With ``spec.task_id`` set, a retry with the same parameters returns
        the existing task (started now if it was asked to start and is not).

        Raises:
            InvalidArgumentError: bad field.
            SessionNotFoundError: unknown or expired session.
            TaskAlreadyExistsError: the id is taken by a task with other parameters.
            TaskNotFoundError: unknown parent.
            InvalidStateError: the parent has finished.
        """
        spec.validate()
        session = self._session(session_id) if session_id is not None else None
        await self.manager.register_module(spec.module)
        if spec.cluster:
            status, created_new = await self._cluster().create(
                spec, session_id=session_id, start=start
            )
            if session is not None and created_new and not status.state.is_final:
                self._link(session, status.id)
            return status, created_new
        try:
            created = await self.manager.create(
                spec.module,
                self._impl(spec),
                shard=spec.shard,
                parent_id=spec.parent_id,
                task_id=spec.task_id,
                keyspace=spec.keyspace,
                table=spec.table,
                entity=spec.entity,
                progress_total=spec.progress_total,
                # Only a child can finish as it starts (created under an
                # aborting parent) and leave before its status is read.
                handle=spec.parent_id is not None,
                start=start and session is None,
            )
        except TaskAlreadyExistsError:
            # The id is taken: a retry of this very create is answered with the
            # task it made (the client-chosen id makes the call idempotent).
            existing = None if spec.task_id is None else await self._existing(spec, start)
            if existing is None:
                raise
            return existing, False
        task_id = created.task_id
        if session is not None:
            self._link(session, task_id)
            if created.abort_pending:
                session.push_abort(task_id)  # created under an aborting parent
        if start and session is not None:
            # Started once it is in its session, so that an abort pushed as it
            # starts (created under an aborting parent) finds it there.
            try:
                await self.manager.start_task(task_id)
            except BaseException:
                await self.manager.created_status(created)  # lets the handle go
                raise
        return await self.manager.created_status(created), True

    async def _existing(self, spec: TaskSpec, start: bool) -> TaskStatus | None:
        assert spec.task_id is not None
        try:
            status = await self.manager.get_status(spec.task_id)
        except TaskNotFoundError:
            return None
        wanted = (
            TaskKind.NODE,
            spec.module,
            spec.type,
            spec.scope,
            spec.parent_id,
            spec.keyspace,
            spec.table,
            spec.entity,
        )
        found = (
            status.kind,
            status.module,
            status.type,
            status.scope,
            status.parent_id,
            status.keyspace,
            status.table,
            status.entity,
        )
        if wanted != found or (spec.shard is not None and spec.shard != status.shard):
            raise TaskAlreadyExistsError(spec.task_id)
        if start and status.state is TaskState.CREATED:
            await self.manager.start_task(spec.task_id)
            status = await self.manager.get_status(spec.task_id)
        return status

    async def start_task(self, task_id: UUID) -> TaskStatus:
        """Starts a created reported task (a regular one, or a cluster one)."""
        try:
            await self.manager.start_task(task_id, reported=True)
        except TaskNotFoundError:
            status = None if self.cluster is None else await self.cluster.start(task_id)
            if status is None:
                raise
            return status
        return await self.manager.get_status(task_id)

    async def report_progress(self, task_id: UUID, completed: float, total: float | None) -> bool:
        """Records a running reported task's progress; returns whether an abort is pending."""
        try:
            return await self.manager.report_progress(task_id, completed, total, reported=True)
        except TaskNotFoundError:
            aborting = (
                None
                if self.cluster is None
                else await self.cluster.report_progress(task_id, completed, total)
            )
            if aborting is None:
                raise
            return aborting

    async def finish_task(
        self, task_id: UUID, error: str | None, *, suspended: bool = False
    ) -> TaskStatus:
        """Finishes a running reported task.

        Failed when ``error`` is given, or (cluster tasks only) suspended.
        """
        if error is not None:
            check_length("error", error, MAX_TEXT_LENGTH)
            if suspended:
                raise InvalidArgumentError("suspended", "a task ends failed or suspended, not both")
        try:
            if suspended and await self.manager.local_status(task_id) is not None:
                raise InvalidArgumentError(
                    "suspended",
                    "only cluster tasks end suspended; a regular task is done or failed",
                )
            return await self.manager.finish_task(task_id, error, reported=True)
        except TaskNotFoundError:
            status = None
            if self.cluster is not None:
                status = await self.cluster.finish(task_id, error, suspended)
            if status is None:
                raise
            return status

    # ---- sessions ----------------------------------------------------------------------------

    def _session(self, session_id: UUID) -> ProducerSession:
        session = self._sessions.get(session_id)
        if session is None or session.expired:
            raise SessionNotFoundError(session_id)
        return session

    def session_owner(self, session_id: UUID) -> str | None:
        """The principal that opened a live session, or ``None`` when there is none."""
        session = self._sessions.get(session_id)
        return None if session is None or session.expired else session.owner

    def _add_session(self, session: ProducerSession) -> None:
        self._sessions[session.id] = session
        count(self._owned_sessions, session.owner, 1)

    def _drop_session(self, session: ProducerSession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        count(self._owned_sessions, session.owner, -1)
        self.manager.journal.delete(SESSION_KEY + session.id.hex)

    def open_session(self, session_id: UUID | None = None, *, owner: str = "") -> SessionStream:
        """Opens a new session for ``owner``, or resumes one whose lease has not run out.

        A resumed session's stream takes over from any stream still open for it.

        Raises:
            SessionNotFoundError: ``session_id`` is unknown or expired.
            ShuttingDownError: the server is stopping.
            QuotaExceededError: ``owner`` (a named principal) has
                ``max_sessions_per_principal`` sessions already.
        """
        if self._stopping:
            raise ShuttingDownError()
        if session_id is None:
            limit = self.max_sessions_per_principal
            # Named principals only: without caller checks every caller is "",
            # and one caller's sessions could not be told from another's.
            if owner and self._owned_sessions.get(owner, 0) >= limit:
                raise QuotaExceededError(
                    "sessions_per_principal",
                    limit,
                    f"principal {owner} has {limit} producer sessions open "
                    "(--max-sessions-per-principal); close unused sessions (CloseSession) "
                    "or let their leases end",
                )
            session = ProducerSession(uuid4(), owner)
            self._add_session(session)
            # The owner is the record's value: a restart keeps whose it is.
            self.manager.journal.put(SESSION_KEY + session.id.hex, owner)
            resumed = False
        else:
            session = self._session(session_id)
            resumed = True
        if session.lease_timer is not None:
            session.lease_timer.cancel()
            session.lease_timer = None
        if session.queue is not None:
            session.queue.put_nowait(None)  # the older stream ends: superseded
        stream = SessionStream(session, resumed)
        session.queue = stream.queue
        return stream

    def close_stream(self, stream: SessionStream) -> None:
        """The stream ended: the lease starts, unless a newer stream took the session over."""
        session = stream.session
        if session.queue is not stream.queue or session.expired:
            return
        session.queue = None
        self._start_lease(session)

    def _start_lease(self, session: ProducerSession) -> None:
        session.lease_timer = self._clock.call_at(
            self._clock.now() + self.lease_seconds, lambda: self._expire(session)
        )

    def _expire(self, session: ProducerSession) -> None:
        if session.connected or session.expired:
            return
        session.expired = True
        self.lease_expiries += 1
        self._drop_session(session)
        task = asyncio.get_running_loop().create_task(self._fail_session_tasks(session))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fail_session_tasks(self, session: ProducerSession) -> None:
        error = (
            f"producer lost: session {session.id} was not resumed within {self.lease_seconds:g}s"
        )
        failed = await self._fail_tasks(session, error)
        level = logging.WARNING if failed else logging.INFO
        log.log(level, "producer session %s expired; %d tasks failed", session.id, failed)

    async def _fail_tasks(self, session: ProducerSession, error: str) -> int:
        failed = 0
        for task_id in list(session.tasks):
            self.forget_task(task_id)
            try:
                failed += await self.manager.fail_task(task_id, error)
            except Exception:
                log.exception("could not fail task %s of session %s", task_id, session.id)
        if self.cluster is not None:
            try:
                failed += await self.cluster.fail_session(session.id, error)
            except Exception:
                log.exception("could not fail the cluster tasks of session %s", session.id)
        return failed

    async def close_session(self, session_id: UUID) -> int:
        """Ends a session cleanly, at once: no lease, and its open stream ends.

        Tasks of the session still unfinished fail now ("the producer closed
        its session"): a producer that closes means it is done. Returns how many.

        Raises:
            SessionNotFoundError: ``session_id`` is unknown or expired.
        """
        session = self._session(session_id)
        session.expired = True
        self._drop_session(session)
        if session.lease_timer is not None:
            session.lease_timer.cancel()
            session.lease_timer = None
        if session.queue is not None:
            session.queue.put_nowait(None)  # the open stream ends with OK
            session.queue = None
        failed = await self._fail_tasks(
            session, f"producer closed its session {session.id} before finishing the task"
        )
        if failed:
            log.info("producer session %s closed; %d unfinished tasks failed", session.id, failed)
        return failed

    def session_count(self) -> int:
        """How many sessions are alive (connected or within their lease)."""
        return len(self._sessions)

    def connected_session_count(self) -> int:
        """How many sessions have their stream open now."""
        return sum(1 for session in self._sessions.values() if session.queue is not None)

    async def settle(self) -> None:
        """Waits for background work (failing the tasks of expired sessions)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
