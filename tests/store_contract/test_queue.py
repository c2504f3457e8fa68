"""The hot path: claims with leases, completes fenced by their lease, due times, the store's
clock, and the per-destination counts."""

from __future__ import annotations

import pytest

from relay.model import AttemptOutcome, ClaimedDelivery, Decision, DeliveryState
from relay.store import Store, StoreError
from relay.store.rules import ORPHANED, recorded_error
from tests.store_contract.backends import Backend
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    SHORT,
    attempt,
    claim_all,
    ingest_one,
    new_event,
    raw_request,
    retry_at,
)
from tests.support import wait_until


async def delivery_of(store: Store, event_id: str, destination: str = "crm"):  # type: ignore[no-untyped-def]
    detail = await store.get_event(event_id)
    assert detail is not None
    (found,) = [d for d in detail.deliveries if d.destination == destination]
    return found


async def reclaimed(store: Store, destination: str, lease: float = LEASE) -> ClaimedDelivery:
    """Poll until a claim hands something out again (a lease ran out); that delivery."""
    got: list[ClaimedDelivery] = []

    async def claimed() -> bool:
        got.extend(await store.claim(destination, 10, lease))
        return bool(got)

    await wait_until(claimed, timeout=5, what=f"a claim of {destination} after its lease")
    (delivery,) = got
    return delivery


# -- claim --------------------------------------------------------------------------------


async def test_a_claim_hands_out_what_is_needed_to_send(store: Store) -> None:
    element = b'{"event":"send","msg":{"email":"ann@example.com"}}'
    request = raw_request(b"mandrill_events=%5B...%5D")
    result = await store.ingest(
        request,
        [
            new_event(
                "crm", inbound="mandrill", source="mandrill", type="send", fired_at=1_700_000_000.5,
                payload=element, payload_content_type="application/json",
            ),
            new_event("crm", inbound="mandrill", source="mandrill", type="open"),
        ],
    )  # fmt: skip
    before = await store.now()
    claimed = await store.claim("crm", 10, LEASE)
    after = await store.now()
    by_event = {c.event_id: c for c in claimed}
    assert set(by_event) == set(result.event_ids)
    first = by_event[result.event_ids[0]]
    detail = await store.get_event(first.event_id)
    assert detail is not None
    assert (first.destination, first.attempt, first.replay) == ("crm", 1, False)
    assert (first.inbound, first.source, first.type) == ("mandrill", "mandrill", "send")
    assert (first.body, first.content_type) == (element, "application/json")
    assert first.fired_at == 1_700_000_000.5
    assert first.received_at == detail.event.received_at
    assert first.created_at == detail.deliveries[0].created_at
    assert first.claimed_at is not None
    assert before <= first.claimed_at <= after
    # Without a payload of its own an event sends the request's bytes.
    second = by_event[result.event_ids[1]]
    assert (second.body, second.content_type) == (request.body, request.content_type)
    assert second.fired_at is None


async def test_a_claim_takes_only_its_destinations_due_deliveries(store: Store) -> None:
    later = await ingest_one(store, "crm")
    due = await ingest_one(store, "crm")
    await ingest_one(store, "dw")
    now = await store.now()
    for d in await claim_all(store, "crm"):
        when = now + 3600 if d.event_id == later else now - 1
        assert await store.complete(d, attempt(503), retry_at(when))
    assert [c.event_id for c in await claim_all(store, "crm")] == [due]


async def test_a_claim_takes_at_most_its_limit(store: Store) -> None:
    for _ in range(5):
        await ingest_one(store, "crm")
    sizes = [len(await store.claim("crm", 2, LEASE)) for _ in range(4)]
    assert sizes == [2, 2, 1, 0]


async def test_a_claim_takes_the_earliest_due_first(store: Store) -> None:
    made = [await ingest_one(store, "crm") for _ in range(4)]
    now = await store.now()
    due_at = {made[0]: now - 2, made[1]: now - 4, made[2]: now - 1, made[3]: now - 3}
    for d in await claim_all(store, "crm"):
        assert await store.complete(d, attempt(503), retry_at(due_at[d.event_id]))
    one_at_a_time = [(await store.claim("crm", 1, LEASE))[0].event_id for _ in made]
    assert one_at_a_time == sorted(made, key=due_at.__getitem__)


async def test_a_claim_lists_what_it_took_in_due_order(store: Store) -> None:
    made = [await ingest_one(store, "crm") for _ in range(4)]
    now = await store.now()
    due_at = {made[0]: now - 2, made[1]: now - 4, made[2]: now - 1, made[3]: now - 3}
    for d in await claim_all(store, "crm"):
        assert await store.complete(d, attempt(503), retry_at(due_at[d.event_id]))
    claimed = [c.event_id for c in await store.claim("crm", 10, LEASE)]
    assert claimed == sorted(made, key=due_at.__getitem__)


async def test_a_leased_delivery_is_not_claimed_again_until_its_lease_runs_out(
    store: Store,
) -> None:
    event_id = await ingest_one(store, "crm")
    (first,) = await store.claim("crm", 10, SHORT)
    assert await store.claim("crm", 10, SHORT) == []
    second = await reclaimed(store, "crm")
    assert (second.id, second.event_id, second.attempt) == (first.id, event_id, 2)
    assert (await delivery_of(store, event_id)).attempts == 2


async def test_nothing_is_claimed_for_a_paused_destination(store: Store) -> None:
    await ingest_one(store, "crm")
    await ingest_one(store, "crm")
    (leased,) = await store.claim("crm", 1, SHORT)
    await store.pause_destination("crm")
    lease_end = await store.now() + SHORT

    async def lease_over() -> bool:
        return await store.now() > lease_end

    await wait_until(lease_over, timeout=5, what="the lease to run out")
    # Neither the held pending one nor the one whose lease ran out while paused.
    assert await store.claim("crm", 10, LEASE) == []
    await store.resume_destination("crm")
    again = {c.id: c.attempt for c in await claim_all(store, "crm")}
    assert len(again) == 2
    assert again[leased.id] == 2


async def test_a_delivery_whose_event_is_gone_dies_instead_of_being_claimed(
    store: Store, backend: Backend
) -> None:
    gone = await ingest_one(store, "crm")
    kept = await ingest_one(store, "crm")
    doomed = (await delivery_of(store, gone)).id
    await backend.orphan(gone)
    assert [c.event_id for c in await store.claim("crm", 10, LEASE)] == [kept]
    assert await backend.delivery_row(doomed) == ("dead", ORPHANED)
    assert await store.claim("crm", 10, LEASE) == []
    (stats,) = await store.destination_stats()
    assert (stats.pending, stats.delivering, stats.dead) == (0, 1, 1)


# -- complete -----------------------------------------------------------------------------


async def test_a_delivered_attempt_is_recorded_and_finishes_the_delivery(store: Store) -> None:
    event_id = await ingest_one(store, "crm")
    (claimed,) = await store.claim("crm", 10, LEASE)
    result = attempt(200, response_head=b"HTTP/1.1 200 OK\r\nServer: sink\r\n")
    assert await store.complete(claimed, result, DELIVERED)
    d = await delivery_of(store, event_id)
    assert (d.state, d.attempts, d.last_status, d.last_error) == (
        DeliveryState.DELIVERED, 1, 200, None,
    )  # fmt: skip
    assert d.delivered_at is not None
    (logged,) = d.attempt_log
    assert (logged.number, logged.outcome, logged.status, logged.error) == (1, "2xx", 200, None)
    assert (logged.started_at, logged.duration) == (result.started_at, result.duration)
    assert logged.response_head == result.response_head
    assert await store.claim("crm", 10, SHORT) == []
    assert await store.due_in("crm") is None


async def test_a_retry_waits_until_its_time(store: Store) -> None:
    event_id = await ingest_one(store, "crm")
    (claimed,) = await store.claim("crm", 10, LEASE)
    when = await store.now() + 60
    assert await store.complete(claimed, attempt(503, response_head=b"busy"), retry_at(when))
    d = await delivery_of(store, event_id)
    assert (d.state, d.attempts, d.last_status, d.last_error, d.dead_reason) == (
        DeliveryState.PENDING, 1, 503, "HTTP 503: busy", None,
    )  # fmt: skip
    assert d.next_attempt_at == pytest.approx(when, abs=0.5)
    assert await store.claim("crm", 10, LEASE) == []
    due_in = await store.due_in("crm")
    assert due_in is not None
    assert 58 < due_in <= 60


async def test_a_delivery_keeps_the_error_that_killed_it_and_why_it_was_given_up(
    store: Store,
) -> None:
    dead = DeliveryState.DEAD
    gave_up = "gave up after 5 attempts"
    # (attempt, decision, last_error, dead_reason)
    cases = [
        (attempt(500, response_head=b"upstream\r\nconnect error"), Decision(dead, reason=gave_up),
         "HTTP 500: upstream connect error", gave_up),
        (attempt(500, response_head=b"x" * 300), Decision(dead, reason=gave_up),
         "HTTP 500: " + "x" * 200 + "...", gave_up),
        (attempt(410, response_head=b""), Decision(dead, reason="permanent failure: HTTP 410"),
         "HTTP 410", "permanent failure: HTTP 410"),
        (attempt(None, error="connection refused"), Decision(dead), "connection refused", None),
        (attempt(None, outcome=AttemptOutcome.TIMEOUT), Decision(dead), None, None),
        (attempt(None, error="timed out after 2s"), Decision(dead, reason="too old"),
         "timed out after 2s", "too old"),
        (attempt(502, error="bad gateway"), retry_at(0.0), "bad gateway", None),
        (attempt(200), DELIVERED, None, None),
    ]  # fmt: skip
    made = [await ingest_one(store, "crm") for _ in cases]
    claimed = {c.event_id: c for c in await claim_all(store, "crm")}
    for event_id, (result, decision, error, reason) in zip(made, cases, strict=True):
        assert error == recorded_error(result, decision)  # the rule, applied by every backend
        assert await store.complete(claimed[event_id], result, decision)
        d = await delivery_of(store, event_id)
        assert (d.state, d.last_status, d.last_error, d.dead_reason) == (
            decision.state, result.status, error, reason,
        )  # fmt: skip


async def test_an_attempt_that_outlived_its_lease_is_recorded_but_decides_nothing(
    store: Store,
) -> None:
    event_id = await ingest_one(store, "crm")
    (stale,) = await store.claim("crm", 10, SHORT)
    current = await reclaimed(store, "crm")
    assert not await store.complete(stale, attempt(200), DELIVERED)
    d = await delivery_of(store, event_id)
    assert (d.state, d.attempts, d.delivered_at) == (DeliveryState.DELIVERING, 2, None)
    assert [a.number for a in d.attempt_log] == [1]
    # The attempt holding the lease decides.
    assert await store.complete(current, attempt(503), retry_at(await store.now() + 60))
    d = await delivery_of(store, event_id)
    assert (d.state, d.last_status) == (DeliveryState.PENDING, 503)
    assert sorted(a.number for a in d.attempt_log) == [1, 2]


# -- due times, clock, liveness --------------------------------------------------------------


async def test_due_in_says_when_the_next_delivery_falls_due(store: Store) -> None:
    assert await store.due_in("crm") is None
    await ingest_one(store, "crm")
    due_now = await store.due_in("crm")
    assert due_now is not None
    assert due_now <= 0
    (claimed,) = await store.claim("crm", 10, 30.0)
    leased = await store.due_in("crm")  # a lease that runs out makes it due again
    assert leased is not None
    assert 28 < leased <= 30
    assert await store.complete(claimed, attempt(503), retry_at(await store.now() + 10))
    retry = await store.due_in("crm")
    assert retry is not None
    assert 8 < retry <= 10
    assert await store.due_in("dw") is None


async def test_due_in_is_none_while_the_destination_is_paused(store: Store) -> None:
    await ingest_one(store, "crm")
    await ingest_one(store, "crm")
    await store.claim("crm", 1, LEASE)
    await store.pause_destination("crm")
    assert await store.due_in("crm") is None
    await store.resume_destination("crm")
    due = await store.due_in("crm")
    assert due is not None
    assert due <= 0


async def test_now_is_the_store_clock(store: Store, backend: Backend) -> None:
    before = await backend.reference_clock()
    now = await store.now()
    after = await backend.reference_clock()
    assert before - 0.01 <= now <= after + 0.01


async def test_ping_proves_the_store_writable_and_a_closed_store_refuses(
    store: Store, backend: Backend
) -> None:
    await store.ping()
    await backend.close(store)
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.ingest(raw_request(), [new_event("crm")])


# -- counts ----------------------------------------------------------------------------------


async def test_destination_stats_count_unfinished_deliveries_by_state(store: Store) -> None:
    oldest = await ingest_one(store, "crm")
    for _ in range(4):
        await ingest_one(store, "crm", "dw")
    await ingest_one(store, "archive")
    claimed = await store.claim("crm", 3, LEASE)  # the three oldest
    assert await store.complete(claimed[0], attempt(200), DELIVERED)
    assert await store.complete(claimed[1], attempt(410), Decision(DeliveryState.DEAD))
    for d in await claim_all(store, "archive"):
        assert await store.complete(d, attempt(200), DELIVERED)
    await store.pause_destination("dw")
    stats = {s.destination: s for s in await store.destination_stats()}
    crm = stats["crm"]
    assert (crm.pending, crm.delivering, crm.paused, crm.dead) == (2, 1, 0, 1)
    dw = stats["dw"]
    assert (dw.pending, dw.delivering, dw.paused, dw.dead) == (0, 0, 4, 0)
    assert dw.oldest_pending_at is None
    # The oldest waiting delivery, for the "oldest pending" gauge.
    pending = [await delivery_of(store, d.event_id) for d in await claim_all(store, "crm")]
    assert oldest not in {d.event_id for d in pending}
    assert crm.oldest_pending_at == min(d.created_at for d in pending)
    if "archive" in stats:  # delivered deliveries are not counted
        a = stats["archive"]
        assert (a.pending, a.delivering, a.paused, a.dead) == (0, 0, 0, 0)
