"""PostgreSQL answers the new filters from indexes: type globs by their prefix, emails by their
key, dead letters from their partial index (sequential scans off: the test tables are small)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from relay.config import StorageConfig
from relay.model import DeliveryFilter, DeliveryState, EventFilter
from relay.store import create_store
from relay.store.filters import POSTGRES, deliveries_query, events_query, waiting_count_query
from relay.store.health import health_query
from relay.store.sqlfile import load_queries
from tests.pg import pg_url

__all__ = ["pg_url"]


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    store = create_store(StorageConfig(url=pg_url))
    await store.open()  # migrates
    await store.close()
    connection = await asyncpg.connect(pg_url)
    await connection.execute("SET enable_seqscan = off")
    try:
        yield connection
    finally:
        await connection.close()


async def plan(conn: asyncpg.Connection, sql: str, params: list[Any]) -> str:
    rows = await conn.fetch(f"EXPLAIN {sql}", *params)
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (EventFilter(type="unsub*"), "events_type"),
        (EventFilter(type="unsubscribe"), "events_type"),
        (EventFilter(email="Ann@Example.com"), "events_email"),
        (EventFilter(state=DeliveryState.DEAD, destination="crm"), "deliveries_dead"),
    ],
)
async def test_event_filters_use_their_index(
    conn: asyncpg.Connection, where: EventFilter, index: str
) -> None:
    sql, params = events_query(POSTGRES, where, 51, None)
    text = await plan(conn, sql, params)
    assert index in text, text


async def test_dead_letters_are_listed_and_counted_from_their_partial_index(
    conn: asyncpg.Connection,
) -> None:
    sql, params = deliveries_query(POSTGRES, DeliveryState.DEAD, "crm", 51, None)
    assert "Seq Scan" not in await plan(conn, sql, params)
    assert "deliveries_dead" in await plan(conn, load_queries("relay.store.postgres")["stats"], [])


async def test_a_discard_by_replay_reads_the_replay_index(conn: asyncpg.Connection) -> None:
    sql, params = waiting_count_query(POSTGRES, DeliveryFilter(replay_id=7, destination="crm"))
    assert "deliveries_replay" in await plan(conn, sql, params)


async def test_destination_health_walks_the_newest_attempts_by_their_start(
    conn: asyncpg.Connection,
) -> None:
    sql, params = health_query(POSTGRES, 1_700_000_000.0, 10_000)
    text = await plan(conn, sql, params)
    # On empty tables a bitmap scan; with a million attempts (measured) a backward index scan
    # that stops at the limit, each joined to its delivery by primary key.
    assert "Index Cond: (started_at >=" in text and "attempts_started" in text, text
    assert "Seq Scan" not in text, text


async def test_a_subscriber_queues_head_is_read_from_its_partial_index(
    conn: asyncpg.Connection,
) -> None:
    # Read for every queue a batch of completes or ingests touches: one index range each.
    sql = load_queries("relay.store.postgres")["queue_heads"]
    text = await plan(conn, sql, [["crm"], [42]])
    assert "deliveries_order" in text and "Seq Scan on deliveries" not in text, text


async def test_a_completion_finds_its_deliveries_by_id_whatever_the_backlog(pg_url: str) -> None:
    # Statistics taken while a backlog was paused, then all of it in flight (a drain right after
    # a resume, before autovacuum analyzes): a completion must still look its few ids up by key,
    # not scan every delivering row (20 ms a batch at 60,000; the bench drain at 0.59x).
    store = create_store(StorageConfig(url=pg_url))
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO requests (id, inbound, method, path, query, headers, body,"
            " content_type, peer, received_at) VALUES ('r', 'i', 'POST', '/', '', '[]', '',"
            " '', '', 0)"
        )
        await conn.execute(
            "INSERT INTO events (id, request_id, inbound, source, type, received_at, seq)"
            " VALUES ('e', 'r', 'i', 's', 't', 0, 1)"
        )
        await conn.execute(
            "INSERT INTO deliveries (event_id, destination, state, attempts, next_attempt_at,"
            " created_at, updated_at) SELECT 'e', 'crm', 'paused', 0, NULL, 0, 0"
            " FROM generate_series(1, 30000)"
        )
        await conn.execute("ANALYZE deliveries")
        await conn.execute(
            "UPDATE deliveries SET state = 'delivering', attempts = 1, next_attempt_at = 1e10"
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        sql = load_queries("relay.store.postgres")["complete"]
        await conn.execute(f"PREPARE complete AS {sql}")
        params = ", ".join(["NULL"] * 17)
        text = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE complete({params})"))
        assert "deliveries_pkey" in text, text
        assert "deliveries_due" not in text and "deliveries_state" not in text, text
    finally:
        await conn.close()
