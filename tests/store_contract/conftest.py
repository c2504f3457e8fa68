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
from tests.store_contract.backends import (
    BACKENDS,
    POSTGRES_NOT_BUILT,
    Backend,
    create_database,
    drop_database,
    fresh_schema,
    postgres_backend_available,
    postgres_problem,
    refuse,
    run_apart,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    needed = {m.args[0] for m in metafunc.definition.iter_markers("capability")}
    params = []
    for name, kind in BACKENDS.items():
        if not needed <= kind.capabilities:
            continue
        marks = []
        if name == "postgresql" and not postgres_backend_available():
            marks.append(pytest.mark.skip(reason=POSTGRES_NOT_BUILT))
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A database for this module's PostgreSQL tests, dropped after them; its URL."""
    refuse(run_apart(postgres_problem()))
    database = run_apart(create_database())
    try:
        yield database
    finally:
        run_apart(drop_database(database))


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = BACKENDS[request.param]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        await fresh_schema(url)
    chosen = kind(url)
    try:
        yield chosen
    finally:
        await chosen.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()
