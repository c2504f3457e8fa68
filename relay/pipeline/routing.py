"""Decide which destinations an event goes to: pure functions over config and event fields.

route(settings.destinations, EventFacts(type="subscribe", source="user"))  # -> ("crm", ...)

A replay without named destinations routes each stored event again with today's filters
(``targets``), so a destination added after the event arrived gets it (a backfill) and one whose
filters no longer match does not. Type, source and list come from what was stored at ingest; the
body is parsed again only for ``match`` conditions, which look inside it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from relay.config import Condition, DestinationConfig, Settings
from relay.model import ReplayCandidate
from relay.pipeline.payload import parse_payload

_MISSING = object()


@dataclass(frozen=True, slots=True)
class EventFacts:
    """The fields of an event that filters look at."""

    type: str
    source: str
    list_id: str | None = None
    # The parsed event (for ``match`` conditions), e.g. {"data": {"merges": {"COUNTRY": "DE"}}}.
    fields: Mapping[str, Any] = field(default_factory=dict)


def event_facts(
    *,
    type: str,
    source: str,
    inbound: str,
    list_id: str | None,
    email: str | None,
    data: Any,
) -> EventFacts:
    """The facts filters see, for a new event at ingest and for a stored one at replay alike."""
    fields = {
        "type": type,
        "source": source,
        "inbound": inbound,
        "list_id": list_id,
        "email": email,
        "data": data if data is not None else {},
    }
    return EventFacts(type=type, source=source, list_id=list_id, fields=fields)


@lru_cache(maxsize=1024)
def _type_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


def type_matches(patterns: tuple[str, ...] | None, event_type: str) -> bool:
    """``types`` entries are exact names or shell-style globs (``sms_*``, ``blacklist.*``)."""
    if patterns is None:
        return True
    return _type_pattern(patterns).match(event_type) is not None


def lookup(fields: Mapping[str, Any], dotted: str) -> Any:
    """Follow a dotted path (``data.merges.COUNTRY``; list items by index) or return _MISSING."""
    node: Any = fields
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def condition_holds(condition: Condition, fields: Mapping[str, Any]) -> bool:
    value = lookup(fields, condition.field)
    if condition.exists is not None:
        present = value is not _MISSING and value not in ("", None)
        return present is condition.exists
    if value is _MISSING or isinstance(value, Mapping | list):
        return False
    text = value if isinstance(value, str) else str(value)
    if condition.equals is not None:
        return text == condition.equals
    return condition.one_of is not None and text in condition.one_of


def matches(destination: DestinationConfig, event: EventFacts) -> bool:
    """True when every filter the destination sets accepts the event (unset filters accept all)."""
    if destination.sources is not None and event.source not in destination.sources:
        return False
    if not type_matches(destination.types, event.type):
        return False
    if destination.lists is not None and event.list_id not in destination.lists:
        return False
    return all(condition_holds(c, event.fields) for c in destination.match)


def route(destinations: Iterable[DestinationConfig], event: EventFacts) -> tuple[str, ...]:
    return tuple(d.name for d in destinations if matches(d, event))


def needs_payload(destinations: Iterable[DestinationConfig]) -> bool:
    """Whether routing must parse bodies: only ``match`` conditions look inside them."""
    return any(d.match for d in destinations)


def targets(settings: Settings, candidate: ReplayCandidate) -> tuple[str, ...]:
    """The destinations whose filters accept this stored event today."""
    event = candidate.event
    data: Any = None
    if candidate.payload is not None:
        kind = settings.inbound_kind(event.inbound)
        data, _ = parse_payload(kind, candidate.payload, candidate.content_type)
    facts = event_facts(
        type=event.type, source=event.source, inbound=event.inbound, list_id=event.list_id,
        email=event.email, data=data,
    )  # fmt: skip
    return route(settings.destinations, facts)
