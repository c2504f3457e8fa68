"""Filters are pure: a table of destinations and events, and who gets what."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest

from relay.config import Condition, DestinationConfig, InboundConfig
from relay.model import InboundKind, RawRequest
from relay.pipeline.events import derive_events
from relay.pipeline.routing import EventFacts, event_facts, matches, route
from relay.protocols.mandrill import parse_mandrill
from tests.support import SAMPLES


def dest(**kw: Any) -> DestinationConfig:
    return DestinationConfig(name=kw.pop("name", "d"), url="http://x", **kw)


SUB = EventFacts(
    type="subscribe",
    source="user",
    list_id="a6b5da1054",
    fields={"data": {"merges": {"COUNTRY": "DE", "FNAME": "Ann", "EMPTY": ""}}},
)


@pytest.mark.parametrize(
    ("destination", "event", "expected"),
    [
        (dest(), SUB, True),
        (dest(types=("subscribe",)), SUB, True),
        (dest(types=("unsubscribe",)), SUB, False),
        (dest(types=("sub*",)), SUB, True),
        (dest(types=("sms_*",)), EventFacts(type="sms_subscribe", source="user"), True),
        (dest(types=("sms_*",)), SUB, False),
        (dest(types=("blacklist.*",)), EventFacts(type="blacklist.add", source="tx"), True),
        (dest(types=("blacklist.*",)), EventFacts(type="whitelist.add", source="tx"), False),
        (dest(sources=("user", "admin")), SUB, True),
        (dest(sources=("api",)), SUB, False),
        (dest(types=("subscribe",), sources=("api",)), SUB, False),
        (dest(lists=("a6b5da1054",)), SUB, True),
        (dest(lists=("other",)), SUB, False),
        (dest(lists=("a6b5da1054",)), EventFacts(type="subscribe", source="user"), False),
        (dest(match=(Condition("data.merges.COUNTRY", equals="DE"),)), SUB, True),
        (dest(match=(Condition("data.merges.COUNTRY", equals="FR"),)), SUB, False),
        (dest(match=(Condition("data.merges.COUNTRY", one_of=("FR", "DE")),)), SUB, True),
        (dest(match=(Condition("data.merges.COUNTRY", one_of=("FR",)),)), SUB, False),
        (dest(match=(Condition("data.merges.FNAME", exists=True),)), SUB, True),
        (dest(match=(Condition("data.merges.EMPTY", exists=True),)), SUB, False),
        (dest(match=(Condition("data.merges.MISSING", exists=False),)), SUB, True),
        (dest(match=(Condition("data.merges", equals="x"),)), SUB, False),
        (
            dest(
                match=(
                    Condition("data.merges.COUNTRY", equals="DE"),
                    Condition("data.merges.FNAME", equals="Bob"),
                )
            ),
            SUB,
            False,
        ),
    ],
)
def test_filter_table(destination: DestinationConfig, event: EventFacts, expected: bool) -> None:
    assert matches(destination, event) is expected


def test_route_keeps_config_order() -> None:
    dests = [dest(name="b"), dest(name="a", types=("unsubscribe",)), dest(name="c")]
    assert route(dests, SUB) == ("b", "c")


@pytest.mark.parametrize("with_match", [False, True])
def test_each_event_of_a_mandrill_batch_is_routed_as_if_alone(with_match: bool) -> None:
    # A batch's events share routes looked up once per type (without match conditions): each
    # must still get what routing it alone gives, its ordered destinations included.
    elements = orjson.loads(
        (SAMPLES / "mandrill_all_event_types.mandrill_events.json").read_bytes()
    )
    # Two more sends that a match condition tells apart: one route per type would not.
    for state in ("sent", "rejected"):
        elements.append({"event": "send", "ts": 1, "_id": state, "msg": {"state": state}})
    body = b"mandrill_events=" + quote_plus(orjson.dumps(elements)).encode()
    inbound = InboundConfig(name="tx", path="/tx", kind=InboundKind.MANDRILL, source="mandrill")
    destinations = (
        dest(name="sends", types=("send", "deferral")),
        dest(name="bounces", types=("*bounce",), ordering="subscriber"),
        dest(name="all", ordering="subscriber"),
        dest(name="tx", sources=("mandrill",), types=("open", "click", "send")),
        *([dest(name="matched", match=(Condition("data.msg.state", equals="sent"),))]
          if with_match else []),
    )  # fmt: skip
    request = RawRequest(
        id="r", inbound="tx", method="POST", path="/tx", query="", headers=[], body=body,
        content_type="application/x-www-form-urlencoded", peer="", received_at=1.0,
    )  # fmt: skip
    events = derive_events(inbound, request, destinations)
    assert len({e.type for e in events}) > 4
    for event, element in zip(events, parse_mandrill(body).events, strict=True):
        facts = event_facts(
            type=event.type, source="mandrill", inbound="tx", list_id=None, email=event.email,
            data=element.data,
        )  # fmt: skip
        alone = route(destinations, facts)
        assert event.destinations == alone
        assert event.ordered == tuple(n for n in alone if n in ("bounces", "all"))
    assert any("sends" in e.destinations for e in events)
    assert any("bounces" in e.destinations for e in events)
    if with_match:
        assert any("matched" in e.destinations for e in events)
        assert any("matched" not in e.destinations for e in events)
