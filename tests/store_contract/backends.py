"""The storage backends every store contract test runs against, and the databases it makes.

``sqlite`` gets a file in the test's tmp_path. ``postgresql`` gets the run's shared database,
made as new for each test (tests/pg.py says how, and why not a database per test). A test that
needs an empty database (the migrations test) asks for one with ``await backend.make_empty()``.

Each backend also has a few raw helpers, for the states the Store interface cannot make or show
(an event deleted behind a delivery's back, the rows left after a prune, the schema itself);
they are the only SQL in the suite.
"""

from __future__ import annotations

import abc
import contextlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from relay.config import StorageConfig
from relay.store import Store, create_store
from tests.pg import PostgresDatabase

# The tables every backend keeps (same names, same meaning), counted after a prune.
TABLES = ("requests", "events", "deliveries", "attempts", "dedup")


class Backend(abc.ABC):
    """One backend under test: opens Stores on one database, as separate processes would."""

    name: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url
        self._stores: list[Store] = []

    async def open(self, dedup_window: float = 86400.0) -> Store:
        """Another Store on this backend's database, opened (closed after the test)."""
        store = create_store(StorageConfig(url=self.url), dedup_window)
        await store.open()
        self._stores.append(store)
        return store

    @abc.abstractmethod
    async def make_empty(self) -> None:
        """Start from a database no store has opened yet (the migrations test)."""

    async def close(self, store: Store) -> None:
        self._stores.remove(store)
        await store.close()

    async def close_all(self) -> None:
        errors: list[BaseException] = []
        while self._stores:
            try:
                await self._stores.pop().close()
            except Exception as exc:  # close the others anyway, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- raw helpers: states the Store interface cannot make or show --------------------------

    @abc.abstractmethod
    async def reference_clock(self) -> float:
        """The clock the store should keep, read behind its back (Unix seconds)."""

    @abc.abstractmethod
    async def orphan(self, event_id: str) -> None:
        """Delete an event and nothing else, leaving its deliveries without it."""

    @abc.abstractmethod
    async def delivery_row(self, delivery_id: int) -> tuple[str, str | None]:
        """A delivery's state and last error, read even when its event is gone."""

    @abc.abstractmethod
    async def table_counts(self) -> dict[str, int]:
        """Rows left in each of TABLES."""

    @abc.abstractmethod
    async def schema_dump(self) -> str:
        """The schema the migrations built, normalised to compare with a checked-in snapshot."""


class SqliteBackend(Backend):
    name = "sqlite"

    @property
    def path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=5.0)) as conn, conn:
            return conn.execute(sql, params).fetchall()

    async def make_empty(self) -> None:
        assert not self._stores, "make_empty before opening a store"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    async def reference_clock(self) -> float:
        return time.time()

    async def orphan(self, event_id: str) -> None:
        self._query("DELETE FROM events WHERE id = ?", (event_id,))

    async def delivery_row(self, delivery_id: int) -> tuple[str, str | None]:
        ((state, error),) = self._query(
            "SELECT state, last_error FROM deliveries WHERE id = ?", (delivery_id,)
        )
        return state, error

    async def table_counts(self) -> dict[str, int]:
        return {t: self._query(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}

    async def schema_dump(self) -> str:
        return sqlite_schema(self.path)


COMMENT = re.compile(r"--[^\n]*")


def sqlite_schema(path: Path) -> str:
    """Every table, index and trigger as SQLite keeps its text, sorted; and the version."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
            " AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
    lines = [f"user_version {version}"]
    # Comments in a CREATE statement are kept by SQLite; they are not schema.
    lines += [
        f"{kind} {name}:\n{' '.join(COMMENT.sub('', sql).split())}" for kind, name, sql in rows
    ]
    return "\n".join(lines) + "\n"


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, database: PostgresDatabase) -> None:
        super().__init__(database.url)
        self.database = database

    async def make_empty(self) -> None:
        await self.database.make_empty()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.url, timeout=5.0)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def reference_clock(self) -> float:
        rows = await self._fetch("SELECT extract(epoch FROM clock_timestamp())::float8")
        return float(rows[0][0])

    async def orphan(self, event_id: str) -> None:
        conn = await asyncpg.connect(self.url, timeout=5.0)
        try:
            async with conn.transaction():
                # The schema forbids it (a foreign key): replica mode skips that check, as
                # only a superuser can, to make the state a bug or a manual DELETE would.
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("DELETE FROM events WHERE id = $1", event_id)
        finally:
            await conn.close()

    async def delivery_row(self, delivery_id: int) -> tuple[str, str | None]:
        (row,) = await self._fetch(
            "SELECT state, last_error FROM deliveries WHERE id = $1", delivery_id
        )
        return row[0], row[1]

    async def table_counts(self) -> dict[str, int]:
        return {t: (await self._fetch(f"SELECT count(*) FROM {t}"))[0][0] for t in TABLES}

    async def schema_dump(self) -> str:
        conn = await asyncpg.connect(self.url, timeout=5.0)
        try:
            return await postgres_schema(conn)
        finally:
            await conn.close()


async def postgres_schema(conn: asyncpg.Connection) -> str:
    """Columns, sequences, indexes, constraints, functions and table options of the public
    schema, one sorted line each, free of names that differ between databases."""
    lines: list[str] = []
    for r in await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity,"
        " identity_generation FROM information_schema.columns WHERE table_schema = 'public'"
    ):
        identity = f" identity {r['identity_generation']}" if r["is_identity"] == "YES" else ""
        nullable = "null" if r["is_nullable"] == "YES" else "not null"
        default = f" default {r['column_default']}" if r["column_default"] is not None else ""
        lines.append(
            f"column {r['table_name']}.{r['column_name']} {r['data_type']} {nullable}"
            f"{default}{identity}"
        )
    for r in await conn.fetch(
        "SELECT sequencename, data_type::text, increment_by, cache_size, cycle"
        " FROM pg_sequences WHERE schemaname = 'public'"
    ):
        lines.append(
            f"sequence {r[0]} {r[1]} increment {r[2]} cache {r[3]}{' cycle' if r[4] else ''}"
        )
    for r in await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    ):
        lines.append(f"index {r[0]}: {r[1]}")
    for r in await conn.fetch(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE n.nspname = 'public'"
    ):
        lines.append(f"constraint {r[0]}.{r[1]}: {r[2]}")
    for r in await conn.fetch(
        "SELECT p.proname, p.provolatile::text, pg_get_functiondef(p.oid) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
    ):
        lines.append(f"function {r[0]} volatile={r[1]}: {' '.join(r[2].split())}")
    for r in await conn.fetch(
        "SELECT c.relname, c.reloptions FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.reloptions IS NOT NULL"
    ):
        lines.append(f"options {r[0]}: {','.join(sorted(r[1]))}")
    for r in await conn.fetch(
        "SELECT event_object_table, trigger_name, action_timing, event_manipulation,"
        " action_statement FROM information_schema.triggers WHERE trigger_schema = 'public'"
    ):
        lines.append(f"trigger {r[0]}.{r[1]} {r[2]} {r[3]}: {r[4]}")
    return "\n".join(sorted(lines)) + "\n"
