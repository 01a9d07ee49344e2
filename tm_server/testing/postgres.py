"""A throwaway PostgreSQL server from the machine's Debian binaries, run as ``postgres``.

``initdb`` refuses to run as root, so the server runs as the ``postgres``
user, in a folder of its own, on a free port of 127.0.0.1; ``stop`` and
``start`` let a test restart it in the middle, ``close`` removes it all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def binaries() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest version installed), if any."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)  # fmt: skip
    return versions[-1] / "bin" if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Postgres:
    """One PostgreSQL server with one database, ``url`` to connect to it."""

    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL's server binaries are not installed "
                "(apt-get install postgresql; the CI script does it)"
            )
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        os.chmod(self.root, 0o777)
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()
        self._databases = 0
        self.url = self.database()

    def database(self) -> str:
        """Creates an empty database (one a test, so tests share a server); its URL."""
        self._databases += 1
        name = f"tm{self._databases}"
        self._as_postgres("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                          name)  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        """Starts the server (and waits until it accepts connections)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60",
                          "-l", str(self.root / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        """Stops the server at once (connections are cut)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        """Stops the server and removes its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
