"""Admin request bodies: an unknown key is refused before anything changes; prune's dry run."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ADMIN_TABLE,
    RelayFactory,
    RelayUnderTest,
    Sink,
    admin_call,
    config_text,
    destination,
    subscribe_body,
    wait_until,
)


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _snapshot(db: Path) -> tuple[int, ...]:
    return tuple(
        _count(db, f"SELECT count(*) FROM {table}")
        for table in (
            "requests",
            "events",
            "deliveries",
            "replays",
            "attempts",
            "destination_state",
        )
    )


async def _relay_with_delivered_events(
    start_relay: RelayFactory, db: Path, sink: Sink, n: int = 3
) -> RelayUnderTest:
    relay = await start_relay(
        config_text(db, destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    for i in range(n):
        await relay.post("/hooks/user", subscribe_body(f"u{i}@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == n, what="the live deliveries")
    await wait_until(
        lambda: _count(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'") == n,
        what="the deliveries to be recorded",
    )
    return relay


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/admin/prune", {"older_than_days": 0, "dryrun": True}, "dryrun"),
        ("/admin/replay", {"filter": {}, "dry-run": True}, "dry-run"),
        ("/admin/replay", {"filter": {}, "destination": ["crm"]}, "destination"),
        ("/admin/events/{id}/replay", {"to": ["crm"]}, "to"),
        ("/admin/destinations/crm/pause", {"reason": "maintenance"}, "reason"),
        ("/admin/destinations/crm/resume", {"force": True}, "force"),
    ],
)
async def test_an_unknown_body_key_is_400_naming_it_and_nothing_changes(
    path: str,
    body: dict[str, Any],
    key: str,
    tmp_path: Path,
    sink: Sink,
    start_relay: RelayFactory,
) -> None:
    db = tmp_path / "relay.db"
    relay = await _relay_with_delivered_events(start_relay, db, sink)
    _, page = await admin_call(relay, "GET", "/admin/events")
    path = path.replace("{id}", page["events"][0]["id"])
    before = _snapshot(db)

    status, answer = await admin_call(relay, "POST", path, body)

    assert status == 400, answer
    assert answer["error"].startswith(f"unknown key {key!r} (")
    assert _snapshot(db) == before
    assert len(sink.at("/crm")) == 3


async def test_prune_dry_run_counts_what_prune_deletes_and_deletes_nothing(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await _relay_with_delivered_events(start_relay, db, sink)
    before = _snapshot(db)

    status, answer = await admin_call(
        relay, "POST", "/admin/prune", {"older_than_days": 0, "dry_run": True}
    )
    assert status == 200, answer
    assert (answer["matched"], answer["dry_run"], answer["older_than_days"]) == (3, True, 0)
    assert answer["cutoff"].endswith("Z")
    assert _snapshot(db) == before

    # Nothing is old enough at a year: the dry run's count follows the cutoff.
    _, none = await admin_call(
        relay, "POST", "/admin/prune", {"older_than_days": 365, "dry_run": True}
    )
    assert none["matched"] == 0

    status, done = await admin_call(relay, "POST", "/admin/prune", {"older_than_days": 0})
    assert (status, done) == (200, {"deleted_events": 3, "deleted_requests": 3, "dry_run": False})
    assert _count(db, "SELECT count(*) FROM events") == 0


async def test_prune_dry_run_skips_events_with_unfinished_deliveries(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    dests = destination("crm", sink.url("/crm")) + destination(
        "held", sink.url("/held"), types=["unsubscribe"]
    )
    relay = await start_relay(config_text(db, dests, extra=ADMIN_TABLE))
    await admin_call(relay, "POST", "/admin/destinations/held/pause")
    await relay.post("/hooks/user", subscribe_body("done@example.com"))
    await relay.post("/hooks/user", subscribe_body("held@example.com", kind="unsubscribe"))
    await wait_until(
        lambda: _count(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'") == 2,
        what="the subscribe to reach both destinations",
    )

    _, dry = await admin_call(
        relay, "POST", "/admin/prune", {"older_than_days": 0, "dry_run": True}
    )
    _, done = await admin_call(relay, "POST", "/admin/prune", {"older_than_days": 0})
    assert dry["matched"] == done["deleted_events"] == 1


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test; skipped where no server runs."""
    import asyncpg

    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_SERVER}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_prune_dry_run_on_postgresql_counts_what_prune_deletes(
    pg_url: str, tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    dests = destination("crm", sink.url("/crm"), types=["subscribe"]) + destination(
        "held", sink.url("/held"), types=["unsubscribe"]
    )
    text = config_text(tmp_path / "unused.db", dests, extra=ADMIN_TABLE)
    text = text.replace(f'url = "sqlite:///{tmp_path / "unused.db"}"', f'url = "{pg_url}"')
    relay = await start_relay(text.replace("[storage.sqlite]\nbusy_timeout = 0.3\n", ""))
    await admin_call(relay, "POST", "/admin/destinations/held/pause")
    for i in range(3):
        await relay.post("/hooks/user", subscribe_body(f"done{i}@example.com"))
    await relay.post("/hooks/user", subscribe_body("held@example.com", kind="unsubscribe"))

    async def delivered() -> bool:
        _, page = await admin_call(relay, "GET", "/admin/deliveries?state=delivered")
        return len(page["deliveries"]) == 3

    await wait_until(delivered, what="the three subscribes to be delivered")
    _, dry = await admin_call(
        relay, "POST", "/admin/prune", {"older_than_days": 0, "dry_run": True}
    )
    _, events = await admin_call(relay, "GET", "/admin/events")
    assert (dry["matched"], len(events["events"])) == (3, 4)
    _, done = await admin_call(relay, "POST", "/admin/prune", {"older_than_days": 0})
    assert done["deleted_events"] == 3
    _, left = await admin_call(relay, "GET", "/admin/events")
    assert [e["email"] for e in left["events"]] == ["held@example.com"]
