"""Reads for operators: one event in full, the events list with its filters and cursor, replay
candidates, and the deliveries list."""

from __future__ import annotations

import pytest

from relay.model import Decision, DeliveryState, EventFilter, EventRecord
from relay.store import Store
from tests.store_contract.kit import (
    DELIVERED,
    LEASE,
    all_events,
    attempt,
    claim_all,
    ids,
    ingest_one,
    new_event,
    raw_request,
    retry_at,
)


async def test_an_event_comes_back_whole_with_its_request_deliveries_and_attempts(
    store: Store,
) -> None:
    body = b"type=subscribe&data%5Bemail%5D=ann%40example.com&\xff\xfe"
    request = raw_request(body, headers=(("Content-Type", "x/y"), ("X-Two", "a"), ("X-Two", "b")))
    result = await store.ingest(
        request,
        [
            new_event(
                "crm", "dw", type="subscribe", list_id="a6b5da1054", email="ann@example.com",
                fired_at=1_238_103_357.0, dedup_key="key-1",
            ),
            new_event("crm", type="unknown", parse_error="no type field"),
        ],
    )  # fmt: skip
    first, second = result.event_ids
    claimed = {(c.event_id, c.destination): c for c in await claim_all(store, "crm")}
    assert await store.complete(claimed[(first, "crm")], attempt(503), retry_at(0.0))
    (again,) = await store.claim("crm", 1, LEASE)
    assert await store.complete(again, attempt(200), DELIVERED)

    detail = await store.get_event(first)
    assert detail is not None
    stored = detail.request
    assert (stored.id, stored.inbound, stored.method, stored.path, stored.query) == (
        request.id, request.inbound, request.method, request.path, request.query,
    )  # fmt: skip
    assert (stored.headers, stored.body, stored.content_type, stored.peer) == (
        request.headers, request.body, request.content_type, request.peer,
    )  # fmt: skip
    assert stored.received_at == pytest.approx(request.received_at, abs=5)
    e = detail.event
    assert (e.id, e.request_id, e.inbound, e.source, e.type) == (
        first, request.id, "audience-user", "user", "subscribe",
    )  # fmt: skip
    assert (e.list_id, e.email, e.fired_at, e.parse_error) == (
        "a6b5da1054", "ann@example.com", 1_238_103_357.0, None,
    )  # fmt: skip
    assert (e.dedup_key, e.duplicate_of) == ("key-1", None)
    assert (detail.payload, detail.payload_content_type) == (body, request.content_type)
    by_destination = {d.destination: d for d in detail.deliveries}
    assert set(by_destination) == {"crm", "dw"}
    crm = by_destination["crm"]
    assert (crm.state, crm.attempts, crm.event_id) == (DeliveryState.DELIVERED, 2, first)
    assert [(a.number, a.status) for a in crm.attempt_log] == [(1, 503), (2, 200)]
    assert by_destination["dw"].attempt_log == ()

    other = await store.get_event(second)
    assert other is not None
    assert (other.event.type, other.event.parse_error) == ("unknown", "no type field")
    assert other.request.id == request.id


async def test_a_mandrill_element_forwards_its_own_bytes(store: Store) -> None:
    element = b'{"event":"open","_id":"abc"}'
    event_id = await ingest_one(
        store, "crm", inbound="mandrill", payload=element, payload_content_type="application/json"
    )
    detail = await store.get_event(event_id)
    assert detail is not None
    assert (detail.payload, detail.payload_content_type) == (element, "application/json")
    assert detail.request.body != element


async def test_an_unknown_event_is_none(store: Store) -> None:
    assert await store.get_event("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None


# -- the events list -----------------------------------------------------------------------

# name -> (destinations, event fields); the corpus every filter case below reads.
CORPUS: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "ann-sub": (
        ("crm",),
        {"type": "subscribe", "list_id": "L1", "email": "ann@x.org", "dedup_key": "a"},
    ),
    "bob-unsub": (
        ("crm", "dw"),
        {
            "inbound": "audience-admin",
            "source": "admin",
            "type": "unsubscribe",
            "list_id": "L2",
            "email": "bob@x.org",
        },
    ),
    "mandrill": (("dw",), {"inbound": "mandrill", "source": "mandrill", "type": "send"}),
    "ann-sub-again": (
        ("crm",),
        {"type": "subscribe", "list_id": "L1", "email": "ann@x.org", "dedup_key": "a"},
    ),
    "ann-profile": ((), {"type": "profile", "email": "ann@x.org", "list_id": "L1"}),
}
# after: ann-sub delivered to crm; bob-unsub dead at crm and pending at dw; mandrill pending.
CASES: list[tuple[EventFilter, set[str]]] = [
    (EventFilter(), set(CORPUS)),
    (EventFilter(inbound="audience-admin"), {"bob-unsub"}),
    (EventFilter(inbound="audience-user"), {"ann-sub", "ann-sub-again", "ann-profile"}),
    (EventFilter(type="subscribe"), {"ann-sub", "ann-sub-again"}),
    (EventFilter(source="mandrill"), {"mandrill"}),
    (EventFilter(list_id="L1"), {"ann-sub", "ann-sub-again", "ann-profile"}),
    (EventFilter(email="bob@x.org"), {"bob-unsub"}),
    (EventFilter(email="nobody@x.org"), set()),
    (EventFilter(state=DeliveryState.DELIVERED), {"ann-sub"}),
    (EventFilter(state=DeliveryState.DEAD), {"bob-unsub"}),
    (EventFilter(state=DeliveryState.PENDING), {"bob-unsub", "mandrill"}),
    (EventFilter(destination="dw"), {"bob-unsub", "mandrill"}),
    (EventFilter(destination="crm"), {"ann-sub", "bob-unsub"}),
    # One delivery in that state to that destination, not one of each.
    (EventFilter(state=DeliveryState.DEAD, destination="dw"), set()),
    (EventFilter(state=DeliveryState.PENDING, destination="dw"), {"bob-unsub", "mandrill"}),
    (EventFilter(originals_only=True), set(CORPUS) - {"ann-sub-again"}),
    (EventFilter(email="ann@x.org", type="subscribe", originals_only=True), {"ann-sub"}),
    (EventFilter(inbound="audience-user", list_id="L2"), set()),
]


async def corpus(store: Store) -> dict[str, str]:
    made = {}
    for name, (destinations, fields) in CORPUS.items():
        made[name] = await ingest_one(store, *destinations, **fields)
    crm = {c.event_id: c for c in await claim_all(store, "crm")}
    assert await store.complete(crm[made["ann-sub"]], attempt(200), DELIVERED)
    assert await store.complete(crm[made["bob-unsub"]], attempt(410), retry_at(0.0))
    (dead,) = await store.claim("crm", 10, LEASE)
    assert await store.complete(dead, attempt(410), Decision(DeliveryState.DEAD))
    return made


async def test_each_filter_selects_its_events_newest_first(store: Store) -> None:
    made = await corpus(store)
    newest_first = list(made)[::-1]
    for where, expected in CASES:
        page = await store.list_events(where, 50)
        assert ids(page.events) == [made[n] for n in newest_first if n in expected], where
        assert page.next_cursor is None
        assert await store.count_events(where) == len(expected), where


async def test_since_is_inclusive_and_until_exclusive(store: Store) -> None:
    for n in range(6):
        await store.ingest(raw_request(), [new_event("crm", email=f"{n}@x.org")])
    events = await all_events(store)
    times = sorted({e.received_at for e in events})
    assert len(times) >= 3, "each ingest should be received at its own time"
    mid, late = times[len(times) // 2], times[-1]

    def expect(pred: object) -> list[str]:
        return [e.id for e in events if pred(e)]  # type: ignore[operator]

    def since(e: EventRecord) -> bool:
        return e.received_at >= mid

    def until(e: EventRecord) -> bool:
        return e.received_at < mid

    def between(e: EventRecord) -> bool:
        return mid <= e.received_at < late

    for where, pred in [
        (EventFilter(since=mid), since),
        (EventFilter(until=mid), until),
        (EventFilter(since=mid, until=late), between),
        (EventFilter(since=late + 1), lambda e: False),
        (EventFilter(until=times[0]), lambda e: False),
        (EventFilter(since=0.0), lambda e: True),
    ]:
        assert ids((await store.list_events(where, 50)).events) == expect(pred), where
        assert await store.count_events(where) == len(expect(pred)), where


async def test_paging_by_cursor_sees_every_event_exactly_once(store: Store) -> None:
    made = [await ingest_one(store, "crm", type="t" if n % 3 else "other") for n in range(23)]
    for where, expected in [
        (EventFilter(), made[::-1]),
        (EventFilter(type="t"), [m for n, m in enumerate(made) if n % 3][::-1]),
    ]:
        for size in (1, 5, 15, len(expected), 100):
            seen: list[str] = []
            before = None
            while True:
                page = await store.list_events(where, size, before)
                seen += ids(page.events)
                assert len(page.events) <= size
                if page.next_cursor is None:
                    break
                assert page.events, "a cursor is only given with a page"
                before = page.next_cursor
            assert seen == expected, (where, size)


async def test_events_stored_while_paging_do_not_enter_later_pages(store: Store) -> None:
    made = [await ingest_one(store, "crm") for _ in range(6)]
    first = await store.list_events(EventFilter(), 3)
    assert first.next_cursor is not None
    await ingest_one(store, "crm")
    rest = await store.list_events(EventFilter(), 10, first.next_cursor)
    assert ids(first.events) + ids(rest.events) == made[::-1]


# -- replay candidates -----------------------------------------------------------------------


async def test_replay_candidates_walk_matching_events_oldest_first_from_a_cursor(
    store: Store,
) -> None:
    body_request = raw_request()
    plain = await store.ingest(body_request, [new_event("crm")])
    element = b'{"event":"send"}'
    mandrill = await ingest_one(
        store, "crm", inbound="mandrill", type="send", payload=element,
        payload_content_type="application/json",
    )  # fmt: skip
    later = [await ingest_one(store, "crm") for _ in range(3)]
    order = [plain.event_ids[0], mandrill, *later]

    walked = await store.replay_candidates(EventFilter(), None, 2, with_payload=False)
    assert [c.event.id for c in walked] == order[:2]
    assert all(c.payload is None and c.content_type is None for c in walked)
    rest = await store.replay_candidates(EventFilter(), walked[-1].event.seq, 10, False)
    assert [c.event.id for c in rest] == order[2:]
    assert await store.replay_candidates(EventFilter(), rest[-1].event.seq, 10, False) == []

    with_bytes = await store.replay_candidates(EventFilter(), None, 2, with_payload=True)
    assert [(c.payload, c.content_type) for c in with_bytes] == [
        (body_request.body, body_request.content_type),
        (element, "application/json"),
    ]
    only = await store.replay_candidates(EventFilter(type="send"), None, 10, True)
    assert [c.event.id for c in only] == [mandrill]


# -- the deliveries list ---------------------------------------------------------------------


async def test_deliveries_list_by_state_and_destination_newest_first(store: Store) -> None:
    made = [await ingest_one(store, "crm", "dw", email=f"{n}@x.org") for n in range(5)]
    crm = {c.event_id: c for c in await claim_all(store, "crm")}
    for event_id in made[:2]:
        assert await store.complete(crm[event_id], attempt(200), DELIVERED)

    everything = await store.list_deliveries(None, None, 100)
    listed = [(d.delivery.event_id, d.delivery.destination) for d in everything.deliveries]
    assert sorted(listed) == sorted((m, n) for m in made for n in ("crm", "dw"))
    delivery_ids = [d.delivery.id for d in everything.deliveries]
    assert delivery_ids == sorted(delivery_ids, reverse=True)
    assert everything.next_cursor is None

    delivered = await store.list_deliveries(DeliveryState.DELIVERED, None, 100)
    assert [d.delivery.event_id for d in delivered.deliveries] == made[:2][::-1]
    first = delivered.deliveries[-1]
    assert (first.inbound, first.source, first.type, first.email) == (
        "audience-user", "user", "subscribe", "0@x.org",
    )  # fmt: skip
    delivering = await store.list_deliveries(DeliveryState.DELIVERING, "crm", 100)
    assert [d.delivery.event_id for d in delivering.deliveries] == made[2:][::-1]
    assert (await store.list_deliveries(DeliveryState.DELIVERING, "dw", 100)).deliveries == ()
    dw = await store.list_deliveries(None, "dw", 100)
    assert [d.delivery.event_id for d in dw.deliveries] == made[::-1]

    seen: list[int] = []
    before = None
    while True:
        page = await store.list_deliveries(None, None, 3, before)
        seen += [d.delivery.id for d in page.deliveries]
        if page.next_cursor is None:
            break
        before = page.next_cursor
    assert seen == delivery_ids
