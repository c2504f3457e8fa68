"""Two Store objects on one database, as two relay processes would have: the events cursor,
claims, pause, leases and replays hold across them; signals cross where the backend can."""

from __future__ import annotations

import asyncio

import pytest

from relay.model import ClaimedDelivery, DeliveryState, EventFilter, NewReplay
from relay.store import SignalKind, Store, StoreError
from tests.backends import CROSS_PROCESS_SIGNALS
from tests.store_contract.backends import Backend
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    SHORT,
    Heard,
    all_events,
    attempt,
    claim_all,
    ids,
    ingest_one,
    new_event,
    raw_request,
)
from tests.support import wait_until

WRITERS = 4  # concurrent ingests per store
EACH = 15  # requests per writer


async def write(store: Store, tag: str, n: int) -> list[str]:
    made: list[str] = []
    for i in range(n):
        result = await store.ingest(
            raw_request(), [new_event("crm", email=f"{tag}-{i}@x.org"), new_event("crm")]
        )
        made += result.event_ids
    return made


@pytest.fixture
async def pair(backend: Backend) -> tuple[Store, Store]:
    return await backend.open(), await backend.open()


async def test_paging_sees_exactly_what_was_committed_before_its_first_page(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    writers = asyncio.gather(
        *(write(s, f"{name}{w}", EACH) for s, name in ((a, "a"), (b, "b")) for w in range(WRITERS))
    )
    passes: list[tuple[list[str], int | None]] = []
    while not writers.done():
        reader = a if len(passes) % 2 else b
        seen: list[str] = []
        first_top: int | None = None
        before = None
        while True:
            page = await reader.list_events(EventFilter(), 7, before)
            if first_top is None and page.events:
                first_top = page.events[0].seq
            seen += ids(page.events)
            if page.next_cursor is None:
                break
            before = page.next_cursor
        passes.append((seen, first_top))
        await asyncio.sleep(0)
    written = [event_id for made in await writers for event_id in made]
    everything = await all_events(a)
    assert sorted(ids(everything)) == sorted(written)
    position = {e.id: e.seq for e in everything}
    assert len(passes) > 1
    for seen, top in passes:
        assert len(seen) == len(set(seen)), "an event seen twice"
        # Positions are commit order: everything at or below the first page's top had
        # committed when that page was read, so a pass misses none of it and sees nothing else.
        expected = sorted((e for e in written if top is not None and position[e] <= top),
                          key=position.__getitem__, reverse=True)  # fmt: skip
        assert seen == expected


async def test_a_tail_by_cursor_sees_every_event_written_through_either_store_once(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    writers = asyncio.gather(
        *(write(s, f"{name}{w}", EACH) for s, name in ((a, "a"), (b, "b")) for w in range(WRITERS))
    )
    seen: list[str] = []
    after = None
    while True:
        done = writers.done()
        batch = await a.replay_candidates(EventFilter(), after, 10, with_payload=False)
        seen += [c.event.id for c in batch]
        if batch:
            after = batch[-1].event.seq
        elif done:
            break
        await asyncio.sleep(0)
    written = [event_id for made in await writers for event_id in made]
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(written)


async def test_what_one_store_acknowledged_the_other_reads_at_once(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair

    async def acknowledged_then_read(n: int) -> None:
        result = await a.ingest(raw_request(), [new_event("crm", email=f"{n}@x.org")])
        # Returned means committed: another process sees it with no delay.
        detail = await b.get_event(result.event_ids[0])
        assert detail is not None
        assert detail.event.email == f"{n}@x.org"

    await asyncio.gather(*(acknowledged_then_read(n) for n in range(20)))
    (claimed,) = await b.claim("crm", 1, LEASE)
    assert await b.complete(claimed, attempt(200), DELIVERED)
    detail = await a.get_event(claimed.event_id)
    assert detail is not None
    assert detail.deliveries[0].state is DeliveryState.DELIVERED


async def test_concurrent_claims_through_two_stores_never_lease_one_delivery_twice(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    for _ in range(60):
        await a.ingest(raw_request(), [new_event("crm"), new_event("crm")])
    claims: list[ClaimedDelivery] = []

    async def claimer(store: Store) -> None:
        while batch := await store.claim("crm", 3, LEASE):
            claims.extend(batch)
            await asyncio.sleep(0)

    await asyncio.gather(*(claimer(s) for s in (a, b, a, b)))
    assert len(claims) == 120
    assert len({c.id for c in claims}) == 120


async def test_a_pause_through_one_store_stops_the_other_at_once(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    await ingest_one(b, "crm")
    assert await a.pause_destination("crm") == 1
    assert await b.claim("crm", 10, LEASE) == []
    assert await b.due_in("crm") is None
    assert await b.paused_destinations() == {"crm"}
    # What arrives through the other store meanwhile waits too.
    later = await ingest_one(b, "crm")
    detail = await b.get_event(later)
    assert detail is not None
    assert detail.deliveries[0].state is DeliveryState.PAUSED
    assert await a.resume_destination("crm") == 2
    assert len(await claim_all(b, "crm")) == 2


async def test_a_lease_taken_through_one_store_holds_in_the_other(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    await ingest_one(a, "crm")
    (stale,) = await a.claim("crm", 10, SHORT)
    assert await b.claim("crm", 10, LEASE) == []
    got: list[ClaimedDelivery] = []

    async def b_claims() -> bool:
        got.extend(await b.claim("crm", 10, LEASE))
        return bool(got)

    await wait_until(b_claims, timeout=5, what="the lease to run out")
    assert got[0].attempt == 2
    assert not await a.complete(stale, attempt(200), DELIVERED)
    assert await b.complete(got[0], attempt(200), DELIVERED)
    assert await a.try_lease("retention", "a", LEASE)
    assert not await b.try_lease("retention", "b", LEASE)


async def test_a_replay_is_taken_over_by_the_other_store_and_fences_the_first(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    event_id = await ingest_one(a)
    new = NewReplay(requested_by="admin", filter="{}", destinations=("crm",), total=1)
    replay_id = await a.start_replay(new, owner="a", lease=SHORT)
    got: list[int] = []

    async def b_takes_it() -> bool:
        record = await b.claim_replay("b", LEASE)
        if record is not None:
            got.append(record.id)
        return bool(got)

    await wait_until(b_takes_it, timeout=5, what="the replay's lease to run out")
    assert got == [replay_id]
    with pytest.raises(StoreError):
        await a.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, cursor=1, owner="a")
    made = await b.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, cursor=1, owner="b")
    assert len(made) == 1


async def test_one_key_ingested_through_two_stores_at_once_has_one_original(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    results = await asyncio.gather(
        *(s.ingest(raw_request(), [new_event("crm", dedup_key="k")]) for s in (a, b) * 6)
    )
    originals = {r.event_ids[0] for r in results if not r.duplicates}
    assert len(originals) == 1
    assert {d for r in results for d in r.duplicates.values()} == originals


@pytest.mark.capability(CROSS_PROCESS_SIGNALS)
async def test_signals_raised_through_one_store_reach_the_others_subscribers(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    heard = Heard(b)
    # Until b listens, it can only say that it may have missed something (ANY); once it has
    # said either, it listens, and from then on every signal must come through by name.
    since = heard.mark()
    await ingest_one(a, "warm-up")
    await heard.wait_for(SignalKind.DUE, "warm-up", since=since, or_any=True)

    since = heard.mark()
    await ingest_one(a, "crm")
    await heard.wait_for(SignalKind.DUE, "crm", since=since)
    await a.pause_destination("crm")
    await heard.wait_for(SignalKind.PAUSE, "crm", since=since)
    replay_id = await a.start_replay(
        NewReplay(requested_by="admin", filter="{}", destinations=("crm",), total=1)
    )
    await heard.wait_for(SignalKind.REPLAY, str(replay_id), since=since)
    # Notifications arrive in commit order: the ingest's DUE came before the pause's PAUSE.
    since = heard.mark()
    await a.resume_destination("crm")
    await heard.wait_for(SignalKind.PAUSE, "crm", since=since)
    await heard.wait_for(SignalKind.DUE, "crm", since=since)
