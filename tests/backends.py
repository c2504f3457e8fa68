"""The storage backends tests run on: one ``relay_backend`` fixture for the end-to-end tests.

A test that takes ``relay_backend`` (or the store contract suite's ``backend``) runs once per
backend: ``[sqlite]`` on a file in its tmp_path, ``[postgresql]`` on the run's shared database,
made as new for the test (tests/pg.py). Relays started from ``relay_backend.config(...)`` keep
their state there, and the test reads it back with ``rows`` / ``scalar``, behind the relays'
backs, where it inspects raw rows; what the Store or admin API shows is read through them.

A test that needs more than every backend offers names the capability,
``@pytest.mark.capability(SQLITE_FILE)``, and is made only for the backends that have it: its id
says which (``[sqlite]``), and nothing is skipped quietly.
"""

from __future__ import annotations

import abc
import decimal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.pg import PostgresDatabase
from tests.support import (
    BODIES,
    DELIVERY_STATES,
    bodies_of,
    config_text,
    count_states,
    sqlite_rows,
    unfinished_in,
)

# The store is a SQLite file the test can open, lock and fill behind relay's back.
SQLITE_FILE = "sqlite_file"
# Signals (wake-ups, pause, cancellation) reach the other processes on the same database.
CROSS_PROCESS_SIGNALS = "cross_process_signals"
CAPABILITIES: dict[str, frozenset[str]] = {
    "sqlite": frozenset({SQLITE_FILE}),
    "postgresql": frozenset({CROSS_PROCESS_SIGNALS}),
}
# The fixtures that stand for "one storage backend": a test that takes one runs on each.
BACKEND_FIXTURES = ("backend", "relay_backend")


def parametrize_backends(metafunc: pytest.Metafunc) -> None:
    """Make one test per backend that has every capability the test's markers name."""
    needed = {m.args[0] for m in metafunc.definition.iter_markers("capability")}
    unknown = needed - set().union(*CAPABILITIES.values())
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown capability {unknown}")
    fixtures = [name for name in BACKEND_FIXTURES if name in metafunc.fixturenames]
    if needed and not fixtures:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: a capability marker needs one of {BACKEND_FIXTURES}"
        )
    names = [name for name, capabilities in CAPABILITIES.items() if needed <= capabilities]
    for fixture in fixtures:
        metafunc.parametrize(fixture, names, indirect=True)


def plain(value: object) -> object:
    """One spelling for both backends: bytes for BLOB/bytea, 0/1 for booleans, int for sums."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``; quoted text is left alone."""
    out: list[str] = []
    n = 0
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        elif char == "?" and not quoted:
            n += 1
            out.append(f"${n}")
            continue
        out.append(char)
    return "".join(out)


class RelayBackend(abc.ABC):
    """The store the relays of one test keep, and reads of it behind their backs."""

    def __init__(self, url: str) -> None:
        self.url = url

    def config(self, destinations: str = "", **options: Any) -> str:
        """A relay config (tests/support.py's ``config_text``) on this backend's store."""
        return config_text(None, destinations, storage_url=self.url, **options)

    @abc.abstractmethod
    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Run a read (``?`` placeholders) and return its rows as plain tuples."""

    async def scalar(self, sql: str, *params: object) -> Any:
        """The one value a read returns (a count, a state)."""
        ((value,),) = await self.rows(sql, *params)
        return value

    async def rows_are(self, expected: list[tuple[object, ...]], sql: str, *params: object) -> bool:
        """Whether a read returns ``expected``: a condition for ``wait_until``."""
        return await self.rows(sql, *params) == expected

    @abc.abstractmethod
    async def write_unchecked(self, sql: str, *params: object) -> None:
        """A write the schema's foreign keys would refuse: a state only a bug or a hand-made
        change leaves (a delivery whose event is gone)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of what the reads hold."""

    async def stored_bodies(self) -> list[bytes]:
        return bodies_of(await self.rows(BODIES))

    async def delivery_states(self) -> dict[str, int]:
        return count_states(await self.rows(DELIVERY_STATES))

    async def unfinished(self) -> int:
        return unfinished_in(await self.delivery_states())


class SqliteRelayBackend(RelayBackend):
    def __init__(self, path: Path) -> None:
        super().__init__(f"sqlite:///{path}")
        self.path = path

    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        # The relay writes in WAL mode, so a read here never waits for its writer.
        return [tuple(plain(v) for v in row) for row in sqlite_rows(self.path, sql, *params)]

    async def write_unchecked(self, sql: str, *params: object) -> None:
        # A connection of its own does not turn foreign keys on: SQLite's default is off.
        sqlite_rows(self.path, sql, *params)

    async def close(self) -> None:
        """Each read opened and closed its own connection."""


def sqlite_file(backend: RelayBackend) -> Path:
    """The SQLite file of a test marked ``capability(SQLITE_FILE)``."""
    assert isinstance(backend, SqliteRelayBackend), "the test needs capability(SQLITE_FILE)"
    return backend.path


class PostgresRelayBackend(RelayBackend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conn: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        # One connection for the test's reads: wait_until polls every 20 ms.
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=5.0)
        return self._conn

    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        records = await (await self._connection()).fetch(numbered(sql), *params)
        return [tuple(plain(v) for v in record.values()) for record in records]

    async def write_unchecked(self, sql: str, *params: object) -> None:
        conn = await self._connection()
        async with conn.transaction():
            # Replica mode skips foreign-key triggers, as only a superuser may: the state a bug
            # or a manual change would leave.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(numbered(sql), *params)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@pytest.fixture
async def relay_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RelayBackend]:
    """The test's store: a SQLite file, or the shared PostgreSQL database made as new."""
    chosen: RelayBackend
    if request.param == "sqlite":
        chosen = SqliteRelayBackend(tmp_path / "relay.db")
    else:
        database: PostgresDatabase = request.getfixturevalue("postgres_database")
        await database.ready()
        chosen = PostgresRelayBackend(database.url)
    try:
        yield chosen
    finally:
        await chosen.close()
