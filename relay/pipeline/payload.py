"""Which destinations a stored event goes to today, and how it reads parsed (pure, no I/O).

    targets(settings, candidate)   # -> ("crm", "warehouse"): the filters as configured now

A replay without named destinations routes each stored event again with today's filters, so a
destination added after the event arrived gets it (a backfill) and one whose filters no longer
match does not. Type, source and list come from what was stored at ingest; the body is parsed
again only for ``match`` conditions, which look inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.config import DestinationConfig, Settings
from relay.model import EventRecord, InboundKind, ReplayCandidate
from relay.pipeline.routing import EventFacts, route
from relay.protocols import mailchimp


def parsed_data(kind: InboundKind | None, payload: bytes, content_type: str | None) -> Any:
    """The event's parsed ``data`` as ingest saw it: what ``match`` conditions look into."""
    if kind is InboundKind.MANDRILL:
        batch = mailchimp.parse_mandrill(payload)
        return batch.events[0].data if batch.events else {}
    if kind is InboundKind.JOURNEY:
        data, _ = mailchimp.parse_form_json(payload, content_type)
        return data if data is not None else {}
    if kind is InboundKind.MAILCHIMP:
        return mailchimp.parse_audience(payload).data
    return {}


def parsed_view(kind: InboundKind | None, payload: bytes, content_type: str | None) -> Any:
    """What an operator reads as the parsed event: the whole form for audience webhooks."""
    if kind is InboundKind.MAILCHIMP:
        return mailchimp.parse_audience(payload).fields
    return parsed_data(kind, payload, content_type)


def needs_payload(destinations: Sequence[DestinationConfig]) -> bool:
    """Whether routing must parse bodies: only ``match`` conditions look inside them."""
    return any(d.match for d in destinations)


def inbound_kind(settings: Settings, inbound: str) -> InboundKind | None:
    """The kind of a configured inbound; None when it has since been removed from the config."""
    found = next((i for i in settings.inbounds if i.name == inbound), None)
    return found.kind if found is not None else None


def facts(event: EventRecord, data: Any) -> EventFacts:
    """The routing facts of a stored event, shaped as ingest shapes them for new ones."""
    fields = {
        "type": event.type,
        "source": event.source,
        "inbound": event.inbound,
        "list_id": event.list_id,
        "email": event.email,
        "data": data,
    }
    return EventFacts(type=event.type, source=event.source, list_id=event.list_id, fields=fields)


def targets(settings: Settings, candidate: ReplayCandidate) -> tuple[str, ...]:
    """The destinations whose filters accept this stored event today."""
    data: Any = {}
    if candidate.payload is not None:
        kind = inbound_kind(settings, candidate.event.inbound)
        data = parsed_data(kind, candidate.payload, candidate.content_type)
    return route(settings.destinations, facts(candidate.event, data))
