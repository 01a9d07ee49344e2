"""Plain data of the core: states, kinds, statuses, list entries and child identities."""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

from .rate import ProgressRate
from .validation import MAX_ID_CLOCK_SKEW, plausible_time, uuid_from_int

_wall_clock = time.time


class TaskState(enum.Enum):
    """A task's state, as ScyllaDB's ``task_state``."""

    CREATED = "created"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUSPENDED = "suspended"

    #: Done or failed.
    is_complete: bool
    #: A state a wait ends on: done, failed, or (virtual tasks only) suspended.
    is_final: bool

    def __init__(self, value: str) -> None:
        # Plain member attributes rather than properties: every status read
        # asks, and a property comparing members costs ten times as much.
        self.is_complete = value in ("done", "failed")
        self.is_final = value in ("done", "failed", "suspended")


class TaskKind(enum.Enum):
    """Regular (``node``) or virtual (``cluster``)."""

    NODE = "node"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    """A child task's id and the node that holds it."""

    task_id: UUID
    node: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Completed and total units; children's progress adds up field by field."""

    completed: float = 0.0
    total: float = 0.0

    def __add__(self, other: Progress) -> Progress:
        return Progress(self.completed + other.completed, self.total + other.total)


#: Zero of zero units: shared, as progress values are immutable.
NO_PROGRESS = Progress()


class AbortRequest(NamedTuple):
    """Who asked for a task's abort, when (epoch seconds) and why.

    ``origin`` is the ancestor whose abort reached the task (``None`` when
    the abort was asked of the task itself); ``principal`` is "" when the
    server checks no callers.
    """

    time: float
    reason: str = ""
    principal: str = ""
    origin: UUID | None = None


class TaskOwner(NamedTuple):
    """What access checks need of a task: its module and the principal that created it."""

    module: str
    owner: str


class StatusExtras(NamedTuple):
    """The fields most statuses leave at their defaults, kept in one slot of the status.

    A folded child keeps its status for as long as its parent lives, so each
    slot counts a million times over; statuses with none of these share
    ``NO_EXTRAS``, and those with only an owner share one per owner.
    """

    #: Live nodes that did not answer while the status was gathered.
    unreachable_nodes: tuple[str, ...] = ()
    #: Who asked for the abort, when and why.
    abort: AbortRequest | None = None
    #: The principal that created the task.
    owner: str = ""
    #: The pace of a running task that has progressed (``rate.ProgressRate``).
    pace: ProgressRate | None = None


#: The extras of a status that has none.
NO_EXTRAS = StatusExtras()


class TaskStatus(NamedTuple):
    """The full status of a task (ScyllaDB's ``task_status`` plus tm's extra fields).

    Times are epoch seconds; ``None`` means unset (ScyllaDB prints the epoch).
    A named tuple rather than a frozen dataclass: as immutable (one status is
    shared by every watcher of a change), but built about three times faster,
    and every status read, watch update and recursive message builds one.
    """

    id: UUID
    type: str
    kind: TaskKind
    scope: str
    state: TaskState
    is_abortable: bool
    creation_time: float | None
    start_time: float | None
    end_time: float | None
    error: str
    parent_id: UUID | None
    sequence_number: int
    shard: int
    keyspace: str
    table: str
    entity: str
    progress_units: str
    progress: Progress
    #: The first children (live ones, then folded ones), at most the server's
    #: ``max_status_children``; ``children_count`` says how many there are.
    children: tuple[TaskIdentity, ...] = ()
    module: str = ""
    internal: bool = False
    user_task: bool = False
    abort_requested: bool = False
    expire_time: float | None = None
    #: How many children the task has, listed or not (``len(children)`` when 0).
    children_count: int = 0
    #: The node that holds a regular task ("" for a virtual one).
    node: str = ""
    #: What few statuses have (see the properties below).
    extras: StatusExtras = NO_EXTRAS

    @property
    def unreachable_nodes(self) -> tuple[str, ...]:
        """Live nodes that did not answer while the status was gathered.

        A cluster task's children on them are missing from it.
        """
        return self.extras.unreachable_nodes

    @property
    def abort(self) -> AbortRequest | None:
        """Who asked for the abort, when and why (kept once the task finished because of it)."""
        return self.extras.abort

    @property
    def owner(self) -> str:
        """The principal that created the task.

        "" without access checks, or for a task the server runs itself.
        """
        return self.extras.owner

    @property
    def last_progress_time(self) -> float | None:
        """When the running task's progress last changed, or ``None``."""
        pace = self.extras.pace
        return None if pace is None else pace.last_time

    @property
    def progress_rate(self) -> float | None:
        """The running task's recent rate of progress in units per second, or ``None``."""
        pace = self.extras.pace
        return None if pace is None else pace.rate

    @property
    def estimated_end_time(self) -> float | None:
        """When the running task should end at its recent rate, or ``None``."""
        pace = self.extras.pace
        return None if pace is None else pace.estimated_end


class TaskStats(NamedTuple):
    """One entry of a module's task list (ScyllaDB's ``task_stats``).

    A named tuple for the same reason as ``TaskStatus``: a page builds a hundred.
    """

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
    creation_time: float | None
    start_time: float | None
    end_time: float | None
    #: Progress as known without walking the tree (a leaf's own, a parent's last sum).
    progress_completed: float = 0.0
    progress_total: float = 0.0
    module: str = ""
    internal: bool = False


@dataclass(frozen=True, slots=True)
class VirtualChild:
    """A regular task under a virtual one, as the virtual task's status needs it.

    Its id and node to list it, its creation time to order it, its progress
    to sum: what a node sends of each of its children when another gathers
    them (a full status each would cost several times as much).
    """

    task_id: UUID
    node: str
    creation_time: float | None
    progress: Progress


@dataclass(frozen=True, slots=True)
class ListFilter:
    """The filters of ``list_module_tasks``; empty keyspace or table means any."""

    internal: bool = False
    keyspace: str = ""
    table: str = ""
    #: Only these states, these types (empty: any).
    states: frozenset[TaskState] = frozenset()
    types: frozenset[str] = frozenset()

    def admits(self, stats: TaskStats, internal: bool, left: TaskState | None = None) -> bool:
        """Whether a list entry (of a task ``internal`` or not) passes the filters.

        ``left``: the state the task was in before a change, for a watch: a
        task that leaves the states watched passes once more, in its new state.
        """
        states = self.states
        return (
            (self.internal or not internal)
            and (not self.keyspace or stats.keyspace == self.keyspace)
            and (not self.table or stats.table == self.table)
            and (not states or stats.state in states or left in states)
            and (not self.types or stats.type in self.types)
        )


@dataclass(frozen=True, slots=True)
class FoldedTask:
    """What a parent keeps of a finished internal child (ScyllaDB's task "essentials").

    ``failed_children`` keeps only the child's folded children that failed or
    have failed descendants: successful subtrees are forgotten.
    """

    status: TaskStatus
    failed_children: tuple[FoldedTask, ...] = field(default=())

    @property
    def has_failure(self) -> bool:
        """Whether this subtree holds a failed task."""
        return self.status.state is TaskState.FAILED or bool(self.failed_children)


class _TaskIds:
    """Version 7 UUIDs (RFC 9562) that keep to the clock however fast they are made.

    48 bits of Unix milliseconds, then 12 bits of the fraction of the
    millisecond (the RFC's method 3), then 62 random bits. Each id is greater
    than the one before it (creation order is id order: listings page by id),
    and when two fall in the same 244 ns step the second takes the next step.
    The usual fix, taking the next millisecond, makes every id run ahead of
    the clock at more than 1,000 ids a second: at 10,000 creations a second
    ids were 99 s in the future after 100,000 of them, and so were the
    creation times read off them.
    """

    # Random bits are drawn from the OS a page at a time: a read per id cost
    # a system call on every creation.
    _POOL = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._random = b""
        self._at = 0

    def new(self) -> UUID:
        ns = time.time_ns()
        stamp = (ns // 1_000_000) << 12 | (ns % 1_000_000) * 4096 // 1_000_000
        with self._lock:
            if stamp <= self._last:
                stamp = self._last + 1
            self._last = stamp
            at = self._at
            if at == len(self._random):
                self._random, at = os.urandom(self._POOL), 0
            self._at = at + 8
            bits = int.from_bytes(self._random[at : at + 8]) >> 2
        version, variant = 0x7 << 76, 0b10 << 62
        return uuid_from_int((stamp >> 12) << 80 | version | (stamp & 0xFFF) << 64 | variant | bits)


_task_ids = _TaskIds()


def new_task_id() -> UUID:
    """Returns a new time-ordered (version 7) task id, greater than every id made before it."""
    return _task_ids.new()


def creation_time_of(task_id: UUID) -> float | None:
    """Decodes the creation time of a time-based UUID (version 7 or 1), else ``None``.

    The time is only taken when it is plausible: not before the epoch and not
    more than ``MAX_ID_CLOCK_SKEW`` ahead of the wall clock (ids are made from
    the wall clock, and a client may choose its own: one from year 10889 must
    not give every reader a time it cannot represent).
    """
    # Read the version nibble off the int: UUID.version is a slow Python property.
    value = task_id.int
    if (value >> 62) & 0b11 != 0b10:
        return None  # not an RFC 4122 UUID: its version bits mean nothing
    version = (value >> 76) & 0xF
    if version == 7:
        # Every status read comes here: the check is inlined (a version-7
        # time is never before the epoch).
        seconds = (value >> 80) / 1000.0
        return seconds if seconds <= _wall_clock() + MAX_ID_CLOCK_SKEW else None
    if version == 1:
        # 100 ns intervals since 1582-10-15, the Gregorian reform.
        return plausible_time((task_id.time - 0x01B21DD213814000) / 1e7, _wall_clock())
    return None
