"""Typed domain errors of the task manager core; the service layer maps them to status codes."""

from __future__ import annotations

from uuid import UUID


class TaskManagerError(Exception):
    """Base class of every error the core raises on purpose."""

    reason = "TASK_MANAGER_ERROR"


class TaskNotFoundError(TaskManagerError):
    """No regular task on any shard and no virtual task group has this id."""

    reason = "TASK_NOT_FOUND"

    def __init__(self, task_id: UUID, what: str = "task") -> None:
        super().__init__(f"{what} with id {task_id} not found")
        self.task_id = task_id


class UnknownModuleError(TaskManagerError):
    """The module is not registered."""

    reason = "MODULE_NOT_FOUND"

    def __init__(self, module: str) -> None:
        super().__init__(f"module {module} not found")
        self.module = module


class TaskNotAbortableError(TaskManagerError):
    """Abort was requested through the API on a task that is not abortable."""

    reason = "TASK_NOT_ABORTABLE"

    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"task with id {task_id} cannot be aborted")
        self.task_id = task_id


class TaskAlreadyExistsError(TaskManagerError):
    """A task with the requested id is already registered."""

    reason = "TASK_ALREADY_EXISTS"

    def __init__(self, task_id: UUID, detail: str = "") -> None:
        super().__init__(f"task with id {task_id} already exists{detail}")
        self.task_id = task_id


class InvalidStateError(TaskManagerError):
    """The operation is not allowed in the task's (or module's) current state."""

    reason = "INVALID_STATE"


class InvalidArgumentError(TaskManagerError):
    """A request field has a bad value; ``field`` names it."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field
        self.description = message


class InvalidPageTokenError(InvalidArgumentError):
    """A page token this server did not issue, or one issued for another listing."""

    reason = "INVALID_PAGE_TOKEN"

    def __init__(self, message: str) -> None:
        super().__init__("page_token", message)


class ValueOutOfRangeError(InvalidArgumentError):
    """A value past a documented maximum (a TTL, a progress value)."""

    reason = "VALUE_OUT_OF_RANGE"


class ModuleLimitError(TaskManagerError):
    """Registering one more module would pass the server's ``--max-modules``."""

    reason = "MODULE_LIMIT_REACHED"

    def __init__(self, module: str, limit: int) -> None:
        super().__init__(
            f"cannot register module {module}: the server holds its maximum of {limit} modules "
            "(--max-modules); unregister unused ones first"
        )
        self.module = module
        self.limit = limit


class QuotaExceededError(TaskManagerError):
    """A quota of the server was reached (tasks, children, sessions, streams, request size)."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, quota: str, limit: int, message: str) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit


class SessionNotFoundError(TaskManagerError):
    """No live producer session with this id (it expired, or never existed)."""

    reason = "SESSION_NOT_FOUND"

    def __init__(self, session_id: UUID) -> None:
        super().__init__(f"producer session {session_id} not found: it expired or never existed")
        self.session_id = session_id


class WaitTimeoutError(TaskManagerError):
    """A wait's timeout passed before the task finished (the task goes on)."""

    reason = "WAIT_TIMEOUT"

    def __init__(self, task_id: UUID, timeout: float | None = None) -> None:
        within = "" if timeout is None else f" within {timeout:g}s"
        super().__init__(f"task with id {task_id} did not finish{within}")
        self.task_id = task_id


class StoreUnavailableError(TaskManagerError):
    """The cluster store cannot be reached, or this node's membership lapsed.

    Calls that need the store fail; regular tasks keep working, and the node
    reconnects by itself.
    """

    reason = "STORE_UNAVAILABLE"

    def __init__(self, detail: str) -> None:
        super().__init__(f"the cluster store is unavailable: {detail}; try again shortly")


class JournalUnavailableError(TaskManagerError):
    """The node's journal cannot be written: a change that must be durable was refused.

    Reads keep working; the journal retries with every durable call, so the
    node recovers by itself once the disk has room (or works) again.
    """

    reason = "JOURNAL_UNAVAILABLE"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the node's journal cannot be written ({detail}): the change was not made "
            "durable; free disk space or fix the disk, then retry"
        )


class NodeUnavailableError(TaskManagerError):
    """The node of the cluster that holds a task stopped answering while it was asked."""

    reason = "NODE_UNAVAILABLE"

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node} did not answer: {detail}")
        self.node = node


class CursorExpiredError(TaskManagerError):
    """A watch cursor older than the node's window of changes, or from before a restart."""

    reason = "CURSOR_EXPIRED"

    def __init__(self) -> None:
        super().__init__(
            "the watch cursor has expired: the changes after it left this server's window "
            "(--watch-window), or it is from before the server restarted; list the tasks "
            "again (or watch with a snapshot) and watch from the new cursor"
        )


class WatchFellBehindError(TaskManagerError):
    """A watch's reader fell more than the node's window of changes behind."""

    reason = "WATCH_FELL_BEHIND"

    def __init__(self, window: int) -> None:
        super().__init__(
            f"the watch fell more than the server's window of {window} changes behind "
            "(--watch-window) while its reader was slow; watch again with a snapshot"
        )
        self.limit = window


class ShuttingDownError(TaskManagerError):
    """The task manager is stopping: open waits end."""

    reason = "SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; wait again on a running server")


class TaskAbortedError(Exception):
    """Raised inside a task body (by ``TaskContext.check_abort``) once an abort was requested."""

    def __init__(self, message: str = "abort requested") -> None:
        super().__init__(message)


class TaskFailedError(Exception):
    """Raised by a task body to fail with exactly this error text."""
