"""The suite's own PostgreSQL databases: made for a module, as new for each test, dropped after."""

from __future__ import annotations

import asyncpg

from relay.model import EventFilter
from tests.pg import ADMIN_URL, PostgresDatabase, create_database, drop_database
from tests.store_contract.backends import TABLES, PostgresBackend
from tests.store_contract.kit import ingest_one, new_event, raw_request


async def exists(url: str) -> bool:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(ADMIN_URL, timeout=5.0)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def test_a_test_database_is_made_empty_and_dropped_with_a_connection_left_open() -> None:
    url = await create_database()
    try:
        assert url.rsplit("/", 1)[1].startswith("relay_test_")
        leaked = await asyncpg.connect(url, timeout=5.0)
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert await leaked.fetchval(tables) == 0
    finally:
        await drop_database(url)
    assert not await exists(url)
    leaked.terminate()


async def test_each_test_starts_on_a_migrated_database_with_nothing_of_the_last(
    postgres_database: PostgresDatabase,
) -> None:
    await postgres_database.ready()
    backend = PostgresBackend(postgres_database)
    # Left open, as by a test that failed before closing it.
    earlier = await backend.open()
    await ingest_one(earlier, "crm", dedup_key="k")
    await earlier.pause_destination("crm")

    await postgres_database.ready()
    assert await backend.table_counts() == dict.fromkeys(TABLES, 0)
    store = await backend.open()
    assert await store.count_events(EventFilter()) == 0
    assert await store.paused_destinations() == frozenset()
    result = await store.ingest(raw_request(), [new_event("crm", dedup_key="k")])
    assert result.duplicates == {}
    assert len(await store.claim("crm", 10, 60.0)) == 1
    await backend.close_all()
