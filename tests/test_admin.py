"""The admin API on a real socket: auth on every route, event lists, details, destinations."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

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

ROUTES = [
    ("GET", "/admin/events"),
    ("GET", "/admin/events/01J0000000000000000000000"),
    ("POST", "/admin/events/01J0000000000000000000000/replay"),
    ("POST", "/admin/replay"),
    ("GET", "/admin/replays/1"),
    ("GET", "/admin/deliveries"),
    ("GET", "/admin/destinations"),
    ("POST", "/admin/destinations/crm/pause"),
    ("POST", "/admin/destinations/crm/resume"),
    ("POST", "/admin/prune"),
    ("GET", "/admin/no-such-route"),
]


async def _relay(
    start_relay: RelayFactory, tmp_path: Path, sink: Sink, **dest: Any
) -> RelayUnderTest:
    dests = destination("crm", sink.url("/crm"), **dest)
    dests += destination("warehouse", sink.url("/warehouse"), types=["unsubscribe"])
    return await start_relay(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE))


async def _post_events(
    relay: RelayUnderTest, n: int, prefix: str = "user", kind: str = "subscribe"
) -> None:
    for i in range(n):
        status, _ = await relay.post(
            "/hooks/user", subscribe_body(f"{prefix}{i}@example.com", kind=kind)
        )
        assert status == 200


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_admin_route_requires_the_bearer_token(
    method: str, path: str, tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    closed = await start_relay(
        config_text(tmp_path / "closed.db", destination("crm", sink.url("/crm")))
    )
    status, answer = await admin_call(closed, method, path)
    assert (status, answer["error"]) == (401, "admin API disabled: no [admin] token configured")

    relay = await _relay(start_relay, tmp_path, sink)
    status, answer = await admin_call(relay, method, path, token=None)
    assert (status, answer["error"]) == (401, "missing bearer token")
    status, answer = await admin_call(relay, method, path, token="adm1n-t0keX")
    assert (status, answer["error"]) == (401, "invalid admin token")
    status, answer = await admin_call(
        relay, method, path, headers={"Authorization": "Basic YTpi"}, token=None
    )
    assert status == 401
    # The right token gets past auth: whatever the route answers, it is not 401.
    status, answer = await admin_call(relay, method, path)
    assert status != 401, answer


async def test_wrong_method_and_unknown_route_answer_json_errors(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    assert await admin_call(relay, "GET", "/admin/replay") == (
        405,
        {"error": "method GET not allowed on /admin/replay"},
    )
    assert await admin_call(relay, "GET", "/admin/nothing") == (
        404,
        {"error": "no admin route /admin/nothing"},
    )
    assert await admin_call(relay, "GET", "/admin/events/NOPE") == (
        404,
        {"error": "unknown event: NOPE"},
    )
    status, answer = await admin_call(relay, "POST", "/admin/destinations/nope/pause")
    assert (status, answer) == (404, {"error": "unknown destination: nope"})


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("colour=red", "unknown filter 'colour'"),
        ("state=lost", "state: 'lost' is not one of"),
        ("since=yesterday", "since: 'yesterday' is not an ISO-8601 time or Unix seconds"),
        ("limit=0", "limit: expected a whole number from 1 to 1000"),
        ("limit=1001", "limit: expected a whole number from 1 to 1000"),
        ("limit=%C2%B2", "limit: expected a whole number from 1 to 1000"),
        ("since=" + "9" * 400, "since: out of range (Unix seconds, not milliseconds"),
        ("until=-" + "9" * 400, "until: out of range"),
        ("until=1795936000000", "until: out of range"),
        ("since=9999-12-31T23:59:59-05:00", "since: out of range"),
    ],
)
async def test_bad_event_filters_are_400_with_the_reason(
    query: str, reason: str, tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    status, answer = await admin_call(relay, "GET", f"/admin/events?{query}")
    assert status == 400
    assert answer["error"].startswith(reason)


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("GET", "/admin/deliveries?cursor=%C2%B2", None, "cursor: expected a delivery id"),
        ("GET", "/admin/deliveries?cursor=" + "9" * 23, None, "cursor: expected a delivery id"),
        ("POST", "/admin/replay", {"filter": {"until": 1795936000000}, "dry_run": True},
         "until: out of range"),
        ("POST", "/admin/replay", {"filter": {"since": 1e20}}, "since: out of range"),
        ("POST", "/admin/events/X/replay", {"destination": ["crm"]}, "unknown key 'destination'"),
        ("POST", "/admin/events/X/replay", {"dry_run": "yes"}, "dry_run: expected true or false"),
        ("POST", "/admin/prune", {"older_than_days": 1e308}, "older_than_days: expected a number"),
    ],
)  # fmt: skip
async def test_bad_admin_input_is_400_never_500(
    method: str,
    path: str,
    body: dict[str, Any] | None,
    reason: str,
    tmp_path: Path,
    sink: Sink,
    start_relay: RelayFactory,
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    status, answer = await admin_call(relay, method, path, body)
    assert (status, answer["error"][: len(reason)]) == (400, reason)


async def test_odd_replay_ids_are_404(tmp_path: Path, sink: Sink, start_relay: RelayFactory) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    for text in ("%C2%B2", "9" * 23):
        status, answer = await admin_call(relay, "GET", f"/admin/replays/{text}")
        assert status == 404, answer


async def test_event_filters_select_by_each_field(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    await _post_events(relay, 3)
    status, _ = await relay.post(
        "/hooks/admin", subscribe_body("boss@example.com", list_id="L2", kind="unsubscribe")
    )
    assert status == 200

    async def delivered() -> bool:
        # Recorded, not only received by the sink: the state filter below reads the record.
        path = "/admin/deliveries?state=delivered&destination=warehouse"
        return len((await admin_call(relay, "GET", path))[1]["deliveries"]) == 1

    await wait_until(delivered, what="the unsubscribe delivery to be recorded")

    async def ids(query: str) -> list[str]:
        status, answer = await admin_call(relay, "GET", f"/admin/events?{query}")
        assert status == 200, answer
        return [e["email"] for e in answer["events"]]

    assert await ids("") == [
        "boss@example.com",
        "user2@example.com",
        "user1@example.com",
        "user0@example.com",
    ]
    assert await ids("type=unsubscribe") == ["boss@example.com"]
    assert await ids("source=admin") == ["boss@example.com"]
    assert await ids("inbound=audience-user&limit=2") == ["user2@example.com", "user1@example.com"]
    assert await ids("list=L2") == ["boss@example.com"]
    assert await ids("email=user1@example.com") == ["user1@example.com"]
    assert await ids("state=delivered&destination=warehouse") == ["boss@example.com"]
    assert await ids("since=2001-01-01&until=2999-01-01T00:00:00Z") == await ids("")
    assert await ids("until=2001-01-01") == []
    status, answer = await admin_call(relay, "GET", "/admin/events?type=unsubscribe")
    event = answer["events"][0]
    assert set(event) >= {
        "id",
        "received_at",
        "inbound",
        "type",
        "source",
        "list_id",
        "email",
        "fired_at",
        "parse_error",
        "duplicate_of",
    }
    assert event["received_at"].endswith("Z") and event["fired_at"] == "2026-11-02T10:00:00.000Z"
    since = event["received_at_unix"]
    assert await ids(f"since={since}") == ["boss@example.com"]


async def test_pagination_has_no_duplicates_or_gaps_while_events_arrive(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    await _post_events(relay, 25, prefix="old")
    _, first = await admin_call(relay, "GET", "/admin/events?limit=1000")
    existing = [e["id"] for e in first["events"]]
    assert len(existing) == 25

    arriving = asyncio.create_task(_post_events(relay, 25, prefix="new"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        status, page = await admin_call(relay, "GET", f"/admin/events?{query}")
        assert status == 200
        if pages == 0:
            # Newer events may open the first page; every later page continues below the cursor.
            seen += [e["id"] for e in page["events"] if e["id"] <= existing[0]]
        else:
            seen += [e["id"] for e in page["events"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        await asyncio.sleep(0)  # let the writer commit new events between pages
    await arriving
    assert seen == existing
    assert pages > 5
    _, everything = await admin_call(relay, "GET", "/admin/events?limit=1000")
    assert len(everything["events"]) == 50


async def test_event_detail_shows_request_parsed_body_deliveries_and_attempts(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503, 200)
    relay = await _relay(start_relay, tmp_path, sink)
    body = subscribe_body("ann@example.com")
    await relay.post("/hooks/user", body)
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="a retry that succeeds")
    event_id = sink.at("/crm")[0].headers["X-Relay-Event-Id"]

    async def delivered() -> bool:
        _, detail = await admin_call(relay, "GET", f"/admin/events/{event_id}")
        return bool(detail["deliveries"]) and detail["deliveries"][0]["state"] == "delivered"

    await wait_until(delivered, what="the delivery to be recorded")
    status, detail = await admin_call(relay, "GET", f"/admin/events/{event_id}")
    assert status == 200
    request = detail["request"]
    assert base64.b64decode(request["body_b64"]) == body
    assert request["method"] == "POST" and request["path"] == "/hooks/user"
    assert request["query"] == "secret=REDACTED"
    assert request["content_type"] == "application/x-www-form-urlencoded"
    assert detail["parsed"]["data"]["email"] == "ann@example.com"
    assert detail["parsed"]["type"] == "subscribe"
    (crm,) = detail["deliveries"]
    assert (crm["destination"], crm["state"], crm["attempts"], crm["replay_id"]) == (
        "crm",
        "delivered",
        2,
        None,
    )
    assert [(a["number"], a["outcome"], a["status"]) for a in crm["attempts_log"]] == [
        (1, "5xx", 503),
        (2, "2xx", 200),
    ]
    assert crm["attempts_log"][0]["response_head"]


async def test_dead_deliveries_are_listed_with_their_last_error(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 500)
    relay = await _relay(start_relay, tmp_path, sink, retry={"max_attempts": 2})
    await _post_events(relay, 2)

    async def both_dead() -> bool:
        _, answer = await admin_call(relay, "GET", "/admin/deliveries?state=dead")
        return len(answer["deliveries"]) == 2

    await wait_until(both_dead, what="both deliveries to die")
    status, answer = await admin_call(
        relay, "GET", "/admin/deliveries?state=dead&destination=crm&limit=1"
    )
    assert status == 200
    (item,) = answer["deliveries"]
    assert item["destination"] == "crm" and item["state"] == "dead" and item["type"] == "subscribe"
    assert item["email"] == "user1@example.com"
    assert item["last_status"] == 500 and item["last_error"] == "HTTP 500: sink says hi"
    assert item["dead_reason"] == "gave up after 2 attempts"
    assert answer["next_cursor"] == str(item["id"])
    _, rest = await admin_call(
        relay, "GET", f"/admin/deliveries?state=dead&cursor={answer['next_cursor']}"
    )
    assert [d["email"] for d in rest["deliveries"]] == ["user0@example.com"]
    assert rest["next_cursor"] is None
    _, none = await admin_call(relay, "GET", "/admin/deliveries?state=dead&destination=warehouse")
    assert none["deliveries"] == []

    _, listing = await admin_call(relay, "GET", "/admin/destinations")
    by_name = {d["name"]: d for d in listing["destinations"]}
    assert by_name["crm"]["counts"]["dead"] == 2 and by_name["crm"]["paused"] is False
    assert by_name["warehouse"]["counts"] == {"pending": 0, "delivering": 0, "paused": 0, "dead": 0}


async def test_a_replay_until_the_epoch_matches_nothing(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    await _post_events(relay, 3)
    for until in (0, "1970-01-01T00:00:00Z"):
        status, answer = await admin_call(
            relay, "POST", "/admin/replay", {"filter": {"until": until}, "dry_run": True}
        )
        assert (status, answer["matched"], answer["deliveries"]) == (200, 0, 0)
    status, answer = await admin_call(relay, "POST", "/admin/replay", {"dry_run": True})
    assert (status, answer["matched"]) == (200, 3)
