"""The ``backend`` and ``store`` fixtures: every test here runs once per storage backend.

A test that needs more than the common contract names the capability,
``@pytest.mark.capability(CROSS_PROCESS_SIGNALS)``, and is made only for the backends that have
it (tests/backends.py parametrises ``backend``); nothing is skipped quietly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store import Store
from tests.pg import PostgresDatabase
from tests.store_contract.backends import Backend, PostgresBackend, SqliteBackend


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    chosen: Backend
    if request.param == "sqlite":
        chosen = SqliteBackend(f"sqlite:///{tmp_path / 'relay.db'}")
    else:
        database: PostgresDatabase = request.getfixturevalue("postgres_database")
        await database.ready()
        chosen = PostgresBackend(database)
    try:
        yield chosen
    finally:
        await chosen.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()
