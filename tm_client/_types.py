"""The client's view of tasks: enums and frozen dataclasses decoded from the wire."""

from __future__ import annotations

import enum
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
    """One entry of a module's task list."""

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
        )
