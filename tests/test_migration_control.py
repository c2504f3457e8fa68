"""Upgrading a store made by the release before operator control (every migration before
SQLite's 0005 and PostgreSQL's 0003, which brought it): dead letters get their real error back
and resolve when their event was delivered since, emails get their search key, and the store
then works as a new one does."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from relay.config import StorageConfig
from relay.model import DeliveryState, EventFilter
from relay.store import Store, create_store
from relay.store.sqlfile import migrations
from relay.store.sqlite.store import sqlite_path
from tests.pg import create_database, drop_database

NOW = time.time() - 60
# (id, event, state, last_status, last_error, delivered_at)
DELIVERIES = [
    (1, "E1", "dead", 500, "gave up after 3 attempts", None),
    (2, "E1", "delivered", 200, None, NOW + 10),  # a replay that got through
    (3, "E2", "dead", None, "gave up after 3 attempts", None),
    (4, "E3", "dead", None, "its event is no longer stored", None),
    (5, "E2", "dead", 404, "permanent failure: HTTP 404", None),
]
# (delivery, number, status, error)
ATTEMPTS = [
    (1, 1, 503, None),
    (1, 2, 500, None),
    (3, 1, None, "cannot connect: Connection refused"),
    (5, 1, 404, None),
]
EMAILS = {"E1": "Ann@Example.COM", "E2": "bob@example.com", "E3": None}
# The migrations that brought operator control; the store under test was made before them.
SQLITE_CONTROL, POSTGRES_CONTROL = 5, 3


def old_rows() -> list[tuple[str, Sequence[Sequence[Any]]]]:
    events = [
        (eid, "R1", "audience-user", "user", "subscribe", NOW, email, n)
        for n, (eid, email) in enumerate(EMAILS.items(), 1)
    ]
    return [
        (
            "INSERT INTO requests (id, inbound, method, path, query, headers, body,"
            " content_type, peer, received_at) VALUES ({})",
            [("R1", "audience-user", "POST", "/hooks", "", "[]", b"x", "text/plain", "", NOW)],
        ),
        (
            "INSERT INTO events (id, request_id, inbound, source, type, received_at, email, seq)"
            " VALUES ({})",
            events,
        ),
        (
            "INSERT INTO deliveries (id, event_id, destination, state, attempts, created_at,"
            " updated_at, last_status, last_error, delivered_at) VALUES ({})",
            [
                (i, e, "crm", st, 1, NOW, NOW, status, err, at)
                for i, e, st, status, err, at in DELIVERIES
            ],
        ),
        (
            "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status,"
            " error) VALUES ({})",
            [(d, n, NOW, 0.1, "5xx", status, err) for d, n, status, err in ATTEMPTS],
        ),
    ]


def old_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for version, script in migrations("relay.store.sqlite"):
        if version >= SQLITE_CONTROL:
            break
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    for sql, rows in old_rows():
        width = len(rows[0])
        conn.executemany(sql.format(",".join("?" * width)), rows)
    conn.close()


async def old_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE relay_migrations (version integer PRIMARY KEY,"
            " applied_at double precision NOT NULL DEFAULT extract(epoch FROM now()))"
        )
        for version, script in migrations("relay.store.postgres"):
            if version >= POSTGRES_CONTROL:
                break
            await conn.execute(script)
            await conn.execute("INSERT INTO relay_migrations (version) VALUES ($1)", version)
        for sql, rows in old_rows():
            marks = ",".join(f"${i}" for i in range(1, len(rows[0]) + 1))
            # The identity columns take the ids the old rows had.
            sql = sql.format(marks).replace(") VALUES", ") OVERRIDING SYSTEM VALUE VALUES")
            await conn.executemany(sql, rows)
    finally:
        await conn.close()


async def check_upgraded(store: Store) -> None:
    by_id = {}
    for eid in ("E1", "E2", "E3"):
        detail = await store.get_event(eid)
        assert detail is not None
        by_id.update({d.id: d for d in detail.deliveries})
    first = by_id[1]
    assert (first.last_error, first.dead_reason) == ("HTTP 500", "gave up after 3 attempts")
    assert (first.resolved_by, first.resolved_at) == ("delivery 2", NOW + 10)
    refused = by_id[3]
    assert refused.last_error == "cannot connect: Connection refused"
    assert refused.resolved_at is None
    orphan = by_id[4]
    assert orphan.last_error == orphan.dead_reason == "its event is no longer stored"
    assert by_id[5].dead_reason == "permanent failure: HTTP 404"
    assert by_id[2].dead_reason is None and by_id[2].last_error is None

    (crm,) = await store.destination_stats()
    assert crm.dead == 3
    dead = await store.list_deliveries(DeliveryState.DEAD, "crm", 10)
    assert [d.delivery.id for d in dead.deliveries] == [5, 4, 3]
    found = await store.list_events(EventFilter(email="ann@example.com"), 10)
    assert [e.id for e in found.events] == ["E1"]
    dead_letters = EventFilter(state=DeliveryState.DEAD, destination="crm")
    assert [e.id for e in (await store.list_events(dead_letters, 10)).events] == ["E3", "E2"]


async def upgraded(url: str) -> None:
    store = create_store(StorageConfig(url=url))
    await store.open()  # migrates
    try:
        await check_upgraded(store)
    finally:
        await store.close()


async def test_a_sqlite_store_of_the_previous_release_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old_sqlite(Path(sqlite_path(url)))
    await upgraded(url)


async def test_a_postgres_store_of_the_previous_release_is_upgraded() -> None:
    url = await create_database()
    try:
        await old_postgres(url)
        await upgraded(url)
    finally:
        await drop_database(url)
