"""The suite's own PostgreSQL databases: made fresh for a test, dropped after it whatever happens.

These run whether or not relay has a PostgreSQL backend yet: they test the fixture itself.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.store_contract.backends import (
    POSTGRES_URL,
    database_url,
    masked,
    require_postgres,
    scratch_database,
)


async def exists(name: str) -> bool:
    conn = await asyncpg.connect(POSTGRES_URL, timeout=5.0)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def test_a_scratch_database_is_empty_while_in_use_and_dropped_afterwards() -> None:
    await require_postgres()
    async with scratch_database() as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("relay_test_")
        conn = await asyncpg.connect(url, timeout=5.0)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
            tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            assert await conn.fetchval(tables) == 0
        finally:
            await conn.close()
    assert not await exists(name)


async def test_a_scratch_database_is_dropped_when_its_test_fails_with_a_connection_open() -> None:
    await require_postgres()
    made: list[str] = []
    leaked: list[asyncpg.Connection] = []

    async def failing_test() -> None:
        async with scratch_database() as url:
            made.append(url.rsplit("/", 1)[1])
            leaked.append(await asyncpg.connect(url, timeout=5.0))
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        await failing_test()
    assert not await exists(made[0])
    leaked[0].terminate()


def test_urls_name_the_scratch_database_and_hide_passwords() -> None:
    assert database_url("postgresql://u:pw@h:5432/postgres?sslmode=disable", "relay_test_1") == (
        "postgresql://u:pw@h:5432/relay_test_1?sslmode=disable"
    )
    assert masked("postgresql://u:pw@h:5432/postgres") == "postgresql://u:***@h:5432/postgres"
    assert (
        masked("postgresql://postgres@127.0.0.1/postgres")
        == "postgresql://postgres@127.0.0.1/postgres"
    )
