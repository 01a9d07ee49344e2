"""The client's view of tasks: enums and frozen dataclasses decoded from the wire."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from google.protobuf import timestamp_pb2

from .pb import task_manager_pb2 as pb


class TaskState(enum.Enum):
    """A task's state."""

    CREATED = "created"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUSPENDED = "suspended"

    @property
    def is_final(self) -> bool:
        """Whether a wait ends on this state (done, failed or suspended)."""
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.SUSPENDED)


class TaskKind(enum.Enum):
    """Regular (node) or virtual (cluster)."""

    NODE = "node"
    CLUSTER = "cluster"


_STATES = {
    pb.TASK_STATE_CREATED: TaskState.CREATED,
    pb.TASK_STATE_RUNNING: TaskState.RUNNING,
    pb.TASK_STATE_DONE: TaskState.DONE,
    pb.TASK_STATE_FAILED: TaskState.FAILED,
    pb.TASK_STATE_SUSPENDED: TaskState.SUSPENDED,
}
_KINDS = {pb.TASK_KIND_NODE: TaskKind.NODE, pb.TASK_KIND_CLUSTER: TaskKind.CLUSTER}
_WIRE_STATES = {state: value for value, state in _STATES.items()}


def state_filter(states: Iterable[TaskState | str]) -> tuple[TaskState, ...]:
    """A state filter as states; a state may be given by its value ("running").

    Raises:
        ValueError: a string that names no state.
    """
    if isinstance(states, (str, TaskState)):
        states = (states,)  # one state, not the characters of its name
    return tuple(TaskState(s) for s in states)


def wire_states(states: Iterable[TaskState | str]) -> list[pb.TaskState.ValueType]:
    """The wire values of a state filter (as ``state_filter`` reads it)."""
    return [_WIRE_STATES[s] for s in state_filter(states)]


def type_filter(types: Iterable[str]) -> tuple[str, ...]:
    """A type filter as a tuple ("repair" alone is one type, not six letters)."""
    return (types,) if isinstance(types, str) else tuple(types)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _time(msg: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    # Any Timestamp the wire can carry decodes: one beyond what a datetime
    # holds (years 1 to 9999) is clamped to its end instead of raising, so no
    # single task can break a listing or a status for its readers.
    if not present:
        return None
    try:
        return _EPOCH + timedelta(seconds=msg.seconds, microseconds=msg.nanos // 1000)
    except OverflowError:
        return _LATEST if msg.seconds > 0 else _EARLIEST


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    """A child's id and the node that holds it."""

    task_id: UUID
    node: str


@dataclass(frozen=True, slots=True)
class AbortInfo:
    """Who asked for a task's abort, when and why.

    ``origin_task_id`` is the ancestor whose abort reached the task (``None``
    when it was asked of the task itself); ``principal`` is "" when the
    server checks no callers.
    """

    request_time: datetime | None
    reason: str
    principal: str
    origin_task_id: UUID | None

    @classmethod
    def from_pb(cls, msg: pb.AbortInfo) -> AbortInfo:
        """Decodes a wire abort record."""
        return cls(
            request_time=_time(msg.request_time, msg.HasField("request_time")),
            reason=msg.reason,
            principal=msg.principal,
            origin_task_id=UUID(msg.origin_task_id) if msg.origin_task_id else None,
        )


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task's full status. Unset times are ``None``; a root's ``parent_id`` is ``None``."""

    id: UUID
    type: str
    kind: TaskKind
    scope: str
    state: TaskState
    is_abortable: bool
    creation_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    error: str
    parent_id: UUID | None
    sequence_number: int
    shard: int
    keyspace: str
    table: str
    entity: str
    progress_units: str
    progress_total: float
    progress_completed: float
    children: tuple[TaskIdentity, ...]
    module: str
    internal: bool
    user_task: bool
    abort_requested: bool
    expire_time: datetime | None
    #: How many children the task has; ``children`` lists at most the server's
    #: ``--max-status-children`` (see ``TaskManagerClient.list_children``).
    children_count: int = 0
    #: The node that holds a regular task ("" for a cluster task).
    node: str = ""
    #: Live nodes that did not answer in time: their children are missing.
    unreachable_nodes: tuple[str, ...] = ()
    #: Who asked for the abort, when and why (with ``abort_requested``).
    abort: AbortInfo | None = None
    #: The principal that created the task ("" when the server checks no callers).
    owner: str = ""
    #: When the progress last changed (``None`` before any report).
    last_progress_time: datetime | None = None
    #: The recent rate of progress in ``progress_units`` per second; ``None``
    #: until two reports give one, and once the task has finished.
    progress_rate: float | None = None
    #: When the task should end at ``progress_rate``; ``None`` without a rate,
    #: a total, or while the task is not running.
    estimated_end_time: datetime | None = None

    @property
    def children_truncated(self) -> bool:
        """Whether ``children`` lists fewer children than the task has."""
        return self.children_count > len(self.children)

    @classmethod
    def from_pb(cls, msg: pb.TaskStatus) -> TaskStatus:
        """Decodes a wire status."""
        return cls(
            id=UUID(msg.id),
            type=msg.type,
            kind=_KINDS[msg.kind],
            scope=msg.scope,
            state=_STATES[msg.state],
            is_abortable=msg.is_abortable,
            creation_time=_time(msg.creation_time, msg.HasField("creation_time")),
            start_time=_time(msg.start_time, msg.HasField("start_time")),
            end_time=_time(msg.end_time, msg.HasField("end_time")),
            error=msg.error,
            parent_id=UUID(msg.parent_id) if msg.parent_id else None,
            sequence_number=msg.sequence_number,
            shard=msg.shard,
            keyspace=msg.keyspace,
            table=msg.table,
            entity=msg.entity,
            progress_units=msg.progress_units,
            progress_total=msg.progress_total,
            progress_completed=msg.progress_completed,
            children=tuple(TaskIdentity(UUID(c.task_id), c.node) for c in msg.children_ids),
            module=msg.module,
            internal=msg.internal,
            user_task=msg.user_task,
            abort_requested=msg.abort_requested,
            expire_time=_time(msg.expire_time, msg.HasField("expire_time")),
            children_count=max(msg.children_count, len(msg.children_ids)),
            node=msg.node,
            unreachable_nodes=tuple(msg.unreachable_nodes),
            abort=AbortInfo.from_pb(msg.abort) if msg.HasField("abort") else None,
            owner=msg.owner,
            last_progress_time=_time(msg.last_progress_time, msg.HasField("last_progress_time")),
            progress_rate=msg.progress_rate if msg.HasField("progress_rate") else None,
            estimated_end_time=_time(msg.estimated_end_time, msg.HasField("estimated_end_time")),
        )


@dataclass(frozen=True, slots=True)
class Node:
    """A node of a tm cluster, as the cluster store has it."""

    name: str
    address: str
    alive: bool
    left: bool
    started_time: datetime | None
    last_heartbeat_time: datetime | None
    version: str

    @classmethod
    def from_pb(cls, msg: pb.Node) -> Node:
        """Decodes a wire node."""
        return cls(
            name=msg.name,
            address=msg.address,
            alive=msg.alive,
            left=msg.left,
            started_time=_time(msg.started_time, msg.HasField("started_time")),
            last_heartbeat_time=_time(msg.last_heartbeat_time, msg.HasField("last_heartbeat_time")),
            version=msg.version,
        )


@dataclass(frozen=True, slots=True)
class TaskStats:
    """One entry of a module's task list (and of a watch event)."""

    task_id: UUID
    state: TaskState
    type: str
    kind: TaskKind
    scope: str
    keyspace: str
    table: str
    entity: str
    sequence_number: int
    shard: int
    creation_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    #: Completed progress units, as known without walking the task's tree (a
    #: parent's as last rolled up).
    progress_completed: float = 0.0
    #: Total progress units, as ``progress_completed``; 0 when unknown.
    progress_total: float = 0.0
    #: The module the task belongs to (set in watch events; "" in older listings).
    module: str = ""
    #: Whether the task is internal.
    internal: bool = False

    @classmethod
    def from_pb(cls, msg: pb.TaskStats) -> TaskStats:
        """Decodes a wire list entry."""
        return cls(
            task_id=UUID(msg.task_id),
            state=_STATES[msg.state],
            type=msg.type,
            kind=_KINDS[msg.kind],
            scope=msg.scope,
            keyspace=msg.keyspace,
            table=msg.table,
            entity=msg.entity,
            sequence_number=msg.sequence_number,
            shard=msg.shard,
            creation_time=_time(msg.creation_time, msg.HasField("creation_time")),
            start_time=_time(msg.start_time, msg.HasField("start_time")),
            end_time=_time(msg.end_time, msg.HasField("end_time")),
            progress_completed=msg.progress_completed,
            progress_total=msg.progress_total,
            module=msg.module,
            internal=msg.internal,
        )


class TaskEventType(enum.StrEnum):
    """What happened to a task, in a ``TaskEvent``."""

    #: The task was there when the watch began (the snapshot).
    EXISTING = "existing"
    #: The task was created.
    CREATED = "created"
    #: Its state or progress changed (or, for a parent, its children's).
    CHANGED = "changed"
    #: It finished (done or failed): the entry holds its final state.
    FINISHED = "finished"
    #: It left the registry (TTL, drain, folded into its parent): the entry
    #: holds its last state.
    REMOVED = "removed"


_EVENT_TYPES = {
    pb.TASK_EVENT_TYPE_EXISTING: TaskEventType.EXISTING,
    pb.TASK_EVENT_TYPE_CREATED: TaskEventType.CREATED,
    pb.TASK_EVENT_TYPE_CHANGED: TaskEventType.CHANGED,
    pb.TASK_EVENT_TYPE_FINISHED: TaskEventType.FINISHED,
    pb.TASK_EVENT_TYPE_REMOVED: TaskEventType.REMOVED,
}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One change of one task.

    ``task`` is the task's list entry as it is after the change; ``status``
    its full status when the watch asked for it (``full_status=True``), else
    ``None`` (and always ``None`` for a ``REMOVED`` event).
    """

    type: TaskEventType
    task: TaskStats
    status: TaskStatus | None = None

    @classmethod
    def from_pb(cls, msg: pb.TaskEvent) -> TaskEvent:
        """Decodes a wire event."""
        return cls(
            type=_EVENT_TYPES[msg.type],
            task=TaskStats.from_pb(msg.task),
            status=TaskStatus.from_pb(msg.status) if msg.HasField("status") else None,
        )


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One response of a task watch: its events, in order, and the cursor after them.

    Iterating over a batch iterates over its events. A new watch given
    ``cursor`` resumes right after this batch, with exactly the events that
    came since. A batch may have no events: one that only moves the cursor on,
    or the one that ends the snapshot.

    Attributes:
        events: the events, oldest first.
        cursor: resumes a watch after this batch (opaque; "" if the server sent none).
        snapshot_complete: set on the batch that ends the snapshot (after the
            ``EXISTING`` events).
        restarted: set on the first batch of a snapshot the watch started
            again by itself (``resnapshot=True``, after the cursor expired or
            the reader fell behind, or a stream that broke within its
            snapshot): drop every task you hold and rebuild from the
            ``EXISTING`` events that follow.
        restart_reason: why it started again ("CURSOR_EXPIRED",
            "WATCH_FELL_BEHIND", "UNAVAILABLE"), with ``restarted``.
    """

    events: tuple[TaskEvent, ...]
    cursor: str
    snapshot_complete: bool = False
    restarted: bool = False
    restart_reason: str = ""

    def __iter__(self) -> Iterator[TaskEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)
