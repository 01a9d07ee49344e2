"""The task manager domain: sharded registry, tasks, modules, TTL and virtual tasks (no gRPC)."""

from .clock import Clock, ManualClock, SystemClock, TimerHandle
from .errors import (
    InvalidArgumentError,
    InvalidStateError,
    ShuttingDownError,
    TaskAbortedError,
    TaskAlreadyExistsError,
    TaskFailedError,
    TaskManagerError,
    TaskNotAbortableError,
    TaskNotFoundError,
    UnknownModuleError,
)
from .manager import MAX_NAME_LENGTH, MAX_TEXT_LENGTH, TaskHandle, TaskManager
from .paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .task import TaskContext, TaskImpl
from .types import (
    FoldedTask,
    ListFilter,
    Progress,
    TaskIdentity,
    TaskKind,
    TaskState,
    TaskStats,
    TaskStatus,
    creation_time_of,
    new_task_id,
)
from .virtual import VirtualTaskGroup, VirtualTaskHint

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_PAGE_SIZE",
    "MAX_TEXT_LENGTH",
    "Clock",
    "FoldedTask",
    "InvalidArgumentError",
    "InvalidStateError",
    "ListFilter",
    "ManualClock",
    "Progress",
    "ShuttingDownError",
    "SystemClock",
    "TaskAbortedError",
    "TaskAlreadyExistsError",
    "TaskContext",
    "TaskFailedError",
    "TaskHandle",
    "TaskIdentity",
    "TaskImpl",
    "TaskKind",
    "TaskManager",
    "TaskManagerError",
    "TaskNotAbortableError",
    "TaskNotFoundError",
    "TaskState",
    "TaskStats",
    "TaskStatus",
    "TimerHandle",
    "UnknownModuleError",
    "VirtualTaskGroup",
    "VirtualTaskHint",
    "creation_time_of",
    "new_task_id",
]
