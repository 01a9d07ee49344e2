"""The cluster store in a SQLite file: the default, and several nodes on one host.

The standard library's ``sqlite3`` runs in a thread of its own (one
connection, WAL mode, a busy timeout), so the event loop never waits on the
disk. Nodes hear of changes from a change log in the file that each one reads
every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tm_server.core import StoreUnavailableError

from .schema import migrations
from .store import SqlStore

#: How long a writer waits for another node's lock before the call fails.
BUSY_TIMEOUT_MS = 5000
#: How long changes stay in the log (for nodes that read it late).
CHANGES_KEPT_SECONDS = 600.0


def _set_wal(db: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs a lock that the busy handler does not
    # always wait for: a node starting while another migrates the same file
    # gets "database is locked" at once. Retry for as long as a writer waits.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteStore(SqlStore):
    """A cluster store in one SQLite file, shared by the nodes of one host."""

    P = "?"
    NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
    MIGRATIONS = migrations(
        real="REAL", boolean="INTEGER", serial="INTEGER PRIMARY KEY AUTOINCREMENT"
    )

    def __init__(self, url: str, path: Path, *, poll_interval: float = 0.05) -> None:
        super().__init__(url)
        self.path = path
        self.poll_interval = poll_interval
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._last_seq = 0
        self._polls = 0

    async def open(self) -> None:
        """Opens the file (making its folder), then migrates the schema."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tm-sqlite")
        await self._call(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            _set_wal(db)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open {self.path}: {exc}") from exc
        self._db = db
        self._migrate(db)
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM tm_changes").fetchone()
        self._last_seq = int(row[0])

    def _migrate(self, db: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock: nodes starting at once on an
        # empty file apply each migration once, one after the other.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS tm_migrations (version INTEGER PRIMARY KEY)")
            row = db.execute("SELECT COALESCE(MAX(version), 0) FROM tm_migrations").fetchone()
            done = int(row[0])
            for version, statements in enumerate(self.MIGRATIONS, start=1):
                if version > done:
                    for statement in statements:
                        db.execute(statement)
                    db.execute("INSERT INTO tm_migrations (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Closes the file and the thread."""
        if self._executor is not None:
            await self._call(self._close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreUnavailableError(f"{self.url} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Runs the statements in one transaction on the store's thread."""
        return await self._call(self._run, statements)  # type: ignore[no-any-return]

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        db = self._db
        if db is None:
            raise StoreUnavailableError(f"{self.url} is closed")
        reads = all(s.lstrip().upper().startswith("SELECT") for s, _ in statements)
        try:
            db.execute("BEGIN" if reads else "BEGIN IMMEDIATE")
            try:
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    rows = db.execute(sql, params).fetchall()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"{self.path}: {exc}") from exc
        return rows

    def _notify_sql(self, task_id: str) -> tuple[str, tuple[Any, ...]]:
        return self._sql("INSERT INTO tm_changes (task_id, at) VALUES (?, NOW())"), (task_id,)

    async def changes(self) -> AsyncIterator[str]:
        """The change log, read every ``poll_interval`` seconds (old entries trimmed)."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                rows = await self._call(self._read_changes)
            except StoreUnavailableError:
                yield ""  # unknown what changed: every watcher looks again
                continue
            for (task_id,) in rows:
                yield task_id

    def _read_changes(self) -> list[tuple[str]]:
        db = self._db
        if db is None:
            raise StoreUnavailableError(f"{self.url} is closed")
        try:
            rows = db.execute(
                "SELECT seq, task_id FROM tm_changes WHERE seq > ? ORDER BY seq", (self._last_seq,)
            ).fetchall()
            if rows:
                self._last_seq = rows[-1][0]
            self._polls += 1
            if self._polls % 1000 == 0:
                db.execute(
                    self._sql("DELETE FROM tm_changes WHERE at < NOW() - ?"),
                    (CHANGES_KEPT_SECONDS,),
                )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"{self.path}: {exc}") from exc
        return [(task_id,) for _, task_id in rows]
