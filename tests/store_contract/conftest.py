"""The ``backend`` and ``store`` fixtures: every test here runs once per storage backend.

A test that needs more than the common contract names the capability,
``@pytest.mark.capability(CROSS_PROCESS_SIGNALS)``, and is made only for the backends that have
it (see backends.py); nothing is skipped quietly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.store import Store
from tests.pg import create_database, drop_database
from tests.store_contract.backends import (
    BACKENDS,
    Backend,
    PostgresBackend,
    PostgresDatabase,
    SqliteBackend,
    run_apart,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    needed = {m.args[0] for m in metafunc.definition.iter_markers("capability")}
    names = [name for name, kind in BACKENDS.items() if needed <= kind.capabilities]
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """The suite's PostgreSQL database, dropped after the run; made as new for each test."""
    url = run_apart(create_database())
    try:
        yield PostgresDatabase(url)
    finally:
        run_apart(drop_database(url))


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
