"""The console's operator control over real HTTP (no browser), against real relays, a real sink
and the store: resolve, retry now, cancel, discard with its dry run, the audit trail, and the
overview read from the store. Each action goes through the Control method the admin API calls,
and the audit trail names the logged-in operator.

Sessions, CSRF basics and headers are in test_console.py; the clicked-through flows in
test_console_browser.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pytest

from relay.config import StorageConfig
from relay.ids import new_id
from relay.model import (
    AttemptOutcome,
    AttemptResult,
    Decision,
    DeliveryFilter,
    DeliveryState,
    NewEvent,
    RawRequest,
)
from relay.server.console import control_pages
from relay.store.sqlite.store import SqliteStore
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
from tests.test_console import _browser, _login
from tests.test_operator_control import stored_events

ALICE = "console:alice"


async def post(
    client: aiohttp.ClientSession, relay: RelayUnderTest, path: str, form: dict[str, str]
) -> tuple[int, str, str]:
    """POST a console form: the status, the redirect's target (or ""), and the page."""
    async with client.post(relay.admin_url(path), data=form, allow_redirects=False) as r:
        return r.status, r.headers.get("Location", ""), await r.text()


async def get(client: aiohttp.ClientSession, relay: RelayUnderTest, path: str) -> tuple[int, str]:
    async with client.get(relay.admin_url(path)) as r:
        return r.status, await r.text()


async def audit(relay: RelayUnderTest, action: str) -> list[tuple[str, str | None]]:
    """(operator, target) of the audit entries of ``action``, newest first."""
    page = await relay.relay.store.list_audit(100, action=action)
    return [(e.operator, e.target) for e in page.entries]


async def dead_ids(relay: RelayUnderTest, destination: str, n: int) -> list[int]:
    """The ids of ``destination``'s dead letters, once there are ``n``."""
    found: list[int] = []

    async def there() -> bool:
        page = await relay.relay.store.list_deliveries(DeliveryState.DEAD, destination, 100)
        found[:] = [item.delivery.id for item in page.deliveries]
        return len(found) == n

    await wait_until(there, what=f"{n} dead letters")
    return found


# -- dead letters: resolve, and "replay these" counts only the unresolved ------------------------


async def test_resolving_a_dead_letter_records_the_operator_and_takes_it_out_of_the_dead_letters(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", (500, {}))
    dests = destination("crm", sink.url("/crm"), retry={"max_attempts": 1})
    relay = await start_relay(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE))
    for n in range(3):
        assert (await relay.post("/hooks/user", subscribe_body(f"r{n}@example.com")))[0] == 200
    first, *_ = await dead_ids(relay, "crm", 3)
    store = relay.relay.store
    async with _browser() as client:
        csrf = await _login(client, relay)
        _, page = await get(client, relay, "/console/dead")
        assert "3 dead" in page and "gave up after 1 attempt" in page
        assert "HTTP 500: sink says hi" in page and "HTTP 500: HTTP 500" not in page
        assert f'action="/console/deliveries/{first}/resolve"' in page

        form = {"csrf": csrf, "reason": "", "back": "/console/dead"}
        status, _, page = await post(client, relay, f"/console/deliveries/{first}/resolve", form)
        assert status == 400 and "Reason: say why" in page and 'href="/console/dead"' in page

        form["reason"] = "sent by hand"
        status, location, _ = await post(
            client, relay, f"/console/deliveries/{first}/resolve", form
        )
        assert status == 303 and location == f"/console/dead?done=resolve&delivery={first}"
        _, page = await get(client, relay, location)
        assert f"Resolved delivery {first} to crm ({ALICE}: sent by hand)" in page
        assert "2 dead" in page

        # "Replay these dead letters" counts (and would send) the two left, not the resolved one.
        _, page = await get(client, relay, "/console/replay?state=dead&destination=crm&to=crm")
        assert re.search(r"<strong>2</strong> events match", page), page

        # The event's timeline shows why it died, what it got, and who resolved it and why.
        resolved = await store.get_delivery(first)
        assert resolved is not None
        _, page = await get(client, relay, f"/console/events/{resolved.event_id}")
        assert "gave up after 1 attempt" in page and "HTTP 500: sink says hi" in page
        assert re.search(rf"<dt>Resolved</dt><dd>.*? by\s+{ALICE}: sent by hand</dd>", page), page
        assert f'action="/console/deliveries/{first}/resolve"' not in page  # done already

        # Again: Control's 409 reason, as a sentence, with the way back.
        status, _, page = await post(client, relay, f"/console/deliveries/{first}/resolve", form)
        assert status == 409
        assert f"Delivery {first} was already resolved by {ALICE}." in page
        assert 'href="/console/dead"' in page

        # A form cannot send the browser off the console afterwards.
        second = (await dead_ids(relay, "crm", 2))[0]
        form["back"] = "https://evil.example/console"
        status, location, _ = await post(
            client, relay, f"/console/deliveries/{second}/resolve", form
        )
        assert (status, location) == (303, f"/console?done=resolve&delivery={second}")
    assert (resolved.resolved_by, resolved.resolve_reason) == (ALICE, "sent by hand")
    assert await audit(relay, "resolve") == [(ALICE, str(second)), (ALICE, str(first))]


# -- retry now -----------------------------------------------------------------------------------


async def test_retry_now_sends_a_waiting_delivery_at_once_and_a_dead_one_as_a_new_delivery(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/slow", 503, 200)
    sink.on("/crm", 500, 200)
    dests = destination(
        "slow", sink.url("/slow"), retry={"initial_delay": 3600.0, "max_delay": 3600.0}
    ) + destination("crm", sink.url("/crm"), retry={"max_attempts": 1})
    relay = await start_relay(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE))
    assert (await relay.post("/hooks/user", subscribe_body("retry@example.com")))[0] == 200
    (dead,) = await dead_ids(relay, "crm", 1)
    store = relay.relay.store

    async def backing_off() -> bool:
        page = await store.list_deliveries(DeliveryState.PENDING, "slow", 10)
        return len(page.deliveries) == 1 and page.deliveries[0].delivery.attempts == 1

    await wait_until(backing_off, what="the slow delivery to wait out its backoff")
    waiting = (await store.list_deliveries(DeliveryState.PENDING, "slow", 10)).deliveries[0]
    event = f"/console/events/{waiting.delivery.event_id}"
    async with _browser() as client:
        csrf = await _login(client, relay)
        _, page = await get(client, relay, event)
        for delivery_id in (waiting.delivery.id, dead):
            assert f'action="/console/deliveries/{delivery_id}/retry"' in page

        form = {"csrf": csrf, "back": event}
        status, location, _ = await post(
            client, relay, f"/console/deliveries/{waiting.delivery.id}/retry", form
        )
        assert status == 303
        assert location == f"{event}?done=retry&delivery={waiting.delivery.id}#deliveries"
        await wait_until(lambda: len(sink.at("/slow")) == 2, what="the retry, now, not in 1 h")

        status, location, _ = await post(client, relay, f"/console/deliveries/{dead}/retry", form)
        assert status == 303
        again = int(re.search(r"new=(\d+)", location)[1])  # type: ignore[index]
        await wait_until(lambda: len(sink.at("/crm")) == 2, what="the dead one, sent again")
        _, page = await get(client, relay, location)
        assert f"Sent delivery {dead} again as delivery {again}" in page

        async def resolved() -> bool:
            record = await store.get_delivery(dead)
            return record is not None and record.resolved_by == f"delivery {again}"

        await wait_until(resolved, what="the dead letter resolved by its retry")
        _, page = await get(client, relay, event)
        assert f'<a href="#delivery-{again}">delivery {again}</a> (it got there)' in page

        # Delivered now: Control refuses, and the console says why in words.
        status, _, page = await post(client, relay, f"/console/deliveries/{again}/retry", form)
        assert status == 409
        assert f"Delivery {again} was delivered: replay its event to send it again." in page
    assert await audit(relay, "retry") == [(ALICE, str(dead)), (ALICE, str(waiting.delivery.id))]


# -- replays: list, cancel (with a confirmation), discard what they left --------------------------


async def test_a_running_replay_is_cancelled_after_a_confirmation_then_its_leftovers_discarded(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.hang.add("/crm")  # nothing drains: the replay waits for room after its first chunk
    dests = destination("crm", sink.url("/crm"), concurrency=1, timeout=30.0)
    relay = await start_relay(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE))
    jobs = relay.relay.control.replays
    jobs.inline_limit, jobs.walk_batch, jobs.feed = 10, 50, 10
    await stored_events(relay, 200)
    status, started = await admin_call(
        relay, "POST", "/admin/replay", {"filter": {"type": "subscribe"}, "destinations": ["crm"]},
        headers={"X-Relay-Operator": "bob"},
    )  # fmt: skip
    assert status == 202
    replay_id = started["replay_id"]
    store = relay.relay.store

    async def fed() -> bool:
        record = await store.get_replay(replay_id)
        return record is not None and record.created >= 10

    await wait_until(fed, what="the first chunk")
    async with _browser() as client:
        csrf = await _login(client, relay)
        _, page = await get(client, relay, "/console/replays")
        assert f'<tr data-replay="{replay_id}">' in page and "bob" in page and "running" in page
        _, page = await get(client, relay, f"/console/replays/{replay_id}")
        assert f'href="/console/replays/{replay_id}/cancel"' in page
        _, page = await get(client, relay, f"/console/replays/{replay_id}/cancel")
        assert f"Cancel replay #{replay_id}</button>" in page
        assert (await store.replay_state(replay_id)).value == "running"  # type: ignore[union-attr]

        status, location, _ = await post(
            client, relay, f"/console/replays/{replay_id}/cancel", {"csrf": csrf}
        )
        assert (status, location) == (303, f"/console/replays/{replay_id}?done=cancel")
        _, page = await get(client, relay, location)
        assert f"Cancelled by {ALICE}: it makes no more deliveries" in page
        record = await store.get_replay(replay_id)
        assert record is not None and record.cancelled_by == ALICE
        status, _, page = await post(
            client, relay, f"/console/replays/{replay_id}/cancel", {"csrf": csrf}
        )
        assert status == 409 and f"Replay {replay_id} is cancelled, not running." in page

        # What it left waiting: counted first (nothing changes), then dropped on confirm.
        waiting = DeliveryFilter(replay_id=replay_id)
        before = await store.count_waiting(waiting)
        assert before > 0
        back = f"/console/replays/{replay_id}"
        _, page = await get(client, relay, f"/console/discard?replay={replay_id}&back={back}")
        assert f"Dry run: <strong>{before}</strong> waiting deliveries match" in page
        assert await store.count_waiting(waiting) == before
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
        assert fields["replay"] == str(replay_id) and fields["until"].endswith("Z")
        status, location, _ = await post(client, relay, "/console/discard", fields)
        assert (status, location) == (303, f"{back}?done=discard&n={before}")
        _, page = await get(client, relay, location)
        assert f"Discarded {before} waiting deliveries" in page
        assert await store.count_waiting(waiting) == 0

        status, page = await get(client, relay, "/console/discard?back=/console")
        assert status == 400 and "filter: name at least one of" in page
    assert await audit(relay, "cancel") == [(ALICE, str(replay_id))]
    assert await audit(relay, "discard") == [(ALICE, None)]


# -- the audit trail -----------------------------------------------------------------------------


async def test_the_audit_page_lists_who_did_what_filtered_and_paged(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await start_relay(
        config_text(tmp_path / "relay.db", destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    hostile = "<b>mallory</b>"
    status, _ = await admin_call(
        relay, "POST", "/admin/destinations/crm/pause", headers={"X-Relay-Operator": hostile}
    )
    assert status == 200
    async with _browser() as client:
        csrf = await _login(client, relay)
        for action in ("resume", "pause", "resume"):
            status, _, _ = await post(
                client, relay, f"/console/destinations/crm/{action}", {"csrf": csrf}
            )
            assert status == 303

        status, page = await get(client, relay, "/console/audit")
        assert status == 200
        rows = re.findall(r'<tr data-action="(\w+)">.*?class="operator"><a [^>]*>([^<]*)</a>',
                          page, re.S)  # fmt: skip
        assert rows == [("resume", ALICE), ("pause", ALICE), ("resume", ALICE),
                        ("pause", "&lt;b&gt;mallory&lt;/b&gt;")]  # fmt: skip
        assert "<b>mallory" not in page

        _, page = await get(client, relay, "/console/audit?action=pause")
        assert page.count('<tr data-action="pause">') == 2 and 'data-action="resume"' not in page
        _, page = await get(client, relay, f"/console/audit?action=pause&operator={ALICE}")
        assert page.count("<tr data-action=") == 1

        monkeypatch.setattr(control_pages, "AUDIT_PER_PAGE", 3)
        _, page = await get(client, relay, "/console/audit")
        older = re.search(r'href="(/console/audit\?cursor=\d+)" rel="next"', page)
        assert older is not None and page.count("<tr data-action=") == 3
        _, page = await get(client, relay, older[1])
        assert page.count("<tr data-action=") == 1 and "mallory" in page

        status, page = await get(client, relay, "/console/audit?action=drop-tables")
        assert status == 400 and "is not an action relay records" in page


# -- the overview, from the store ----------------------------------------------------------------


async def test_overview_shows_recent_attempts_and_errors_of_every_process_from_the_store(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(
        config_text(db, destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    for n in range(2):
        assert (await relay.post("/hooks/user", subscribe_body(f"o{n}@example.com")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="two deliveries")
    # Another relay process sharing the store (its own SQLite connection) attempted a delivery
    # to a destination this one does not send to, and got a 503: this process never counted it.
    other = SqliteStore(StorageConfig(url=f"sqlite:///{db}"))
    await other.open()
    try:
        request = RawRequest(new_id(), "audience-user", "POST", "/hooks/user", "", (), b"x",
                             "text/plain", "", time.time())  # fmt: skip
        await other.ingest(request, [NewEvent("audience-user", "user", "subscribe",
                                              request.received_at, ("legacy",))])  # fmt: skip
        (claimed,) = await other.claim("legacy", 1, 60.0)
        result = AttemptResult(AttemptOutcome.SERVER_ERROR, time.time(), 0.01, 503,
                               response_head=b"HTTP/1.1 503\r\n\r\nmaintenance")  # fmt: skip
        later = Decision(DeliveryState.PENDING, next_attempt_at=time.time() + 3600)
        assert await other.complete(claimed, result, later)
    finally:
        await other.close()

    async with _browser() as client:
        await _login(client, relay)
        _, page = await get(client, relay, "/console")
    crm = re.search(r'id="destination-crm">(.*?)</tr>', page, re.S)
    legacy = re.search(r'id="destination-legacy">(.*?)</tr>', page, re.S)
    assert crm is not None and legacy is not None, page
    assert '<td class="recent">2, 100.0% 2xx</td>' in crm[1]
    assert '<td class="recent">1, 0.0% 2xx</td>' in legacy[1]
    assert "HTTP 503: HTTP/1.1 503 maintenance" in legacy[1]
    assert f'href="/console/deliveries/{claimed.id}"' in legacy[1]
    assert "those started in the last hour" in page
