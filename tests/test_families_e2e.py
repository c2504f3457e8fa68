"""Every webhook family through real sockets: Mandrill batches, journeys, signatures, formats."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocols.event_types import KNOWN_TYPES
from relay.protocols.mailchimp import mailchimp_signature, mandrill_signature, parse_mandrill
from relay.protocols.standard_webhooks import verify_standard_webhook
from tests.support import (
    SAMPLES,
    RelayFactory,
    Sink,
    config_text,
    destination,
    sample,
    wait_until,
)

PUBLIC_URL = "https://relay.example.com/hooks/mandrill"
MANDRILL_KEY = "k3yForRelayTests"

INBOUNDS = f"""
[[inbound]]
name = "audience-user"
path = "/hooks/user"
kind = "mailchimp"
secret = "s3cret"
source = "user"

[[inbound]]
name = "signed"
path = "/hooks/signed"
kind = "mailchimp"
source = "api"
signing_secret = "whsec_relay_example"

[[inbound]]
name = "tx"
path = "/hooks/mandrill"
kind = "mandrill"
source = "transactional"
mandrill_key = "{MANDRILL_KEY}"
public_url = "{PUBLIC_URL}"

[[inbound]]
name = "welcome"
path = "/hooks/journey/welcome"
kind = "journey"
source = "journey"
event_type = "journey.welcome"
event_type_header = "X-Journey-Event"
secret = "s3cret"
bearer_token = "j0urney-t0ken"
auth_username = "mc"
auth_password = "pa55"
"""


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


async def test_mandrill_batch_becomes_one_event_and_delivery_per_element(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    dests = destination("all", sink.url("/all"))
    dests += destination("bounces", sink.url("/bounces"), types=["*_bounce", "blacklist.*"])
    relay = await start_relay(config_text(db, dests, inbounds=INBOUNDS))
    body = sample("mandrill_all_event_types.txt")
    sig = mandrill_signature(MANDRILL_KEY, PUBLIC_URL, body)
    status, _ = await relay.post(
        "/hooks/mandrill", body, query="", headers={"X-Mandrill-Signature": sig}
    )
    assert status == 200
    elements = json.loads(
        (SAMPLES / "mandrill_all_event_types.mandrill_events.json").read_text()
    )
    await wait_until(lambda: len(sink.at("/all")) == len(elements), what="one delivery per element")
    assert len(db_rows(db, "SELECT id FROM requests")) == 1
    types = sorted(r.headers["X-Relay-Event-Type"] for r in sink.at("/all"))
    assert types == sorted(e.get("event") or f"{e['type']}.{e['action']}" for e in elements)
    # Each delivery is a one-element Mandrill batch with the element's JSON text unchanged.
    raws = {e.raw for e in parse_mandrill(body).events}
    for received in sink.at("/all"):
        (event,) = parse_mandrill(received.body).events
        assert event.raw in raws
        assert received.headers["Content-Type"] == "application/x-www-form-urlencoded"
    expected = [t for t in types if t.endswith("_bounce") or t.startswith("blacklist.")]
    assert expected  # the sample has both kinds
    await wait_until(lambda: len(sink.at("/bounces")) == len(expected))
    assert sorted(r.headers["X-Relay-Event-Type"] for r in sink.at("/bounces")) == expected


async def test_mandrill_batch_counts_each_event_by_type(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    relay = await start_relay(config_text(tmp_path / "relay.db", inbounds=INBOUNDS))
    elements = json.loads(
        (SAMPLES / "mandrill_all_event_types.mandrill_events.json").read_text()
    )
    # Every type three times (a later ts each time, so none is a duplicate).
    batch = [{**e, "ts": e["ts"] + i} for i in range(3) for e in elements]
    body = b"mandrill_events=" + quote_plus(json.dumps(batch)).encode()
    sig = mandrill_signature(MANDRILL_KEY, PUBLIC_URL, body)
    status, _ = await relay.post(
        "/hooks/mandrill", body, query="", headers={"X-Mandrill-Signature": sig}
    )
    assert status == 200
    assert relay.session is not None
    async with relay.session.get(relay.url("/metrics")) as r:
        metrics = await r.text()
    counted = Counter[str]()
    for family in text_string_to_metric_families(metrics):
        for point in family.samples:
            if point.name == "relay_events_received_total" and point.labels["inbound"] == "tx":
                counted[point.labels["type"]] += int(point.value)
    types = [e.get("event") or f"{e['type']}.{e['action']}" for e in batch]
    assert counted == Counter(t if t in KNOWN_TYPES else "other" for t in types)
    assert len(counted) > 1


async def test_mandrill_bad_signature_is_401_and_nothing_stored(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, inbounds=INBOUNDS))
    body = sample("mandrill_sync_blacklist_add.txt")
    good = mandrill_signature(MANDRILL_KEY, PUBLIC_URL, body)
    for bad in [
        None,
        "",
        good[:-2] + "AA",
        mandrill_signature(MANDRILL_KEY, PUBLIC_URL + "/", body),
    ]:
        headers = {"X-Mandrill-Signature": bad} if bad is not None else {}
        status, _ = await relay.post("/hooks/mandrill", body, query="", headers=headers)
        assert status == 401
    assert db_rows(db, "SELECT count(*) FROM requests") == [(0,)]
    status, _ = await relay.post(
        "/hooks/mandrill", body, query="", headers={"X-Mandrill-Signature": good}
    )
    assert status == 200
    assert db_rows(db, "SELECT type FROM events") == [("blacklist.add",)]


async def test_mandrill_validation_head_and_test_post_answer_200(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, inbounds=INBOUNDS))
    assert relay.session is not None
    async with relay.session.head(relay.url("/hooks/mandrill")) as r:
        assert r.status == 200
    body = sample("mandrill_validation_post.txt")
    sig = mandrill_signature("test-webhook", PUBLIC_URL, body)
    status, _ = await relay.post(
        "/hooks/mandrill", body, query="", headers={"X-Mandrill-Signature": sig}
    )
    assert status == 200
    assert db_rows(db, "SELECT count(*) FROM events") == [(0,)]
    # The fixed test key is public: it only ever admits an empty batch, never real events
    # and never a body that is not a Mandrill batch at all.
    for other in (
        sample("mandrill_sync_blacklist_add.txt"),
        b"anything=ATTACKER+CONTROLLED+PAYLOAD",
        b"mandrill_events=not-json",
    ):
        sig = mandrill_signature("test-webhook", PUBLIC_URL, other)
        status, _ = await relay.post(
            "/hooks/mandrill", other, query="", headers={"X-Mandrill-Signature": sig}
        )
        assert status == 401, other
    assert db_rows(db, "SELECT count(*) FROM requests") == [(1,)]


async def test_signed_audience_webhook_is_verified(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(
        config_text(db, destination("crm", sink.url("/crm")), inbounds=INBOUNDS)
    )
    body = sample("mc_doc_subscribe.txt")
    now = int(time.time())
    good = mailchimp_signature("whsec_relay_example", now, body)
    stale = mailchimp_signature("whsec_relay_example", now - 600, body)
    wrong = mailchimp_signature("another-secret", now, body)
    for header in [None, stale, wrong, "t=abc,v1=00", good.replace("v1=", "v1=0")]:
        headers = {"X-Mailchimp-Signature": header} if header else {}
        assert (await relay.post("/hooks/signed", body, query="", headers=headers))[0] == 401
    assert db_rows(db, "SELECT count(*) FROM requests") == [(0,)]
    headers = {"X-Mailchimp-Signature": good}
    assert (await relay.post("/hooks/signed", body, query="", headers=headers))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    assert sink.at("/crm")[0].body == body


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("secret=s3cret", {}, 200),
        ("", {"Authorization": "Bearer j0urney-t0ken"}, 200),
        ("", {"Authorization": "Basic " + base64.b64encode(b"mc:pa55").decode()}, 200),
        ("", {"Authorization": "Bearer nope"}, 401),
        ("", {"Authorization": "Basic " + base64.b64encode(b"mc:wrong").decode()}, 401),
        ("", {"Authorization": "Basic !!!"}, 401),
        ("", {}, 401),
    ],
)
async def test_journey_accepts_url_secret_bearer_or_basic(
    query: str, headers: dict[str, str], status: int, tmp_path: Path, start_relay: RelayFactory
) -> None:
    relay = await start_relay(config_text(tmp_path / "relay.db", inbounds=INBOUNDS))
    body = b'{"email": "ann@example.com", "step": "welcome"}'
    got, _ = await relay.post("/hooks/journey/welcome", body, "application/json", query, headers)
    assert got == status


async def test_journey_bodies_are_forwarded_as_sent_with_configured_or_header_type(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, destination("j", sink.url("/j")), inbounds=INBOUNDS))
    json_body = b'{"email":"ann@example.com","merge":{"FNAME":"Ann"}}'
    form_body = b"email=bob%40example.com&tier=gold"
    assert (await relay.post("/hooks/journey/welcome", json_body, "application/json"))[0] == 200
    assert (
        await relay.post(
            "/hooks/journey/welcome", form_body, headers={"X-Journey-Event": "journey.vip"}
        )
    )[0] == 200
    await wait_until(lambda: len(sink.at("/j")) == 2)
    first, second = sink.at("/j")
    assert (first.body, first.headers["Content-Type"]) == (json_body, "application/json")
    assert first.headers["X-Relay-Event-Type"] == "journey.welcome"
    assert (second.body, second.headers["X-Relay-Event-Type"]) == (form_body, "journey.vip")
    assert sorted(r[0] for r in db_rows(db, "SELECT email FROM events")) == [
        "ann@example.com",
        "bob@example.com",
    ]


async def test_json_format_sends_the_documented_envelope(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    dests = destination("svc", sink.url("/svc"), format="json")
    relay = await start_relay(config_text(db, dests, inbounds=INBOUNDS))
    assert (await relay.post("/hooks/user", sample("mc_doc_profile.txt")))[0] == 200
    body = sample("mandrill_sync_blacklist_add.txt")
    sig = mandrill_signature(MANDRILL_KEY, PUBLIC_URL, body)
    assert (
        await relay.post("/hooks/mandrill", body, query="", headers={"X-Mandrill-Signature": sig})
    )[0] == 200
    await wait_until(lambda: len(sink.at("/svc")) == 2)
    audience, mandrill = (orjson.loads(r.body) for r in sink.at("/svc"))
    assert sink.at("/svc")[0].headers["Content-Type"] == "application/json"
    assert audience["id"] == sink.at("/svc")[0].headers["X-Relay-Event-Id"]
    assert {k: audience[k] for k in ("inbound", "source", "type", "fired_at", "replay")} == {
        "inbound": "audience-user",
        "source": "user",
        "type": "profile",
        "fired_at": "2009-03-26T21:31:21.000Z",
        "replay": False,
    }
    assert audience["received_at"].endswith("Z")
    assert audience["data"]["merges"] == {
        "EMAIL": "api@mailchimp.com",
        "FNAME": "Mailchimp",
        "LNAME": "API",
        "INTERESTS": "Group1,Group2",
    }
    assert mandrill["type"] == "blacklist.add"
    assert mandrill["data"]["reject"]["email"] == "blacklist@mandrilldotnet.org"
    assert mandrill["fired_at"] == "2017-01-01T16:56:20.000Z"


async def test_signing_secret_adds_standard_webhooks_headers(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    secret = "whsec_" + base64.b64encode(b"relay-downstream-key").decode()
    sink.on("/svc", 500, 200)
    dests = destination("svc", sink.url("/svc"), signing_secret=secret)
    relay = await start_relay(config_text(tmp_path / "relay.db", dests))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/svc")) == 2)
    for received in sink.at("/svc"):
        assert received.headers["webhook-id"] == received.headers["X-Relay-Event-Id"]
        assert verify_standard_webhook(secret, received.headers, received.body, time.time())
        assert not verify_standard_webhook(
            secret, received.headers, received.body + b"x", time.time()
        )


async def test_retried_webhook_is_stored_but_delivered_once(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, destination("crm", sink.url("/crm"))))
    body = sample("mc_doc_unsubscribe.txt")
    for _ in range(3):
        assert (await relay.post("/hooks/user", body))[0] == 200
    other = sample("mc_doc_subscribe.txt")
    assert (await relay.post("/hooks/user", other))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2)
    rows = db_rows(db, "SELECT id, duplicate_of FROM events ORDER BY id")
    assert len(rows) == 4
    first = rows[0][0]
    assert [r[1] for r in rows] == [None, first, first, None]
    assert db_rows(db, "SELECT count(*) FROM deliveries") == [(2,)]
    assert len(db_rows(db, "SELECT id FROM requests")) == 4


async def test_a_control_character_in_the_type_does_not_stop_delivery(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, destination("all", sink.url("/all"))))
    body = sample("mc_doc_subscribe.txt").replace(b"type=subscribe", b"type=sub%0Ascribe")
    assert (await relay.post("/hooks/user", body))[0] == 200
    await wait_until(lambda: len(sink.at("/all")) == 1)
    (got,) = sink.at("/all")
    # The header cannot carry the newline; the stored event and the body keep it.
    assert (got.body, got.headers["X-Relay-Event-Type"]) == (body, "sub?scribe")
    assert db_rows(db, "SELECT type FROM events") == [("sub\nscribe",)]


async def test_distinct_events_sharing_a_natural_key_are_all_delivered(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(
        config_text(db, destination("all", sink.url("/all")), inbounds=INBOUNDS)
    )
    profile = sample("mc_doc_profile.txt")
    renamed = profile.replace(b"FNAME%5D=Mailchimp", b"FNAME%5D=Renamed")
    subscribe = sample("mc_doc_subscribe.txt")
    other_list = subscribe.replace(b"a6b5da1054", b"b7c6eb2165")
    assert renamed != profile and other_list != subscribe
    # Same type, id and fired_at as their neighbour, different content: not retries.
    audience = [profile, renamed, subscribe, other_list]
    for body in audience:
        assert (await relay.post("/hooks/user", body))[0] == 200
    # Mandrill: two clicks on one message in the same second, on different links.
    click = {"event": "click", "_id": "m1", "ts": 1420303407, "msg": {"email": "a@example.com"}}
    clicks = [
        json.dumps({**click, "url": url}) for url in ("https://a.example", "https://b.example")
    ]
    mandrill_body = b"mandrill_events=" + quote_plus(f"[{','.join(clicks)}]").encode()
    signature = mandrill_signature(MANDRILL_KEY, PUBLIC_URL, mandrill_body)
    status, _ = await relay.post(
        "/hooks/mandrill", mandrill_body, query="", headers={"X-Mandrill-Signature": signature}
    )
    assert status == 200
    await wait_until(lambda: len(sink.at("/all")) == 6, what="every distinct event")
    assert {r.body for r in sink.at("/all")} >= set(audience)
    assert db_rows(db, "SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL") == [(0,)]
    # A byte-identical retry of either kind is still recognised.
    assert (await relay.post("/hooks/user", renamed))[0] == 200
    status, _ = await relay.post(
        "/hooks/mandrill", mandrill_body, query="", headers={"X-Mandrill-Signature": signature}
    )
    assert status == 200
    assert db_rows(db, "SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL") == [(3,)]
    assert len(sink.at("/all")) == 6


async def test_dedup_window_zero_disables_dedup(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(
        config_text(db, destination("crm", sink.url("/crm")), extra="[dedup]\nwindow = 0")
    )
    body = sample("mc_doc_unsubscribe.txt")
    for _ in range(2):
        assert (await relay.post("/hooks/user", body))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2)


async def test_lists_and_match_filters_in_toml(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    dests = destination("snowplow-list", sink.url("/list"), lists=["f1243a3b12"])
    dests += destination("smiths", sink.url("/smiths"))
    dests += '[[destination.match]]\nfield = "data.merges.LNAME"\none_of = ["Smith", "Doe"]\n'
    dests += destination("everything", sink.url("/everything"))
    relay = await start_relay(config_text(db, dests))
    names = [
        "mc_subscribe_snowplow_2014.txt",
        "mc_unsubscribe_snowplow_2014.txt",
        "mc_doc_profile.txt",
        "mc_unsubscribe_campaign_2020.txt",
    ]
    for name in names:
        assert (await relay.post("/hooks/user", sample(name)))[0] == 200
    await wait_until(lambda: len(sink.at("/everything")) == 4)
    await wait_until(lambda: len(sink.at("/list")) == 2 and len(sink.at("/smiths")) == 1)
    assert {r.headers["X-Relay-Event-Type"] for r in sink.at("/list")} == {
        "subscribe",
        "unsubscribe",
    }
