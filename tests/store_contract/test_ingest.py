"""Ingest: the store names events, orders them by commit, keeps duplicates without sending them
twice, and starts deliveries in the state their destination is in."""

from __future__ import annotations

import asyncio

from relay.model import DeliveryState, EventFilter, IngestResult
from relay.store import Store
from tests.store_contract.backends import Backend
from tests.store_contract.kit import (
    SHORT,
    all_events,
    claim_all,
    ids,
    ingest_one,
    new_event,
    raw_request,
)
from tests.support import wait_until


async def seq_of(store: Store, event_id: str) -> int:
    detail = await store.get_event(event_id)
    assert detail is not None
    return detail.event.seq


async def test_the_store_names_events_and_places_them_in_commit_order(store: Store) -> None:
    first = await store.ingest(raw_request(), [new_event("crm"), new_event("crm", type="profile")])
    second = await store.ingest(raw_request(), [new_event("crm")])
    made = [*first.event_ids, *second.event_ids]
    assert len(set(made)) == 3
    assert all(made)
    positions = [await seq_of(store, event_id) for event_id in made]
    assert positions == sorted(set(positions))
    assert ids(await all_events(store)) == made[::-1]


async def test_concurrent_ingests_get_distinct_ids_and_positions(store: Store) -> None:
    results = await asyncio.gather(
        *(store.ingest(raw_request(), [new_event("crm"), new_event("dw")]) for _ in range(20))
    )
    made = [event_id for r in results for event_id in r.event_ids]
    assert len(set(made)) == 40
    positions = {event_id: await seq_of(store, event_id) for event_id in made}
    assert len(set(positions.values())) == 40
    for r in results:  # a request's events keep their order
        assert positions[r.event_ids[0]] < positions[r.event_ids[1]]
    assert sorted(ids(await all_events(store))) == sorted(made)


async def test_a_request_without_events_is_stored_and_makes_nothing(store: Store) -> None:
    assert await store.ingest(raw_request(b""), ()) == IngestResult((), {})
    assert await store.count_events(EventFilter()) == 0
    assert await store.destination_stats() == []
    assert await store.claim("crm", 10, 60.0) == []


async def test_every_destination_of_an_event_gets_one_pending_delivery(store: Store) -> None:
    event_id = await ingest_one(store, "crm", "dw")
    detail = await store.get_event(event_id)
    assert detail is not None
    assert {(d.destination, d.state, d.attempts) for d in detail.deliveries} == {
        ("crm", DeliveryState.PENDING, 0),
        ("dw", DeliveryState.PENDING, 0),
    }


async def test_a_repeated_key_within_the_window_is_a_duplicate_of_the_original(
    store: Store,
) -> None:
    original = await ingest_one(store, "crm", dedup_key="k1")
    again = await store.ingest(raw_request(), [new_event("crm", dedup_key="k1")])
    (repeat,) = again.event_ids
    assert repeat != original
    assert again.duplicates == {repeat: original}
    # A third repeat is a duplicate of the original too, not of the second.
    third = await store.ingest(raw_request(), [new_event("crm", dedup_key="k1")])
    assert third.duplicates == {third.event_ids[0]: original}

    kept = await store.get_event(repeat)
    assert kept is not None
    assert kept.event.duplicate_of == original
    assert kept.deliveries == ()
    first = await store.get_event(original)
    assert first is not None
    assert first.event.duplicate_of is None
    assert [c.event_id for c in await claim_all(store, "crm")] == [original]


async def test_events_with_other_keys_or_no_key_are_never_duplicates(store: Store) -> None:
    result = await store.ingest(
        raw_request(),
        [new_event("crm", dedup_key="a"), new_event("crm", dedup_key="b"), new_event("crm")],
    )
    again = await store.ingest(raw_request(), [new_event("crm"), new_event("crm", dedup_key="c")])
    assert result.duplicates == {}
    assert again.duplicates == {}
    assert len(await claim_all(store, "crm")) == 5


async def test_a_repeat_after_the_window_is_a_new_original(backend: Backend) -> None:
    store = await backend.open(dedup_window=SHORT)
    first = await ingest_one(store, "crm", dedup_key="k")
    stored_by = await store.now()

    async def window_passed() -> bool:
        return await store.now() > stored_by + SHORT

    await wait_until(window_passed, timeout=5, what="the dedup window to pass")
    later = await store.ingest(raw_request(), [new_event("crm", dedup_key="k")])
    assert later.duplicates == {}
    # The new original opens a window of its own.
    repeat = await store.ingest(raw_request(), [new_event("crm", dedup_key="k")])
    assert repeat.duplicates == {repeat.event_ids[0]: later.event_ids[0]}
    assert {c.event_id for c in await claim_all(store, "crm")} == {first, later.event_ids[0]}


async def test_a_window_of_zero_keeps_no_duplicates(backend: Backend) -> None:
    store = await backend.open(dedup_window=0.0)
    await ingest_one(store, "crm", dedup_key="k")
    again = await store.ingest(raw_request(), [new_event("crm", dedup_key="k")])
    assert again.duplicates == {}
    assert len(await claim_all(store, "crm")) == 2


async def test_repeats_within_one_request_are_duplicates_of_its_first(store: Store) -> None:
    result = await store.ingest(
        raw_request(),
        [
            new_event("crm", dedup_key="k"),
            new_event("crm", dedup_key="other"),
            new_event("crm", dedup_key="k"),
            new_event("crm", dedup_key="k"),
        ],
    )
    first, other, second, third = result.event_ids
    assert result.duplicates == {second: first, third: first}
    assert {c.event_id for c in await claim_all(store, "crm")} == {first, other}


async def test_concurrent_ingests_of_one_key_keep_exactly_one_original(store: Store) -> None:
    results = await asyncio.gather(
        *(store.ingest(raw_request(), [new_event("crm", dedup_key="k")]) for _ in range(12))
    )
    originals = [r.event_ids[0] for r in results if not r.duplicates]
    assert len(originals) == 1
    for r in results:
        if r.duplicates:
            assert r.duplicates == {r.event_ids[0]: originals[0]}
    assert [c.event_id for c in await claim_all(store, "crm")] == originals


async def test_deliveries_to_a_paused_destination_start_paused(store: Store) -> None:
    await store.pause_destination("crm")
    event_id = await ingest_one(store, "crm", "dw")
    detail = await store.get_event(event_id)
    assert detail is not None
    states = {d.destination: d.state for d in detail.deliveries}
    assert states == {"crm": DeliveryState.PAUSED, "dw": DeliveryState.PENDING}
    assert await store.claim("crm", 10, 60.0) == []
    assert [c.event_id for c in await store.claim("dw", 10, 60.0)] == [event_id]


async def test_text_with_nul_characters_is_stored_not_refused(store: Store) -> None:
    # Form-decoded fields can carry %00; refusing them would answer 503 to that webhook forever.
    request = raw_request(
        b"type=sub\x00scribe&data[email]=a%00b", query="q=\x00", headers=(("X-Odd", "a\x00b"),)
    )
    result = await store.ingest(
        request, [new_event("crm", type="sub\x00", email="a\x00b@example.com", list_id="l\x00")]
    )
    detail = await store.get_event(result.event_ids[0])
    assert detail is not None
    assert detail.request.body == request.body
    (delivery,) = await store.claim("crm", 10, 60.0)
    assert delivery.body == request.body
