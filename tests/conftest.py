"""Shared fixtures: a task manager on a manual clock with the test module registered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tm_server.core import ManualClock, TaskManager
from tm_server.core.test_module import register_test_module


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def tm(clock: ManualClock) -> AsyncIterator[TaskManager]:
    manager = TaskManager(shards=3, node="node-a", clock=clock, task_ttl=0, user_task_ttl=3600)
    await register_test_module(manager)
    yield manager
    await manager.close()
