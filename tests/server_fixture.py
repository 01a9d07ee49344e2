"""A real tm server on 127.0.0.1:0, run on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tm_server.core import TaskManager
from tm_server.server import ServerConfig, TmServer

T = TypeVar("T")


class ServerThread:
    """Starts a ``TmServer`` in a thread; ``call`` runs a coroutine on the server's loop."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("address", "127.0.0.1:0")
        config.setdefault("node", "node-a")
        config.setdefault("shards", 3)
        config.setdefault("enable_test_service", True)
        self.config = ServerConfig(**config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: TmServer | None = None
        self.port = 0

    def start(self) -> ServerThread:
        self._thread.start()

        async def boot() -> int:
            self.server = TmServer(self.config)
            return await self.server.start()

        self.port = self.call(boot)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def manager(self) -> TaskManager:
        assert self.server is not None
        return self.server.manager

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        async def run() -> T:
            return await fn()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.stop, timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
