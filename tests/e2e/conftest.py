"""End-to-end fixtures: real stores and real clusters of ``tm-server`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tm_server.testing.postgres import Postgres

from .cluster_fixture import Cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'cluster.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.database()


@pytest.fixture
def cluster(store_url: str) -> Iterator[Cluster]:
    nodes = Cluster(store_url)
    yield nodes
    nodes.close()
