"""Signals: a store tells its subscribers when deliveries fall due, a destination is paused or
resumed, and a replay wants a runner; always after the change is committed."""

from __future__ import annotations

from relay.model import NewReplay
from relay.store import Signal, SignalKind, Store
from tests.store_contract.kit import ARRIVAL, Heard, ingest_one, new_event, raw_request
from tests.support import wait_until


async def test_ingest_signals_due_destinations_after_commit_and_not_paused_ones(
    store: Store,
) -> None:
    heard = Heard(store)
    await store.pause_destination("held")
    await store.ingest(raw_request(), [new_event("crm", "held"), new_event("dw")])
    await heard.wait_for(SignalKind.DUE, "crm")
    await heard.wait_for(SignalKind.DUE, "dw")
    # Signals keep their order: once a later one arrives, an earlier one would have.
    await ingest_one(store, "marker")
    await heard.wait_for(SignalKind.DUE, "marker")
    assert "held" not in heard.names(SignalKind.DUE)
    assert await heard.announced_too_early() == []


async def test_a_duplicate_makes_no_delivery_and_signals_nothing_due(store: Store) -> None:
    heard = Heard(store)
    await ingest_one(store, "crm", dedup_key="k")
    # (Routed elsewhere only to tell its signal apart from the original's.)
    await ingest_one(store, "elsewhere", dedup_key="k")
    await ingest_one(store, "marker")
    await heard.wait_for(SignalKind.DUE, "marker")
    assert "elsewhere" not in heard.names(SignalKind.DUE)


async def test_pause_and_resume_signal_and_resume_makes_the_destination_due(
    store: Store,
) -> None:
    await ingest_one(store, "crm")
    # Not checked against the store when heard: the ingest's own DUE may come back late
    # (echoed by the database), while crm is paused.
    heard = Heard(store, check_due=False)
    await store.pause_destination("crm")
    await heard.wait_for(SignalKind.PAUSE, "crm")
    await store.resume_destination("crm")
    await heard.wait_for(SignalKind.DUE, "crm")
    await wait_until(
        lambda: heard.signals.count(Signal(SignalKind.PAUSE, "crm")) >= 2,
        timeout=ARRIVAL,
        what="a second PAUSE signal, for the resume",
    )


async def test_a_replay_waiting_for_a_runner_signals(store: Store) -> None:
    heard = Heard(store)
    new = NewReplay(requested_by="admin", filter="{}", destinations=("crm",), total=1)
    since = heard.mark()
    replay_id = await store.start_replay(new)
    await heard.wait_for(SignalKind.REPLAY, str(replay_id), since=since, or_any=True)
    owned = await store.start_replay(new, owner="a", lease=60.0)
    since = heard.mark()
    await store.release_replay(owned, "a")
    await heard.wait_for(SignalKind.REPLAY, str(owned), since=since, or_any=True)


async def test_replay_deliveries_signal_their_destinations_due(store: Store) -> None:
    event_id = await ingest_one(store)
    await store.pause_destination("held")
    replay_id = await store.start_replay(
        NewReplay(requested_by="admin", filter="{}", destinations=(), total=1)
    )
    heard = Heard(store)
    await store.add_replay_deliveries(replay_id, [(event_id, "crm"), (event_id, "held")], 1)
    await heard.wait_for(SignalKind.DUE, "crm")
    await ingest_one(store, "marker")
    await heard.wait_for(SignalKind.DUE, "marker")
    assert "held" not in heard.names(SignalKind.DUE)
    assert await heard.announced_too_early() == []
