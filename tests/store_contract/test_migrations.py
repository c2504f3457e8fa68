"""Each backend's numbered migrations, applied in order to an empty database, build exactly the
schema in tests/store_contract/schema/<backend>.txt; SQLite's also carry old data forward.

After changing a migration on purpose, rewrite the snapshots and review their diff:

    .venv/bin/pytest tests/store_contract/test_migrations.py --regen-schema
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from relay.config import StorageConfig
from relay.model import EventFilter, ReplayState
from relay.store.sqlfile import migrations
from relay.store.sqlite.store import SqliteStore
from tests.store_contract.backends import Backend
from tests.store_contract.kit import all_events, ids, new_event, raw_request

SNAPSHOTS = Path(__file__).parent / "schema"


async def test_the_migrations_build_the_schema_in_the_snapshot(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await backend.make_empty()
    store = await backend.open()
    built = await backend.schema_dump()
    snapshot = SNAPSHOTS / f"{backend.name}.txt"
    if request.config.getoption("--regen-schema"):
        snapshot.write_text(built, encoding="utf-8")
    assert snapshot.exists(), f"no {snapshot.name}: run pytest {__file__} --regen-schema"
    assert built == snapshot.read_text(encoding="utf-8"), (
        f"the migrations no longer build {snapshot}; if that is intended, run "
        f"pytest {__file__} --regen-schema and review the diff"
    )
    # Opening a migrated database again applies nothing.
    await backend.close(store)
    await backend.open()
    assert await backend.schema_dump() == built


# -- SQLite: a database made by migration 0002, with data, carried to the newest schema -----

NOW = time.time()
# Inserted in this order; ids sort differently, so positions must come from insertion order.
OLD_EVENTS = [
    # name, id, dedup_key, duplicate_of, received_at
    ("first", "01HZZZZZZZZZZZZZZZZZZZZZZ1", "k", None, NOW - 300),
    ("retry", "01HAAAAAAAAAAAAAAAAAAAAAA2", "k", "01HZZZZZZZZZZZZZZZZZZZZZZ1", NOW - 290),
    ("stale", "01HMMMMMMMMMMMMMMMMMMMMMM3", "gone", None, NOW - 3 * 86400),
    ("keyless", "01HBBBBBBBBBBBBBBBBBBBBBB4", None, None, NOW - 200),
    ("again", "01HCCCCCCCCCCCCCCCCCCCCCC5", "k", None, NOW - 100),
    ("again-retry", "01HDDDDDDDDDDDDDDDDDDDDDD6", "k", "01HCCCCCCCCCCCCCCCCCCCCCC5", NOW - 90),
]
# id, state, requested_at, finished_at
OLD_REPLAYS = [(1, "running", NOW - 500, None), (2, "done", NOW - 400, NOW - 390)]


def database_at_0002(path: Path) -> None:
    with sqlite3.connect(path, isolation_level=None) as conn:
        for version, script in migrations("relay.store.sqlite"):
            if version <= 2:
                conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        conn.execute("BEGIN")
        for n, (name, event_id, key, duplicate_of, at) in enumerate(OLD_EVENTS):
            conn.execute(
                "INSERT INTO requests (id, inbound, method, path, query, headers, body,"
                " content_type, peer, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (f"r{n}", "audience-user", "POST", "/hooks/user", "", "[]",
                 name.encode(), "text/plain", "127.0.0.1", at),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO events (id, request_id, inbound, source, type, received_at,"
                " dedup_key, duplicate_of) VALUES (?,?,?,?,?,?,?,?)",
                (event_id, f"r{n}", "audience-user", "user", "subscribe", at, key, duplicate_of),
            )
        for replay_id, state, requested_at, finished_at in OLD_REPLAYS:
            conn.execute(
                "INSERT INTO replays (id, requested_by, requested_at, filter, destinations,"
                " state, finished_at, total) VALUES (?,?,?,?,?,?,?,?)",
                (replay_id, "admin", requested_at, "{}", '["crm"]', state, finished_at, 1),
            )
        conn.execute("COMMIT")


async def test_migrating_a_0002_database_keeps_order_originals_and_replay_states(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    database_at_0002(path)
    store = SqliteStore(StorageConfig(url=f"sqlite:///{path}"))
    await store.open()
    try:
        by_name = {name: event_id for name, event_id, *_ in OLD_EVENTS}
        # Positions follow the order the events were stored, not their ids.
        assert ids(await all_events(store)) == [e[1] for e in OLD_EVENTS][::-1]
        seqs = [(await store.get_event(e[1])).event.seq for e in OLD_EVENTS]  # type: ignore[union-attr]
        assert seqs == sorted(set(seqs))
        with sqlite3.connect(path) as conn:
            dedup = sorted(conn.execute("SELECT key, event_id, first_seen FROM dedup"))
        # The latest original of each key, as first seen; never a duplicate.
        assert dedup == [
            ("gone", by_name["stale"], NOW - 3 * 86400),
            ("k", by_name["again"], NOW - 100),
        ]

        repeat = await store.ingest(raw_request(), [new_event("crm", dedup_key="k")])
        assert repeat.duplicates == {repeat.event_ids[0]: by_name["again"]}
        fresh = await store.ingest(raw_request(), [new_event("crm", dedup_key="gone")])
        assert fresh.duplicates == {}
        newest = await store.get_event(fresh.event_ids[0])
        assert newest is not None
        assert newest.event.seq > max(seqs)

        running = await store.get_replay(1)
        assert running is not None
        # It recorded nothing to resume from: ended, as of when it was asked for.
        assert (running.state, running.finished_at) == (ReplayState.INTERRUPTED, NOW - 500)
        assert (running.cursor, running.where) == (None, EventFilter())
        done = await store.get_replay(2)
        assert done is not None
        assert (done.state, done.finished_at) == (ReplayState.DONE, NOW - 390)
        assert await store.claim_replay("anyone", 60.0) is None
    finally:
        await store.close()
