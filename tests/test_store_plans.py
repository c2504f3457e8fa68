"""The admin queries that run on hot paths, and the overview's read of recent attempts, use indexes:
EXPLAIN QUERY PLAN shows no full scans."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import StorageConfig
from relay.model import DeliveryState, EventFilter
from relay.store.filters import SQLITE, deliveries_query, events_query
from relay.store.health import health_query
from relay.store.sqlite.store import SqliteStore

CURSOR = 1000
FILTERS = {
    "inbound": EventFilter(inbound="audience-user"),
    "type": EventFilter(type="unsubscribe"),
    "source": EventFilter(source="user"),
    "list": EventFilter(list_id="a6b5da1054"),
    "email": EventFilter(email="Ann@Example.com"),
    "type glob": EventFilter(type="unsub*"),
    "type glob+since": EventFilter(type="unsub*", since=1_700_000_000.0),
    "state": EventFilter(state=DeliveryState.DEAD),
    "state+destination": EventFilter(state=DeliveryState.DEAD, destination="crm"),
    "since": EventFilter(since=1_700_000_000.0),
    "until": EventFilter(until=1_700_000_000.0),
    "type+since": EventFilter(type="unsubscribe", since=1_700_000_000.0),
}


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "relay.db"
    store = SqliteStore(StorageConfig(url=f"sqlite:///{path}"))
    await store.open()  # applies every migration
    await store.close()
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    with sqlite3.connect(db) as connection:
        yield connection


def plan(conn: sqlite3.Connection, sql: str, params: list[object]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


# Partial indexes that hold only rows the queries using them want: reading one whole is a range.
WHOLE_INDEX_IS_A_RANGE = ("deliveries_dead",)


def assert_no_full_scan(lines: list[str]) -> None:
    for line in lines:
        words = line.split()
        if words[:1] == ["SCAN"] and words[1] in ("e", "d", "events", "deliveries"):
            if words[-1] in WHOLE_INDEX_IS_A_RANGE and "INDEX" in words:
                continue
            pytest.fail(f"full scan in plan: {lines}")
    assert any("USING" in line and "INDEX" in line for line in lines), lines


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("cursor", [None, CURSOR])
def test_events_list_uses_an_index_for_each_filter(
    name: str, cursor: int | None, conn: sqlite3.Connection
) -> None:
    sql, params = events_query(SQLITE, FILTERS[name], 51, cursor)
    assert_no_full_scan(plan(conn, sql, params))


def test_events_list_page_after_a_cursor_searches_the_position_index(conn: sqlite3.Connection) -> None:
    sql, params = events_query(SQLITE, EventFilter(), 51, CURSOR)
    assert_no_full_scan(plan(conn, sql, params))


@pytest.mark.parametrize("state", [DeliveryState.DEAD, DeliveryState.PENDING, DeliveryState.PAUSED])
@pytest.mark.parametrize("destination", [None, "crm"])
@pytest.mark.parametrize("cursor", [None, 1000])
def test_deliveries_by_state_use_an_index(
    state: DeliveryState, destination: str | None, cursor: int | None, conn: sqlite3.Connection
) -> None:
    sql, params = deliveries_query(SQLITE, state, destination, 51, cursor)
    assert_no_full_scan(plan(conn, sql, params))


def test_the_check_catches_a_full_scan(conn: sqlite3.Connection) -> None:
    lines = plan(conn, "SELECT * FROM events e WHERE e.payload_content_type = ?", ["x"])
    with pytest.raises(pytest.fail.Exception):
        assert_no_full_scan(lines)


def test_destination_health_walks_the_newest_attempts_by_their_start(
    conn: sqlite3.Connection,
) -> None:
    sql, params = health_query(SQLITE, 1_700_000_000.0, 10_000)
    lines = plan(conn, sql, params)
    assert "SEARCH a USING INDEX attempts_started (started_at>?)" in lines, lines
    assert "SEARCH d USING INTEGER PRIMARY KEY (rowid=?)" in lines, lines
    assert not any(line.split()[:2] in (["SCAN", "a"], ["SCAN", "d"]) for line in lines), lines
