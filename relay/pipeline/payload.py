"""How a stored event's bytes read parsed (pure, no I/O): for routing, envelopes and operators.

    parse_payload(InboundKind.JOURNEY, b'{"email": "a@b.c"}', "application/json")
    # -> ({"email": "a@b.c"}, None)

One parse for every reader, so routing a replay, the JSON envelope a destination gets and what the
admin API shows agree on what an event holds, bad input included.
"""

from __future__ import annotations

from typing import Any

from relay.model import InboundKind
from relay.protocols import mailchimp


def parse_payload(
    kind: InboundKind | None, payload: bytes, content_type: str | None
) -> tuple[Any, str | None]:
    """The event's parsed ``data`` (None when nothing parsed) and the parse error, if any.

    ``payload`` is what the event forwards: one Mandrill element is stored as a one-event batch.
    An inbound removed from the config since (``kind`` None) is read as an audience form, the
    format Mailchimp uses for most webhooks.
    """
    if kind is InboundKind.MANDRILL:
        batch = mailchimp.parse_mandrill(payload)
        if batch.error is not None or not batch.events:
            return None, batch.error or "empty Mandrill batch"
        return batch.events[0].data, None
    if kind is InboundKind.JOURNEY:
        return mailchimp.parse_form_json(payload, content_type or None)
    event = mailchimp.parse_audience(payload)
    return event.data, event.error


def parsed_view(kind: InboundKind | None, payload: bytes, content_type: str | None) -> Any:
    """What an operator reads as the parsed event: the whole form for audience webhooks."""
    if kind is InboundKind.MANDRILL or kind is InboundKind.JOURNEY:
        data, _ = parse_payload(kind, payload, content_type)
        return data if data is not None else {}
    return mailchimp.parse_audience(payload).fields
