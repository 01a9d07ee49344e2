"""The journal's files: their names, their frames, reading them back, and compaction.

See ``tm_server.journal`` for the layout. This module is what the
compaction process runs (``python -m tm_server.journal_files DIRECTORY
SNAPSHOT UPTO``): it works on files only, with no event loop and no record
decoded, so it imports nothing of the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import operator
import os
import re
import signal
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

#: A journal file's name: ``log-N`` or ``snap-N``.
FILE_NAME = re.compile(r"^(log|snap)-(\d{8})$")


class JournalError(Exception):
    """The journal cannot be used at start: one line that says what and what to do."""


#: The lock a compaction holds while it runs, in the journal's directory.
COMPACTION_LOCK = "compaction.lock"
#: Records a snapshot frame holds at most.
SNAPSHOT_FRAME = 8192
#: The longest pause the compaction process takes after each flush of its snapshot.
MAX_YIELD_SECONDS = 0.25
_split = operator.methodcaller("split", b" ", 1)


def frame(body: bytes) -> bytes:
    """One write's records as a frame: ``#CRC LENGTH``, a newline, then the records."""
    return b"#%08x %d\n%s" % (zlib.crc32(body), len(body), body)


def fsync_dir(directory: Path) -> None:
    """Flushes a directory's entries to disk."""
    # A new or renamed file is durable once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_name(kind: str, number: int) -> str:
    """The name of log or snapshot ``number``."""
    return f"{kind}-{number:08d}"


def strerror(exc: OSError) -> str:
    """What an OS error says, for a person."""
    return exc.strerror or str(exc)


class Torn(Exception):
    """A torn last frame: a write a crash cut short, at ``offset``."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def damaged(path: Path, offset: int) -> JournalError:
    """The error of a frame that fails its checksum and is not a torn last write."""
    return JournalError(
        f"the journal file {path} is damaged at byte {offset}: a frame there does not match "
        "its checksum, and it is not the torn end of the last write. Restore the data "
        "directory from a backup, or move its journal folder aside to start with an empty "
        "registry"
    )


def merge(path: Path, merged: dict[bytes, bytes], *, tail_may_tear: bool) -> None:
    """Merges a file's records into ``merged`` (key -> value, b"" for a deletion).

    Raises ``Torn`` with the offset of a torn last frame when ``tail_may_tear``
    (the records before it are merged), and ``JournalError`` for damage.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read the journal file {path}: {strerror(exc)}") from exc
    pos, size = 0, len(data)
    while pos < size:
        newline, length, end = _frame(data, pos)
        if end < 0:
            # Torn: the frame reaches the end of the file (or its header does),
            # and no whole frame follows it. A damaged length can point past the
            # end too, but the frames written after it are still there.
            reaches_end = (newline < 0 and size - pos < 32) or (
                length >= 0 and newline + 1 + length >= size
            )
            if tail_may_tear and reaches_end and not _frame_after(data, pos + 1):
                raise Torn(pos)
            raise damaged(path, pos)
        if end > newline + 1:
            merged.update(map(_split, data[newline + 1 : end - 1].split(b"\n")))
        pos = end


def _frame(data: bytes, pos: int) -> tuple[int, int, int]:
    # The frame at ``pos``: its header's newline (-1 if none in reach), the
    # length the header claims (-1 if unreadable), and where the whole frame
    # ends (-1 if torn or damaged).
    newline = data.find(b"\n", pos, pos + 32)
    if newline <= 0 or data[pos : pos + 1] != b"#":
        return newline, -1, -1
    crc_hex, _, length_text = data[pos + 1 : newline].partition(b" ")
    try:
        length = int(length_text)
    except ValueError:
        return newline, -1, -1
    # The length is read apart from the checksum: a frame whose length reaches
    # the end of the file is judged torn or not by that alone.
    try:
        crc = int(crc_hex, 16)
    except ValueError:
        return newline, length, -1
    end = newline + 1 + length
    if length < 0 or end > len(data) or zlib.crc32(data[newline + 1 : end]) != crc:
        return newline, length, -1
    return newline, length, end


def _frame_after(data: bytes, start: int) -> bool:
    # Whether a whole frame begins anywhere from ``start`` on: after a torn
    # write there is none (records escape their newlines, so a frame's header
    # only begins a line).
    at = data.find(b"\n#", start - 1)
    while at >= 0:
        if _frame(data, at + 1)[2] > 0:
            return True
        at = data.find(b"\n#", at + 1)
    return False


def compact(directory: Path, snapshot: int, upto: int) -> int:
    """Merges a snapshot and the logs after it into snapshot ``upto``; returns its size.

    ``snapshot`` is the old snapshot's number (0: none); the logs after it up
    to ``upto`` are merged, then the old files deleted.

    The latest line of each key is kept as it is (no JSON is read); the
    snapshot is written as a ``.tmp`` file, flushed and renamed, so a crash
    leaves either the old files or the new snapshot, never half of one.
    """
    merged: dict[bytes, bytes] = {}
    sources = [("snap", snapshot)] if snapshot else []
    sources += [("log", n) for n in range(snapshot + 1, upto + 1)]
    for kind, number in sources:
        path = directory / file_name(kind, number)
        if path.exists():
            merge(path, merged, tail_may_tear=False)
    lines = [b"%s %s\n" % item for item in merged.items() if item[1]]
    del merged
    tmp = directory / (file_name("snap", upto) + ".tmp")
    try:
        with tmp.open("wb") as f:
            for index, at in enumerate(range(0, len(lines), SNAPSHOT_FRAME)):
                f.write(frame(b"".join(lines[at : at + SNAPSHOT_FRAME])))
                if index % 4 == 3:
                    # Synced a few MiB at a time, then as long again left to the
                    # server: one flush of the whole snapshot, or flushes back to
                    # back, hold the disk against the server's own group commits
                    # (each create waits for one).
                    f.flush()
                    started = time.perf_counter()
                    os.fdatasync(f.fileno())
                    time.sleep(min(MAX_YIELD_SECONDS, time.perf_counter() - started))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / file_name("snap", upto))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(directory)
    for kind, number in sources:
        with contextlib.suppress(OSError):
            os.unlink(directory / file_name(kind, number))
    return os.path.getsize(directory / file_name("snap", upto))


@contextlib.contextmanager
def compaction_lock(directory: Path, *, wait: bool = True) -> Iterator[bool]:
    """Holds the journal's compaction lock; yields whether it was free at once.

    A compaction holds it while it merges and deletes files; a server takes
    it before it reads them, so a compaction a crashed server left running
    ends before its successor loads (and starts compactions of its own from
    what that one left). ``wait=False`` raises ``BlockingIOError`` if taken.
    """
    fd = os.open(directory / COMPACTION_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            if not wait:
                raise
            fcntl.flock(fd, fcntl.LOCK_EX)
            free = False
        yield free
    finally:
        os.close(fd)  # the lock goes with its descriptor


def die_with_parent(parent: int) -> None:
    """Has the kernel kill this process when ``parent`` ends (Linux), or exits if it has.

    A compaction outliving its server would go on deleting files under the
    next server's feet.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None and sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the kernel was told
        sys.exit(1)


if __name__ == "__main__":  # the compaction process: DIRECTORY SNAPSHOT UPTO PARENT
    die_with_parent(int(sys.argv[4]))
    # Only the CPU time nothing else wants: the server's loop must not wait for it.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    with compaction_lock(Path(sys.argv[1])):
        print(compact(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
