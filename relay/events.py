"""Turn one stored request into events (pure): type, source, list, email, dedup key, destinations.

    derive_events(inbound, request, destinations)  # -> [NewEvent, ...]; one per Mandrill element

A body that does not parse still yields one event, typed "unknown" with its parse error, so that
whatever Mailchimp sent is kept and can be replayed once the cause is understood.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from relay import mailchimp
from relay.config import DestinationConfig, InboundConfig
from relay.model import UNKNOWN_TYPE, InboundKind, NewEvent, RawRequest, new_id
from relay.routing import EventFacts, route

MANDRILL_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _header(request: RawRequest, name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in request.headers if k.lower() == lowered), None)


def derive_events(
    inbound: InboundConfig,
    request: RawRequest,
    destinations: Sequence[DestinationConfig],
) -> list[NewEvent]:
    if inbound.kind is InboundKind.MANDRILL:
        return _mandrill_events(inbound, request, destinations)
    if inbound.kind is InboundKind.JOURNEY:
        return [_journey_event(inbound, request, destinations)]
    return [_audience_event(inbound, request, destinations)]


def _event(
    inbound: InboundConfig,
    request: RawRequest,
    destinations: Sequence[DestinationConfig],
    *,
    type: str,
    data: Any,
    list_id: str | None = None,
    email: str | None = None,
    fired_at: float | None = None,
    parse_error: str | None = None,
    dedup_key: str | None = None,
    payload: bytes | None = None,
) -> NewEvent:
    fields: Mapping[str, Any] = {
        "type": type,
        "source": inbound.source,
        "inbound": inbound.name,
        "list_id": list_id,
        "email": email,
        "data": data if data is not None else {},
    }
    facts = EventFacts(type=type, source=inbound.source, list_id=list_id, fields=fields)
    return NewEvent(
        id=new_id(),
        request_id=request.id,
        inbound=inbound.name,
        source=inbound.source,
        type=type,
        received_at=request.received_at,
        destinations=route(destinations, facts),
        list_id=list_id,
        email=email,
        fired_at=fired_at,
        parse_error=parse_error,
        dedup_key=dedup_key,
        payload=payload,
        payload_content_type=MANDRILL_CONTENT_TYPE if payload is not None else None,
    )


def _audience_event(
    inbound: InboundConfig, request: RawRequest, destinations: Sequence[DestinationConfig]
) -> NewEvent:
    # The full nested parse costs several times the summary; only `match` filters need it.
    parsed: mailchimp.AudienceEvent | mailchimp.AudienceSummary
    if any(d.match for d in destinations):
        parsed = mailchimp.parse_audience(request.body)
        data: Any = parsed.data
    else:
        parsed = mailchimp.summarize_audience(request.body)
        data = None
    return _event(
        inbound,
        request,
        destinations,
        type=parsed.type,
        data=data,
        list_id=parsed.list_id,
        email=parsed.email,
        fired_at=_ts(parsed.fired_at),
        parse_error=parsed.error,
        dedup_key=f"{inbound.name}:{parsed.dedup_key}" if parsed.dedup_key else None,
    )


def _journey_event(
    inbound: InboundConfig, request: RawRequest, destinations: Sequence[DestinationConfig]
) -> NewEvent:
    data, error = mailchimp.parse_form_json(request.body, request.content_type or None)
    event_type = inbound.event_type or UNKNOWN_TYPE
    if inbound.event_type_header:
        # The marketer's header wins when present; the configured type is the fallback.
        header = (_header(request, inbound.event_type_header) or "").strip()
        if header:
            event_type = header[:100]
    email = None
    if isinstance(data, dict):
        value = data.get("email") or data.get("email_address")
        email = value if isinstance(value, str) and value else None
    return _event(
        inbound,
        request,
        destinations,
        type=event_type,
        data=data,
        email=email,
        parse_error=error,
    )


def _mandrill_events(
    inbound: InboundConfig, request: RawRequest, destinations: Sequence[DestinationConfig]
) -> list[NewEvent]:
    batch = mailchimp.parse_mandrill(request.body)
    if batch.error is not None:
        return [
            _event(
                inbound,
                request,
                destinations,
                type=UNKNOWN_TYPE,
                data=None,
                parse_error=batch.error,
            )
        ]
    return [
        _event(
            inbound,
            request,
            destinations,
            type=e.type,
            data=e.data,
            email=e.email,
            fired_at=_ts(e.fired_at),
            dedup_key=f"{inbound.name}:{e.dedup_key}" if e.dedup_key else None,
            # Each element goes downstream as a one-event Mandrill batch, its JSON text unchanged,
            # so existing Mandrill handlers keep working and each delivery is one event.
            payload=mailchimp.rebatch_mandrill([e.raw]),
        )
        for e in batch.events
    ]
