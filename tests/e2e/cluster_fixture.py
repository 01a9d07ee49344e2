"""Real tm clusters for the end-to-end tests: ``tm-server`` processes sharing a real store.

Every scenario runs on both stores: a SQLite file in the test's folder, and a
database of its own on one throwaway PostgreSQL server (``tests/pg.py``) that
the session starts once from the machine's binaries and removes at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

import pytest

from tm_client import NotFoundError, Producer, TaskManagerClient

from ..process import ServerProcess

T = TypeVar("T")

#: Short membership timings, so that expiry is seen in seconds (defaults: 5 s and 20 s).
HEARTBEAT = 0.2
EXPIRY = 2.0
FAST = (
    "--heartbeat-seconds", str(HEARTBEAT),
    "--node-expiry-seconds", str(EXPIRY),
    "--peer-timeout-seconds", "1",
    "--shards", "2",
)  # fmt: skip


class Cluster:
    """Nodes ``a``, ``b``, ``c``... on one store; each node a real process on loopback."""

    def __init__(self, store: str, names: tuple[str, ...] = ("a", "b", "c"), *extra: str) -> None:
        self.store = store
        self.extra = extra
        self.nodes: dict[str, ServerProcess] = {}
        try:
            for name in names:
                self.start(name)
        except BaseException:
            self.close()
            raise

    def start(self, name: str, *extra: str) -> ServerProcess:
        """Starts (or restarts) node ``name``; returns once it serves."""
        node = ServerProcess("--node", name, "--store", self.store, *FAST, *self.extra, *extra)
        self.nodes[name] = node
        return node

    def target(self, name: str) -> str:
        return self.nodes[name].target

    def client(self, name: str) -> TaskManagerClient:
        return TaskManagerClient(self.target(name), timeout=15)

    def producer(
        self, name: str, module: str = "rolling", *, outage_seconds: float = 60
    ) -> Producer:
        return Producer(self.target(name), module=module, timeout=15, outage_seconds=outage_seconds)

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()


def gone(client: TaskManagerClient, task_id: UUID) -> bool:
    """Whether the node no longer knows the task (``NOT_FOUND``)."""
    try:
        client.get_status(task_id)
    except NotFoundError:
        return True
    return False


def eventually(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Polls ``probe`` until it returns something truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or 'a condition'}")
        time.sleep(0.05)
