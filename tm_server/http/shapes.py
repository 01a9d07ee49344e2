"""The one conversion between core values and the HTTP side's JSON (ScyllaDB's shapes).

ScyllaDB's fields come first, in the order its swagger lists them, with its
encodings: times in ISO 8601 UTC at second resolution and the epoch for an
unset one, ``"none"`` for a root's parent, states and kinds in lower case.
tm's own fields follow (ScyllaDB's clients ignore fields they do not know);
their unset times are ``null``, as they have no ScyllaDB meaning to keep.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tm_server.core import TaskStatus
from tm_server.core.module_watch import WatchBatch, WatchEvent
from tm_server.core.types import TaskIdentity, TaskStats

#: What ScyllaDB prints for a time that is not set.
EPOCH = "1970-01-01T00:00:00Z"

# A second's text is the same for every time that falls in it: texts are
# kept (a page of entries created over a few seconds formats each second
# once), forgotten all at once past ``_KEPT``.
_texts: dict[int, str] = {}
_KEPT = 4096


def scylla_time(when: float | None) -> str:
    """A time as ScyllaDB prints it: ``2024-07-29T15:48:55Z``, the epoch when unset."""
    if when is None:
        return EPOCH
    second = int(when)
    text = _texts.get(second)
    if text is None:
        if len(_texts) >= _KEPT:
            _texts.clear()
        text = _texts[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    return text


def optional_time(when: float | None) -> str | None:
    """Tm's own times: the same format, ``None`` (``null``) when unset."""
    return None if when is None else scylla_time(when)


def identity_json(child: TaskIdentity) -> dict[str, str]:
    """ScyllaDB's ``task_identity``."""
    return {"task_id": str(child.task_id), "node": child.node}


def status_json(status: TaskStatus) -> dict[str, Any]:
    """ScyllaDB's ``task_status``, then tm's fields."""
    progress = status.progress
    extras = status.extras
    abort = extras.abort
    pace = extras.pace
    return {
        "id": str(status.id),
        "type": status.type,
        "kind": status.kind.value,
        "scope": status.scope,
        "state": status.state.value,
        "is_abortable": status.is_abortable,
        "creation_time": scylla_time(status.creation_time),
        "start_time": scylla_time(status.start_time),
        "end_time": scylla_time(status.end_time),
        "error": status.error,
        "parent_id": "none" if status.parent_id is None else str(status.parent_id),
        "sequence_number": status.sequence_number,
        "shard": status.shard,
        "keyspace": status.keyspace,
        "table": status.table,
        "entity": status.entity,
        "progress_units": status.progress_units,
        "progress_total": float(progress.total),
        "progress_completed": float(progress.completed),
        "children_ids": [identity_json(child) for child in status.children],
        # tm's own.
        "module": status.module,
        "internal": status.internal,
        "user_task": status.user_task,
        "abort_requested": status.abort_requested,
        "node": status.node,
        "children_count": status.children_count or len(status.children),
        "expire_time": optional_time(status.expire_time),
        "owner": extras.owner,
        "abort": None
        if abort is None
        else {
            "request_time": scylla_time(abort.time),
            "reason": abort.reason,
            "principal": abort.principal,
            "origin_task_id": None if abort.origin is None else str(abort.origin),
        },
        "unreachable_nodes": list(extras.unreachable_nodes),
        "last_progress_time": None if pace is None else optional_time(pace.last_time),
        "progress_rate": None if pace is None else pace.rate,
        "estimated_end_time": None if pace is None else optional_time(pace.estimated_end),
    }


def stats_json(stats: TaskStats) -> dict[str, Any]:
    """ScyllaDB's ``task_stats`` (a list entry), then tm's fields."""
    return {
        "task_id": str(stats.task_id),
        "state": stats.state.value,
        "type": stats.type,
        "kind": stats.kind.value,
        "scope": stats.scope,
        "keyspace": stats.keyspace,
        "table": stats.table,
        "entity": stats.entity,
        "sequence_number": stats.sequence_number,
        "shard": stats.shard,
        "creation_time": scylla_time(stats.creation_time),
        "start_time": scylla_time(stats.start_time),
        "end_time": scylla_time(stats.end_time),
        # tm's own.
        "progress_completed": float(stats.progress_completed),
        "progress_total": float(stats.progress_total),
        "module": stats.module,
        "internal": stats.internal,
    }


def event_json(event: WatchEvent) -> dict[str, Any]:
    """One change of a module watch."""
    return {
        "type": event.kind.value,
        "task": stats_json(event.task),
        "status": None if event.status is None else status_json(event.status),
    }


def batch_json(batch: WatchBatch) -> dict[str, Any]:
    """One response of a module watch: its events, the cursor after them, the snapshot's end."""
    return {
        "events": [event_json(event) for event in batch.events],
        "snapshot_complete": batch.snapshot_complete,
        "cursor": batch.cursor,
    }


def node_json(node: Any) -> dict[str, Any]:
    """A cluster node (the servicer's ``NodeView``)."""
    return {
        "name": node.name,
        "address": node.address,
        "version": node.version,
        "started_at": optional_time(node.started_at),
        "heartbeat_at": optional_time(node.heartbeat_at),
        "alive": node.alive,
        "left": node.left,
    }


def children_json(
    children: Sequence[TaskIdentity], count: int, next_page_token: str
) -> dict[str, Any]:
    """One page of a task's children."""
    return {
        "children": [identity_json(child) for child in children],
        "count": count,
        "next_page_token": next_page_token,
    }


__all__ = [
    "EPOCH",
    "batch_json",
    "children_json",
    "event_json",
    "identity_json",
    "node_json",
    "optional_time",
    "scylla_time",
    "stats_json",
    "status_json",
]
