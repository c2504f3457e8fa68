"""Turn one stored request into events (pure): type, source, list, email, dedup key, destinations.

    derive_events(inbound, request, destinations)  # -> [NewEvent, ...]; one per Mandrill element

A body that does not parse still yields one event, typed "unknown" with its parse error, so that
whatever Mailchimp sent is kept and can be replayed once the cause is understood.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from relay.config import DestinationConfig, InboundConfig
from relay.model import UNKNOWN_TYPE, InboundKind, NewEvent, RawRequest
from relay.pipeline.routing import event_facts, needs_payload, route, type_matches
from relay.protocols import audience_summary, mailchimp

MANDRILL_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Every event type is cut to this many characters, whatever its kind: it comes from the sender
# (an audience body, a Mandrill element, a journey header), and goes into log lines, metrics
# lookups, the store and a header to every destination. Mailchimp's own types are under 20.
MAX_TYPE_CHARS = 100


# (type, list id) -> destinations and the ordered ones among them, for the events of one
# request from one inbound: without `match` conditions nothing else decides a route, and a
# Mandrill batch repeats a handful of types a thousand times.
Routes = dict[tuple[str, str | None], tuple[tuple[str, ...], tuple[str, ...]]]


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dedup_key(inbound: InboundConfig, natural: str | None, raw: bytes) -> str | None:
    """The natural key (type, id, fired_at) plus a digest of the event's own bytes.

    Mailchimp's retries repeat the request byte for byte, so the digest never hides one; but two
    real events can share a natural key (a member's profile changed twice in one second, one id
    on two lists), and without it the second would be stored as a duplicate and never delivered.
    """
    if natural is None:
        return None
    if len(natural) > MAX_TYPE_CHARS * 2:
        # The natural key holds the sender's type and ids; a digest keeps an indexed key short.
        natural = "b2:" + hashlib.blake2b(natural.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{inbound.name}:{natural}:{hashlib.blake2b(raw, digest_size=8).hexdigest()}"


def _header_text(request: RawRequest, name: str) -> str | None:
    """A header's value as text: UTF-8 when its bytes are (what Mailchimp sends), else Latin-1.

    Headers are stored as Latin-1, one character per byte, so that any bytes survive; read as
    such, a UTF-8 "café" would be "cafÃ©".
    """
    lowered = name.lower()
    value = next((v for k, v in request.headers if k.lower() == lowered), None)
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def derive_events(
    inbound: InboundConfig,
    request: RawRequest,
    destinations: Sequence[DestinationConfig],
    mandrill_form: mailchimp.MandrillForm | None = None,
) -> list[NewEvent]:
    """``mandrill_form``: a Mandrill body's decoded fields, when the caller has them already."""
    if inbound.kind is InboundKind.MANDRILL:
        return _mandrill_events(inbound, request, destinations, mandrill_form)
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
    routes: Routes | None = None,
) -> NewEvent:
    type = type[:MAX_TYPE_CHARS]
    known = routes.get((type, list_id)) if routes is not None else None
    if known is None:
        facts = event_facts(
            type=type, source=inbound.source, inbound=inbound.name, list_id=list_id, email=email,
            data=data,
        )  # fmt: skip
        names = route(destinations, facts)
        ordered = tuple(d.name for d in destinations if d.ordered and d.name in names)
        if routes is not None:
            routes[(type, list_id)] = names, ordered
    else:
        names, ordered = known
    return NewEvent(
        inbound=inbound.name,
        source=inbound.source,
        type=type,
        received_at=request.received_at,
        destinations=names,
        list_id=list_id,
        email=email,
        fired_at=fired_at,
        parse_error=parse_error,
        dedup_key=dedup_key,
        payload=payload,
        payload_content_type=MANDRILL_CONTENT_TYPE if payload is not None else None,
        ordered=ordered,
    )


def _audience_event(
    inbound: InboundConfig, request: RawRequest, destinations: Sequence[DestinationConfig]
) -> NewEvent:
    # The full nested parse costs several times the summary; only `match` filters need it.
    parsed: mailchimp.AudienceEvent | audience_summary.AudienceSummary
    if any(d.match for d in destinations):
        parsed = mailchimp.parse_audience(request.body)
        data: Any = parsed.data
    else:
        parsed = audience_summary.summarize_audience(request.body)
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
        dedup_key=_dedup_key(inbound, parsed.dedup_key, request.body),
    )


def _journey_event(
    inbound: InboundConfig, request: RawRequest, destinations: Sequence[DestinationConfig]
) -> NewEvent:
    data, error = mailchimp.parse_form_json(request.body, request.content_type or None)
    event_type = inbound.event_type or UNKNOWN_TYPE
    if inbound.event_type_header:
        # The marketer's header wins when present and allowed; the configured type is the
        # fallback. Whoever holds the inbound's credential chooses the header, so event_types
        # keeps it from claiming a type that other filters trust, such as "subscribe".
        header = (_header_text(request, inbound.event_type_header) or "").strip()
        if header and type_matches(inbound.event_types, header):
            event_type = header
        elif header:
            refused = f"event type header {header[:MAX_TYPE_CHARS]!r} not in event_types"
            error = f"{refused}; {error}" if error else refused
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
    inbound: InboundConfig,
    request: RawRequest,
    destinations: Sequence[DestinationConfig],
    form: mailchimp.MandrillForm | None,
) -> list[NewEvent]:
    batch = mailchimp.parse_mandrill(request.body, form)
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
    routes: Routes | None = None if needs_payload(destinations) else {}
    return [
        _event(
            inbound,
            request,
            destinations,
            type=e.type,
            data=e.data,
            email=e.email,
            fired_at=_ts(e.fired_at),
            dedup_key=_dedup_key(inbound, e.dedup_key, e.raw),
            # Each element goes downstream as a one-event Mandrill batch, its JSON text unchanged,
            # so existing Mandrill handlers keep working and each delivery is one event.
            payload=e.rebatched if e.rebatched is not None else mailchimp.rebatch_mandrill([e.raw]),
            routes=routes,
        )
        for e in batch.events
    ]
