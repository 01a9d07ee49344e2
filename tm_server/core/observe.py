"""What the registry tells an observer (metrics) of its tasks' lives.

The core keeps no metrics of its own: it calls a ``TaskObserver`` at the few
points of a task's life an operator counts (created, finished, expired) with
plain data, and whoever stands behind it (the server's Prometheus metrics)
decides what to keep. The calls are synchronous and must be cheap: they sit on
the paths of creating and finishing tasks. Live counts (tasks by module and
state) are not pushed: ``TaskManager.task_counts`` reads them when asked.
"""

from __future__ import annotations

from typing import Protocol

from .types import TaskState


class TaskObserver(Protocol):
    """Told of every regular task created, finished and expired on this node."""

    def task_created(self, module: str, task_type: str) -> None:
        """A task of ``module`` and ``task_type`` was registered."""

    def task_finished(self, module: str, task_type: str, state: TaskState, duration: float) -> None:
        """A task finished in ``state`` (done or failed), ``duration`` seconds after it started.

        ``duration`` counts from the start, or from the creation for a task
        that failed before it started.
        """

    def tasks_expired(self, module: str, count: int) -> None:
        """``count`` finished tasks of ``module`` left the registry as their TTL ran out."""


class NoObserver:
    """An observer that keeps nothing (the default)."""

    def task_created(self, module: str, task_type: str) -> None:
        """Keeps nothing."""

    def task_finished(self, module: str, task_type: str, state: TaskState, duration: float) -> None:
        """Keeps nothing."""

    def tasks_expired(self, module: str, count: int) -> None:
        """Keeps nothing."""


#: The observer of a manager given none.
NO_OBSERVER: TaskObserver = NoObserver()
