"""Operator control in the store: dead letters that resolve, retry now, resolve by hand,
discard, cancelled replays and their outcome, the audit trail, and finding events by email in
any case and by type glob."""

from __future__ import annotations

import fnmatch
import time

import pytest

from relay.model import (
    AttemptResult,
    AuditAction,
    ClaimedDelivery,
    Decision,
    DeliveryFilter,
    DeliveryState,
    EventFilter,
    NewAudit,
    NewReplay,
    ReplayState,
)
from relay.store import Store
from relay.store.base import ReplayEndedError
from tests.store_contract.kit import DELIVERED, LEASE, attempt, ingest_one, retry_at


def answer(status: int | None, head: bytes = b"", error: str | None = None) -> AttemptResult:
    return attempt(status, response_head=head, error=error)


def dead(reason: str) -> Decision:
    return Decision(DeliveryState.DEAD, reason=reason)


def later(seconds: float = 3600.0) -> Decision:
    return retry_at(time.time() + seconds)


async def claim_one(store: Store, destination: str) -> ClaimedDelivery:
    (claimed,) = await store.claim(destination, 10, LEASE)
    return claimed


async def fail_dead(store: Store, destination: str, status: int = 500) -> ClaimedDelivery:
    """Claim the one due delivery of ``destination`` and record an attempt that kills it."""
    claimed = await claim_one(store, destination)
    assert await store.complete(claimed, answer(status, b"down"), dead("gave up"))
    return claimed

DEAD_LETTERS = EventFilter(state=DeliveryState.DEAD, destination="crm")


# -- dead letters resolve ----------------------------------------------------------------------


async def replay_to(store: Store, event_id: str, destination: str) -> int:
    replay_id = await store.start_replay(NewReplay("ops", "{}", (destination,), 1))
    (created,) = await store.add_replay_deliveries(replay_id, [(event_id, destination)], 1)
    return created.id


async def test_a_later_delivery_of_the_event_resolves_its_dead_letter(store: Store) -> None:
    event_id = await ingest_one(store, "crm", "dw")
    first = await fail_dead(store, "crm")
    await fail_dead(store, "dw")
    assert [s.dead for s in await store.destination_stats()] == [1, 1]
    assert await store.count_events(DEAD_LETTERS) == 1

    again = await replay_to(store, event_id, "crm")
    claimed = await claim_one(store, "crm")
    assert claimed.id == again
    assert await store.complete(claimed, answer(200), DELIVERED)

    resolved = await store.get_delivery(first.id)
    assert resolved is not None
    assert resolved.state is DeliveryState.DEAD  # history is not rewritten
    assert resolved.resolved_by == f"delivery {again}"
    assert resolved.resolved_at is not None
    stats = {s.destination: s.dead for s in await store.destination_stats()}
    assert stats == {"dw": 1}  # the other destination's dead letter stays
    assert await store.count_events(DEAD_LETTERS) == 0
    assert (await store.list_deliveries(DeliveryState.DEAD, "crm", 10)).deliveries == ()
    assert await store.replay_candidates(DEAD_LETTERS, None, 10, False) == []
    assert await store.count_events(EventFilter(state=DeliveryState.DEAD)) == 1


async def test_a_failed_later_delivery_resolves_nothing(store: Store) -> None:
    event_id = await ingest_one(store, "crm")
    first = await fail_dead(store, "crm")
    await replay_to(store, event_id, "crm")
    await fail_dead(store, "crm")
    record = await store.get_delivery(first.id)
    assert record is not None and record.resolved_at is None
    assert {s.destination: s.dead for s in await store.destination_stats()} == {"crm": 2}
    # One event, however many of its deliveries are dead: replaying the dead letters sends once.
    assert await store.count_events(DEAD_LETTERS) == 1


async def test_an_operator_resolves_a_dead_letter_once(store: Store) -> None:
    await ingest_one(store, "crm")
    claimed = await fail_dead(store, "crm", status=404)
    assert await store.resolve_delivery(claimed.id, "cli:dana", "gone for good")
    assert not await store.resolve_delivery(claimed.id, "cli:eve", "again")
    record = await store.get_delivery(claimed.id)
    assert record is not None
    assert (record.resolved_by, record.resolve_reason) == ("cli:dana", "gone for good")
    assert await store.destination_stats() == []


async def test_only_dead_deliveries_are_resolved(store: Store) -> None:
    await ingest_one(store, "crm")
    claimed = await claim_one(store, "crm")
    assert not await store.resolve_delivery(claimed.id, "ops", None)  # in flight
    await store.complete(claimed, answer(200), DELIVERED)
    assert not await store.resolve_delivery(claimed.id, "ops", None)
    assert not await store.resolve_delivery(999_999, "ops", None)


# -- retry now -----------------------------------------------------------------------------------


async def test_retry_makes_a_backing_off_delivery_due_now(store: Store) -> None:
    await ingest_one(store, "crm")
    claimed = await claim_one(store, "crm")
    await store.complete(claimed, answer(503), later(3600))
    due_in = await store.due_in("crm")
    assert due_in is not None and due_in > 3000
    heard: list[str] = []
    store.signals.subscribe(lambda s: heard.append(f"{s.kind}:{s.name}"))
    assert await store.retry_delivery(claimed.id)
    due_in = await store.due_in("crm")
    assert due_in is not None and due_in <= 0
    assert "due:crm" in heard
    (again,) = await store.claim("crm", 10, LEASE)
    assert (again.id, again.attempt) == (claimed.id, 2)


async def test_retry_leaves_deliveries_that_are_not_waiting_alone(store: Store) -> None:
    await ingest_one(store, "crm")
    claimed = await fail_dead(store, "crm")
    assert not await store.retry_delivery(claimed.id)
    assert not await store.retry_delivery(999_999)


# -- discard -------------------------------------------------------------------------------------


async def test_discard_drops_waiting_deliveries_that_match_and_counts_them_first(
    store: Store,
) -> None:
    for kind in ("unsubscribe", "unsubscribe", "subscribe"):
        await ingest_one(store, "crm", "dw", type=kind)
    await store.pause_destination("dw")
    (in_flight,) = await store.claim("crm", 1, LEASE)  # the oldest: an unsubscribe
    assert in_flight.type == "unsubscribe"
    where = DeliveryFilter(event=EventFilter(type="unsub*"))
    # One unsubscribe waiting for crm, two held for the paused dw; the one in flight goes on.
    assert await store.count_waiting(where) == 3
    assert await store.discard(where, batch=2) == {"crm": 1, "dw": 2}
    assert await store.count_waiting(where) == 0
    flight = await store.get_delivery(in_flight.id)
    assert flight is not None and flight.state is DeliveryState.DELIVERING
    await store.resume_destination("dw")
    assert [c.type for c in await store.claim("dw", 10, LEASE)] == ["subscribe"]
    assert [c.type for c in await store.claim("crm", 10, LEASE)] == ["subscribe"]


async def test_discard_by_replay_and_destination(store: Store) -> None:
    event_id = await ingest_one(store, "crm", "dw")
    for destination in ("crm", "dw"):
        for claimed in await store.claim(destination, 10, LEASE):
            await store.complete(claimed, answer(200), DELIVERED)
    replay_id = await store.start_replay(NewReplay("ops", "{}", (), 1))
    await store.add_replay_deliveries(replay_id, [(event_id, "crm"), (event_id, "dw")], 1)
    where = DeliveryFilter(replay_id=replay_id, destination="crm")
    assert await store.count_waiting(where) == 1
    assert await store.discard(where) == {"crm": 1}
    replay = await store.get_replay(replay_id)
    assert replay is not None
    assert replay.in_state(DeliveryState.DISCARDED) == 1
    assert replay.in_state(DeliveryState.PENDING) == 1
    assert await store.claim("crm", 10, LEASE) == []
    # A discarded delivery is finished: its event may be pruned once the rest is too.
    assert await store.count_prunable(-60) == 0
    for claimed in await store.claim("dw", 10, LEASE):
        await store.complete(claimed, answer(200), DELIVERED)
    assert await store.count_prunable(-60) == 1


# -- replays: cancel, list, outcome -------------------------------------------------------------


async def test_a_cancelled_replay_creates_nothing_more_and_stays_cancelled(store: Store) -> None:
    event_id = await ingest_one(store, "crm")
    replay_id = await store.start_replay(NewReplay("ops", "{}", ("crm",), 2), "me", LEASE)
    await store.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, owner="me")
    heard: list[str] = []
    store.signals.subscribe(lambda s: heard.append(f"{s.kind}:{s.name}"))
    assert await store.cancel_replay(replay_id, "cli:dana")
    assert f"replay:{replay_id}" in heard
    assert await store.replay_state(replay_id) is ReplayState.CANCELLED
    with pytest.raises(ReplayEndedError):
        await store.add_replay_deliveries(replay_id, [(event_id, "crm")], 1, owner="me")
    await store.finish_replay(replay_id, ReplayState.DONE)
    record = await store.get_replay(replay_id)
    assert record is not None
    assert (record.state, record.cancelled_by, record.created) == (
        ReplayState.CANCELLED, "cli:dana", 1,
    )  # fmt: skip
    assert record.finished_at is not None
    assert not await store.cancel_replay(replay_id, "cli:dana")
    assert await store.claim_replay("other", LEASE) is None


async def test_a_replay_tells_how_its_deliveries_ended(store: Store) -> None:
    ids = [await ingest_one(store, "crm") for _ in range(3)]
    for claimed in await store.claim("crm", 10, LEASE):
        await store.complete(claimed, answer(200), DELIVERED)
    replay_id = await store.start_replay(NewReplay("ops", "{}", ("crm",), 3))
    await store.add_replay_deliveries(replay_id, [(i, "crm") for i in ids], 3)
    first, second, _ = await store.claim("crm", 10, LEASE)
    await store.complete(first, answer(200), DELIVERED)
    await store.complete(second, answer(410, b"gone"), dead("permanent failure: HTTP 410"))
    record = await store.get_replay(replay_id)
    assert record is not None
    assert record.per_destination == (("crm", 3),)
    assert record.in_state(DeliveryState.DELIVERED) == 1
    assert record.in_state(DeliveryState.DEAD) == 1
    assert record.in_state(DeliveryState.DELIVERING) == 1


async def test_replays_are_listed_newest_first_a_page_at_a_time(store: Store) -> None:
    made = [await store.start_replay(NewReplay("ops", "{}", (), 0)) for _ in range(5)]
    page = await store.list_replays(2)
    assert [r.id for r in page.replays] == made[:-3:-1]
    assert page.next_cursor == made[3]
    rest = await store.list_replays(10, page.next_cursor)
    assert [r.id for r in rest.replays] == made[2::-1]
    assert rest.next_cursor is None
    assert await store.replay_state(made[0]) is ReplayState.RUNNING
    assert await store.replay_state(10_000) is None


# -- the audit trail -----------------------------------------------------------------------------


async def test_the_audit_trail_keeps_who_did_what_newest_first(store: Store) -> None:
    before = time.time() - 5
    await store.record_audit(NewAudit("cli:dana", AuditAction.PAUSE, "crm", "{}", "10.0.0.1"))
    await store.record_audit(NewAudit("cli:eve", AuditAction.DISCARD, None, '{"n": 3}'))
    await store.record_audit(NewAudit("cli:dana", AuditAction.RESUME, "crm"))
    page = await store.list_audit(2)
    assert [(e.operator, e.action) for e in page.entries] == [
        ("cli:dana", "resume"), ("cli:eve", "discard"),
    ]  # fmt: skip
    assert page.next_cursor is not None
    (oldest,) = (await store.list_audit(10, page.next_cursor)).entries
    assert (oldest.target, oldest.peer, oldest.detail) == ("crm", "10.0.0.1", "{}")
    assert before < oldest.at < time.time() + 5
    assert [e.action for e in (await store.list_audit(10, operator="cli:dana")).entries] == [
        "resume", "pause",
    ]  # fmt: skip
    assert [e.operator for e in (await store.list_audit(10, action="discard")).entries] == [
        "cli:eve"
    ]


# -- finding events ----------------------------------------------------------------------------


async def test_emails_are_found_whatever_their_case(store: Store) -> None:
    wanted = await ingest_one(store, "crm", email="Ann@Example.com")
    await ingest_one(store, "crm", email="bob@example.com")
    for asked in ("ann@example.com", "ANN@EXAMPLE.COM", "Ann@Example.com"):
        page = await store.list_events(EventFilter(email=asked), 10)
        assert [e.id for e in page.events] == [wanted]
        assert page.events[0].email == "Ann@Example.com"  # shown as received


TYPES = [
    "subscribe", "unsubscribe", "unsub", "upemail", "blacklist.add", "sms_x", "Unsubscribe",
    "a*b", "a[b", "a]b", "a-b", "a^b", "a%b", "a_b", "a\\b", "a.b", "ä-type", "a?b",
]  # fmt: skip
GLOBS = [
    "unsub*", "*scribe", "?nsub*", "[su]*", "[!su]*", "blacklist.*", "sms_?", "*", "unsubscribe",
    "unsub[", "[z-a]*", "[!z-a]*", "a[*]b", "a[[]b", "a[]]b", "a[!]]b", "a[-]b", "a[^]b",
    "a[a^]b", "a[%_]b", "a%b", "a_b", "a\\b", "a[\\]b", "a.b", "a?b", "a[?]b", "[--a]*",
    "ä*", "*-*", "[a-c]*", "[!a-c]*", "a[!-]b", "a[]-]b",
]  # fmt: skip


async def test_type_filters_take_the_globs_destination_filters_take(store: Store) -> None:
    for event_type in TYPES:
        await ingest_one(store, "crm", type=event_type)
    assert sorted(fnmatch.filter(TYPES, "unsub*")) == ["unsub", "unsubscribe"]
    for pattern in GLOBS:
        expected = sorted(t for t in TYPES if fnmatch.fnmatchcase(t, pattern))
        page = await store.list_events(EventFilter(type=pattern), 100)
        assert sorted(e.type for e in page.events) == expected, pattern
        assert await store.count_events(EventFilter(type=pattern)) == len(expected), pattern
