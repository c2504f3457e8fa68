"""Filters are pure: a table of destinations and events, and who gets what."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config import Condition, DestinationConfig
from relay.pipeline.routing import EventFacts, matches, route


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
