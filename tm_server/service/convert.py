"""Conversions between core types and tm.v1 protobuf messages (the only place that knows both)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from tm_client.pb import node_pb2 as npb
from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_reporting_pb2 as reporting_pb
from tm_server.core import (
    InvalidArgumentError,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskKind,
    TaskState,
    TaskStats,
    TaskStatus,
    VirtualChild,
)
from tm_server.core.module_watch import WatchBatch, WatchEventKind
from tm_server.core.producers import TaskSpec
from tm_server.core.rate import ProgressRate
from tm_server.core.types import NO_EXTRAS, AbortRequest, StatusExtras
from tm_server.core.validation import parse_uuid, require_uuid

__all__ = [
    "children_page_to_pb",
    "duration_seconds",
    "fill_stats",
    "fill_status",
    "filter_from_pb",
    "lease_duration",
    "nodes_to_pb",
    "page_to_pb",
    "parse_uuid",
    "require_uuid",
    "spec_from_pb",
    "status_from_pb",
    "status_to_pb",
    "watch_batch_to_pb",
]

# Keyed by the members' plain values: hashing an Enum member runs Python code
# (Enum.__hash__), a string's hash is cached; this runs for every status sent.
_STATES = {
    TaskState.CREATED.value: pb.TASK_STATE_CREATED,
    TaskState.RUNNING.value: pb.TASK_STATE_RUNNING,
    TaskState.DONE.value: pb.TASK_STATE_DONE,
    TaskState.FAILED.value: pb.TASK_STATE_FAILED,
    TaskState.SUSPENDED.value: pb.TASK_STATE_SUSPENDED,
}
_STATES_BACK = {v: TaskState(k) for k, v in _STATES.items()}
_KINDS = {TaskKind.NODE.value: pb.TASK_KIND_NODE, TaskKind.CLUSTER.value: pb.TASK_KIND_CLUSTER}


def duration_seconds(field: str, value: duration_pb2.Duration) -> float:
    """Returns a Duration in seconds.

    Raises:
        InvalidArgumentError: negative or not normalized.
    """
    if value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidArgumentError(field, "must be a non-negative duration")
    return value.seconds + value.nanos / 1e9


def lease_duration(seconds: float) -> duration_pb2.Duration:
    """Encodes a number of seconds as a Duration."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


# ---- requests --------------------------------------------------------------------------------


def filter_from_pb(request: pb.ListModuleTasksRequest | pb.WatchTasksRequest) -> ListFilter:
    """Decodes a listing's (or a watch's) filters (the core checks the names).

    Raises:
        InvalidArgumentError: a state that is not one of TaskState's values.
    """
    states: set[TaskState] = set()
    for value in request.states:
        state = _STATES_BACK.get(value)
        if state is None:
            raise InvalidArgumentError(
                "states", f"{value} is not a task state (CREATED, RUNNING, DONE, FAILED, SUSPENDED)"
            )
        states.add(state)
    return ListFilter(
        internal=request.internal,
        keyspace=request.keyspace,
        table=request.table,
        states=frozenset(states),
        types=frozenset(request.types),
    )


def spec_from_pb(request: reporting_pb.CreateTaskRequest, owner: str = "") -> TaskSpec:
    """Decodes a CreateTaskRequest into a task spec (validated by the core) for ``owner``."""
    return TaskSpec(
        module=request.module,
        type=request.type,
        scope=request.scope,
        parent_id=parse_uuid("parent_id", request.parent_id, required=False),
        shard=request.shard if request.HasField("shard") else None,
        keyspace=request.keyspace,
        table=request.table,
        entity=request.entity,
        abortable=request.abortable,
        user_task=request.user_task,
        internal=request.internal if request.HasField("internal") else None,
        progress_units=request.progress_units,
        progress_total=request.progress_total if request.HasField("progress_total") else None,
        task_id=parse_uuid("task_id", request.task_id, required=False),
        cluster=request.cluster,
        owner=owner,
    )


# The range a Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_TIME = -62_135_596_800.0
_MAX_TIME = 253_402_300_799.0


def _set_time(target: timestamp_pb2.Timestamp, seconds: float) -> None:
    # Core times are bounded (plausible ids, bounded TTLs), but a virtual
    # group's are the application's: clamp, so no time fails the encoding.
    if not (_MIN_TIME <= seconds <= _MAX_TIME):
        seconds = _MAX_TIME if seconds > 0 else _MIN_TIME  # NaN too: any valid time
    # Epoch seconds as a float hold about microseconds; finer digits are noise.
    target.seconds, micros = divmod(round(seconds * 1e6), 1_000_000)
    target.nanos = micros * 1000


# Both encoders below run for every status read, watch update, recursive
# message and list entry: they set only the fields that differ from their
# defaults (a target starts empty, and proto3 does not send defaults anyway),
# since a test is cheaper than a protobuf field write and most tasks have no
# keyspace, table, entity, error, parent or end time.


def _fill_common(target: pb.TaskStatus | pb.TaskStats, source: TaskStatus | TaskStats) -> None:
    # The fields a status and a list entry share, under the same names.
    target.type = source.type
    target.kind = _KINDS[source.kind._value_]
    target.scope = source.scope
    target.state = _STATES[source.state._value_]
    if source.keyspace:
        target.keyspace = source.keyspace
    if source.table:
        target.table = source.table
    if source.entity:
        target.entity = source.entity
    target.sequence_number = source.sequence_number
    if source.shard:
        target.shard = source.shard
    # Unset times stay unset: reading a sub-message field does not mark it present.
    if source.creation_time is not None:
        _set_time(target.creation_time, source.creation_time)
    if source.start_time is not None:
        _set_time(target.start_time, source.start_time)
    if source.end_time is not None:
        _set_time(target.end_time, source.end_time)


def fill_status(target: pb.TaskStatus, status: TaskStatus) -> None:
    """Encodes a core status into ``target`` (an empty message, usually a reply's field).

    Unset times stay unset; roots have an empty parent_id. Fields are set in
    place: building a TaskStatus from keywords and then copying it into its
    reply costs twice as much.
    """
    target.id = str(status.id)
    _fill_common(target, status)
    if status.is_abortable:
        target.is_abortable = True
    if status.error:
        target.error = status.error
    if status.parent_id is not None:
        target.parent_id = str(status.parent_id)
    target.progress_units = status.progress_units
    progress = status.progress
    if progress.total:
        target.progress_total = progress.total
    if progress.completed:
        target.progress_completed = progress.completed
    if status.children:
        add = target.children_ids.add
        for child in status.children:
            add(task_id=str(child.task_id), node=child.node)
    target.module = status.module
    if status.internal:
        target.internal = True
    if status.user_task:
        target.user_task = True
    if status.abort_requested:
        target.abort_requested = True
    if status.expire_time is not None:
        _set_time(target.expire_time, status.expire_time)
    if status.children_count:  # set wherever children are listed
        target.children_count = status.children_count
    if status.node:
        target.node = status.node
    extras = status.extras
    if extras is NO_EXTRAS:
        return  # most statuses: one check for the three rare fields
    if extras.unreachable_nodes:
        target.unreachable_nodes.extend(extras.unreachable_nodes)
    abort = extras.abort
    if abort is not None:
        info = target.abort
        _set_time(info.request_time, abort.time)
        info.reason = abort.reason
        info.principal = abort.principal
        if abort.origin is not None:
            info.origin_task_id = str(abort.origin)
    if extras.owner:
        target.owner = extras.owner
    pace = extras.pace
    if pace is not None:
        _set_time(target.last_progress_time, pace.last_time)
        if pace.rate is not None:
            target.progress_rate = pace.rate
        if pace.estimated_end is not None:
            _set_time(target.estimated_end_time, pace.estimated_end)


def status_to_pb(status: TaskStatus) -> pb.TaskStatus:
    """Encodes a core status as a new message (see ``fill_status``)."""
    message = pb.TaskStatus()
    fill_status(message, status)
    return message


def fill_stats(target: pb.TaskStats, stats: TaskStats) -> None:
    """Encodes a core list entry into ``target`` (in place, as ``fill_status``)."""
    target.task_id = str(stats.task_id)
    _fill_common(target, stats)
    if stats.progress_completed:
        target.progress_completed = stats.progress_completed
    if stats.progress_total:
        target.progress_total = stats.progress_total
    if stats.module:
        target.module = stats.module
    if stats.internal:
        target.internal = True


_EVENT_TYPES = {
    WatchEventKind.EXISTING: pb.TASK_EVENT_TYPE_EXISTING,
    WatchEventKind.CREATED: pb.TASK_EVENT_TYPE_CREATED,
    WatchEventKind.CHANGED: pb.TASK_EVENT_TYPE_CHANGED,
    WatchEventKind.FINISHED: pb.TASK_EVENT_TYPE_FINISHED,
    WatchEventKind.REMOVED: pb.TASK_EVENT_TYPE_REMOVED,
}


def watch_batch_to_pb(batch: WatchBatch) -> pb.WatchTasksResponse:
    """Encodes a batch of a module watch's events."""
    response = pb.WatchTasksResponse(cursor=batch.cursor)
    if batch.snapshot_complete:
        response.snapshot_complete = True
    add = response.events.add
    for event in batch.events:
        message = add(type=_EVENT_TYPES[event.kind])
        fill_stats(message.task, event.task)
        if event.status is not None:
            fill_status(message.status, event.status)
    return response


def children_page_to_pb(
    children: Iterable[TaskIdentity], count: int, next_page_token: str
) -> pb.ListTaskChildrenResponse:
    """Encodes one page of a task's children."""
    response = pb.ListTaskChildrenResponse(children_count=count, next_page_token=next_page_token)
    add = response.children.add
    for child in children:
        add(task_id=str(child.task_id), node=child.node)
    return response


def page_to_pb(entries: Iterable[TaskStats], next_page_token: str) -> pb.ListModuleTasksResponse:
    """Encodes one page of a module's task list."""
    response = pb.ListModuleTasksResponse(next_page_token=next_page_token)
    add = response.tasks.add
    for entry in entries:
        fill_stats(add(), entry)
    return response


# ---- statuses other nodes send (wire to core) -----------------------------------------------

_KINDS_BACK = {v: TaskKind(k) for k, v in _KINDS.items()}


def _time_back(msg: pb.TaskStatus, name: str) -> float | None:
    if not msg.HasField(name):  # type: ignore[arg-type]
        return None
    stamp = getattr(msg, name)
    return stamp.seconds + stamp.nanos / 1e9  # type: ignore[no-any-return]


def status_from_pb(msg: pb.TaskStatus) -> TaskStatus:
    """Decodes a status another tm node sent (it encoded it with ``fill_status``)."""
    return TaskStatus(
        id=require_uuid("id", msg.id),
        type=msg.type,
        kind=_KINDS_BACK.get(msg.kind, TaskKind.NODE),
        scope=msg.scope,
        state=_STATES_BACK.get(msg.state, TaskState.RUNNING),
        is_abortable=msg.is_abortable,
        creation_time=_time_back(msg, "creation_time"),
        start_time=_time_back(msg, "start_time"),
        end_time=_time_back(msg, "end_time"),
        error=msg.error,
        parent_id=parse_uuid("parent_id", msg.parent_id, required=False),
        sequence_number=msg.sequence_number,
        shard=msg.shard,
        keyspace=msg.keyspace,
        table=msg.table,
        entity=msg.entity,
        progress_units=msg.progress_units,
        progress=Progress(msg.progress_completed, msg.progress_total),
        children=tuple(
            TaskIdentity(require_uuid("task_id", c.task_id), c.node) for c in msg.children_ids
        ),
        module=msg.module,
        internal=msg.internal,
        user_task=msg.user_task,
        abort_requested=msg.abort_requested,
        expire_time=_time_back(msg, "expire_time"),
        children_count=msg.children_count,
        node=msg.node,
        extras=StatusExtras(
            tuple(msg.unreachable_nodes), _abort_back(msg), msg.owner, _pace_back(msg)
        ),
    )


def _pace_back(msg: pb.TaskStatus) -> ProgressRate | None:
    last = _time_back(msg, "last_progress_time")
    if last is None:
        return None
    rate = msg.progress_rate if msg.HasField("progress_rate") else None
    return ProgressRate(last, rate, _time_back(msg, "estimated_end_time"))


def _abort_back(msg: pb.TaskStatus) -> AbortRequest | None:
    if not msg.HasField("abort"):
        return None
    info = msg.abort
    at = info.request_time.seconds + info.request_time.nanos / 1e9
    origin = parse_uuid("origin_task_id", info.origin_task_id, required=False)
    return AbortRequest(at, info.reason, info.principal, origin)


def virtual_child_to_pb(target: npb.ClusterChild, status: TaskStatus) -> None:
    """Fills a ``ClusterChild`` with what a cluster task's status needs of a child."""
    target.task_id = str(status.id)
    if status.creation_time is not None:
        _set_time(target.creation_time, status.creation_time)
    target.progress_completed = status.progress.completed
    target.progress_total = status.progress.total


def virtual_child_from_pb(msg: npb.ClusterChild, node: str) -> VirtualChild:
    """Decodes a child of a cluster task that ``node`` sent."""
    created = None
    if msg.HasField("creation_time"):
        created = msg.creation_time.seconds + msg.creation_time.nanos / 1e9
    progress = Progress(msg.progress_completed, msg.progress_total)
    return VirtualChild(require_uuid("task_id", msg.task_id), node, created, progress)


def nodes_to_pb(nodes: Iterable[Any]) -> pb.ListNodesResponse:
    """Encodes a listing of nodes (anything with a ``NodeView``'s attributes)."""
    reply = pb.ListNodesResponse()
    for node in nodes:
        entry = reply.nodes.add(
            name=node.name, address=node.address, alive=node.alive, version=node.version,
            left=node.left,
        )  # fmt: skip
        _set_time(entry.started_time, node.started_at)
        _set_time(entry.last_heartbeat_time, node.heartbeat_at)
    return reply
