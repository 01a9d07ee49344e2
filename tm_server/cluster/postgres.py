"""The cluster store in PostgreSQL: nodes on several hosts.

psycopg 3's asyncio pool runs the statements; a connection of its own
``LISTEN``s on the ``tm_changes`` channel, to which every write sends the id
it changed (``NOTIFY`` is delivered at commit). That connection reconnects by
itself; after a reconnect every watcher reads again, as a notification may
have been missed while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool

from tm_server.core import StoreUnavailableError

from .schema import migrations
from .store import SqlStore

log = logging.getLogger(__name__)

CHANNEL = "tm_changes"
#: Seconds a node waits to connect at start, and a connection attempt may take.
CONNECT_TIMEOUT = 5.0
#: Seconds the pool keeps retrying one lost connection (its delays double from 1 s)
#: before the attempt ends; the next call starts a fresh one, so after an outage of
#: any length the store is back within seconds of the server.
RECONNECT_TIMEOUT = 5.0
#: Seconds a call waits for a pooled connection before it fails UNAVAILABLE
#: (when the server is down, the pool's reconnects fail at once; callers should not hang).
CALL_TIMEOUT = 2.0
# Serialises the migrations of nodes starting at once (an arbitrary key).
_MIGRATION_LOCK = 0x746D0001


class PostgresStore(SqlStore):
    """A cluster store in a PostgreSQL database, shared by nodes on any host."""

    P = "%s"
    NOW_SQL = "extract(epoch from clock_timestamp())::double precision"
    MIGRATIONS = migrations(
        real="DOUBLE PRECISION", boolean="BOOLEAN", serial="BIGSERIAL PRIMARY KEY"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._closing = False

    async def open(self) -> None:
        """Connects the pool, migrates the schema and starts listening."""
        self._pool = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=CONNECT_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
        )
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await self._pool.close()
            self._pool = None
            raise StoreUnavailableError(f"cannot connect to {self._safe_url}: {exc}") from exc
        await self._migrate()
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="tm-pg-listen")

    @property
    def _safe_url(self) -> str:
        # No password in messages.
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return "the PostgreSQL store"
        info.pop("password", None)
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})

    async def _migrate(self) -> None:
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,)),
            ("CREATE TABLE IF NOT EXISTS tm_migrations (version INTEGER PRIMARY KEY)", ()),
            ("SELECT COALESCE(MAX(version), 0) FROM tm_migrations", ()),
        ]
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn, conn.transaction():
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall() if cur.description else []
                done = int(rows[0][0])
                for version, migration in enumerate(self.MIGRATIONS, start=1):
                    if version > done:
                        for statement in migration:
                            await conn.execute(statement)
                        await conn.execute(
                            "INSERT INTO tm_migrations (version) VALUES (%s)", (version,)
                        )
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"{self._safe_url}: {exc}") from exc

    async def close(self) -> None:
        """Stops listening and closes the pool."""
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            # The listener's own end (cancelled, or a lost connection) is of no interest now.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Runs the statements in one transaction on a pooled connection."""
        if self._pool is None:
            raise StoreUnavailableError(f"{self._safe_url} is closed")
        try:
            async with self._pool.connection(CALL_TIMEOUT) as conn, conn.transaction():
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall() if cur.description else []
                return rows
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailableError(f"{self._safe_url}: {exc}".strip()) from exc
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"{self._safe_url} refused a statement: {exc}") from exc

    def _notify_sql(self, task_id: str) -> tuple[str, tuple[Any, ...]]:
        return "SELECT pg_notify(%s, %s)", (CHANNEL, task_id)

    async def _listen(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._queue.put_nowait("")  # listening (again): everyone reads again
                    delay = 0.1
                    async for notify in conn.notifies():
                        self._queue.put_nowait(notify.payload)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as exc:
                if self._closing:
                    return
                log.info("listening to %s failed (%s); reconnecting", self._safe_url, exc)
                self._queue.put_nowait("")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def changes(self) -> AsyncIterator[str]:
        """The ids the nodes notified, as they arrive."""
        while True:
            yield await self._queue.get()
