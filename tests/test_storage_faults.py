"""Storage that stops taking writes: locked by another process, or full (the [storage]
max_size_mb cap). Ingest answers 503 and never 200 for what it did not store, /readyz says why,
and both recover by themselves once storage does; everything acknowledged is delivered.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from relay.config import StorageConfig
from relay.ids import new_id
from relay.model import (
    AttemptOutcome,
    AttemptResult,
    Decision,
    DeliveryState,
    IngestResult,
    NewEvent,
    RawRequest,
)
from relay.store import StoreError
from relay.store.sqlite.store import SqliteStore
from tests.support import (
    FORM,
    RelayFactory,
    RelayUnderTest,
    Sink,
    config_text,
    destination,
    sample,
    stored_bodies,
    unfinished,
    wait_until,
)
from tests.test_bad_input import exchange, port_of, status_of

BODY = sample("mc_doc_subscribe.txt")


def unique_bodies(size: int = 0) -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        body = BODY.replace(b"8a25ff1d98", f"{n:010d}".encode())
        yield body + b"&data%5Bpad%5D=" + b"p" * size if size else body


async def readyz(relay: RelayUnderTest) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(relay.url("/readyz")) as r:
        return r.status, await r.text()


async def ready_is(relay: RelayUnderTest, status: int) -> None:
    async def check() -> bool:
        return (await readyz(relay))[0] == status

    # /readyz trusts a successful write for READY_FRESHNESS (5 s) before writing again.
    await wait_until(check, timeout=10, what=f"/readyz to answer {status}")


async def test_locked_database_answers_503_reports_unready_and_recovers(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, destination("crm", sink.url("/crm"))))
    bodies = unique_bodies()
    acked = []
    first = next(bodies)
    assert (await relay.post("/hooks/user", first))[0] == 200
    acked.append(first)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(5):
            status, text = await relay.post("/hooks/user", next(bodies))
            assert (status, text) == (
                503,
                "storage unavailable, retry later (database is locked)\n",
            )
        await ready_is(relay, 503)
        assert (await readyz(relay))[1] == "storage is not writable: database is locked\n"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await ready_is(relay, 200)
    again = next(bodies)
    assert (await relay.post("/hooks/user", again))[0] == 200
    acked.append(again)
    assert stored_bodies(db) == acked
    await wait_until(lambda: {r.body for r in sink.at("/crm")} == set(acked))


async def test_full_database_answers_503_never_200_and_recovers_when_space_is_freed(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(
        config_text(db, destination("crm", sink.url("/crm")), extra="max_size_mb = 1")
    )
    # Ballast that the "operator" will delete later to free space (as a retention purge would).
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('ballast', zeroblob(300000))")
    # Held until the database is full, so that every attempt is recorded while it is.
    await relay.relay.control.pause("crm")
    bodies = unique_bodies(size=6000)
    acked: list[bytes] = []
    refused: list[bytes] = []
    while len(refused) < 3:
        body = next(bodies)
        status, text = await relay.post("/hooks/user", body)
        assert status in (200, 503), (status, text)
        if status == 200:
            assert not refused, "a 200 after the database was full, before space was freed"
            acked.append(body)
        else:
            assert text == "storage unavailable, retry later (database or disk is full)\n"
            refused.append(body)
        assert len(acked) < 500, "the cap never took effect"
    assert db.stat().st_size <= 1024 * 1024 + 4096
    await ready_is(relay, 503)
    assert "storage is not writable: database or disk is full" in (await readyz(relay))[1]
    assert sorted(stored_bodies(db)) == sorted(acked)
    # Still full, the room kept below the cap records what was already taken: every delivery
    # finishes at its first attempt, none is sent again for want of space to record it.
    await relay.relay.control.resume("crm")
    await wait_until(
        lambda: unfinished(db) == 0, timeout=20, what="deliveries to finish while full"
    )
    assert sorted(r.body for r in sink.at("/crm")) == sorted(acked)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT max(number) FROM attempts").fetchone() == (1,)

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'ballast'")
    await ready_is(relay, 200)
    retried = refused[0]  # Mailchimp retries what got a 503
    assert (await relay.post("/hooks/user", retried))[0] == 200
    acked.append(retried)
    assert sorted(stored_bodies(db)) == sorted(acked)
    await wait_until(lambda: unfinished(db) == 0, timeout=20, what="every delivery to finish")
    assert set(acked) <= {r.body for r in sink.at("/crm")}
    print(f"\n[full] acknowledged={len(acked)} refused_with_503={len(refused)} lost=0")


async def test_a_non_utf8_content_type_is_stored_and_does_not_fail_its_neighbours(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, destination("crm", sink.url("/crm"))))
    bodies = unique_bodies()
    good = [next(bodies) for _ in range(20)]
    odd = next(bodies)
    # All in flight together, so they share commits with the odd one.
    statuses = await asyncio.gather(
        *(relay.post("/hooks/user", body) for body in good),
        exchange(
            port_of(relay),
            b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded; charset=\xff\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(odd), odd),
        ),
    )
    assert [s for s, _ in statuses[:-1]] == [200] * len(good)
    assert isinstance(statuses[-1], bytes) and status_of(statuses[-1]) == 200
    assert sorted(stored_bodies(db)) == sorted([*good, odd])
    with sqlite3.connect(db) as conn:
        (content_type,) = conn.execute(
            "SELECT content_type FROM requests WHERE body = ?", (odd,)
        ).fetchone()
    assert content_type == "application/x-www-form-urlencoded; charset=\xff"  # the byte, as latin-1
    await wait_until(lambda: {r.body for r in sink.at("/crm")} == {*good, odd})


async def test_an_operation_that_cannot_be_stored_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(StorageConfig(url=f"sqlite:///{tmp_path / 'relay.db'}"))
    await store.open()
    try:

        def request(content_type: str) -> RawRequest:
            return RawRequest(
                new_id(), "audience-user", "POST", "/hooks/user", "", (), BODY, content_type,
                "127.0.0.1", time.time(),
            )  # fmt: skip

        good, bad = request("text/plain"), request("text/plain; \udcff")
        outcomes = await asyncio.gather(
            store.ingest(good, ()), store.ingest(bad, ()), return_exceptions=True
        )
        assert outcomes[0] == IngestResult((), {})
        assert isinstance(outcomes[1], StoreError)
        assert "internal error" in str(outcomes[1])
        # The writer survives it: the next batch commits as usual.
        later = request("text/plain")
        assert await store.ingest(later, ()) == IngestResult((), {})
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM requests")}
    assert stored == {good.id, later.id}


async def test_a_lock_held_elsewhere_fails_every_waiting_request_within_one_busy_timeout(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db))
    busy_timeout = relay.settings.storage.sqlite.busy_timeout
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        bodies = unique_bodies()
        started = time.perf_counter()
        statuses = await asyncio.gather(
            *(relay.post("/hooks/user", next(bodies)) for _ in range(8))
        )
        elapsed = time.perf_counter() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert {s for s, _ in statuses} == {503}
    # Retrying each of the 8 alone would take 8 busy timeouts or more; a batch that shares a
    # lock failure fails together. Three timeouts leave room for a second batch and a slow CI.
    assert elapsed < 3 * busy_timeout + 1.0, elapsed


async def test_a_capped_database_that_refuses_webhooks_still_records_attempts(
    tmp_path: Path,
) -> None:
    store = SqliteStore(StorageConfig(url=f"sqlite:///{tmp_path / 'relay.db'}", max_size_mb=0.5))
    await store.open()
    try:
        taken = 0
        while True:  # small requests pack the pages tight, as a long import would
            request = RawRequest(
                new_id(), "audience-user", "POST", "/hooks/user", "", (),
                b"type=subscribe&data[pad]=" + b"p" * 400, FORM, "127.0.0.1", time.time(),
            )  # fmt: skip
            event = NewEvent("audience-user", "user", "subscribe", request.received_at, ("crm",))
            try:
                await store.ingest(request, [event])
            except StoreError as exc:
                refusal = str(exc)
                break
            taken += 1
        assert refusal == "database or disk is full"
        with pytest.raises(StoreError, match="full"):
            await store.ping()
        # Everything taken is sent and recorded once; an attempt that could not be recorded
        # would leave its delivery leased, to be sent again when the lease ran out.
        recorded = 0
        while claimed := await store.claim("crm", 64, 60.0):
            for delivery in claimed:
                result = AttemptResult(
                    AttemptOutcome.SUCCESS, time.time(), 0.001, 200, response_head=b"ok" * 100
                )
                assert await store.complete(delivery, result, Decision(DeliveryState.DELIVERED))
                recorded += 1
        assert recorded == taken > 100
    finally:
        await store.close()
