"""Real PostgreSQL for tests: one shared database per run, made as new for each test.

The server is the one on ``RELAY_TEST_POSTGRES_URL`` (default: this machine's, trust auth). In
CI (``CI`` set) or with ``RELAY_REQUIRE_POSTGRES=1`` an unreachable server fails the test;
elsewhere it skips with the reason, never silently.

``postgres_database`` is the run's database (``relay_test_<hex>``, one per pytest-xdist worker
since each worker is a session of its own; dropped at the end also when tests fail). The first
test migrates it by opening a store and keeps the rows the migrations wrote; every later test
starts from that state again (``await postgres_database.ready()``): every other session of the
database ended (no relay, listener, lock or lease of an earlier test is left), every table
emptied, every sequence restarted, the migrations' rows put back. The store contract suite and
the end-to-end tests (tests/backends.py) share it.

Why not a database per test: measured on the 2-core CI machine while other test runs loaded it,
CREATE DATABASE took 150-700 ms (40 ms idle) and migrating it at open 250-450 ms, where the
reset takes ~25 ms. ``pg_url`` still makes a database of its own, for the tests that run
several relay processes on it or stop the server under it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from relay.config import StorageConfig, redact_url
from relay.store import create_store

T = TypeVar("T")

ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(admin_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        reason = (
            f"PostgreSQL at {redact_url(admin_url)} unreachable ({exc}); start it (.ci/run does)"
            " or set RELAY_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI") or os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


async def create_database(admin_url: str = ADMIN_URL) -> str:
    """A new empty database; its URL."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name, admin_url)


async def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (trust auth ignores it; output must not show it)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{password}@{host}"))


# Where the shared database keeps the rows its migrations wrote, to put them back.
SEED = "relay_test_seed"


def run_apart(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to the end on an event loop of its own (for session-scoped setup)."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, work).result()


_OTHER_SESSIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@dataclass
class PostgresDatabase:
    """The suite's PostgreSQL database, and how to make it as new for each test."""

    url: str
    reset_sql: str | None = field(default=None, repr=False)

    async def _run(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url, timeout=5.0)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def make_empty(self) -> None:
        """No other session, no schema: as CREATE DATABASE made it."""
        await self._run(
            f"{_OTHER_SESSIONS}; DROP SCHEMA IF EXISTS {SEED} CASCADE;"
            " DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"
        )
        self.reset_sql = None

    async def ready(self) -> None:
        """Migrated, with nothing of an earlier test left."""
        if self.reset_sql is not None:
            await self._run(self.reset_sql)
            return
        await self.make_empty()
        store = create_store(StorageConfig(url=self.url))
        await store.open()
        await store.close()
        conn = await asyncpg.connect(self.url, timeout=5.0)
        try:
            tables = [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )]  # fmt: skip
            references = [(r[0], r[1]) for r in await conn.fetch(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
            )]  # fmt: skip
            sequences = [(r[0], r[1]) for r in await conn.fetch(
                "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = 'public'"
            )]  # fmt: skip
            seeded = [t for t in tables if await conn.fetchval(f'SELECT count(*) FROM "{t}"')]
            await conn.execute(f"CREATE SCHEMA {SEED}")
            for table in seeded:
                await conn.execute(f'CREATE TABLE {SEED}."{table}" AS TABLE public."{table}"')
        finally:
            await conn.close()
        # DELETE, not TRUNCATE: these tables hold a few rows, and TRUNCATE makes new files for
        # every table and index (150-350 ms on a loaded machine, against a few ms). Referencing
        # tables go first; the reset need not be durable.
        statements = [
            _OTHER_SESSIONS,
            "BEGIN",
            "SET LOCAL synchronous_commit = off",
            *(f'DELETE FROM public."{t}"' for t in referencing_first(tables, references)),
            *(f"SELECT setval('public.\"{name}\"', {start}, false)" for name, start in sequences),
            *(
                f'INSERT INTO public."{t}" OVERRIDING SYSTEM VALUE SELECT * FROM {SEED}."{t}"'
                for t in seeded
            ),
            "COMMIT",
        ]
        self.reset_sql = ";\n".join(statements)


def referencing_first(tables: list[str], references: list[tuple[str, str]]) -> list[str]:
    """``tables`` ordered so that each comes before every table it references."""
    ordered: list[str] = []
    left = sorted(tables)
    while left:
        free = [t for t in left if not any(r == t and c in left for c, r in references if c != t)]
        assert free, f"foreign keys in a cycle among {left}"
        ordered += free
        left = [t for t in left if t not in free]
    return ordered


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """The run's PostgreSQL database, dropped after the run; ``ready()`` makes it as new."""
    url = run_apart(create_database())
    try:
        yield PostgresDatabase(url)
    finally:
        run_apart(drop_database(url))
