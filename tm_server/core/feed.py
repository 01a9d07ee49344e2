"""A shard's window of changes: what module watches read, and resume from.

Every change of a registered task (created, state or progress changed,
finished, removed) is one entry in a ring of the last ``size`` changes, with
a sequence number that only grows. A watch remembers the last number it read
(its cursor, per shard); reading from there gives the changes since,
coalesced to one per task (its latest), ordered by each task's last change,
so a watch that resumes after any of them gets exactly the tasks that changed
after it. The entry is only the task's id and two small codes: the task's
current entry is read when the change is read, so a change costs the hot
paths (a progress report) two stores into preallocated arrays, and holds no
memory per task beyond the window. A removed task is gone from the registry
by the time its change is read; the ring keeps the record of its removals
only, until they leave the window.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
from dataclasses import dataclass
from uuid import UUID

from .errors import CursorExpiredError
from .types import TaskState

#: Changes a node keeps for watches to resume from, unless told otherwise (``--watch-window``).
DEFAULT_WATCH_WINDOW = 65536


class ChangeKind(enum.IntEnum):
    """What happened to a task (the event types of a watch, but the snapshot's)."""

    CREATED = 1
    CHANGED = 2
    FINISHED = 3
    REMOVED = 4


# Keyed by the members' values: an Enum member hashes in Python, a string's
# hash is cached (this runs for every change).
_STATE_CODES = {state._value_: i + 1 for i, state in enumerate(TaskState)}
_STATES = {code: TaskState(value) for value, code in _STATE_CODES.items()}
_CREATED = ChangeKind.CREATED
_NEVER = 1 << 62
_CHANGED = ChangeKind.CHANGED


def state_code(state: TaskState | None) -> int:
    """The state as a small number (0: none), as a change records what it was before."""
    return 0 if state is None else _STATE_CODES[state._value_]


@dataclass(frozen=True, slots=True)
class Change:
    """A task's changes since a cursor, coalesced: the latest kind, and the state before the first.

    ``kind`` is CREATED where the reader has not heard of the task and it has
    not finished or left since; ``before`` the task's state as the reader last
    knew it (``None`` for a task created since); ``seq`` the number of the
    task's last change; ``gone`` the record a removed task left (the shard's
    own object, read only by the shard).
    """

    task_id: UUID
    kind: ChangeKind
    before: TaskState | None
    seq: int
    gone: object | None


class ChangeFeed:
    """The ring of one shard's last changes."""

    __slots__ = (
        "_codes",
        "_gone",
        "_ids",
        "_next_wake",
        "_size",
        "_stopped",
        "_targets",
        "_waiters",
        "head",
    )

    def __init__(self, size: int = DEFAULT_WATCH_WINDOW) -> None:
        if size < 1:
            raise ValueError("a change window holds at least one change")
        self._size = size
        self._ids: list[UUID | None] = [None] * size
        # kind << 3 | the state before the change (state_code).
        self._codes = bytearray(size)
        # The records of removed tasks, by the number of their removal.
        self._gone: dict[int, object] = {}
        # The number of the last change (the first is 1).
        self.head = 0
        # Readers waiting for the head to reach a number: one future per number,
        # and the lowest one, so a change costs one comparison while none is due.
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._targets: list[int] = []
        self._next_wake = _NEVER
        # Once stopped (shutdown), every wait ends at once.
        self._stopped = False

    @property
    def oldest(self) -> int:
        """The number of the oldest change still in the window."""
        return max(1, self.head - self._size + 1)

    def append(
        self, task_id: UUID, kind: ChangeKind, before: int, gone: object | None = None
    ) -> None:
        """Records a change; ``before`` is ``state_code`` of the state before it."""
        head = self.head + 1
        self.head = head
        slot = head % self._size
        self._ids[slot] = task_id
        self._codes[slot] = kind << 3 | before
        gone_map = self._gone
        if gone_map:
            gone_map.pop(head - self._size, None)
        if gone is not None:
            gone_map[head] = gone
        if head >= self._next_wake:
            self._wake_due()

    def _wake_due(self) -> None:
        targets = self._targets
        while targets and targets[0] <= self.head:
            waiter = self._waiters.pop(heapq.heappop(targets))
            if not waiter.done():
                waiter.set_result(None)
        self._next_wake = targets[0] if targets else _NEVER

    def check(self, after: int) -> None:
        """Raises ``CursorExpiredError`` unless every change after ``after`` is in the window."""
        if after > self.head or after < self.oldest - 1:
            raise CursorExpiredError()

    def since(self, after: int) -> list[Change]:
        """The changes after ``after``, coalesced to one per task, by each task's last change.

        Raises:
            CursorExpiredError: some of them left the window (or ``after`` is
                ahead of it: a cursor of another incarnation).
        """
        self.check(after)
        size = self._size
        ids = self._ids
        codes = self._codes
        latest: dict[UUID, list[int]] = {}
        for seq in range(after + 1, self.head + 1):
            slot = seq % size
            task_id = ids[slot]
            assert task_id is not None
            code = codes[slot]
            seen = latest.pop(task_id, None)
            if seen is None:
                # [first kind, state before the first, last kind, last seq]
                latest[task_id] = [code >> 3, code & 7, code >> 3, seq]
            else:
                seen[2] = code >> 3
                seen[3] = seq
                latest[task_id] = seen  # re-inserted: the dict keeps last-change order
        out: list[Change] = []
        gone = self._gone
        for task_id, (first, before, last, seq) in latest.items():
            kind = ChangeKind(last)
            if first == _CREATED and kind is _CHANGED:
                kind = _CREATED
            out.append(Change(task_id, kind, _STATES.get(before), seq, gone.get(seq)))
        return out

    def waiter(self, after: int) -> asyncio.Future[None]:
        """A future set once there is a change after ``after`` (shared by every reader of it).

        Set already when there is one, or once the feed has stopped.
        """
        target = after + 1
        waiter = self._waiters.get(target)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            if target <= self.head or self._stopped:
                waiter.set_result(None)
                return waiter
            self._waiters[target] = waiter
            heapq.heappush(self._targets, target)
            self._next_wake = min(self._next_wake, target)
        return waiter

    def stop(self) -> None:
        """Sets every waiter, now and from now on (shutdown: readers look again and find it)."""
        self._stopped = True
        waiters = list(self._waiters.values())
        self._waiters.clear()
        self._targets.clear()
        self._next_wake = _NEVER
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
