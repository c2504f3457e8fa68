"""Pause and resume, named leases, and retention: what operators and background jobs change."""

from __future__ import annotations

from relay.model import Decision, DeliveryState, PruneResult
from relay.store import Store
from tests.store_contract.backends import TABLES, Backend
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    SHORT,
    attempt,
    claim_all,
    deliver_all,
    ingest_one,
    new_event,
    raw_request,
    retry_at,
)
from tests.support import wait_until

# -- pause and resume ----------------------------------------------------------------------


async def test_pause_holds_waiting_deliveries_and_resume_releases_them(store: Store) -> None:
    for _ in range(3):
        await ingest_one(store, "crm", "dw")
    (in_flight,) = await store.claim("crm", 1, LEASE)
    assert await store.pause_destination("crm") == 2
    assert await store.paused_destinations() == {"crm"}
    assert await store.pause_destination("crm") == 0  # already held
    stats = {s.destination: s for s in await store.destination_stats()}
    assert (stats["crm"].pending, stats["crm"].paused, stats["crm"].delivering) == (0, 2, 1)
    assert stats["dw"].pending == 3
    # The one in flight finishes its attempt.
    assert await store.complete(in_flight, attempt(200), DELIVERED)

    assert await store.resume_destination("crm") == 2
    assert await store.paused_destinations() == frozenset()
    assert await store.resume_destination("crm") == 0
    assert len(await claim_all(store, "crm")) == 2


async def test_a_destination_with_nothing_waiting_can_be_paused(store: Store) -> None:
    assert await store.pause_destination("quiet") == 0
    assert await store.paused_destinations() == {"quiet"}
    assert await store.resume_destination("quiet") == 0
    assert await store.paused_destinations() == frozenset()


async def test_resume_makes_held_deliveries_due_now_in_their_old_order(store: Store) -> None:
    made = [await ingest_one(store, "crm") for _ in range(4)]
    now = await store.now()
    due_at = {made[0]: now - 2, made[1]: now - 4, made[2]: now - 1, made[3]: now + 3600}
    for d in await claim_all(store, "crm"):
        assert await store.complete(d, attempt(503), retry_at(due_at[d.event_id]))
    assert await store.pause_destination("crm") == 4
    assert await store.resume_destination("crm") == 4
    due = await store.due_in("crm")
    assert due is not None
    assert due <= 0
    # The retry that waited an hour is due now too, after those that were due before.
    one_at_a_time = [(await store.claim("crm", 1, LEASE))[0].event_id for _ in made]
    assert one_at_a_time == [made[1], made[0], made[2], made[3]]


# -- named leases ----------------------------------------------------------------------------


async def test_a_named_lease_is_held_by_one_owner_until_it_runs_out(store: Store) -> None:
    assert await store.try_lease("retention", "a", SHORT)
    assert await store.try_lease("retention", "a", SHORT)  # renewed
    assert not await store.try_lease("retention", "b", SHORT)
    assert await store.try_lease("other-job", "b", SHORT)  # names are independent

    async def b_takes_it() -> bool:
        return await store.try_lease("retention", "b", LEASE)

    await wait_until(b_takes_it, timeout=5, what="a's lease to run out")
    assert not await store.try_lease("retention", "a", LEASE)


# -- retention -------------------------------------------------------------------------------


async def test_prune_deletes_finished_events_with_everything_they_own(
    store: Store, backend: Backend
) -> None:
    two = await store.ingest(raw_request(), [new_event("crm", dedup_key="k1"), new_event("dw")])
    dead = await ingest_one(store, "crm", dedup_key="k2")
    duplicate = await store.ingest(raw_request(), [new_event("crm", dedup_key="k1")])
    assert duplicate.duplicates
    no_deliveries = await ingest_one(store)
    for d in await claim_all(store, "crm"):
        decision = Decision(DeliveryState.DEAD) if d.event_id == dead else DELIVERED
        assert await store.complete(d, attempt(410 if d.event_id == dead else 200), decision)
    await deliver_all(store, "dw")

    result = await store.prune(0.0)
    assert result == PruneResult(deleted_events=5, deleted_requests=4)
    gone = [*two.event_ids, dead, *duplicate.event_ids, no_deliveries]
    for event_id in gone:
        assert await store.get_event(event_id) is None
    assert await backend.table_counts() == dict.fromkeys(TABLES, 0)
    assert await store.destination_stats() == []
    # Its dedup entry went with the original: a repeat now is a new original.
    again = await store.ingest(raw_request(), [new_event("crm", dedup_key="k1")])
    assert again.duplicates == {}
    assert await store.prune(0.0) == PruneResult()


async def test_prune_keeps_events_with_unfinished_deliveries_and_their_requests(
    store: Store,
) -> None:
    pending = await ingest_one(store, "crm")
    delivering = await ingest_one(store, "dw")
    paused = await ingest_one(store, "archive")
    mixed = await store.ingest(raw_request(), [new_event("crm"), new_event("dw")])
    await store.claim("dw", 10, LEASE)
    await store.pause_destination("archive")
    # Only the first event of the mixed request finishes.
    crm = {c.event_id: c for c in await claim_all(store, "crm")}
    assert await store.complete(crm[mixed.event_ids[0]], attempt(200), DELIVERED)
    assert await store.complete(crm[pending], attempt(503), retry_at(0.0))

    result = await store.prune(0.0)
    assert result == PruneResult(deleted_events=1, deleted_requests=0)
    assert await store.get_event(mixed.event_ids[0]) is None
    for event_id in (pending, delivering, paused, mixed.event_ids[1]):
        detail = await store.get_event(event_id)
        assert detail is not None, event_id
        assert detail.request.body  # its request stays with it


async def test_prune_keeps_events_younger_than_the_age(store: Store) -> None:
    old = await ingest_one(store, "crm")
    old_at = await store.now()

    async def later() -> bool:
        return await store.now() > old_at + 0.3

    await wait_until(later, timeout=5, what="the store clock to move on")
    young = await ingest_one(store, "crm")
    await deliver_all(store, "crm")
    young_detail = await store.get_event(young)
    assert young_detail is not None
    young_at = young_detail.event.received_at
    # An age that reaches back to between the two.
    age = await store.now() - (old_at + young_at) / 2
    assert await store.prune(age) == PruneResult(deleted_events=1, deleted_requests=1)
    assert await store.get_event(old) is None
    assert await store.get_event(young) is not None
    assert await store.prune(3600.0) == PruneResult()


async def test_prune_works_through_batches_around_the_events_it_keeps(store: Store) -> None:
    made = [await ingest_one(store, "crm") for _ in range(11)]
    keep = {made[1], made[4], made[5], made[9]}
    for d in await claim_all(store, "crm"):
        decision = retry_at(0.0) if d.event_id in keep else DELIVERED
        assert await store.complete(d, attempt(200), decision)
    result = await store.prune(0.0, batch=2)
    assert result == PruneResult(deleted_events=7, deleted_requests=7)
    for event_id in made:
        assert (await store.get_event(event_id) is not None) == (event_id in keep)
    # The next prune (e.g. after they finish) carries on from the start.
    await deliver_all(store, "crm")
    assert await store.prune(0.0, batch=3) == PruneResult(deleted_events=4, deleted_requests=4)
