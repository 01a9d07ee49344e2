"""The task manager's ``TaskObserver``: tasks created, finished and expired, as metrics.

The core calls it on the paths that create and finish tasks, so each call is
a dictionary lookup of the labelled child and an increment in place (and,
for a finished task, one histogram observation: a ``bisect``). Module names are bounded by
``--max-modules``; task types are whatever producers name, so past
``MAX_TYPES`` distinct (module, type) pairs further types are counted as
``OTHER_TYPE`` rather than growing the series without end.
"""

from __future__ import annotations

from tm_server.core.types import TaskState

from .registry import Metrics

#: Distinct (module, type) label pairs kept per family; more are counted as ``OTHER_TYPE``.
MAX_TYPES = 2000
#: The type label of tasks past ``MAX_TYPES``.
OTHER_TYPE = "_other"


class TaskMetrics:
    """Counts the node's regular tasks (implements ``core.observe.TaskObserver``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._created = metrics.tasks_created.labels
        self._done = metrics.tasks_finished.labels
        self._duration = metrics.task_duration.labels
        self._expired = metrics.tasks_expired.labels
        self._types: set[tuple[str, str]] = set()

    def _type(self, module: str, task_type: str) -> str:
        key = (module, task_type)
        if key in self._types:
            return task_type
        if len(self._types) >= MAX_TYPES:
            return OTHER_TYPE
        self._types.add(key)
        return task_type

    def task_created(self, module: str, task_type: str) -> None:
        """A task was registered."""
        self._created(module, self._type(module, task_type)).inc()

    def task_finished(self, module: str, task_type: str, state: TaskState, duration: float) -> None:
        """A task finished done or failed after ``duration`` seconds."""
        task_type = self._type(module, task_type)
        self._done(module, task_type, state.value).inc()
        self._duration(module, task_type).observe(max(duration, 0.0))

    def tasks_expired(self, module: str, count: int) -> None:
        """``count`` finished tasks of ``module`` left the registry at their TTL."""
        self._expired(module).inc(count)


__all__ = ["MAX_TYPES", "OTHER_TYPE", "TaskMetrics"]
