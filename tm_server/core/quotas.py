"""The registry's quotas: how many tasks a node, a principal and a parent may hold.

Checked where tasks are added (each shard checks its share, so a check is a
length and a counter, with no call across shards), refused with
``QuotaExceededError`` before anything changes. The quotas of the transport
(streams, request size) are the service layer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuotaExceededError

#: Registered tasks a node holds at most (``--max-tasks``): about 1.2 GB of
#: plain tasks, or 10 GB of tasks with every field at its maximum.
DEFAULT_MAX_TASKS = 2_000_000
#: Registered tasks one authenticated principal may hold (``--max-tasks-per-principal``).
DEFAULT_MAX_TASKS_PER_PRINCIPAL = 250_000
#: Children (live and folded) one task may have (``--max-children``).
DEFAULT_MAX_CHILDREN = 100_000


@dataclass(frozen=True, slots=True)
class TaskQuotas:
    """Limits on the registry; the per-principal one applies to named principals only.

    Without access checks every caller is the anonymous principal "", and
    only the node-wide limits apply.
    """

    max_tasks: int = DEFAULT_MAX_TASKS
    max_tasks_per_principal: int = DEFAULT_MAX_TASKS_PER_PRINCIPAL
    max_children: int = DEFAULT_MAX_CHILDREN

    def __post_init__(self) -> None:
        for name in ("max_tasks", "max_tasks_per_principal", "max_children"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class ShardQuotas:
    """One shard's share of the node's quotas, and the checks against it."""

    __slots__ = ("_shards", "max_children", "max_owned", "max_tasks", "quotas")

    def __init__(self, quotas: TaskQuotas, shards: int) -> None:
        self.quotas = quotas
        self._shards = shards
        # Tasks spread over shards by id: each holds an even share (rounded up).
        self.max_tasks = -(-quotas.max_tasks // shards)
        self.max_owned = -(-quotas.max_tasks_per_principal // shards)
        self.max_children = quotas.max_children

    def _share(self, flag: str, limit: int) -> str:
        if self._shards == 1:
            return f"({flag} {limit})"
        return f"(its share of {flag} {limit} over {self._shards} shards)"

    def check_tasks(self, registered: int) -> None:
        """Refuses one more task on a shard that holds its share already."""
        if registered >= self.max_tasks:
            limit = self.quotas.max_tasks
            raise QuotaExceededError(
                "tasks",
                limit,
                "the node holds its maximum of registered tasks "
                f"{self._share('--max-tasks', limit)}; wait for finished tasks to expire "
                "(or lower the TTLs) and retry",
            )

    def check_owned(self, owner: str, owned: int) -> None:
        """Refuses one more task of a principal that holds its share already."""
        if owner and owned >= self.max_owned:
            limit = self.quotas.max_tasks_per_principal
            raise QuotaExceededError(
                "tasks_per_principal",
                limit,
                f"principal {owner} holds its maximum of registered tasks "
                f"{self._share('--max-tasks-per-principal', limit)}; "
                "wait for its finished tasks to expire and retry",
            )

    def check_children(self, parent: str, children: int) -> None:
        """Refuses one more child of a parent that has ``max_children`` already."""
        if children >= self.max_children:
            raise QuotaExceededError(
                "children_per_task",
                self.max_children,
                f"task {parent} has its maximum of {self.max_children} children "
                "(--max-children); create the new task under another parent",
            )


__all__ = [
    "DEFAULT_MAX_CHILDREN",
    "DEFAULT_MAX_TASKS",
    "DEFAULT_MAX_TASKS_PER_PRINCIPAL",
    "ShardQuotas",
    "TaskQuotas",
]
