"""Replays, dead letters, pause and retention against real relays and sockets, on each backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from relay.ids import new_id
from relay.model import ClaimedDelivery, NewEvent, NewReplay, RawRequest
from relay.store.base import POLL_INTERVAL
from tests.backends import RelayBackend
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


async def _event_id(relay: RelayUnderTest, email: str) -> str:
    _, page = await admin_call(relay, "GET", f"/admin/events?email={email}")
    return str(page["events"][0]["id"])


async def test_replaying_one_event_makes_a_new_marked_delivery_and_keeps_the_old_one(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    await relay.post("/hooks/user", subscribe_body("ann@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1, what="the live delivery")
    event_id = await _event_id(relay, "ann@example.com")

    status, answer = await admin_call(
        relay, "POST", f"/admin/events/{event_id}/replay", headers={"X-Relay-Operator": "dana"}
    )
    assert status == 200, answer
    (made,) = answer["deliveries"]
    assert (made["destination"], made["state"]) == ("crm", "pending")
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the replayed delivery")
    live, replayed = sink.at("/crm")
    assert "X-Relay-Replay" not in live.headers and replayed.headers["X-Relay-Replay"] == "1"
    assert replayed.body == live.body and replayed.headers["X-Relay-Event-Id"] == event_id

    _, detail = await admin_call(relay, "GET", f"/admin/events/{event_id}")
    states = [(d["replay_id"], d["attempts"]) for d in detail["deliveries"]]
    assert states[0] == (None, 1) and states[1][0] == answer["replay_id"]
    assert await relay_backend.rows(
        "SELECT requested_by, state, matched, created FROM replays"
    ) == [("dana", "done", 1, 1)]
    status, unknown = await admin_call(
        relay, "POST", f"/admin/events/{event_id}/replay", {"destinations": ["nope"]}
    )
    assert (status, unknown) == (404, {"error": "unknown destination: nope"})
    text = await (await relay.session.get(relay.url("/metrics"))).text()  # type: ignore[union-attr]
    assert 'relay_replayed_deliveries_total{destination="crm"} 1.0' in text
    assert "relay_replays_total 1.0" in text


async def test_replay_backfills_a_destination_added_after_the_event_arrived(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    crm = destination("crm", sink.url("/crm"))
    first = await start_relay(relay_backend.config(crm, extra=ADMIN_TABLE))
    await first.post("/hooks/user", subscribe_body("bob@example.com"))
    await first.post("/hooks/user", subscribe_body("cy@example.com", kind="unsubscribe"))
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the live deliveries")
    event_id = await _event_id(first, "bob@example.com")
    await first.stop()

    # The same database, a newer config: a warehouse that wants subscribes only.
    warehouse = destination("warehouse", sink.url("/warehouse"), types=["subscribe"])
    second = await start_relay(relay_backend.config(crm + warehouse, extra=ADMIN_TABLE))
    status, answer = await admin_call(second, "POST", f"/admin/events/{event_id}/replay")
    assert status == 200
    assert sorted(d["destination"] for d in answer["deliveries"]) == ["crm", "warehouse"]
    await wait_until(lambda: len(sink.at("/warehouse")) == 1 and len(sink.at("/crm")) == 3)
    assert sink.at("/warehouse")[0].headers["X-Relay-Event-Id"] == event_id

    # Named destinations are used as given, whatever their filters say.
    other = await _event_id(second, "cy@example.com")
    _, named = await admin_call(
        second, "POST", f"/admin/events/{other}/replay", {"destinations": ["warehouse"]}
    )
    assert [d["destination"] for d in named["deliveries"]] == ["warehouse"]
    await wait_until(lambda: len(sink.at("/warehouse")) == 2)


async def test_bulk_replay_dry_run_counts_equal_what_is_then_made(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    dests = destination("crm", sink.url("/crm")) + destination(
        "warehouse", sink.url("/warehouse"), types=["unsubscribe"]
    )
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    for i in range(6):
        await relay.post(
            "/hooks/user",
            subscribe_body(f"u{i}@example.com", kind="unsubscribe" if i % 2 else "subscribe"),
        )
    await relay.post("/hooks/admin", subscribe_body("admin@example.com", kind="unsubscribe"))
    # Mailchimp retrying the first webhook: stored as a duplicate, and not replayed either.
    await relay.post("/hooks/user", subscribe_body("u0@example.com", kind="subscribe"))
    await wait_until(lambda: len(sink.received) == 7 + 4, what="the live deliveries")
    assert await relay_backend.rows(
        "SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL"
    ) == [(1,)]

    request = {"filter": {"source": "user", "since": "2001-01-01"}}
    status, dry = await admin_call(relay, "POST", "/admin/replay", {**request, "dry_run": True})
    assert status == 200
    assert (dry["matched"], dry["deliveries"], dry["per_destination"], dry["dry_run"]) == (
        6,
        9,
        {"crm": 6, "warehouse": 3},
        True,
    )
    assert dry["replay_id"] is None
    assert await relay_backend.rows(
        "SELECT count(*) FROM deliveries WHERE replay_id IS NOT NULL"
    ) == [(0,)]

    status, done = await admin_call(relay, "POST", "/admin/replay", request)
    assert status == 200, done
    assert (done["matched"], done["deliveries"], done["per_destination"], done["state"]) == (
        6,
        9,
        {"crm": 6, "warehouse": 3},
        "done",
    )
    assert await relay_backend.rows(
        "SELECT destination, count(*) FROM deliveries WHERE replay_id = ? GROUP BY 1 ORDER BY 1",
        done["replay_id"],
    ) == [("crm", 6), ("warehouse", 3)]
    await wait_until(lambda: len(sink.received) == 11 + 9, what="the replayed deliveries")
    status, bad = await admin_call(relay, "POST", "/admin/replay", {"filter": {"colour": "red"}})
    assert status == 400 and "unknown filter" in bad["error"]


async def test_dead_letters_are_replayed_once_the_destination_recovers(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 500)
    dests = destination("crm", sink.url("/crm"), retry={"max_attempts": 2}) + destination(
        "warehouse", sink.url("/warehouse"), retry={"max_attempts": 2}
    )
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    for i in range(3):
        await relay.post("/hooks/user", subscribe_body(f"d{i}@example.com"))

    async def dead() -> bool:
        _, answer = await admin_call(relay, "GET", "/admin/deliveries?state=dead&destination=crm")
        return len(answer["deliveries"]) == 3

    await wait_until(dead, what="crm's deliveries to die")
    await wait_until(lambda: len(sink.at("/warehouse")) == 3)
    sink.on("/crm", 200)
    retry = {"filter": {"state": "dead", "destination": "crm"}, "destinations": ["crm"]}
    status, answer = await admin_call(relay, "POST", "/admin/replay", retry)
    assert status == 200 and answer["per_destination"] == {"crm": 3}
    await wait_until(
        lambda: len([r for r in sink.at("/crm") if r.headers.get("X-Relay-Replay")]) == 3
    )
    assert len(sink.at("/warehouse")) == 3  # the healthy destination got no duplicates

    async def resolved() -> bool:
        _, dead = await admin_call(relay, "GET", "/admin/deliveries?state=dead&destination=crm")
        return dead["deliveries"] == []  # no longer dead letters: their events got there

    await wait_until(resolved, what="the dead letters to resolve")
    # History is kept: the old rows stay dead, resolved by the replay's deliveries.
    event_id = sink.at("/crm")[-1].headers["X-Relay-Event-Id"]
    _, detail = await admin_call(relay, "GET", f"/admin/events/{event_id}")
    old, new = [d for d in detail["deliveries"] if d["destination"] == "crm"]
    assert (old["state"], old["resolved_by"]) == ("dead", f"delivery {new['id']}")


async def test_pause_holds_deliveries_and_resume_drains_them(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503)
    dests = destination(
        "crm", sink.url("/crm"), retry={"max_attempts": 50, "initial_delay": 0.3, "max_delay": 0.3}
    )
    dests += destination("warehouse", sink.url("/warehouse"))
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    await relay.post("/hooks/user", subscribe_body("early@example.com"))

    async def first_attempt_recorded() -> bool:
        # Recorded, not only received: an attempt that ends after the pause leaves its retry
        # pending instead of held (the next test), and this one pauses a delivery at rest.
        _, page = await admin_call(relay, "GET", "/admin/deliveries?state=pending&destination=crm")
        return [d["attempts"] for d in page["deliveries"]] == [1]

    await wait_until(first_attempt_recorded, what="a first failed attempt")

    status, answer = await admin_call(relay, "POST", "/admin/destinations/crm/pause")
    assert (status, answer["paused"], answer["held"]) == (200, True, 1)
    tried = len(sink.at("/crm"))
    await relay.post("/hooks/user", subscribe_body("late@example.com"))
    # The warehouse getting the late event shows workers run; crm must get nothing meanwhile,
    # not even the retry that was due 0.3 s after the first attempt.
    await wait_until(lambda: len(sink.at("/warehouse")) == 2)
    started = time.monotonic()
    await wait_until(lambda: time.monotonic() - started > 0.6, what="the retry time to pass")
    assert len(sink.at("/crm")) == tried
    assert await relay_backend.rows(
        "SELECT state, count(*) FROM deliveries WHERE destination = 'crm' GROUP BY 1"
    ) == [("paused", 2)]
    _, listing = await admin_call(relay, "GET", "/admin/destinations")
    crm = next(d for d in listing["destinations"] if d["name"] == "crm")
    assert crm["paused"] is True and crm["counts"]["paused"] == 2
    registry: CollectorRegistry = relay.relay.metrics.registry
    assert registry.get_sample_value("relay_destination_paused", {"destination": "crm"}) == 1

    sink.on("/crm", 200)
    status, answer = await admin_call(relay, "POST", "/admin/destinations/crm/resume")
    assert (status, answer["released"]) == (200, 2)
    await wait_until(
        lambda: (
            {r.body for r in sink.at("/crm")[tried:]}
            == {subscribe_body("early@example.com"), subscribe_body("late@example.com")}
        ),
        what="the held deliveries to drain",
    )
    assert registry.get_sample_value("relay_destination_paused", {"destination": "crm"}) == 0


async def test_a_retry_left_pending_by_a_pause_does_not_make_the_worker_poll(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503)
    sink.delay["/crm"] = 0.5
    dests = destination(
        "crm",
        sink.url("/crm"),
        retry={"max_attempts": 50, "initial_delay": 0.05, "max_delay": 0.05},
    )
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    await relay.post("/hooks/user", subscribe_body("inflight@example.com"))
    await wait_until(
        lambda: relay_backend.rows_are([("delivering",)], "SELECT state FROM deliveries")
    )
    # Paused mid-attempt: the attempt fails after the pause and leaves a due retry, pending.
    assert (await admin_call(relay, "POST", "/admin/destinations/crm/pause"))[0] == 200
    await wait_until(
        lambda: relay_backend.rows_are([("pending", 1)], "SELECT state, attempts FROM deliveries")
    )
    registry: CollectorRegistry = relay.relay.metrics.registry

    def commits() -> float:
        return registry.get_sample_value("relay_store_commit_batch_size_count") or 0.0

    # Claims counted as the worker asks for them, the store's own claim doing the work: the
    # commit metric sees claims only where they share the writer's transactions (SQLite).
    store = relay.relay.store
    claims: list[str] = []
    claim = store.claim

    async def counted_claim(name: str, limit: int, lease: float) -> list[ClaimedDelivery]:
        claims.append(name)
        return await claim(name, limit, lease)

    store.claim = counted_claim
    before, started = commits(), time.monotonic()
    await asyncio.sleep(1.0)
    # Claiming for a paused destination would be one transaction per loop, about 100 a second;
    # a paused destination that looked due would be claimed every BLOCKED_RECHECK (0.25 s).
    # Idle, it is claimed once a POLL_INTERVAL (1 s): the net for a lost signal.
    assert commits() - before < 5
    assert claims.count("crm") <= 1 + (time.monotonic() - started) / POLL_INTERVAL
    assert len(sink.at("/crm")) == 1

    sink.on("/crm", 200)
    sink.delay["/crm"] = 0.0
    assert (await admin_call(relay, "POST", "/admin/destinations/crm/resume"))[0] == 200
    await wait_until(
        lambda: relay_backend.rows_are([("delivered",)], "SELECT state FROM deliveries")
    )


async def test_live_events_overtake_a_large_background_replay(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    dests = destination("crm", sink.url("/crm"), concurrency=2)
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    control = relay.relay.control.replays
    control.inline_limit, control.walk_batch, control.feed = 50, 100, 10
    total = 600
    # Stored, never delivered: as if they arrived before crm existed.
    request = RawRequest(
        new_id(),
        "audience-user",
        "POST",
        "/hooks/user",
        "",
        (),
        b"x",
        "text/plain",
        "",
        time.time() - 60,
    )
    events = [
        NewEvent("audience-user", "user", "subscribe", request.received_at, ())
        for _ in range(total)
    ]
    await relay.relay.store.ingest(request, events)

    status, answer = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]}
    )
    assert (status, answer["state"], answer["matched"]) == (202, "running", total)
    replay_id = answer["replay_id"]
    await wait_until(lambda: len(sink.at("/crm")) >= 50, what="the replay to get going")
    sent_before = len(sink.at("/crm"))
    await relay.post("/hooks/user", subscribe_body("live@example.com"))
    await wait_until(
        lambda: any(r.headers.get("X-Relay-Replay") is None for r in sink.at("/crm")),
        what="the live event",
    )
    live_at = next(i for i, r in enumerate(sink.at("/crm")) if "X-Relay-Replay" not in r.headers)
    # Behind the live event: at most the replay's window (10 per slot) plus one feed chunk.
    assert live_at - sent_before <= control.window("crm") + control.feed + 2
    assert live_at < total / 2

    async def finished() -> bool:
        _, state = await admin_call(relay, "GET", f"/admin/replays/{replay_id}")
        return bool(state["state"] == "done")

    await wait_until(finished, timeout=30, what="the replay to finish")
    _, state = await admin_call(relay, "GET", f"/admin/replays/{replay_id}")
    assert (state["total"], state["matched"], state["created"], state["per_destination"]) == (
        total,
        total,
        total,
        {"crm": total},
    )
    await wait_until(
        lambda: len(sink.at("/crm")) == total + 1, timeout=30, what="every replayed delivery"
    )


async def test_prune_never_deletes_an_event_with_an_unfinished_delivery(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/down", 503)
    dests = destination("crm", sink.url("/crm"), types=["subscribe"])
    dests += destination(
        "down",
        sink.url("/down"),
        types=["unsubscribe"],
        retry={"max_attempts": 50, "initial_delay": 30, "max_delay": 30},
    )
    dests += destination("held", sink.url("/held"), types=["profile"])
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    await admin_call(relay, "POST", "/admin/destinations/held/pause")
    await relay.post("/hooks/user", subscribe_body("done@example.com"))
    await relay.post("/hooks/user", subscribe_body("waiting@example.com", kind="unsubscribe"))
    await relay.post("/hooks/user", subscribe_body("paused@example.com", kind="profile"))
    await wait_until(lambda: len(sink.at("/crm")) == 1 and len(sink.at("/down")) == 1)

    async def delivered() -> bool:
        return await relay_backend.rows(
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        ) == [(1,)]

    await wait_until(delivered)
    status, answer = await admin_call(relay, "POST", "/admin/prune", {"older_than_days": 0})
    assert (status, answer) == (200, {"deleted_events": 1, "deleted_requests": 1, "dry_run": False})
    _, left = await admin_call(relay, "GET", "/admin/events")
    assert sorted(e["email"] for e in left["events"]) == [
        "paused@example.com",
        "waiting@example.com",
    ]
    assert await relay_backend.rows("SELECT count(*) FROM requests") == [(2,)]
    assert await relay_backend.rows("SELECT count(*) FROM attempts") == [(1,)]
    status, _ = await admin_call(relay, "POST", "/admin/prune", {"older_than_days": -1})
    assert status == 400


async def test_a_replay_racing_prune_makes_no_delivery_for_a_pruned_event(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    store = relay.relay.store
    await relay.post("/hooks/user", subscribe_body("gone@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    cutoff = time.time()
    await asyncio.sleep(0.01)
    await relay.post("/hooks/user", subscribe_body("kept@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 2)
    (gone, _), (kept, _) = await relay_backend.rows("SELECT id, email FROM events ORDER BY email")
    # What a background replay does between reading its candidates and writing deliveries,
    # with a retention prune in between that takes one of the events.
    # Held by this test, so the process's own replay runner leaves it alone.
    replay_id = await store.start_replay(
        NewReplay("test", "{}", ("crm",), 2), owner="test", lease=60
    )
    await wait_until(
        lambda: relay_backend.rows_are(
            [(2,)], "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        )
    )
    assert (await store.prune(time.time() - cutoff)).deleted_events == 1
    created = await store.add_replay_deliveries(replay_id, [(gone, "crm"), (kept, "crm")], 2)
    assert [(c.event_id, c.destination) for c in created] == [(kept, "crm")]
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the replay of the kept event")
    assert (
        await relay_backend.scalar("SELECT count(*) FROM deliveries WHERE event_id = ?", gone) == 0
    )
    record = await store.get_replay(replay_id)
    assert record is not None and record.created == 1

    # A delivery left without its event (by an older relay, or by hand) is given up at its
    # first claim instead of being leased again and again.
    await relay_backend.write_unchecked(
        "INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,"
        " updated_at) VALUES (?, 'crm', 'pending', 0, 0, 0)",
        gone,
    )
    relay.relay.dispatcher.wake(["crm"])
    await wait_until(
        lambda: relay_backend.rows_are(
            [("dead", "its event is no longer stored")],
            "SELECT state, last_error FROM deliveries WHERE event_id = ?",
            gone,
        )
    )


async def test_retention_prunes_finished_events_in_the_background(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    retention = "[retention]\ndays = 0.000001\ninterval = 0.05\n"
    relay = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm")), extra=ADMIN_TABLE + retention)
    )
    await relay.post("/hooks/user", subscribe_body("old@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    await wait_until(
        lambda: relay_backend.rows_are([(0,)], "SELECT count(*) FROM events"),
        what="retention to prune",
    )
    assert await relay_backend.rows("SELECT count(*) FROM requests") == [(0,)]


def test_routing_a_stored_event_parses_its_body_only_for_match_conditions() -> None:
    from relay.config import Condition, DestinationConfig, parse_config
    from relay.model import EventRecord, ReplayCandidate
    from relay.pipeline.routing import needs_payload, targets

    settings = parse_config(config_text(Path("/tmp/unused.db")), {})
    vip = DestinationConfig(
        "vip", "http://x/vip", match=(Condition("data.email", equals="ann@example.com"),)
    )
    subs = DestinationConfig("subs", "http://x/subs", types=("subscribe",))
    settings = type(settings)(
        settings.server, settings.storage, settings.admin, settings.inbounds, (vip, subs)
    )
    event = EventRecord(
        "01J",
        "r",
        "audience-user",
        "user",
        "subscribe",
        0.0,
        None,
        None,
        "ann@example.com",
        None,
        None,
        None,
    )
    assert needs_payload(settings.destinations)
    with_body = ReplayCandidate(
        event, subscribe_body("ann@example.com"), "application/x-www-form-urlencoded"
    )
    assert targets(settings, with_body) == ("vip", "subs")
    other = ReplayCandidate(
        event, subscribe_body("bob@example.com"), "application/x-www-form-urlencoded"
    )
    assert targets(settings, other) == ("subs",)


async def test_a_paced_background_replay_reports_only_the_events_it_has_reached(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.delay["/crm"] = 5.0  # one attempt in flight for the whole test; the rest wait
    dests = destination("crm", sink.url("/crm"), concurrency=1, types=["unsubscribe"])
    relay = await start_relay(relay_backend.config(dests, extra=ADMIN_TABLE))
    control = relay.relay.control.replays
    control.inline_limit, control.walk_batch, control.feed = 5, 100, 5
    for i in range(30):
        assert (await relay.post("/hooks/user", subscribe_body(f"u{i}@example.com")))[0] == 200
    status, answer = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]}
    )
    assert (status, answer["matched"]) == (202, 30)
    path = f"/admin/replays/{answer['replay_id']}"
    # The window for one slot is 10 waiting deliveries: the replay stops there for now.
    await wait_until(lambda: relay_backend.rows_are([(10,)], "SELECT count(*) FROM deliveries"))
    await asyncio.sleep(0.2)
    _, progress = await admin_call(relay, "GET", path)
    assert (progress["state"], progress["total"]) == ("running", 30)
    assert progress["matched"] == progress["created"] == 10
