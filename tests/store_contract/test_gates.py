"""Rate limits and circuit breakers in the store: the bucket and the circuit are moved in the
claiming and completing transactions, and shared by every store on one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relay.config import BreakerPolicy, RateLimit
from relay.model import ClaimedDelivery, Decision, DeliveryState
from relay.store import Signal, SignalKind, Store
from relay.store.gate import CircuitEvent, Completion, Gate
from tests.store_contract.backends import Backend
from tests.store_contract.kit import DELIVERED, LEASE, attempt, new_event, raw_request
from tests.support import wait_until

LIMITED = Gate(rate_limit=RateLimit(rate=10.0, burst=3.0))
# A probe interval long enough that no test sees a second one come due by itself.
BREAKER = Gate(breaker=BreakerPolicy(failures=2, probe_interval=0.3, max_probe_interval=60.0))
REFUSED = attempt(None, error="cannot connect: Connection refused")
GIVE_UP = Decision(DeliveryState.DEAD, reason="gave up after 1 attempts")


async def ingest(store: Store, n: int, destination: str = "crm") -> None:
    await store.ingest(raw_request(), [new_event(destination) for _ in range(n)])


async def states(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in await store.destination_stats():
        for state in ("pending", "delivering", "dead"):
            counts[state] = counts.get(state, 0) + getattr(s, state)
    return counts


async def fail_all(
    store: Store, claimed: Sequence[ClaimedDelivery], gate: Gate
) -> list[Completion]:
    return [await store.complete_gated(d, REFUSED, GIVE_UP, gate) for d in claimed]


async def test_a_rate_limited_claim_takes_a_burst_then_says_when_the_next_tokens_come(
    store: Store,
) -> None:
    await ingest(store, 20)
    first = await store.claim_gated("crm", 10, LEASE, LIMITED)
    assert len(first.deliveries) == 3  # the burst
    assert first.wait is not None and 0.2 < first.wait <= 0.31  # until the bucket holds 3
    second = await store.claim_gated("crm", 10, LEASE, LIMITED)
    assert second.deliveries == [] and second.wait is not None and second.wait > 0
    await asyncio.sleep(first.wait)
    third = await store.claim_gated("crm", 10, LEASE, LIMITED)
    assert len(third.deliveries) >= 2


async def test_a_claim_that_finds_less_due_than_its_tokens_is_not_told_to_wait(
    store: Store,
) -> None:
    await ingest(store, 2)
    claim = await store.claim_gated("crm", 10, LEASE, LIMITED)
    assert (len(claim.deliveries), claim.wait) == (2, None)


async def test_stores_sharing_a_database_share_one_bucket(backend: Backend) -> None:
    store, other = await backend.open(), await backend.open()
    await ingest(store, 20)
    took = [
        len((await s.claim_gated("crm", 10, LEASE, LIMITED)).deliveries)
        for s in (store, other, store, other)
    ]
    assert sum(took) <= 4  # a burst of 3, and at most one token refilled meanwhile


async def test_down_signals_open_the_circuit_then_one_probe_at_a_time_uncharged(
    store: Store,
) -> None:
    heard: list[Signal] = []
    store.signals.subscribe(heard.append)
    await ingest(store, 5)
    claimed = (await store.claim_gated("crm", 2, LEASE, BREAKER)).deliveries
    done = await fail_all(store, claimed, BREAKER)
    opened = done[-1]
    assert opened.change is not None and opened.change.event is CircuitEvent.OPENED
    assert Signal(SignalKind.CIRCUIT, "crm") in heard
    # The attempt that opened it is not charged: its delivery waits instead of dying.
    assert opened.decision.state is DeliveryState.PENDING and not opened.charged
    assert done[0].decision.state is DeliveryState.DEAD
    gates = await store.gate_states()
    assert gates["crm"].open and gates["crm"].failures == 2

    held = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert held.deliveries == [] and held.wait is not None and held.wait <= 0.3
    await asyncio.sleep(held.wait)
    probe = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert [d.probe for d in probe.deliveries] == [True]
    # Nothing more while the probe is out.
    assert (await store.claim_gated("crm", 10, LEASE, BREAKER)).deliveries == []

    (failed,) = await fail_all(store, probe.deliveries, BREAKER)
    assert failed.decision.state is DeliveryState.PENDING and not failed.charged
    state = (await store.gate_states())["crm"]
    assert state.probe_interval == 0.6 and state.probe_id is None  # doubled

    await wait_until(lambda: time.time() >= (state.probe_at or 0), timeout=5)
    (again,) = (await store.claim_gated("crm", 10, LEASE, BREAKER)).deliveries
    assert again.probe
    if again.id == probe.deliveries[0].id:
        assert again.held_attempts == 1 and again.charged_attempt == 1
    closed = await store.complete_gated(again, attempt(200), DELIVERED, BREAKER)
    assert closed.change is not None and closed.change.event is CircuitEvent.CLOSED
    assert closed.change.reason == "the probe got HTTP 200"
    assert not (await store.gate_states())["crm"].open
    rest = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert len(rest.deliveries) == 3 and not any(d.probe for d in rest.deliveries)
    assert (await states(store))["dead"] == 1  # only the one given up before the circuit opened


async def test_a_4xx_answer_keeps_the_circuit_closed_and_starts_the_count_again(
    store: Store,
) -> None:
    await ingest(store, 6)
    claimed = (await store.claim_gated("crm", 6, LEASE, BREAKER)).deliveries
    answers = [None, 400, None, 400, None, 500]
    for d, status in zip(claimed, answers, strict=True):
        decision = GIVE_UP if status != 400 else Decision(DeliveryState.DEAD, reason="HTTP 400")
        done = await store.complete_gated(d, attempt(status), decision, BREAKER)
        assert done.change is None and done.charged
    state = (await store.gate_states())["crm"]
    assert not state.open and state.failures == 0


async def test_reset_closes_an_open_circuit_for_every_store(backend: Backend) -> None:
    store, other = await backend.open(), await backend.open()
    await ingest(store, 3)
    await fail_all(store, (await store.claim_gated("crm", 2, LEASE, BREAKER)).deliveries, BREAKER)
    assert (await other.gate_states())["crm"].open
    change = await other.reset_circuit("crm")
    assert change is not None and change.reason == "reset by an operator"
    assert await other.reset_circuit("crm") is None  # not open any more
    claim = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert len(claim.deliveries) == 2 and not any(d.probe for d in claim.deliveries)


async def test_pause_wins_over_an_open_circuit_no_probe_while_paused(store: Store) -> None:
    await ingest(store, 3)
    await fail_all(store, (await store.claim_gated("crm", 2, LEASE, BREAKER)).deliveries, BREAKER)
    await store.pause_destination("crm")
    await asyncio.sleep(0.35)  # the probe would be due now
    paused = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert (paused.deliveries, paused.wait) == ([], None)
    await store.resume_destination("crm")
    probe = await store.claim_gated("crm", 10, LEASE, BREAKER)
    assert [d.probe for d in probe.deliveries] == [True]


async def test_a_delivery_held_past_max_age_dies_at_its_claim_without_an_attempt(
    store: Store,
) -> None:
    gate = Gate(rate_limit=RateLimit(rate=100.0, burst=10.0), max_age=0.2)
    await ingest(store, 4)
    await asyncio.sleep(0.25)
    await ingest(store, 1)
    claim = await store.claim_gated("crm", 10, LEASE, gate)
    assert len(claim.deliveries) == 1 and claim.deliveries[0].attempt == 1
    assert (await states(store))["dead"] == 4
    page = await store.list_deliveries(DeliveryState.DEAD, "crm", 10)
    assert {d.delivery.last_error for d in page.deliveries} == {
        "max_age 0.2s reached before it could be sent"
    }
    assert {d.delivery.attempts for d in page.deliveries} == {0}


async def test_an_ungated_claim_is_not_limited(store: Store) -> None:
    await ingest(store, 20)
    assert len(await store.claim("crm", 20, LEASE)) == 20
    assert await store.gate_states() == {}
