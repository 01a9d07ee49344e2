"""Conversions between core types and tm.v1 protobuf messages (the only place that knows both)."""

from __future__ import annotations

from uuid import UUID

from google.protobuf import duration_pb2, timestamp_pb2

from tm_client.pb import task_manager_pb2 as pb
from tm_server.core import InvalidArgumentError, TaskKind, TaskState, TaskStats, TaskStatus

_STATES = {
    TaskState.CREATED: pb.TASK_STATE_CREATED,
    TaskState.RUNNING: pb.TASK_STATE_RUNNING,
    TaskState.DONE: pb.TASK_STATE_DONE,
    TaskState.FAILED: pb.TASK_STATE_FAILED,
    TaskState.SUSPENDED: pb.TASK_STATE_SUSPENDED,
}
_KINDS = {TaskKind.NODE: pb.TASK_KIND_NODE, TaskKind.CLUSTER: pb.TASK_KIND_CLUSTER}


def parse_uuid(field: str, value: str, *, required: bool = True) -> UUID | None:
    """Parses a UUID request field.

    Raises:
        InvalidArgumentError: malformed, or empty when required.
    """
    if not value:
        if required:
            raise InvalidArgumentError(field, "must not be empty")
        return None
    try:
        return UUID(value)
    except ValueError as exc:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidArgumentError(field, f"not a valid UUID: {shown!r}") from exc


def require_uuid(field: str, value: str) -> UUID:
    """Parses a required UUID request field."""
    parsed = parse_uuid(field, value)
    assert parsed is not None
    return parsed


def duration_seconds(field: str, value: duration_pb2.Duration) -> float:
    """Returns a Duration in seconds.

    Raises:
        InvalidArgumentError: negative or not normalized.
    """
    if value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidArgumentError(field, "must be a non-negative duration")
    return value.seconds + value.nanos / 1e9


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    # Epoch seconds as a float hold about microseconds; finer digits are noise.
    # (The constructor is about twice as fast as Timestamp.FromMicroseconds.)
    micros = round(seconds * 1e6)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def status_to_pb(status: TaskStatus) -> pb.TaskStatus:
    """Encodes a core status; unset times stay unset, roots have an empty parent_id."""
    return pb.TaskStatus(
        id=str(status.id),
        type=status.type,
        kind=_KINDS[status.kind],
        scope=status.scope,
        state=_STATES[status.state],
        is_abortable=status.is_abortable,
        creation_time=_timestamp(status.creation_time),
        start_time=_timestamp(status.start_time),
        end_time=_timestamp(status.end_time),
        error=status.error,
        parent_id="" if status.parent_id is None else str(status.parent_id),
        sequence_number=status.sequence_number,
        shard=status.shard,
        keyspace=status.keyspace,
        table=status.table,
        entity=status.entity,
        progress_units=status.progress_units,
        progress_total=status.progress.total,
        progress_completed=status.progress.completed,
        children_ids=[
            pb.TaskIdentity(task_id=str(c.task_id), node=c.node) for c in status.children
        ],
        module=status.module,
        internal=status.internal,
        user_task=status.user_task,
        abort_requested=status.abort_requested,
        expire_time=_timestamp(status.expire_time),
    )


def stats_to_pb(stats: TaskStats) -> pb.TaskStats:
    """Encodes a core list entry."""
    return pb.TaskStats(
        task_id=str(stats.task_id),
        state=_STATES[stats.state],
        type=stats.type,
        kind=_KINDS[stats.kind],
        scope=stats.scope,
        keyspace=stats.keyspace,
        table=stats.table,
        entity=stats.entity,
        sequence_number=stats.sequence_number,
        shard=stats.shard,
        creation_time=_timestamp(stats.creation_time),
        start_time=_timestamp(stats.start_time),
        end_time=_timestamp(stats.end_time),
    )
