"""The cluster store: nodes and cluster tasks, shared by every node of a cluster.

``ClusterStore`` is the port the cluster layer reaches the store through: rows
of plain data in and out. ``SqlStore`` writes it once in SQL for both stores;
``sqlite.py`` and ``postgres.py`` say how statements run and how nodes hear of
changes (a change log the nodes read, or ``LISTEN/NOTIFY``). Times are the
store's own clock, never a node's, so nodes agree on who is alive.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol
from uuid import UUID

from tm_server.core import StoreUnavailableError, TaskAlreadyExistsError

__all__ = [
    "ClusterStore",
    "ClusterTaskRow",
    "FinishedChildRow",
    "NodeNameTakenError",
    "NodeRow",
    "SqlStore",
    "StoreUnavailableError",
]


class NodeNameTakenError(Exception):
    """Another live node already has this name: the node must not start."""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node as the store has it; ``alive`` is judged by the store's clock."""

    name: str
    address: str
    version: str
    incarnation: str
    started_at: float
    heartbeat_at: float
    expires_at: float
    left: bool
    alive: bool


@dataclass(frozen=True, slots=True)
class ClusterTaskRow:
    """A cluster task's row. Progress ``None``: the producer reports none of its own."""

    id: str
    parent_id: str | None
    module: str
    type: str
    scope: str
    keyspace: str
    tbl: str
    entity: str
    state: str
    error: str
    abortable: bool
    user_task: bool
    abort_requested: bool
    progress_units: str
    progress_completed: float | None
    progress_total: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    session_id: str | None
    session_node: str | None
    version: int
    #: The principal that created it ("" without access checks).
    owner: str = ""
    #: The abort request: why, who, when (epoch seconds), and the ancestor it came from.
    abort_reason: str = ""
    abort_principal: str = ""
    abort_time: float | None = None
    abort_origin: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedChildRow:
    """A regular child of a cluster task that finished on its node, as the store keeps it.

    ``status`` is its final status as JSON; the other fields are copied out of
    it, so that a cluster task's status and progress decode no JSON.
    """

    id: str
    parent_id: str
    node: str
    created_at: float | None
    progress_completed: float
    progress_total: float
    status: str


_TASK_COLUMNS = tuple(f.name for f in fields(ClusterTaskRow))
_CHILD_COLUMNS = tuple(f.name for f in fields(FinishedChildRow))
_NODE_COLUMNS = ("name", "address", "version", "incarnation", "started_at", "heartbeat_at",
                 "expires_at", "left_at")  # fmt: skip
_FINAL = ("done", "failed", "suspended")


class ClusterStore(Protocol):
    """What the cluster layer needs of a store.

    Every method may raise ``StoreUnavailableError``.
    """

    url: str

    async def open(self) -> None:
        """Connects and applies the schema migrations not yet applied."""

    async def close(self) -> None:
        """Disconnects."""

    async def now(self) -> float:
        """The store's clock, in epoch seconds."""

    async def join(self, name: str, address: str, version: str, incarnation: str,
                   expiry: float, replacing: str = "") -> NodeRow:  # fmt: skip
        """Registers this node; raises ``NodeNameTakenError`` if a live node has the name.

        ``replacing``: the incarnation of a row with this name that may be taken
        over although it looks alive (its node was found not to answer).
        """

    async def heartbeat(self, name: str, incarnation: str, expiry: float) -> bool:
        """Renews the membership; False if the row is no longer this node's."""

    async def leave(self, name: str, incarnation: str) -> None:
        """Marks the node as gone (a clean shutdown)."""

    async def nodes(self) -> list[NodeRow]:
        """Every node the store knows, alive or not."""

    async def create_task(self, row: ClusterTaskRow) -> ClusterTaskRow:
        """Inserts a cluster task, with times of the store's clock.

        Raises ``TaskAlreadyExistsError`` if the id is taken.
        """

    async def get_task(self, task_id: str) -> ClusterTaskRow | None:
        """A cluster task's row."""

    async def update_task(
        self, task_id: str, states: Sequence[str], **values: Any
    ) -> ClusterTaskRow | None:
        """Updates a task whose state is one of ``states``; the new row, or ``None``.

        A value ``NOW`` sets the store's clock. Every change is notified.
        """

    async def tasks_of_module(self, module: str, finished_since: float) -> list[ClusterTaskRow]:
        """The module's unfinished tasks and those finished since then."""

    async def children_of(self, parent_id: str) -> list[ClusterTaskRow]:
        """Cluster tasks whose parent is ``parent_id``."""

    async def fail_unfinished(
        self, error: str, *, session_id: str | None = None, nodes: Sequence[str] = ()
    ) -> list[ClusterTaskRow]:
        """Fails, once, the unfinished tasks of a session or of sessions on these nodes."""

    async def add_finished_children(self, rows: Sequence[FinishedChildRow]) -> None:
        """Keeps finished children, those whose parent is a cluster task; notifies the parents.

        A row whose parent is no cluster task (or one swept already) is skipped;
        one kept already is left as it is, so a retry does no harm.
        """

    async def finished_children(self, parent_id: str) -> list[FinishedChildRow]:
        """The finished children kept for the cluster task ``parent_id``."""

    async def finished_child(self, task_id: str) -> FinishedChildRow | None:
        """A finished child kept by its own id, or ``None``."""

    async def sweep(self, finished_before: float) -> int:
        """Removes tasks finished before then, with their finished children; returns how many."""

    async def modules(self) -> list[str]:
        """The modules cluster tasks belong to."""

    async def notify(self, task_id: str) -> None:
        """Tells every node that a task may have changed (its children did)."""

    def changes(self) -> AsyncIterator[str]:
        """The ids of tasks that changed, as every node hears of them."""


#: A value of ``update_task`` meaning the store's clock.
NOW = object()


class SqlStore(abc.ABC):
    """The store's operations in SQL, for a dialect that supplies how statements run."""

    #: The placeholder of a parameter.
    P = "?"
    #: The store's clock, in epoch seconds.
    NOW_SQL = ""
    #: The statements that create schema version ``n + 1`` (index ``n``).
    MIGRATIONS: tuple[tuple[str, ...], ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    # ---- how statements run (per dialect) ----------------------------------------------------

    @abc.abstractmethod
    async def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Runs the statements in one transaction; returns the last one's rows.

        Raises:
            StoreUnavailableError: the store cannot be reached or refused.
        """

    @abc.abstractmethod
    def _notify_sql(self, task_id: str) -> tuple[str, tuple[Any, ...]]:
        """The statement that tells the nodes a task changed (in a writing transaction)."""

    # ---- helpers -----------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        return text.replace("?", self.P).replace("NOW()", self.NOW_SQL)

    async def _rows(self, text: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self._tx([(self._sql(text), params)])

    @staticmethod
    def _task(row: tuple[Any, ...]) -> ClusterTaskRow:
        values = dict(zip(_TASK_COLUMNS, row, strict=True))
        for flag in ("abortable", "user_task", "abort_requested"):
            values[flag] = bool(values[flag])
        return ClusterTaskRow(**values)

    @staticmethod
    def _node(row: tuple[Any, ...], now: float) -> NodeRow:
        name, address, version, incarnation, started, beat, expires, left_at = row
        return NodeRow(
            name, address, version, incarnation, started, beat, expires,
            left_at is not None, left_at is None and expires > now,
        )  # fmt: skip

    # ---- the clock and the nodes -------------------------------------------------------------

    async def now(self) -> float:
        """The store's clock."""
        return float((await self._rows("SELECT NOW()"))[0][0])

    async def join(self, name: str, address: str, version: str, incarnation: str,
                   expiry: float, replacing: str = "") -> NodeRow:  # fmt: skip
        """Registers (or re-registers) this node, unless a live node holds the name."""
        taken = await self._rows(
            "INSERT INTO tm_nodes (name, address, version, incarnation, started_at, "
            "heartbeat_at, expires_at, left_at) VALUES (?, ?, ?, ?, NOW(), NOW(), NOW() + ?, "
            "NULL) ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
            "version = excluded.version, incarnation = excluded.incarnation, "
            "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
            "expires_at = excluded.expires_at, left_at = NULL WHERE tm_nodes.left_at IS NOT "
            "NULL OR tm_nodes.expires_at <= NOW() OR tm_nodes.incarnation = excluded.incarnation "
            "OR tm_nodes.incarnation = ? "
            "RETURNING " + ", ".join(_NODE_COLUMNS) + ", NOW()",
            name, address, version, incarnation, expiry, replacing,
        )  # fmt: skip
        if not taken:
            raise NodeNameTakenError(
                f"a live node named {name!r} is in the cluster store {self.url} already: "
                "give this node another --node name, or stop the other one"
            )
        return self._node(taken[0][:-1], taken[0][-1])

    async def heartbeat(self, name: str, incarnation: str, expiry: float) -> bool:
        """Renews the membership if it is still this node's."""
        rows = await self._rows(
            "UPDATE tm_nodes SET heartbeat_at = NOW(), expires_at = NOW() + ? "
            "WHERE name = ? AND incarnation = ? AND left_at IS NULL RETURNING name",
            expiry, name, incarnation,
        )  # fmt: skip
        return bool(rows)

    async def leave(self, name: str, incarnation: str) -> None:
        """Marks the node as gone."""
        await self._rows(
            "UPDATE tm_nodes SET left_at = NOW() WHERE name = ? AND incarnation = ?",
            name, incarnation,
        )  # fmt: skip

    async def nodes(self) -> list[NodeRow]:
        """Every node, alive or not."""
        rows = await self._rows(
            "SELECT " + ", ".join(_NODE_COLUMNS) + ", NOW() FROM tm_nodes ORDER BY name"
        )
        return [self._node(r[:-1], r[-1]) for r in rows]

    # ---- cluster tasks -----------------------------------------------------------------------

    async def create_task(self, row: ClusterTaskRow) -> ClusterTaskRow:
        """Inserts a task, its creation time the store's clock."""
        values = [getattr(row, c) for c in _TASK_COLUMNS if c != "created_at"]
        columns = [c for c in _TASK_COLUMNS if c != "created_at"]
        inserted = await self._tx(
            [
                self._notify_sql(row.id),
                (
                    self._sql(
                        f"INSERT INTO tm_cluster_tasks ({', '.join(columns)}, created_at) "
                        f"VALUES ({', '.join('?' for _ in columns)}, NOW()) "
                        f"ON CONFLICT (id) DO NOTHING RETURNING {', '.join(_TASK_COLUMNS)}"
                    ),
                    tuple(values),
                ),
            ]
        )
        if not inserted:
            raise TaskAlreadyExistsError(UUID(row.id))
        return self._task(inserted[0])

    async def get_task(self, task_id: str) -> ClusterTaskRow | None:
        """A task's row."""
        rows = await self._rows(
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tm_cluster_tasks WHERE id = ?", task_id
        )
        return self._task(rows[0]) if rows else None

    async def update_task(
        self, task_id: str, states: Sequence[str], **values: Any
    ) -> ClusterTaskRow | None:
        """Updates a task in one of ``states``; notifies the nodes."""
        sets = ", ".join(f"{k} = NOW()" if v is NOW else f"{k} = ?" for k, v in values.items())
        params = tuple(v for v in values.values() if v is not NOW)
        where = ", ".join("?" for _ in states)
        rows = await self._tx(
            [
                self._notify_sql(task_id),
                (
                    self._sql(
                        f"UPDATE tm_cluster_tasks SET {sets}, version = version + 1 "
                        f"WHERE id = ? AND state IN ({where}) "
                        f"RETURNING {', '.join(_TASK_COLUMNS)}"
                    ),
                    (*params, task_id, *states),
                ),
            ]
        )
        return self._task(rows[0]) if rows else None

    async def tasks_of_module(self, module: str, finished_since: float) -> list[ClusterTaskRow]:
        """The module's unfinished tasks and those finished since then."""
        rows = await self._rows(
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tm_cluster_tasks WHERE module = ? AND "
            "(ended_at IS NULL OR ended_at >= ?) ORDER BY id",
            module, finished_since,
        )  # fmt: skip
        return [self._task(r) for r in rows]

    async def children_of(self, parent_id: str) -> list[ClusterTaskRow]:
        """Cluster tasks whose parent is ``parent_id``, by id."""
        rows = await self._rows(
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tm_cluster_tasks WHERE parent_id = ? "
            "ORDER BY id",
            parent_id,
        )  # fmt: skip
        return [self._task(r) for r in rows]

    async def fail_unfinished(
        self, error: str, *, session_id: str | None = None, nodes: Sequence[str] = ()
    ) -> list[ClusterTaskRow]:
        """Fails the unfinished tasks of a session, or of sessions held by these nodes.

        One statement: when several nodes do it at once, each task fails once.
        """
        params: tuple[str, ...]
        if session_id is not None:
            where, params = "session_id = ?", (session_id,)
        elif nodes:
            where, params = f"session_node IN ({', '.join('?' for _ in nodes)})", tuple(nodes)
        else:
            return []
        rows = await self._rows(
            f"UPDATE tm_cluster_tasks SET state = 'failed', error = ?, ended_at = NOW(), "
            f"version = version + 1 WHERE {where} AND state IN ('created', 'running') "
            f"RETURNING {', '.join(_TASK_COLUMNS)}",
            error, *params,
        )  # fmt: skip
        failed = [self._task(r) for r in rows]
        if failed:
            await self._tx([self._notify_sql(row.id) for row in failed])
        return failed

    async def add_finished_children(self, rows: Sequence[FinishedChildRow]) -> None:
        """Keeps the rows whose parent is a cluster task, in one transaction."""
        if not rows:
            return
        # The parent's row is checked in the same statement: the rows of other
        # virtual groups' children are never kept, nor those of a swept task.
        insert = self._sql(
            f"INSERT INTO tm_cluster_children ({', '.join(_CHILD_COLUMNS)}) "
            f"SELECT {', '.join('?' for _ in _CHILD_COLUMNS)} "
            "WHERE EXISTS (SELECT 1 FROM tm_cluster_tasks WHERE id = ?) "
            "ON CONFLICT (id) DO NOTHING"
        )
        parents = dict.fromkeys(row.parent_id for row in rows)
        await self._tx(
            [self._notify_sql(parent) for parent in parents]
            + [(insert, (*(getattr(r, c) for c in _CHILD_COLUMNS), r.parent_id)) for r in rows]
        )

    async def finished_children(self, parent_id: str) -> list[FinishedChildRow]:
        """The finished children kept for a cluster task, by id."""
        rows = await self._rows(
            f"SELECT {', '.join(_CHILD_COLUMNS)} FROM tm_cluster_children WHERE parent_id = ? "
            "ORDER BY id",
            parent_id,
        )  # fmt: skip
        return [FinishedChildRow(*r) for r in rows]

    async def finished_child(self, task_id: str) -> FinishedChildRow | None:
        """A finished child kept, by its own id."""
        rows = await self._rows(
            f"SELECT {', '.join(_CHILD_COLUMNS)} FROM tm_cluster_children WHERE id = ?", task_id
        )
        return FinishedChildRow(*rows[0]) if rows else None

    async def sweep(self, finished_before: float) -> int:
        """Removes tasks finished before then, and their finished children, at once."""
        finished = "SELECT id FROM tm_cluster_tasks WHERE ended_at IS NOT NULL AND ended_at < ?"
        # The children first, found by their parents' rows. A child kept by a
        # transaction that commits between the two statements (it finished
        # just as its parent, over the retention old, is swept) stays behind
        # in PostgreSQL: a rare, harmless row, cheaper than scanning for orphans.
        rows = await self._tx(
            [
                (
                    self._sql(f"DELETE FROM tm_cluster_children WHERE parent_id IN ({finished})"),
                    (finished_before,),
                ),
                (
                    self._sql(
                        "DELETE FROM tm_cluster_tasks WHERE ended_at IS NOT NULL AND ended_at < ? "
                        "RETURNING id"
                    ),
                    (finished_before,),
                ),
            ]
        )
        return len(rows)

    async def notify(self, task_id: str) -> None:
        """Tells every node that a task may have changed."""
        await self._tx([self._notify_sql(task_id)])

    async def modules(self) -> list[str]:
        """The modules cluster tasks belong to."""
        rows = await self._rows("SELECT DISTINCT module FROM tm_cluster_tasks ORDER BY module")
        return [str(r[0]) for r in rows]
