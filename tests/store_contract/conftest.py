"""The ``backend`` and ``store`` fixtures: every test here runs once per storage backend.

A test that needs more than the common contract names the capability,
``@pytest.mark.capability(CROSS_PROCESS_SIGNALS)``, and is made only for the backends that have
it (see backends.py); nothing is skipped quietly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store import Store
from tests.store_contract.backends import (
    BACKENDS,
    POSTGRES_NOT_BUILT,
    Backend,
    postgres_backend_available,
    require_postgres,
    scratch_database,
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


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = BACKENDS[request.param]
    if request.param == "sqlite":
        chosen = kind(f"sqlite:///{tmp_path / 'relay.db'}")
        try:
            yield chosen
        finally:
            await chosen.close_all()
        return
    await require_postgres()
    async with scratch_database() as url:
        chosen = kind(url)
        try:
            yield chosen
        finally:
            await chosen.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()
