"""Fixtures of the service tests: fuzz runs (``tests/fuzzing``) stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..fuzzing.run import Run, start_run


@pytest.fixture
def make_run() -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(**config: Any) -> Run:
        runs.append(start_run(**config))
        return runs[-1]

    yield make
    for run in runs:
        run.channel.close()
        run.thread.stop()
