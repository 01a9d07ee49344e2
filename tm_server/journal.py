"""The node journal: the core's durable records in an append-only file, with group commit.

Layout, in ``DATA_DIR/journal``: ``log-N`` files of records, appended to one
at a time (a new one at every start, so a torn tail is never appended to),
and at most one ``snap-N``: the latest record of every key in the logs up to
``N``. Recovery reads the snapshot, then the logs after it.

A file is a run of frames, one per write: ``#CRC LENGTH`` on a line of its
own, then LENGTH bytes of records, one a line: ``KEY VALUE``, a key of
ASCII letters, digits and ``:``, and a JSON value (none: the key was
deleted). The CRC-32 covers the whole frame, so a frame the disk did not
get whole is found whole or not at all: at the end of the last log it is a
write a crash cut short (never acknowledged: dropped), anywhere else it is
damage. Records are whole (see ``core.journal``), so the latest of a key is
all that matters, and compaction needs no JSON: it keeps the last line of
each key, reading keys only.

Group commit: changes go into a map of pending records (a second change to a
key replaces the first), and one flusher writes everything pending as one
``write`` and one ``fdatasync`` on a thread of its own. A durable call waits
for the batch that carries its change (``commit``); calls arriving while a
batch is on its way to the disk share the next one, so the disk sees one
flush per batch, not one per call. Progress is written with the next batch,
or after the progress window at the latest, and nothing waits for it.

A write that fails (a full disk, an I/O error) is cut back off the file, kept,
and tried again with the next batch; until one succeeds every durable call
fails with ``JournalUnavailableError``, and reads go on as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import json.encoder
import logging
import operator
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from tm_server.core import JournalUnavailableError
from tm_server.core.journal import SHAPE_KEY, TASK_KEY, JournalRecords
from tm_server.core.record import Task
from tm_server.core.recovery import shape_of, task_record
from tm_server.core.task import TaskImpl
from tm_server.core.types import Progress
from tm_server.journal_files import (
    FILE_NAME,
    JournalError,
    Torn,
    compaction_lock,
    file_name,
    frame,
    fsync_dir,
    merge,
    strerror,
)

log = logging.getLogger(__name__)


def _cut(path: Path, size: int) -> None:
    # Cut and flushed before a new log follows it: a torn end still there after
    # a power loss would be taken for damage once this log is not the last.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


#: The journal's folder in the data directory.
JOURNAL_DIR = "journal"
#: The default progress window: progress is on disk at most this long after a report.
DEFAULT_PROGRESS_WINDOW = 1.0
#: A log this large (or as large as the snapshot, if that is larger) is compacted.
DEFAULT_COMPACT_BYTES = 64 << 20


def _not_json(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON data")


# The C encoder, called straight: JSONEncoder.encode's Python layers cost more
# than the encoding of a record itself, and every create encodes one.
_C_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
)


def _encode_json(value: object) -> bytes:
    return "".join(_C_ENCODE(value, 0)).encode()


#: A task's line in a batch, from its id's number and its encoded record.
_TASK_LINE = TASK_KEY.encode() + b"%032x %s\n"
#: What a pending key is to write: a task's record (shard, task, its final
#: progress as it folded), a number, an encoded value, or None (a deletion).
_Entry = tuple[int, Task, Progress | None] | int | bytes | None


@dataclass(frozen=True)
class JournalConfig:
    """Where the journal lives and how it batches."""

    directory: Path
    progress_window: float = DEFAULT_PROGRESS_WINDOW
    compact_bytes: int = DEFAULT_COMPACT_BYTES


@dataclass
class JournalStats:
    """What the journal did (for the benchmark and diagnostics)."""

    batches: int = 0
    records: int = 0
    bytes_written: int = 0
    compactions: int = 0
    torn_records: int = 0


class FileJournal:
    """The journal of a node: implements the core's ``Journal`` port over files."""

    def __init__(self, config: JournalConfig) -> None:
        self._dir = config.directory
        self._window = config.progress_window
        self._compact_bytes = config.compact_bytes
        self.stats = JournalStats()
        # key -> what to write: a task to encode at flush time, a number, an
        # encoded value, or None for a deletion. A task is keyed by its id's
        # number, its text key made once a batch: every create and start
        # records a task, and a sequence number with it.
        self._pending: dict[int | str, _Entry] = {}
        self._lazy: dict[int, tuple[int, Task]] = {}
        self._lazy_due = False
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._next: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        # A batch the disk refused, written before the next one.
        self._retry = b""
        self.failure: str | None = None
        # Told of every batch written: its records, and how long writing and flushing took.
        self.on_batch: Callable[[int, float], None] | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        # While the start's write is on its way: a failure then is the start's
        # error to say, in one line, not the flusher's.
        self._starting = False
        self._fd = -1
        self._log = 0
        self._size = 0
        # Bytes in the logs after the snapshot but the one being written: what an
        # earlier server left (each start opens a log of its own) and the logs
        # closed since. Compaction counts them too, or a node restarted before
        # each log reached the limit would never compact and replay would grow.
        self._older = 0
        self._snapshot = 0  # the number of the latest snapshot, 0 if none
        self._snapshot_size = 0
        self._compaction: asyncio.Task[None] | None = None
        self._compactor: asyncio.subprocess.Process | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tm-journal")
        # Shapes journaled so far, and their numbers (see ``recovery.shape_of``).
        self._shapes: dict[tuple[object, ...], int] = {}
        self._shape_of_impl: dict[tuple[str, TaskImpl], int] = {}

    # ---- start: reading what is there --------------------------------------------------------

    def _files(self) -> tuple[list[int], list[int]]:
        logs: list[int] = []
        snaps: list[int] = []
        for entry in os.listdir(self._dir):
            match = FILE_NAME.match(entry)
            if match is not None:
                (logs if match.group(1) == "log" else snaps).append(int(match.group(2)))
            elif entry.endswith(".tmp"):
                # A snapshot a crash cut short: the logs it merged are still there.
                with contextlib.suppress(OSError):
                    os.unlink(self._dir / entry)
        return sorted(logs), sorted(snaps)

    def load(self) -> JournalRecords:
        """Reads the journal: every key's latest value, in the order keys were first written.

        A torn last record (a crash during a write) is dropped, logged and cut
        off the file.

        Raises:
            JournalError: the directory or a file cannot be read or written,
                or a file is damaged.
        """
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            with compaction_lock(self._dir) as free:
                # Held only to wait out a compaction an earlier server left
                # running: this server starts its own after it has loaded.
                if not free:
                    log.warning("journal: waited for a compaction an earlier server left running")
            logs, snaps = self._files()
        except OSError as exc:
            raise JournalError(
                f"cannot use the journal directory {self._dir}: {strerror(exc)}"
            ) from exc
        merged: dict[bytes, bytes] = {}
        if snaps:
            self._snapshot = snaps[-1]
            path = self._dir / file_name("snap", self._snapshot)
            self._snapshot_size = path.stat().st_size
            merge(path, merged, tail_may_tear=False)
        later = [n for n in logs if n > self._snapshot]
        for index, number in enumerate(later):
            path = self._dir / file_name("log", number)
            try:
                self._older += path.stat().st_size
                merge(path, merged, tail_may_tear=index == len(later) - 1)
            except Torn as torn:
                self.stats.torn_records += 1
                log.warning(
                    "journal: dropped a torn last record of %s at byte %d (a write the "
                    "crash cut short; it was never acknowledged)",
                    path,
                    torn.offset,
                )
                try:
                    _cut(path, torn.offset)
                except OSError as exc:
                    raise JournalError(
                        f"cannot cut the torn record off {path}: {strerror(exc)}"
                    ) from exc
        # Files a compaction merged into the snapshot but stopped before deleting.
        stale = [("log", n) for n in logs if n <= self._snapshot]
        stale += [("snap", n) for n in snaps[:-1]]
        for kind, number in stale:
            with contextlib.suppress(OSError):
                os.unlink(self._dir / file_name(kind, number))
        self._log = max([*logs, *snaps, 0]) + 1
        # Deleted keys (b"") go; the others keep the place they were first written at.
        if b"" in merged.values():
            merged = {k: v for k, v in merged.items() if v}
        keys = list(merged)
        try:
            values = json.loads(b"[" + b",".join(merged.values()) + b"]")
        except ValueError as exc:
            raise JournalError(
                f"the journal in {self._dir} holds a record that is not JSON ({exc}); restore "
                "the data directory from a backup, or move its journal folder aside"
            ) from exc
        if len(values) != len(keys):
            raise JournalError(f"the journal in {self._dir} holds a record that is not one value")
        shape_prefix = SHAPE_KEY.encode()
        is_shape = operator.methodcaller("startswith", shape_prefix)
        shape_positions = tuple(itertools.compress(range(len(keys)), map(is_shape, keys)))
        for index in shape_positions:
            self._shapes[tuple(values[index])] = int(keys[index][1:])
        return JournalRecords(keys, values, shape_positions)

    async def start(self) -> None:
        """Opens a new log and starts the flusher.

        Raises:
            JournalError: the log cannot be created (a read-only directory, a full disk).
        """
        try:
            self._fd = self._open_log(self._log)
        except OSError as exc:
            raise JournalError(
                f"cannot write the journal in {self._dir}: {strerror(exc)} (is the data "
                "directory read-only, or the disk full?)"
            ) from exc
        self._wake = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._run(), name="tm-journal")
        if self._pending:
            self._wake.set()

    def _open_log(self, number: int) -> int:
        fd = os.open(
            self._dir / file_name("log", number),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644,
        )  # fmt: skip
        fsync_dir(self._dir)
        self._size = 0
        return fd

    # ---- the port ----------------------------------------------------------------------------

    def _kick(self) -> None:
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def record(self, shard: int, task: Task, final: Progress | None = None) -> None:
        """A task's record must be durable before the reply (encoded when written)."""
        key = task.id.int
        pending = self._pending
        if final is None:
            before = pending.get(key)
            if before.__class__ is tuple:
                final = before[2]
        if self._lazy:
            self._lazy.pop(key, None)
        pending[key] = (shard, task, final)
        self._kick()

    def progress(self, shard: int, task: Task) -> None:
        """A task's progress: written with the next batch, or within the window."""
        key = task.id.int
        if key in self._pending:
            return  # its record, written soon, has the progress too
        self._lazy[key] = (shard, task)
        if self._lazy_timer is None and self._wake is not None:
            self._lazy_timer = asyncio.get_running_loop().call_later(self._window, self._due)

    def _due(self) -> None:
        self._lazy_timer = None
        self._lazy_due = True
        self._kick()

    def forget(self, task_id: UUID) -> None:
        """The task's record goes."""
        key = task_id.int
        self._lazy.pop(key, None)
        self._pending[key] = None
        self._kick()

    def put(self, key: str, value: object) -> None:
        """A plain record, durable before the reply (a number is encoded when written)."""
        self._pending[key] = value if value.__class__ is int else _encode_json(value)
        self._kick()

    def delete(self, key: str) -> None:
        """The record of ``key`` goes."""
        self._pending[key] = None
        self._kick()

    # ---- durability --------------------------------------------------------------------------

    def commit(self) -> asyncio.Future[None]:
        """Resolves once every change made so far is on disk.

        Fails with ``JournalUnavailableError`` when the disk refused the write.
        While the journal is failing, a commit with nothing pending tries the
        refused batch again (so a durable call can check before it changes
        anything).
        """
        if self._pending or (self.failure is not None and self._inflight is None):
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            self._kick()
            return self._next
        if self._inflight is not None:
            return self._inflight
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def check_writable(self) -> None:
        """Writes what is pending and an empty frame, and flushes them: for a node's start.

        A disk that refuses writes (full, or failing) stops the start with one
        clear line rather than a node that serves and refuses every change.

        Raises:
            JournalError: the write or its flush failed.
        """
        self._retry += frame(b"")
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._kick()
        self._starting = True
        try:
            await self._next
        except JournalUnavailableError as exc:
            # Nothing is left to write at the stop that follows: what recovery
            # changed (bodies failed, TTLs passed) it works out again next time.
            self._pending, self._lazy, self._retry = {}, {}, b""
            raise JournalError(
                f"cannot write the journal in {self._dir}: {self.failure} (is the disk full, "
                "or failing?)"
            ) from exc
        finally:
            self._starting = False

    def _shape(self, task: Task, lines: list[bytes]) -> int:
        # By module and implementation object first (flyweights: hashing them
        # is cheap), by the shape's value the first time.
        fast = (task.module, task.impl)
        number = self._shape_of_impl.get(fast)
        if number is not None:
            return number
        shape = shape_of(task)
        number = self._shapes.get(shape)
        if number is not None:
            self._shape_of_impl[fast] = number
        else:
            # Written before the first record that names it (recovery reads in order).
            number = self._shapes[shape] = len(self._shapes) + 1
            self._shape_of_impl[fast] = number
            lines.append(b"%s%d %s\n" % (SHAPE_KEY.encode(), number, _encode_json(list(shape))))
        return number

    def _encode(self) -> bytes:
        lines: list[bytes] = []
        for key, entry in self._pending.items():
            if entry is None:
                value = b""
            elif isinstance(entry, tuple):
                shard, task, final = entry
                value = _encode_json(task_record(shard, task, final, self._shape(task, lines)))
            elif isinstance(entry, int):
                value = b"%d" % entry
            else:
                value = entry
            if isinstance(key, int):
                lines.append(_TASK_LINE % (key, value))
            else:
                lines.append(b"%s %s\n" % (key.encode(), value))
        for key, (shard, task) in self._lazy.items():
            record = task_record(shard, task, None, self._shape(task, lines))
            lines.append(_TASK_LINE % (key, _encode_json(record)))
        self.stats.records += len(lines)
        self._pending = {}
        self._lazy = {}
        self._lazy_due = False
        return frame(b"".join(lines)) if lines else b""

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not (self._pending or self._lazy_due or self._retry or self._next):
                if self._closing:
                    return
                continue
            records = self.stats.records
            data = self._retry + self._encode()
            records = self.stats.records - records
            batch = self._next or loop.create_future()
            self._next = None
            if not data:  # a progress window whose reports went with a batch already
                batch.set_result(None)
                continue
            self._inflight = batch
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._writer, self._write, data)
            except OSError as exc:
                self._retry = data
                if self.failure is None and not self._starting:
                    log.error("journal: cannot write %s: %s", self._dir, strerror(exc))
                self.failure = strerror(exc)
                batch.set_exception(JournalUnavailableError(self.failure))
                batch.exception()  # retrieved here: a batch nobody waited for is no error
                if self._closing:
                    # The last try, at shutdown: nothing will kick the loop again,
                    # and waiting for the disk would keep the server from stopping.
                    log.error(
                        "journal: stopping with %d bytes of changes unwritten (%s): the calls "
                        "that made them were answered UNAVAILABLE, and progress reported "
                        "since the last write is lost",
                        len(data),
                        self.failure,
                    )
                    return
            else:
                if self.failure is not None:
                    log.warning("journal: writing again after: %s", self.failure)
                self._retry = b""
                self.failure = None
                self.stats.batches += 1
                self.stats.bytes_written += len(data)
                if self.on_batch is not None:
                    self.on_batch(records, time.perf_counter() - started)
                batch.set_result(None)
                if self._older + self._size >= max(self._compact_bytes, self._snapshot_size):
                    await self._rotate()
            finally:
                self._inflight = None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
        except OSError:
            # What made it in part is cut off: the next batch must not follow a torn record.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    # ---- compaction --------------------------------------------------------------------------

    async def _rotate(self) -> None:
        if self._compaction is not None and not self._compaction.done():
            return
        loop = asyncio.get_running_loop()
        closed = self._log

        def rotate() -> None:
            size = self._size
            fd = self._open_log(closed + 1)
            os.close(self._fd)
            self._fd = fd
            self._log = closed + 1
            self._older += size

        try:
            await loop.run_in_executor(self._writer, rotate)
        except OSError as exc:
            log.warning("journal: cannot start a new log (%s); compaction waits", strerror(exc))
            return
        self._compaction = loop.create_task(self._compact(closed), name="tm-journal-compact")

    async def _compact(self, upto: int) -> None:
        # In a process of its own: merging a million records in a thread of
        # this one would hold the GIL against the event loop for seconds (the
        # read-latency figure saw 2.7 s stalls); at idle priority, so it
        # takes only what the server leaves. It dies with this process (its
        # pid is the last argument), and holds the compaction lock the next
        # server's load waits for.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tm_server.journal_files", str(self._dir), str(self._snapshot),
            str(upto), str(os.getpid()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._compactor = process
        out, err = await process.communicate()
        self._compactor = None
        # Done, every log but the one being written is in the snapshot; failed,
        # it is tried again once that log reaches the limit by itself (it merges
        # every log since the snapshot then), not at every batch.
        self._older = 0
        if process.returncode == 0:
            self._snapshot, self._snapshot_size = upto, int(out.decode().strip() or 0)
            self.stats.compactions += 1
        else:
            log.warning(
                "journal: compaction failed (%s); the logs stay as they are",
                err.decode(errors="replace").strip().splitlines()[-1:] or process.returncode,
            )

    # ---- lifetime ----------------------------------------------------------------------------

    def disk_bytes(self) -> int:
        """Bytes the journal's files take on disk now."""
        return sum(
            (self._dir / e).stat().st_size for e in os.listdir(self._dir) if FILE_NAME.match(e)
        )

    async def close(self) -> None:
        """Writes what is pending, waits for a compaction, and closes the log."""
        if self._flusher is not None:
            if self._pending or self._lazy:
                self._lazy_due = True
                if self._next is None:
                    self._next = asyncio.get_running_loop().create_future()
                self._kick()
                with contextlib.suppress(JournalUnavailableError):
                    await self._next
            self._closing = True
            self._kick()
            await self._flusher
            self._flusher = None
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
        if self._compaction is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._compaction), 30)
            except TimeoutError:
                # Its snapshot is a .tmp file until it is whole: the next start
                # removes it and replays the logs, which are all still there.
                if self._compactor is not None:
                    self._compactor.kill()
                await self._compaction
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._writer.shutdown(wait=True)
