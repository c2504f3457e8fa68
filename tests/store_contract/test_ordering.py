"""Ordered delivery per subscriber (destination ordering = "subscriber"): of one subscriber's
deliveries only the earliest unfinished one is ever claimed; every other subscriber's flow."""

from __future__ import annotations

import time

from relay.model import (
    ClaimedDelivery,
    Decision,
    DeliveryFilter,
    DeliveryState,
    EventFilter,
    NewReplay,
)
from relay.store import Store
from tests.store_contract.backends import Backend
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    SHORT,
    attempt,
    claim_all,
    new_event,
    raw_request,
    retry_at,
)
from tests.support import wait_until

DEAD = Decision(DeliveryState.DEAD, reason="gave up after 3 attempts")


async def send(
    store: Store, email: str | None, *, list_id: str = "L1", n: int = 1, type: str = "subscribe"
) -> list[str]:
    """One request with ``n`` events of one subscriber, to the ordered destination crm."""
    result = await store.ingest(
        raw_request(),
        [
            new_event("crm", list_id=list_id, email=email, type=type, ordered=("crm",))
            for _ in range(n)
        ],
    )
    return list(result.event_ids)


def events(claimed: list[ClaimedDelivery]) -> list[str]:
    return [d.event_id for d in claimed]


async def test_only_the_earliest_of_a_subscribers_deliveries_is_claimed(store: Store) -> None:
    ann = await send(store, "ann@example.com", n=2) + await send(store, "ANN@example.com")
    bob = await send(store, "bob@example.com")
    nobody = await send(store, None, n=2)  # no email: no queue, never held back
    other_list = await send(store, "ann@example.com", list_id="L2")

    first = await claim_all(store, "crm")
    assert sorted(events(first)) == sorted([ann[0], bob[0], *nobody, other_list[0]])
    assert all(d.order_key is not None for d in first if d.event_id not in nobody)
    for delivery in first:
        assert await store.complete(delivery, attempt(), DELIVERED)
    assert events(await claim_all(store, "crm")) == [ann[1]]


async def test_a_retrying_delivery_holds_back_its_subscribers_later_ones(store: Store) -> None:
    ann = await send(store, "ann@example.com")
    bob = await send(store, "bob@example.com")
    ann += await send(store, "ann@example.com") + await send(store, "ann@example.com")
    bob += await send(store, "bob@example.com")

    by_event = {d.event_id: d for d in await claim_all(store, "crm")}
    assert set(by_event) == {ann[0], bob[0]}
    # Ann's first fails and is due again at once; Bob's goes through.
    assert await store.complete(by_event[ann[0]], attempt(503), retry_at(time.time()))
    assert await store.complete(by_event[bob[0]], attempt(), DELIVERED)
    again = await claim_all(store, "crm")
    assert sorted(events(again)) == sorted([ann[0], bob[1]])
    for d in again:
        assert await store.complete(d, attempt(), DELIVERED)
    sent = []
    while claimed := await claim_all(store, "crm"):
        assert len(claimed) == 1  # one at a time
        sent += events(claimed)
        assert await store.complete(claimed[0], attempt(), DELIVERED)
    assert sent == ann[1:]


async def test_a_dead_head_lets_the_next_go_which_says_so(store: Store) -> None:
    first, second = await send(store, "ann@example.com", n=2)
    (head,) = await claim_all(store, "crm")
    assert head.event_id == first
    assert await store.complete(head, attempt(500), DEAD)

    (nxt,) = await claim_all(store, "crm")
    assert nxt.event_id == second
    detail = await store.get_event(second)
    assert detail is not None
    assert detail.deliveries[0].after_dead == head.id
    before = await store.get_event(first)
    assert before is not None and before.deliveries[0].after_dead is None


async def test_a_delivered_head_lets_the_next_go_without_a_dead_mark(store: Store) -> None:
    _, second = await send(store, "ann@example.com", n=2)
    (head,) = await claim_all(store, "crm")
    assert await store.complete(head, attempt(), DELIVERED)
    (nxt,) = await claim_all(store, "crm")
    assert nxt.event_id == second
    detail = await store.get_event(second)
    assert detail is not None and detail.deliveries[0].after_dead is None


async def test_a_replay_queues_behind_what_the_subscriber_has(store: Store) -> None:
    old, live = await send(store, "ann@example.com", n=2)
    (head,) = await claim_all(store, "crm")
    assert head.event_id == old
    replay_id = await store.start_replay(NewReplay("op", "{}", ("crm",), 1))
    (made,) = await store.add_replay_deliveries(
        replay_id, [(old, "crm")], 1, ordered=frozenset({"crm"})
    )
    assert made.state is DeliveryState.PENDING
    order = []
    assert await store.complete(head, attempt(), DELIVERED)
    while claimed := await claim_all(store, "crm"):
        assert len(claimed) == 1
        order.append((claimed[0].event_id, claimed[0].replay))
        assert await store.complete(claimed[0], attempt(), DELIVERED)
    assert order == [(live, False), (old, True)]


async def test_a_replay_to_a_subscriber_with_nothing_queued_is_due_at_once(store: Store) -> None:
    (old,) = await send(store, "ann@example.com")
    (head,) = await claim_all(store, "crm")
    assert await store.complete(head, attempt(), DELIVERED)
    replay_id = await store.start_replay(NewReplay("op", "{}", ("crm",), 1))
    await store.add_replay_deliveries(replay_id, [(old, "crm")], 1, ordered=frozenset({"crm"}))
    (again,) = await claim_all(store, "crm")
    assert (again.event_id, again.replay) == (old, True)


async def test_pause_and_resume_keep_the_waiting_ones_waiting(store: Store) -> None:
    first, second, _ = await send(store, "ann@example.com", n=3)
    await store.pause_destination("crm")
    assert await store.resume_destination("crm") == 3
    (head,) = await claim_all(store, "crm")
    assert head.event_id == first
    # Paused while the head is in flight: it finishes, and the next is released but held.
    await store.pause_destination("crm")
    assert await store.complete(head, attempt(), DELIVERED)
    assert await claim_all(store, "crm") == []
    await store.resume_destination("crm")
    assert events(await claim_all(store, "crm")) == [second]


async def test_retry_now_leaves_a_waiting_delivery_waiting(store: Store) -> None:
    first, second = await send(store, "ann@example.com", n=2)
    detail = await store.get_event(second)
    assert detail is not None
    waiting = detail.deliveries[0]
    assert (waiting.state, waiting.next_attempt_at) == (DeliveryState.PENDING, None)
    assert not await store.retry_delivery(waiting.id)
    assert events(await claim_all(store, "crm")) == [first]


async def test_discarding_the_head_lets_the_next_go(store: Store) -> None:
    await send(store, "ann@example.com", type="profile")
    (second,) = await send(store, "ann@example.com")
    (head,) = await claim_all(store, "crm")
    assert await store.complete(head, attempt(503), retry_at(time.time() + 3600))
    discarded = await store.discard(
        DeliveryFilter(destination="crm", event=EventFilter(type="profile"))
    )
    assert discarded == {"crm": 1}
    assert events(await claim_all(store, "crm")) == [second]


async def test_a_head_whose_lease_ran_out_is_claimed_again_before_the_next(store: Store) -> None:
    first, second = await send(store, "ann@example.com", n=2)
    (head,) = await store.claim("crm", 10, SHORT)  # its process dies mid-send
    got: list[ClaimedDelivery] = []

    async def reclaimed() -> bool:
        got.extend(await store.claim("crm", 10, LEASE))
        return bool(got)

    await wait_until(reclaimed, timeout=5, what="the head again after its lease")
    assert [(d.event_id, d.attempt) for d in got] == [(first, 2)]
    assert not await store.complete(head, attempt(), DELIVERED)  # the dead process's attempt
    assert await store.complete(got[0], attempt(), DELIVERED)
    assert events(await claim_all(store, "crm")) == [second]


async def test_an_unordered_destination_is_not_held_back(store: Store) -> None:
    for _ in range(3):
        await store.ingest(raw_request(), [new_event("dw", email="ann@example.com")])
    claimed = await claim_all(store, "dw")
    assert len(claimed) == 3 and all(d.order_key is None for d in claimed)


async def test_queues_survive_a_restart(backend: Backend) -> None:
    store = await backend.open()
    first, second = await send(store, "ann@example.com", n=2)
    await store.claim("crm", 10, SHORT)
    await backend.close(store)  # a kill: the claim's lease is left to run out
    store = await backend.open()
    got: list[ClaimedDelivery] = []

    async def reclaimed() -> bool:
        got.extend(await store.claim("crm", 10, LEASE))
        return bool(got)

    await wait_until(reclaimed, timeout=5, what="the head after a restart")
    assert events(got) == [first]
    assert await store.complete(got[0], attempt(), DELIVERED)
    assert events(await claim_all(store, "crm")) == [second]
