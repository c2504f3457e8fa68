"""``relay copy-store``: a real relay's SQLite store moved to a real PostgreSQL database, row for row.

The source is made by a relay that received real Mailchimp and Mandrill bodies (with a duplicate)
and sent them to destinations that accept, reject, fail and are paused; then a claim left in
flight, a replay and a lease. The copy is run as the operator runs it (``python -m relay``), read
back through the Store API of both backends, and then served by a relay on PostgreSQL.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from relay.config import BreakerPolicy, StorageConfig
from relay.ids import new_id
from relay.model import (
    AttemptOutcome,
    AttemptResult,
    AuditAction,
    AuditPage,
    Decision,
    DeliveryFilter,
    DeliveryListing,
    DeliveryState,
    EventFilter,
    EventRecord,
    NewAudit,
    NewEvent,
    NewReplay,
    RawRequest,
    ReplayState,
)
from relay.store import Store, create_store
from relay.store.copy import CopyError, CopyReport
from relay.store.copy import copy_store as copy_store_engine
from relay.store.gate import Gate
from relay.store.migrate import migrate_store
from relay.store.postgres.migrate import latest_version as postgres_version
from relay.store.sqlfile import migrations
from relay.store.sqlite.migrate import latest_version
from tests.pg import pg_url, with_password
from tests.support import (
    ADMIN_TABLE,
    AUDIENCE_INBOUNDS,
    FORM,
    RelayFactory,
    RelayProcess,
    Sink,
    admin_call,
    config_text,
    destination,
    free_port,
    sample,
    subscribe_body,
    wait_until,
)

__all__ = ["pg_url"]  # the fixture, imported for the tests below

DOWN = Gate(breaker=BreakerPolicy(failures=1, probe_interval=3600.0))

PASSWORD = "hunter2-not-printed"  # trust auth accepts any password; none may be printed

INBOUNDS = (
    AUDIENCE_INBOUNDS
    + """
[[inbound]]
name = "tx"
path = "/hooks/mandrill"
kind = "mandrill"
source = "transactional"
"""
)
AUDIENCE = ("mc_doc_subscribe.txt", "mc_doc_unsubscribe.txt", "mc_doc_profile.txt",
            "mc_doc_upemail.txt", "mc_unsubscribe_campaign_2020.txt")  # fmt: skip


def relay_config(storage_url: str, sink: Sink, db: Path) -> str:
    slow = {"max_attempts": 5, "initial_delay": 3600.0, "max_delay": 3600.0}
    destinations = "".join(
        [
            destination("crm", sink.url("/crm")),
            destination("reject", sink.url("/reject")),
            destination("flaky", sink.url("/flaky"), retry=slow),
            destination("dw", sink.url("/dw")),
        ]
    )
    text = config_text(db, destinations, inbounds=INBOUNDS, extra=ADMIN_TABLE)
    return text.replace(f'url = "sqlite:///{db}"', f'url = "{storage_url}"')


def copy_store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "copy-store", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _default_sigint() -> None:
    # A test run started in the background ignores SIGINT, and a child would inherit that: the
    # copier must see Ctrl-C as a user's terminal sends it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def copy_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "copy-store", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )  # fmt: skip


async def open_store(url: str) -> Store:
    store = create_store(StorageConfig(url=url))
    await store.open()
    return store


def raw_request(body: bytes = b"type=subscribe") -> RawRequest:
    return RawRequest(
        id=new_id(), inbound="audience-user", method="POST", path="/hooks/user",
        query="secret=REDACTED", headers=(("Content-Type", FORM),), body=body,
        content_type=FORM, peer="127.0.0.1", received_at=time.time(),
    )  # fmt: skip


async def make_source(db: Path, sink: Sink, start_relay: RelayFactory) -> None:
    """A SQLite store holding every kind of row, made the way a running relay makes them."""
    sink.on("/reject", 400)  # a permanent 4xx: dead at once, with the answer's head recorded
    sink.on("/flaky", 503)  # retried in an hour: pending with one attempt
    relay = await start_relay(relay_config(f"sqlite:///{db}", sink, db))
    assert (await admin_call(relay, "POST", "/admin/destinations/dw/pause"))[0] == 200
    for name in AUDIENCE:
        assert (await relay.post("/hooks/user", sample(name)))[0] == 200
    # Mailchimp's retry of a webhook it already sent: stored as a duplicate, sent nowhere.
    assert (await relay.post("/hooks/user", sample(AUDIENCE[0])))[0] == 200
    assert (await relay.post("/hooks/mandrill", sample("mandrill_all_event_types.txt")))[0] == 200
    stored = (await relay.relay.store.list_events(EventFilter(), 100)).events
    originals = [e for e in stored if e.duplicate_of is None]
    assert len(originals) > len(AUDIENCE) + 1  # the Mandrill batch made several events

    def settled() -> bool:
        return all(len(sink.at(f"/{d}")) == len(originals) for d in ("crm", "reject", "flaky"))

    await wait_until(settled, what="every destination's first attempt")
    await relay.stop()

    store = await open_store(f"sqlite:///{db}")
    try:
        # A delivery in flight when relay stopped: leased for a second, then due again.
        ids = (await store.ingest(raw_request(subscribe_body("held@example.com")), [
            NewEvent("audience-user", "user", "subscribe", time.time(), ("crm",),
                     email="held@example.com", list_id="a6b5da1054"),
        ])).event_ids  # fmt: skip
        (claimed,) = await store.claim("crm", 10, lease=1.0)
        assert claimed.event_id == ids[0]
        # A replay of two events to crm, done: its deliveries wait to be sent.
        replay = await store.start_replay(
            NewReplay("dana", '{"type": "subscribe"}', ("crm",), total=2)
        )
        pairs = [(e.id, "crm") for e in originals[:2]]
        await store.add_replay_deliveries(replay, pairs, matched=2, cursor=originals[1].seq)
        await store.finish_replay(replay, ReplayState.DONE)
        assert await store.try_lease("retention", "old-relay:1:abc", 600.0)
        # A destination whose circuit is open, with an attempt held (not charged) meanwhile.
        await store.ingest(raw_request(), [
            NewEvent("audience-user", "user", "subscribe", time.time(), ("down",))
        ])  # fmt: skip
        (down,) = (await store.claim_gated("down", 1, 30.0, DOWN)).deliveries
        refused = AttemptResult(AttemptOutcome.CONNECTION_ERROR, time.time(), 0.01, error="no")
        gave_up = Decision(DeliveryState.DEAD, reason="gave up")
        held = await store.complete_gated(down, refused, gave_up, DOWN)
        assert held.change is not None and not held.charged
        # What operators did: a dead letter resolved by hand, one held delivery discarded, and
        # the audit trail saying so; one event's address in capitals, found in any case.
        (rejected, *_) = (await store.list_deliveries(DeliveryState.DEAD, "reject", 1)).deliveries
        assert await store.resolve_delivery(rejected.delivery.id, "dana", "crm has them")
        dropped = await store.discard(DeliveryFilter(destination="dw", event=EventFilter(
            type="upemail")))  # fmt: skip
        assert dropped == {"dw": 1}
        await store.record_audit(NewAudit("dana", AuditAction.DISCARD, "dw", '{"n": 1}', "::1"))
        await store.ingest(raw_request(subscribe_body("Caps@Example.COM")), [
            NewEvent("audience-user", "user", "subscribe", time.time(), (),
                     email="Caps@Example.COM"),
        ])  # fmt: skip
        # One subscriber's two deliveries to an ordered destination: the second one waits.
        await store.ingest(raw_request(), [
            NewEvent("audience-user", "user", "subscribe", time.time(), ("ord",),
                     email="q@example.com", list_id="a6b5da1054", ordered=("ord",))
            for _ in range(2)
        ])  # fmt: skip
    finally:
        await store.close()


async def all_events(store: Store) -> list[EventRecord]:
    events: list[EventRecord] = []
    cursor = None
    while True:
        page = await store.list_events(EventFilter(), 7, before=cursor)
        events += page.events
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


async def all_deliveries(store: Store, state: DeliveryState | None) -> list[DeliveryListing]:
    listed: list[DeliveryListing] = []
    cursor = None
    while True:
        page = await store.list_deliveries(state, None, 5, before=cursor)
        listed += page.deliveries
        if page.next_cursor is None:
            return listed
        cursor = page.next_cursor


async def assert_same_stores(source: Store, target: Store) -> None:
    events = await all_events(source)
    assert events and await all_events(target) == events
    for event in events:
        assert await target.get_event(event.id) == await source.get_event(event.id)
    for state in (None, *DeliveryState):
        assert await all_deliveries(target, state) == await all_deliveries(source, state)
    assert {d.delivery.state for d in await all_deliveries(source, None)} == set(DeliveryState)
    assert await target.list_audit(100) == await source.list_audit(100) != AuditPage((), None)
    caps = EventFilter(email="caps@example.com")
    assert (await target.list_events(caps, 5)).events == (await source.list_events(caps, 5)).events
    assert len((await target.list_events(caps, 5)).events) == 1
    replay = await source.get_replay(1)
    assert replay is not None and await target.get_replay(1) == replay
    assert await target.paused_destinations() == await source.paused_destinations() == {"dw"}
    assert await target.destination_stats() == await source.destination_stats()
    # Each inbound's quota usage is counted again from what was copied.
    usage = await source.inbound_usage()
    assert usage and await target.inbound_usage() == usage
    # A circuit open in the source is open in the copy, its probe schedule kept.
    gates = await source.gate_states()
    assert gates["down"].open and await target.gate_states() == gates
    # The lease is the source's: the old relay's owner still holds it until it runs out.
    assert not await target.try_lease("retention", "new-relay", 600.0)


async def test_a_sqlite_store_copied_to_postgresql_is_identical_and_a_relay_carries_on_there(
    pg_url: str, tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    # pg_url first: set up first, so it is dropped after the relay on it has stopped.
    db = tmp_path / "relay.db"
    await make_source(db, sink, start_relay)
    target = with_password(pg_url, PASSWORD)

    done = copy_store("--from", f"sqlite:///{db}", "--to", target, "--batch-size", "4")

    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    applied = postgres_version()
    assert f"{applied} migration{'' if applied == 1 else 's'} applied" in done.stdout
    assert "verified:" in done.stdout
    assert "events            [########################] 100%" in done.stdout
    source_store, target_store = await open_store(f"sqlite:///{db}"), await open_store(target)
    try:
        await assert_same_stores(source_store, target_store)
        # The attempt the open circuit held is still not charged in the copy.
        conn = await asyncpg.connect(pg_url)
        try:
            held = await conn.fetchval(
                "SELECT held_attempts FROM deliveries WHERE destination = 'down'"
            )
            queued = await conn.fetch(
                "SELECT order_key, next_attempt_at IS NULL FROM deliveries"
                " WHERE destination = 'ord' ORDER BY id"
            )
        finally:
            await conn.close()
        assert held == 1
        # The subscriber queue carried over: the same key, the second still waiting.
        ((key, first_waits), (same, second_waits)) = queued
        assert key is not None and key == same and (first_waits, second_waits) == (False, True)
        copied = await all_events(source_store)
        top_seq = max(e.seq for e in copied)
        top_delivery = max(d.delivery.id for d in await all_deliveries(source_store, None))
    finally:
        await source_store.close()
        await target_store.close()

    # A relay on the copy: what waited is sent, new webhooks get positions and ids above the
    # copied ones, and Mailchimp's retry of a copied event is still a duplicate.
    sink.on("/flaky", 200)
    relay = await start_relay(relay_config(target, sink, db))
    sent_before = {d: len(sink.at(f"/{d}")) for d in ("crm", "dw")}
    assert (await admin_call(relay, "POST", "/admin/destinations/dw/resume"))[0] == 200
    # All that waited for dw but the one discarded.
    await wait_until(
        lambda: len(sink.at("/dw")) == sent_before["crm"] - 1, what="paused deliveries"
    )
    # The claim left in flight (lease over) and the replay's two deliveries.
    await wait_until(lambda: len(sink.at("/crm")) == sent_before["crm"] + 3, what="crm's backlog")
    crm = sink.at("/crm")[sent_before["crm"] :]
    assert sum(r.headers.get("X-Relay-Replay") == "1" for r in crm) == 2
    assert b"held%40example.com" in b"".join(r.body for r in crm)

    assert (await relay.post("/hooks/user", subscribe_body("new@example.com")))[0] == 200
    assert (await relay.post("/hooks/user", sample(AUDIENCE[1])))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == sent_before["crm"] + 4, what="the new event")
    duplicate, new = (await relay.relay.store.list_events(EventFilter(), 2)).events
    assert new.seq > top_seq and duplicate.seq == new.seq + 1
    original = next(e for e in copied if e.dedup_key == duplicate.dedup_key)
    assert duplicate.duplicate_of == original.id
    detail = await relay.relay.store.get_event(new.id)
    assert detail is not None and all(d.id > top_delivery for d in detail.deliveries)
    await wait_until(lambda: len(sink.at("/flaky")) > 0)  # deliveries made on the target: sent


async def small_source(db: Path, events: int) -> list[str]:
    """A SQLite store of ``events`` audience events, one request each: their request ids."""
    store = await open_store(f"sqlite:///{db}")
    try:
        ids = []
        for n in range(events):
            request = raw_request(subscribe_body(f"u{n}@example.com"))
            await store.ingest(request, [
                NewEvent("audience-user", "user", "subscribe", time.time(), ("crm", "dw"),
                         dedup_key=f"key-{n}"),
            ])  # fmt: skip
            ids.append(request.id)
        claimed = await store.claim("crm", 5, lease=60.0)
        for delivery in claimed:
            result = AttemptResult(
                AttemptOutcome.SUCCESS, time.time(), 0.01, 200, response_head=b"HTTP/1.1 200 OK"
            )
            await store.complete(delivery, result, Decision(DeliveryState.DELIVERED))
        return ids
    finally:
        await store.close()


async def table_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("requests", "events", "dedup", "deliveries", "attempts")
        }
    finally:
        await conn.close()


async def waiting_for_a_lock(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name LIKE 'relay/copy-store/%'"
            )
        )
    finally:
        await conn.close()


async def test_an_interrupted_copy_continues_where_it_stopped_without_doubling_a_row(
    tmp_path: Path, pg_url: str
) -> None:
    db = tmp_path / "relay.db"
    request_ids = sorted(await small_source(db, 30))
    target = pg_url
    await migrate_store(StorageConfig(url=target))
    # An uncommitted row with the key of the 13th request holds the copy at its third batch of
    # five, after two committed ones: an interruption at a known place, mid-table.
    blocker = await asyncpg.connect(target)
    blocker_tx = blocker.transaction()
    await blocker_tx.start()
    await blocker.execute(
        "INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type,"
        " peer, received_at) VALUES ($1, 'x', 'POST', '/', '', '[]', '', '', '', 0)",
        request_ids[12],
    )
    try:
        args = ("--from", f"sqlite:///{db}", "--to", target, "--batch-size", "5")
        for stop in (signal.SIGINT, signal.SIGKILL):
            copier = copy_process(*args)
            try:
                await wait_until(lambda: waiting_for_a_lock(target), what="the copy to block")
                assert (await table_counts(target))["requests"] == 10
                copier.send_signal(stop)
                _, err = copier.communicate(timeout=20)
            finally:
                if copier.poll() is None:
                    copier.kill()
                    copier.wait()
            if stop == signal.SIGINT:
                assert copier.returncode == 130
                assert "interrupted: run the same command again to continue" in err
            else:
                assert copier.returncode == -signal.SIGKILL
    finally:
        await blocker_tx.rollback()
        await blocker.close()

    done = copy_store(*args)

    assert done.returncode == 0, done.stderr
    assert "resuming the copy started" in done.stdout
    assert await table_counts(target) == {
        "requests": 30, "events": 30, "dedup": 30, "deliveries": 60, "attempts": 5,
    }  # fmt: skip
    # Resuming a finished copy copies nothing and verifies again.
    again = copy_store(*args)
    assert again.returncode == 0 and "copied 0 rows" in again.stdout


async def test_counts_that_differ_after_a_copy_fail_it_with_the_table_named(
    tmp_path: Path, pg_url: str
) -> None:
    db = tmp_path / "relay.db"
    await small_source(db, 6)
    target = pg_url
    args = ("--from", f"sqlite:///{db}", "--to", target)
    assert copy_store(*args).returncode == 0
    conn = await asyncpg.connect(target)
    try:
        await conn.execute("DELETE FROM attempts WHERE id = (SELECT max(id) FROM attempts)")
        await conn.execute(
            "UPDATE deliveries SET state = 'dead' WHERE id = (SELECT min(id) FROM deliveries"
            " WHERE state = 'pending')"
        )
    finally:
        await conn.close()

    checked = copy_store(*args)

    assert checked.returncode == 1
    assert "counts differ after the copy: attempts: source 5, target 4" in checked.stderr
    assert "deliveries in state dead: source 0, target 1" in checked.stderr
    assert "deliveries in state pending: source 7, target 6" in checked.stderr


class Notes:
    """A CopyProgress that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished: dict[str, int] = {}

    def note(self, line: str) -> None:
        self.lines.append(line)

    def update(self, table: str, done: int, total: int) -> None:
        assert done <= total

    def finish(self, table: str, done: int, total: int) -> None:
        self.finished[table] = done


async def copy_in_process(
    source: str, target: str, force: bool = False
) -> tuple[CopyReport, Notes]:
    notes = Notes()
    report = await copy_store_engine(
        StorageConfig(url=source), StorageConfig(url=target), progress=notes, force=force
    )
    return report, notes


async def test_a_target_holding_other_data_is_refused_unless_forced(
    tmp_path: Path, pg_url: str
) -> None:
    db, other = tmp_path / "relay.db", tmp_path / "other.db"
    await small_source(db, 3)
    await small_source(other, 2)
    target = pg_url
    store = await open_store(target)  # a relay that already took a webhook there
    await store.ingest(raw_request(), [NewEvent("audience-user", "user", "subscribe", 0.0, ())])
    await store.close()

    with pytest.raises(CopyError, match="already holds relay data that did not come from this"):
        await copy_in_process(f"sqlite:///{db}", target)
    report, notes = await copy_in_process(f"sqlite:///{db}", target, force=True)
    assert report.ok and "--force: deleting what the target holds" in notes.lines
    assert (await table_counts(target))["events"] == 3

    # A copy of one store is not resumed from another.
    with pytest.raises(CopyError, match=f"holds a copy of sqlite:///{db.resolve()}"):
        await copy_in_process(f"sqlite:///{other}", target)


async def test_deliveries_whose_event_was_pruned_are_left_out_and_said_so(
    tmp_path: Path, pg_url: str
) -> None:
    db = tmp_path / "relay.db"
    await small_source(db, 4)
    with sqlite3.connect(db) as conn:  # what a prune racing a replay leaves behind
        conn.execute("DELETE FROM events WHERE id = (SELECT max(id) FROM events)")
    conn.close()

    report, notes = await copy_in_process(f"sqlite:///{db}", pg_url)

    assert report.ok, report.mismatches
    assert (
        "deliveries: 2 row(s) left out: their event (pruned) or replay is not in the source"
        in notes.lines
    )
    counts = await table_counts(pg_url)
    assert (counts["events"], counts["deliveries"]) == (3, 6)


async def test_a_postgresql_store_copies_back_to_sqlite(tmp_path: Path, pg_url: str) -> None:
    db, back = tmp_path / "relay.db", tmp_path / "back" / "relay.db"
    await small_source(db, 5)
    middle = pg_url
    assert (await copy_in_process(f"sqlite:///{db}", middle))[0].ok

    report, _ = await copy_in_process(middle, f"sqlite:///{back}")

    assert report.ok, report.mismatches
    first, second = await open_store(f"sqlite:///{db}"), await open_store(f"sqlite:///{back}")
    try:
        events = await all_events(first)
        assert await all_events(second) == events
        for event in events:
            assert await second.get_event(event.id) == await first.get_event(event.id)
    finally:
        await first.close()
        await second.close()


async def test_text_postgresql_cannot_hold_is_copied_as_relay_stores_it_there(
    tmp_path: Path, pg_url: str
) -> None:
    db = tmp_path / "relay.db"
    store = await open_store(f"sqlite:///{db}")
    try:
        (event_id,) = (await store.ingest(raw_request(), [
            NewEvent("audience-user", "user", "subscribe", time.time(), ("crm",),
                     email="a\x00b@example.com", parse_error="bad byte \x00 in body"),
        ])).event_ids  # fmt: skip
    finally:
        await store.close()

    report, _ = await copy_in_process(f"sqlite:///{db}", pg_url)

    assert report.ok, report.mismatches
    target = await open_store(pg_url)
    try:
        detail = await target.get_event(event_id)
    finally:
        await target.close()
    assert detail is not None
    assert (detail.event.email, detail.event.parse_error) == (
        "a\ufffdb@example.com",
        "bad byte \ufffd in body",
    )


async def test_a_source_a_relay_answered_readyz_on_a_moment_ago_gets_a_warning(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    await small_source(db, 1)
    store = await open_store(f"sqlite:///{db}")
    await store.ping()  # what /readyz does
    await store.close()

    report, notes = await copy_in_process(f"sqlite:///{db}", f"sqlite:///{tmp_path}/copy.db")

    assert report.ok
    (warning,) = [line for line in notes.lines if line.startswith("warning:")]
    assert "a relay answered /readyz on the source 0 s ago; if it still runs, stop it" in warning


async def test_a_source_at_an_older_schema_is_refused_until_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db, isolation_level=None) as conn:  # what an older relay left
        for version, script in migrations("relay.store.sqlite")[:2]:
            conn.executescript(f"{script}\nPRAGMA user_version = {version};")
    conn.close()
    target = f"sqlite:///{tmp_path}/new.db"

    newest = latest_version()
    with pytest.raises(CopyError, match=f"schema is at version 2, this relay's at {newest}: run"):
        await copy_in_process(f"sqlite:///{db}", target)
    await migrate_store(StorageConfig(url=f"sqlite:///{db}"))
    assert (await copy_in_process(f"sqlite:///{db}", target))[0].ok


async def test_a_copy_is_refused_while_a_relay_serves_the_sqlite_source(
    tmp_path: Path, sink: Sink
) -> None:
    db = tmp_path / "relay.db"
    await small_source(db, 1)
    config = tmp_path / "relay.toml"
    port = free_port()
    config.write_text(relay_config(f"sqlite:///{db}", sink, db).replace(
        'listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'
    ))  # fmt: skip
    relay = RelayProcess(config, port, tmp_path / "relay.log")
    await relay.start()
    try:
        refused = copy_store("--from", f"sqlite:///{db}", "--to", f"sqlite:///{tmp_path}/b.db")
    finally:
        relay.kill(signal.SIGTERM)
        relay.wait(20)

    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"relay copy-store: cannot copy while a relay uses the source: {db} is in use by"
        f" another relay serve (pid {relay.proc.pid})"
    )
    assert not (tmp_path / "b.db").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--from", "mysql://x/y", "--to", "sqlite:///b.db"], 2,
         "relay copy-store: --from mysql://x/y: must be sqlite:///PATH"),
        (["--from", "sqlite:///a.db", "--to", "sqlite:///./a.db"], 1,
         "relay copy-store: --from and --to name the same store"),
        (["--from", "sqlite:///missing.db", "--to", "sqlite:///b.db"], 1,
         "relay copy-store: no SQLite database at missing.db"),
        (["--from", "sqlite:///a.db", "--to", "sqlite:///b.db", "--batch-size", "0"], 2,
         "--batch-size: must be a whole number above 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_and_an_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay", "copy-store", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "b.db").exists()
