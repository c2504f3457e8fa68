"""Every query on the ingest and delivery hot paths uses an index (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relay.store.sqlite import store as store_sqlite
from relay.store.sqlite import writer as sqlite_batch
from relay.store.sqlite.store import migrate


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    migrate(c)
    return c


def plan(conn: sqlite3.Connection, sql: str, params: object) -> str:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(r[3]) for r in rows)


def assert_indexed(text: str, index: str) -> None:
    assert index in text, text
    # A bare "SCAN table" (no index) is a full table scan.
    for line in text.splitlines():
        if line.startswith("SCAN ") and "INDEX" not in line:
            pytest.fail(f"full scan in plan:\n{text}")


def test_claim_uses_the_partial_due_index(conn: sqlite3.Connection) -> None:
    text = plan(
        conn, sqlite_batch._CLAIM, {"destination": "crm", "now": 1.0, "limit": 10}
    )
    assert_indexed(text, "deliveries_due")
    assert "TEMP B-TREE" not in text  # ordered by the index, not sorted


def test_next_due_uses_the_partial_due_index(conn: sqlite3.Connection) -> None:
    assert_indexed(plan(conn, store_sqlite._NEXT_DUE, ("crm", "crm")), "deliveries_due")


def test_stats_and_oldest_pending_use_the_state_index(conn: sqlite3.Connection) -> None:
    assert_indexed(plan(conn, store_sqlite._STATS, ()), "deliveries_state")
    assert_indexed(plan(conn, store_sqlite._OLDEST_PENDING, ("crm",)), "deliveries_state")


def test_dead_letter_probe_and_resolve_use_the_partial_dead_index(
    conn: sqlite3.Connection,
) -> None:
    assert_indexed(plan(conn, sqlite_batch.DEAD_LETTER_WAITING, ("crm",)), "deliveries_dead")
    text = plan(conn, sqlite_batch.RESOLVE_DEAD, (1.0, "delivery 1", "crm", "e1"))
    assert_indexed(text, "deliveries_dead")


def test_claimed_detail_reads_by_primary_keys(conn: sqlite3.Connection) -> None:
    sql = sqlite_batch._CLAIMED_DETAIL.format(ids="?,?")
    text = plan(conn, sql, (1, 2))
    assert "SEARCH d USING INTEGER PRIMARY KEY" in text, text
    assert "SEARCH e USING INDEX sqlite_autoindex_events_1" in text, text
    assert "SEARCH r USING INDEX sqlite_autoindex_requests_1" in text, text


def test_dedup_lookup_probes_the_originals_by_primary_key(conn: sqlite3.Connection) -> None:
    sql = "SELECT key, event_id, first_seen FROM dedup WHERE key IN (?,?)"
    assert "SEARCH dedup USING PRIMARY KEY (key=?)" in plan(conn, sql, ("a", "b"))


def test_ingest_takes_the_next_position_from_the_position_index(conn: sqlite3.Connection) -> None:
    text = plan(conn, "SELECT coalesce(max(seq), 0) FROM events", ())
    assert "SEARCH events USING COVERING INDEX events_seq" in text, text


def test_complete_updates_by_primary_key(conn: sqlite3.Connection) -> None:
    text = plan(
        conn, sqlite_batch._COMPLETE, ("delivered", None, 1.0, 1.0, 200, None, None, 1, 1)
    )
    assert "USING INTEGER PRIMARY KEY" in text, text


def test_gated_claims_and_completes_read_and_write_by_primary_key(
    conn: sqlite3.Connection,
) -> None:
    from relay.store.sqlite import gates

    assert "SEARCH destination_gates USING INDEX sqlite_autoindex_destination_gates_1" in plan(
        conn, gates._READ, ("crm",)
    )
    assert "SEARCH destination_state USING INDEX" in plan(conn, gates._PAUSED, ("crm",))
    for sql, params in ((gates._EXPIRE, (1.0, "x", "x", 1)), (gates._HOLD_ATTEMPT, (1, 1))):
        assert "USING INTEGER PRIMARY KEY" in plan(conn, sql, params), sql


def test_a_delivery_resolves_its_dead_letters_through_the_dead_letter_index(
    conn: sqlite3.Connection,
) -> None:
    text = plan(conn, sqlite_batch.RESOLVE_DEAD, (1.0, "delivery 1", "crm", "01EVENT"))
    assert "SEARCH deliveries USING INDEX deliveries_dead (destination=? AND event_id=?)" in text


def test_stats_count_dead_letters_from_their_partial_index(conn: sqlite3.Connection) -> None:
    text = plan(conn, store_sqlite._STATS, ())
    assert "deliveries_dead" in text, text
