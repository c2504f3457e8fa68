"""Control over work in flight through the admin API, against real relays, sockets and a real
downstream: retry now, discard, replays listed, followed and cancelled, the audit trail, and
every admin request logged."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from relay.ids import new_id
from relay.model import NewEvent, RawRequest
from tests.support import (
    ADMIN_TABLE,
    RelayFactory,
    RelayUnderTest,
    Sink,
    admin_call,
    config_text,
    destination,
    subscribe_body,
    wait_until,
)

DANA = {"X-Relay-Operator": "dana"}


async def start(
    start_relay: RelayFactory, tmp_path: Path, sink: Sink, **options: object
) -> RelayUnderTest:
    dests = destination("crm", sink.url("/crm"), **options) + destination(
        "dw", sink.url("/dw"), types=["unsubscribe"]
    )
    return await start_relay(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE))


async def one_delivery(
    relay: RelayUnderTest, state: str, destination: str = "crm", attempts: int = 1
) -> dict[str, Any]:
    """The one delivery to ``destination`` in ``state`` once it has had ``attempts``."""
    seen: list[dict[str, Any]] = []

    async def found() -> bool:
        _, page = await admin_call(
            relay, "GET", f"/admin/deliveries?state={state}&destination={destination}"
        )
        seen[:] = [d for d in page["deliveries"] if d["attempts"] >= attempts]
        return len(seen) == 1

    await wait_until(found, what=f"a {state} delivery")
    return seen[0]


# -- retry now -----------------------------------------------------------------------------------


async def test_retry_sends_a_delivery_in_a_long_backoff_now(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503, 200)
    relay = await start(
        start_relay, tmp_path, sink, retry={"initial_delay": 3600.0, "max_delay": 3600.0}
    )
    await relay.post("/hooks/user", subscribe_body("ann@example.com"))
    waiting = await one_delivery(relay, "pending")
    assert waiting["attempts"] == 1 and len(sink.at("/crm")) == 1
    status, answer = await admin_call(
        relay, "POST", f"/admin/deliveries/{waiting['id']}/retry", headers=DANA
    )
    assert status == 200, answer
    assert (answer["retried"], answer["due_now"]) == (waiting["id"], True)
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the retry, now")
    assert sink.at("/crm")[1].headers["X-Relay-Attempt"] == "2"
    assert (await one_delivery(relay, "delivered"))["id"] == waiting["id"]
    # Delivered: nothing to retry; a replay is what sends it again.
    status, refused = await admin_call(relay, "POST", f"/admin/deliveries/{waiting['id']}/retry")
    assert status == 409
    assert refused["error"] == (
        f"delivery {waiting['id']} was delivered: replay its event to send it again"
    )


async def test_retrying_a_dead_delivery_sends_a_new_one_and_resolves_the_old(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 410, 200)
    relay = await start(start_relay, tmp_path, sink)
    await relay.post("/hooks/user", subscribe_body("ann@example.com"))
    dead = await one_delivery(relay, "dead")
    assert (dead["last_status"], dead["dead_reason"]) == (410, "permanent failure: HTTP 410")
    status, answer = await admin_call(
        relay, "POST", f"/admin/deliveries/{dead['id']}/retry", headers=DANA
    )
    assert status == 200, answer
    assert answer["due_now"] is False and answer["replay_id"]
    (made,) = answer["deliveries"]
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the new delivery")
    assert sink.at("/crm")[1].headers["X-Relay-Replay"] == "1"

    async def resolved() -> bool:
        _, old = await admin_call(relay, "GET", f"/admin/deliveries/{dead['id']}")
        return bool(old["resolved_by"] == f"delivery {made['id']}")

    await wait_until(resolved, what="the dead letter to resolve")
    _, old = await admin_call(relay, "GET", f"/admin/deliveries/{dead['id']}")
    assert old["state"] == "dead"  # the history stays
    _, replay = await admin_call(relay, "GET", f"/admin/replays/{answer['replay_id']}")
    assert (replay["requested_by"], replay["filter"]) == ("dana", {"retry_of": dead["id"]})
    status, again = await admin_call(relay, "POST", f"/admin/deliveries/{dead['id']}/retry")
    assert status == 409 and "resolved" in again["error"]
    assert (await admin_call(relay, "POST", "/admin/deliveries/999999/retry"))[0] == 404
    status, bad = await admin_call(relay, "POST", f"/admin/deliveries/{dead['id']}/retry", {"x": 1})
    assert (status, bad["error"]) == (400, "unknown key 'x' (none are accepted here)")


# -- discard -------------------------------------------------------------------------------------


async def test_discard_drops_the_rest_of_a_mistaken_replay(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start(start_relay, tmp_path, sink)
    for n in range(5):
        await relay.post("/hooks/user", subscribe_body(f"user{n}@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 5, what="the live deliveries")
    assert (await admin_call(relay, "POST", "/admin/destinations/crm/pause"))[0] == 200
    _, replay = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]}
    )
    assert replay["deliveries"] == 5  # held: crm is paused
    where = {"replay": replay["replay_id"]}
    status, dry = await admin_call(
        relay, "POST", "/admin/deliveries/discard", {"filter": where, "dry_run": True}
    )
    assert (status, dry) == (200, {"matched": 5, "per_destination": {}, "dry_run": True})
    status, done = await admin_call(
        relay, "POST", "/admin/deliveries/discard", {"filter": where}, headers=DANA
    )
    assert (status, done) == (
        200, {"discarded": 5, "per_destination": {"crm": 5}, "dry_run": False},
    )  # fmt: skip
    assert (await admin_call(relay, "POST", "/admin/destinations/crm/resume"))[1]["released"] == 0
    _, shown = await admin_call(relay, "GET", f"/admin/replays/{replay['replay_id']}")
    assert (shown["discarded"], shown["pending"], shown["delivered"]) == (5, 0, 0)
    _, listed = await admin_call(relay, "GET", "/admin/deliveries?state=discarded")
    assert len(listed["deliveries"]) == 5
    # Resumed, nothing of the replay is sent: a live event after it is the next delivery.
    await relay.post("/hooks/user", subscribe_body("late@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 6)
    assert not any(r.headers.get("X-Relay-Replay") for r in sink.at("/crm"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"filter": {}}, "filter: name at least one of"),
        ({"filter": {"state": "dead"}}, "state: only pending or paused deliveries are discarded"),
        ({"filter": {"replay": "x"}}, "replay: expected a replay id"),
        ({"filter": {"colour": "red"}}, "unknown key 'colour'"),
        ({"filter": {"type": "x"}, "dryrun": True}, "unknown key 'dryrun'"),
        ({}, "filter: expected a JSON object"),
    ],
)
async def test_a_discard_that_is_not_clear_is_refused(
    body: dict[str, object], error: str, tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start(start_relay, tmp_path, sink)
    status, answer = await admin_call(relay, "POST", "/admin/deliveries/discard", body)
    assert status == 400 and answer["error"].startswith(error), answer


# -- replays: list, show, cancel -----------------------------------------------------------------


async def stored_events(relay: RelayUnderTest, n: int) -> None:
    """``n`` events stored without deliveries (as if they came before any destination)."""
    request = RawRequest(
        new_id(), "audience-user", "POST", "/hooks/user", "", (), b"x", "text/plain", "",
        time.time() - 60,
    )  # fmt: skip
    events = [NewEvent("audience-user", "user", "subscribe", request.received_at, ())] * n
    await relay.relay.store.ingest(request, events)


async def test_a_cancelled_replay_stops_making_deliveries_and_says_how_it_ended(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.hang.add("/crm")  # nothing drains: the replay waits for room after its first chunk
    relay = await start(start_relay, tmp_path, sink, concurrency=1, timeout=30.0)
    jobs = relay.relay.control.replays
    jobs.inline_limit, jobs.walk_batch, jobs.feed = 10, 50, 10
    await stored_events(relay, 200)
    status, answer = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]},
    )  # fmt: skip
    assert (status, answer["state"]) == (202, "running")
    replay_id = answer["replay_id"]

    async def fed() -> bool:
        _, shown = await admin_call(relay, "GET", f"/admin/replays/{replay_id}")
        return bool(shown["created"] >= 10)

    await wait_until(fed, what="the first chunk")
    status, cancelled = await admin_call(
        relay, "POST", f"/admin/replays/{replay_id}/cancel", headers=DANA
    )
    assert status == 200, cancelled
    assert (cancelled["state"], cancelled["cancelled_by"]) == ("cancelled", "dana")
    assert cancelled["waiting"] == cancelled["created"] - cancelled["delivered"]
    # Noticed within a second (CANCEL_CHECK), not at its next lease renewal (10 s).
    await wait_until(lambda: replay_id not in jobs._running, timeout=5, what="the job to stop")
    _, shown = await admin_call(relay, "GET", f"/admin/replays/{replay_id}")
    assert shown["created"] == cancelled["created"] < 200
    assert shown["state"] == "cancelled" and shown["finished_at"]
    status, again = await admin_call(relay, "POST", f"/admin/replays/{replay_id}/cancel")
    assert (status, again["error"]) == (409, f"replay {replay_id} is cancelled, not running")
    assert (await admin_call(relay, "POST", "/admin/replays/4242/cancel"))[0] == 404

    _, listed = await admin_call(relay, "GET", "/admin/replays")
    (row,) = listed["replays"]
    assert (row["id"], row["state"], row["requested_by"]) == (replay_id, "cancelled", "admin-api")


async def test_replays_are_listed_newest_first_with_their_outcome(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 200, 410, 200)
    relay = await start(start_relay, tmp_path, sink)
    await stored_events(relay, 2)
    ids = []
    for _ in range(3):
        _, answer = await admin_call(
            relay, "POST", "/admin/replay",
            {"filter": {"type": "subscribe"}, "destinations": ["crm"]},
        )  # fmt: skip
        ids.append(answer["replay_id"])
    _, page = await admin_call(relay, "GET", "/admin/replays?limit=2")
    assert [r["id"] for r in page["replays"]] == ids[:0:-1]
    _, rest = await admin_call(relay, "GET", f"/admin/replays?cursor={page['next_cursor']}")
    assert [r["id"] for r in rest["replays"]] == ids[:1] and rest["next_cursor"] is None

    async def settled() -> bool:
        _, shown = await admin_call(relay, "GET", f"/admin/replays/{ids[0]}")
        return bool(shown["pending"] == 0)

    await wait_until(settled, what="the first replay's deliveries")
    _, shown = await admin_call(relay, "GET", f"/admin/replays/{ids[0]}")
    assert (shown["matched"], shown["created"]) == (2, 2)
    assert shown["delivered"] + shown["dead"] == 2
    assert shown["outcome_per_destination"]["crm"].get("delivered", 0) == shown["delivered"]


# -- the audit trail, and every admin request logged ------------------------------------------


async def test_every_change_is_on_the_audit_trail_with_who_and_from_where(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start(start_relay, tmp_path, sink)
    await relay.post("/hooks/user", subscribe_body("ann@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    for path, body in (
        ("/admin/destinations/crm/pause", None),
        ("/admin/destinations/crm/resume", None),
        ("/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]}),
        ("/admin/deliveries/discard", {"filter": {"destination": "crm"}}),
        ("/admin/prune", {"older_than_days": 30}),
        ("/admin/prune", {"older_than_days": 30, "dry_run": True}),  # changes nothing
    ):
        status, answer = await admin_call(relay, "POST", path, body, headers=DANA)
        assert status == 200, answer
    status, audit = await admin_call(relay, "GET", "/admin/audit")
    assert status == 200
    entries = [(e["action"], e["operator"], e["target"], e["peer"]) for e in audit["entries"]]
    assert entries == [
        ("prune", "dana", None, "127.0.0.1"),
        ("discard", "dana", "crm", "127.0.0.1"),
        ("replay", "dana", entries[2][2], "127.0.0.1"),
        ("resume", "dana", "crm", "127.0.0.1"),
        ("pause", "dana", "crm", "127.0.0.1"),
    ]
    assert audit["entries"][0]["detail"]["older_than_days"] == 30
    _, only = await admin_call(relay, "GET", "/admin/audit?action=pause&operator=dana")
    assert [e["action"] for e in only["entries"]] == ["pause"]
    assert (await admin_call(relay, "GET", "/admin/audit?who=x"))[0] == 400


async def test_every_admin_request_is_logged_refused_ones_too(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start(start_relay, tmp_path, sink)
    caplog.set_level(logging.INFO, logger="relay.admin")
    await admin_call(relay, "GET", "/admin/events", token="wrong", headers={**DANA})
    await admin_call(relay, "GET", "/admin/events?limit=1", headers=DANA)
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.admin"]
    assert lines[0].startswith(
        "admin request method=GET path=/admin/events status=401 operator='dana' peer=127.0.0.1"
    )
    assert lines[1].startswith(
        "admin request method=GET path=/admin/events status=200 operator='dana' peer=127.0.0.1"
    )
    assert "wrong" not in " ".join(lines) and "limit" not in " ".join(lines)


# -- finding events --------------------------------------------------------------------------


async def test_events_are_found_by_email_in_any_case_and_by_type_glob(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start(start_relay, tmp_path, sink)
    await relay.post("/hooks/user", subscribe_body("Ann@Example.com"))
    await relay.post("/hooks/user", subscribe_body("bob@example.com", kind="unsubscribe"))
    _, found = await admin_call(relay, "GET", "/admin/events?email=ANN@example.COM")
    assert [e["email"] for e in found["events"]] == ["Ann@Example.com"]
    _, globbed = await admin_call(relay, "GET", "/admin/events?type=unsub*")
    assert [e["type"] for e in globbed["events"]] == ["unsubscribe"]
    _, both = await admin_call(relay, "GET", "/admin/events?type=*scribe")
    assert len(both["events"]) == 2
    _, dry = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "un*"}, "dry_run": True}
    )
    assert (dry["matched"], dry["per_destination"]) == (1, {"crm": 1, "dw": 1})
