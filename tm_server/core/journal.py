"""The journal port: where the core tells of the changes that must survive a restart.

The core knows *what* is durable (a task's record, a module, a session, the
TTLs) and *when* (``record``: before the reply; ``progress``: within the
progress window); the journal behind the port (``tm_server.journal``, a file
with group commit) knows how. Records are keyed and whole: each replaces the
last one of its key, so a journal may keep the latest per key and drop the
rest (that is what its snapshots do), and a burst of changes to one task
costs one write.

A task's record is taken when the journal writes, not when it is told:
``record`` and ``progress`` hand over the live ``Task`` and the journal asks
``task_record`` for its fields at flush time. That is the one place a
record of the core crosses the port, and why: encoding a million progress
reports that coalesce into a thousand writes would be wasted work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from uuid import UUID

from .types import AbortRequest

if TYPE_CHECKING:
    from .record import Task
    from .types import Progress

#: Keys of the records the core writes (all plain ASCII without spaces).
TASK_KEY = "t"  # + the id's hex: a task's record
SESSION_KEY = "s"  # + the session id's hex: a producer session
TASK_SESSION_KEY = "u"  # + the task id's hex: the session an unfinished task reports through
MODULE_KEY = "m"  # + the module name's UTF-8 hex: a registered module
SEQUENCE_KEY = "q"  # + shard ":" module hex: a module's last sequence number on a shard
SHAPE_KEY = "h"  # + a number: what tasks of one kind share (module, type, flags)
TTL_KEY = "cttl"  # the TTLs set through the API (c: the node's config)
ABORT_KEY = "a"  # + the id's hex: who asked for a task's abort, when and why


class JournalRecords(NamedTuple):
    """What a journal holds at start: each key's latest value, in the order keys were first written.

    Two lists side by side, keys as the ASCII bytes they are on disk: a
    million of them are read before the node serves, and a pair or a
    decoded text a record would be a million objects more.
    """

    keys: list[bytes]
    values: list[Any]
    #: Where the shape records are in ``keys`` (found once, while loading).
    shape_positions: tuple[int, ...]


def abort_record(request: AbortRequest) -> list[object]:
    """An abort request as its journal record: [time in ns, reason, principal, origin hex]."""
    origin = "" if request.origin is None else f"{request.origin.int:032x}"
    return [round(request.time * 1e9), request.reason, request.principal, origin]


def abort_from_record(value: list[object]) -> AbortRequest:
    """The abort request an ``abort_record`` wrote."""
    at, reason, principal, origin = value
    return AbortRequest(
        int(str(at)) / 1e9, str(reason), str(principal), UUID(hex=str(origin)) if origin else None
    )


def module_key(name: str) -> str:
    """The key of a module's record (names may hold any character; keys may not)."""
    return MODULE_KEY + name.encode().hex()


def sequence_key(shard: int, module: str) -> str:
    """The key of a module's sequence counter on a shard."""
    return f"{SEQUENCE_KEY}{shard}:{module.encode().hex()}"


class Journal(Protocol):
    """Where durable changes go. Every method returns at once; writing happens behind it."""

    def record(self, shard: int, task: Task, final: Progress | None = None) -> None:
        """The task changed in a way that must be durable before the reply.

        ``final`` is the task's rolled-up progress as it folded into its
        parent (what the parent's record of it shows).
        """

    def progress(self, shard: int, task: Task) -> None:
        """The task's progress changed: durable within the progress window."""

    def forget(self, task_id: UUID) -> None:
        """Nothing names the task any more: its record goes."""

    def put(self, key: str, value: object) -> None:
        """A plain-data record (JSON-able) that must be durable before the reply."""

    def delete(self, key: str) -> None:
        """The record of ``key`` goes."""


class NoJournal:
    """The journal of a memory-only node (``--journal off``, or an embedded manager)."""

    def record(self, shard: int, task: Task, final: Progress | None = None) -> None:
        """Does nothing."""

    def progress(self, shard: int, task: Task) -> None:
        """Does nothing."""

    def forget(self, task_id: UUID) -> None:
        """Does nothing."""

    def put(self, key: str, value: object) -> None:
        """Does nothing."""

    def delete(self, key: str) -> None:
        """Does nothing."""


#: Shared: it has no state.
NO_JOURNAL = NoJournal()
