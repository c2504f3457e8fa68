"""Replays as jobs any process can run: start, claim, renew, feed with the owner fence, release,
finish, and the progress they report."""

from __future__ import annotations

import pytest

from relay.model import (
    DeliveryState,
    EventFilter,
    NewReplay,
    ReplayState,
)
from relay.store import Store, StoreError
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    SHORT,
    attempt,
    claim_all,
    deliver_all,
    ingest_one,
)
from tests.support import wait_until

EVERY_FIELD = EventFilter(
    inbound="audience-user", type="subscribe", source="user", list_id="L1", email="ann@x.org",
    state=DeliveryState.DEAD, destination="crm", since=1_700_000_000.25, until=1_700_086_400.5,
    originals_only=True,
)  # fmt: skip


EVERYTHING = EventFilter()


def replay(
    where: EventFilter = EVERYTHING, destinations: tuple[str, ...] = ("crm",), total: int = 3
) -> NewReplay:
    return NewReplay(
        requested_by="admin-token:abcd",
        filter='{"type":"subscribe"}',
        destinations=destinations,
        total=total,
        where=where,
    )


async def taken(store: Store, owner: str) -> int:
    """Poll until ``owner`` claims a replay (another's lease ran out); its id."""
    got: list[int] = []

    async def claim() -> bool:
        record = await store.claim_replay(owner, LEASE)
        if record is not None:
            got.append(record.id)
        return bool(got)

    await wait_until(claim, timeout=5, what=f"{owner} to take a replay over")
    return got[0]


async def test_a_started_replay_records_what_was_asked(store: Store) -> None:
    before = await store.now()
    replay_id = await store.start_replay(replay(EVERY_FIELD, ("crm", "dw"), total=7))
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.id, record.requested_by, record.filter) == (
        replay_id, "admin-token:abcd", '{"type":"subscribe"}',
    )  # fmt: skip
    assert (record.destinations, record.total, record.matched, record.created) == (
        ("crm", "dw"), 7, 0, 0,
    )  # fmt: skip
    assert (record.state, record.finished_at, record.cursor) == (ReplayState.RUNNING, None, None)
    assert before <= record.requested_at <= await store.now()
    assert record.where == EVERY_FIELD
    assert record.per_destination == ()
    assert await store.get_replay(replay_id + 1000) is None


@pytest.mark.parametrize(
    "where",
    [
        EventFilter(),
        EventFilter(until=0.0),  # a time like any other: "nothing before 1970", not "no end"
        EventFilter(since=0.0, originals_only=True),
        EventFilter(email="", state=DeliveryState.PENDING),
    ],
    ids=["empty", "until-zero", "since-zero", "empty-email"],
)
async def test_a_replay_keeps_its_filter_exactly(store: Store, where: EventFilter) -> None:
    replay_id = await store.start_replay(replay(where))
    record = await store.get_replay(replay_id)
    assert record is not None
    assert record.where == where
    claimed = await store.claim_replay("runner", LEASE)
    assert claimed is not None
    assert claimed.where == where


async def test_an_unowned_replay_is_claimed_by_one_runner(store: Store) -> None:
    replay_id = await store.start_replay(replay())
    record = await store.claim_replay("a", LEASE)
    assert record is not None
    assert (record.id, record.state, record.where) == (
        replay_id,
        ReplayState.RUNNING,
        EventFilter(),
    )
    assert await store.claim_replay("b", LEASE) is None
    assert await store.claim_replay("a", LEASE) is None  # held, also for its owner


async def test_a_replay_started_by_its_runner_is_taken_over_only_when_its_lease_runs_out(
    store: Store,
) -> None:
    replay_id = await store.start_replay(replay(), owner="a", lease=SHORT)
    assert await store.claim_replay("b", LEASE) is None
    assert await taken(store, "b") == replay_id
    assert not await store.renew_replay(replay_id, "a", LEASE)
    assert await store.renew_replay(replay_id, "b", LEASE)


async def test_only_running_replays_are_claimed(store: Store) -> None:
    for state in (ReplayState.DONE, ReplayState.FAILED, ReplayState.INTERRUPTED):
        await store.finish_replay(await store.start_replay(replay()), state)
    assert await store.claim_replay("a", LEASE) is None
    running = await store.start_replay(replay())
    record = await store.claim_replay("a", LEASE)
    assert record is not None
    assert record.id == running


async def test_renewing_succeeds_only_for_the_owner_of_a_running_replay(store: Store) -> None:
    replay_id = await store.start_replay(replay(), owner="a", lease=LEASE)
    assert await store.renew_replay(replay_id, "a", LEASE)
    assert not await store.renew_replay(replay_id, "b", LEASE)
    await store.finish_replay(replay_id, ReplayState.DONE)
    assert not await store.renew_replay(replay_id, "a", LEASE)


async def test_fed_deliveries_are_new_replay_deliveries_with_progress_saved(
    store: Store,
) -> None:
    first = await ingest_one(store, "crm")
    second = await ingest_one(store, "crm")
    await deliver_all(store, "crm")
    replay_id = await store.start_replay(replay(destinations=("crm", "dw")), owner="a", lease=LEASE)
    made = await store.add_replay_deliveries(
        replay_id, [(first, "crm"), (first, "dw"), (second, "crm")], 2, cursor=41, owner="a"
    )
    assert sorted((c.event_id, c.destination, c.state) for c in made) == sorted([
        (first, "crm", DeliveryState.PENDING),
        (first, "dw", DeliveryState.PENDING),
        (second, "crm", DeliveryState.PENDING),
    ])  # fmt: skip
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.matched, record.created, record.cursor) == (2, 3, 41)
    assert dict(record.per_destination) == {"crm": 2, "dw": 1}
    # Without a cursor the saved one stays.
    await store.add_replay_deliveries(replay_id, [], 0, owner="a")
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.matched, record.created, record.cursor) == (2, 3, 41)

    claimed = await claim_all(store, "crm")
    assert sorted(c.id for c in claimed) == sorted(c.id for c in made if c.destination == "crm")
    assert all(c.replay and c.attempt == 1 for c in claimed)
    detail = await store.get_event(first)
    assert detail is not None
    assert sorted((d.state, d.replay_id) for d in detail.deliveries if d.destination == "crm") == [
        (DeliveryState.DELIVERED, None),
        (DeliveryState.DELIVERING, replay_id),
    ]


async def test_a_runner_that_lost_its_replay_cannot_feed_it(store: Store) -> None:
    event_id = await ingest_one(store)
    replay_id = await store.start_replay(replay(), owner="a", lease=SHORT)
    assert await taken(store, "b") == replay_id
    with pytest.raises(StoreError):
        await store.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, cursor=9, owner="a")
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.matched, record.created, record.cursor) == (0, 0, None)
    assert await store.claim("crm", 10, LEASE) == []
    made = await store.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, cursor=9, owner="b")
    assert [c.event_id for c in made] == [event_id]


async def test_a_takeover_resumes_from_the_saved_cursor(store: Store) -> None:
    event_id = await ingest_one(store)
    replay_id = await store.start_replay(replay(EVERY_FIELD), owner="a", lease=LEASE)
    await store.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, cursor=17, owner="a")
    await store.release_replay(replay_id, "a")
    record = await store.claim_replay("b", LEASE)
    assert record is not None
    assert (record.id, record.cursor, record.where, record.matched) == (
        replay_id, 17, EVERY_FIELD, 1,
    )  # fmt: skip


async def test_feeding_a_paused_destination_makes_paused_deliveries(store: Store) -> None:
    event_id = await ingest_one(store)
    await store.pause_destination("crm")
    replay_id = await store.start_replay(replay(destinations=("crm", "dw")))
    made = await store.add_replay_deliveries(replay_id, [(event_id, "crm"), (event_id, "dw")], 1)
    assert {c.destination: c.state for c in made} == {
        "crm": DeliveryState.PAUSED,
        "dw": DeliveryState.PENDING,
    }
    assert await store.claim("crm", 10, LEASE) == []
    assert await store.resume_destination("crm") == 1
    assert [c.event_id for c in await store.claim("crm", 10, LEASE)] == [event_id]


async def test_an_event_pruned_before_it_is_fed_gets_no_delivery(store: Store) -> None:
    pruned = await ingest_one(store, "crm")
    kept = await ingest_one(store, "dw")  # pending: prune keeps it
    await deliver_all(store, "crm")
    assert (await store.prune(0.0)).deleted_events == 1
    replay_id = await store.start_replay(replay())
    made = await store.add_replay_deliveries(replay_id, [(pruned, "crm"), (kept, "crm")], 2)
    assert [(c.event_id, c.destination) for c in made] == [(kept, "crm")]
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.matched, record.created) == (2, 1)
    assert [c.event_id for c in await claim_all(store, "crm")] == [kept]


async def test_a_released_replay_is_taken_at_once_but_not_by_a_strangers_release(
    store: Store,
) -> None:
    replay_id = await store.start_replay(replay(), owner="a", lease=LEASE)
    await store.release_replay(replay_id, "stranger")
    assert await store.claim_replay("b", LEASE) is None
    await store.release_replay(replay_id, "a")
    record = await store.claim_replay("b", LEASE)
    assert record is not None
    assert record.id == replay_id
    assert not await store.renew_replay(replay_id, "a", LEASE)


@pytest.mark.parametrize("state", [ReplayState.DONE, ReplayState.FAILED, ReplayState.INTERRUPTED])
async def test_a_finished_replay_is_released_and_stays_finished(
    store: Store, state: ReplayState
) -> None:
    replay_id = await store.start_replay(replay(), owner="a", lease=LEASE)
    await store.finish_replay(replay_id, state)
    record = await store.get_replay(replay_id)
    assert record is not None
    assert record.state is state
    assert record.finished_at is not None
    assert record.finished_at <= await store.now()
    assert await store.claim_replay("b", LEASE) is None
    assert not await store.renew_replay(replay_id, "a", LEASE)
    with pytest.raises(StoreError):
        await store.add_replay_deliveries(replay_id, [], 0, owner="a")


async def test_the_backlog_counts_a_replays_waiting_and_in_flight_deliveries(
    store: Store,
) -> None:
    made = [await ingest_one(store, "crm") for _ in range(3)]
    replay_id = await store.start_replay(replay())
    mine = await store.add_replay_deliveries(replay_id, [(m, "crm") for m in made], 3)
    other = await store.start_replay(replay())
    await store.add_replay_deliveries(other, [(made[0], "crm")], 1)
    assert await store.replay_backlog(replay_id, "crm") == 3
    assert await store.replay_backlog(replay_id, "dw") == 0
    claimed = {c.id: c for c in await claim_all(store, "crm")}
    assert len(claimed) == 3 + 3 + 1
    assert await store.replay_backlog(replay_id, "crm") == 3  # in flight still counts
    for delivery in mine[:2]:
        assert await store.complete(claimed[delivery.id], attempt(200), DELIVERED)
    assert await store.replay_backlog(replay_id, "crm") == 1
    assert await store.replay_backlog(other, "crm") == 1
