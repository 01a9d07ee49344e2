"""A node's data directory, held by one live server at a time.

The directory holds the node's own files (the default cluster store, and the
journal to come). Two servers writing the same files would corrupt them, so a
server takes an exclusive lock on ``DIR/lock`` (``flock``; the kernel drops it
when the process dies, so a crash leaves nothing to clean up) and a second
server on the same directory stops at start with one clear message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class DataDirInUseError(OSError):
    """Another live process holds the data directory."""


class DataDir:
    """The data directory at ``path``; ``lock()`` on start, ``unlock()`` on stop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def lock(self) -> None:
        """Creates the directory if need be and takes it for this process.

        Raises:
            DataDirInUseError: another live process holds it.
            OSError: it cannot be created or written (with a message saying so).
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except FileExistsError as exc:  # mkdir's word for a file in the way
            raise OSError(
                f"cannot use the data directory {self.path}: it is a file, not a directory"
            ) from exc
        except OSError as exc:
            raise OSError(f"cannot use the data directory {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUseError(
                f"the data directory {self.path} is in use by another tm-server (pid {holder}): "
                "stop it, or give this one its own --data-dir (and --node)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def unlock(self) -> None:
        """Lets the directory go (a no-op if not held)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
