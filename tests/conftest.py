"""Shared fixtures: a task manager on a manual clock with the test module registered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tm_client import TaskManagerClient, TestServiceClient
from tm_server.core import ManualClock, TaskManager
from tm_server.testing import register_test_module

from .server_fixture import ServerThread


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def tm(clock: ManualClock) -> AsyncIterator[TaskManager]:
    manager = TaskManager(shards=3, node="node-a", clock=clock, task_ttl=0, user_task_ttl=3600)
    await register_test_module(manager)
    yield manager
    await manager.close()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    thread = ServerThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[TaskManagerClient]:
    with TaskManagerClient(server.target, timeout=10) as c:
        yield c


@pytest.fixture
def testsvc(server: ServerThread) -> Iterator[TestServiceClient]:
    with TestServiceClient(server.target, timeout=10) as c:
        yield c
