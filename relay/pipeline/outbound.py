"""What relay sends to a destination for one attempt: body and headers (pure, no I/O).

``format = "raw"`` forwards the original bytes and Content-Type; ``format = "json"`` sends one
envelope (see README, "What destinations receive") so services never parse bracket forms or
Mandrill batches. With a ``signing_secret`` every attempt carries Standard Webhooks headers,
timestamped at send time, so a replay days later still verifies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relay.config import CONTROL_CHARS, DestinationConfig
from relay.model import ClaimedDelivery, InboundKind, iso_utc
from relay.pipeline.payload import parse_payload
from relay.protocols.standard_webhooks import standard_webhook_headers

JSON_CONTENT_TYPE = "application/json"


def envelope(delivery: ClaimedDelivery, kind: InboundKind | None) -> bytes:
    """The JSON envelope of ``format = "json"``, encoded with orjson."""
    data, error = parse_payload(kind, delivery.body, delivery.content_type)
    doc: dict[str, Any] = {
        "id": delivery.event_id,
        "inbound": delivery.inbound,
        "source": delivery.source,
        "type": delivery.type,
        "fired_at": iso_utc(delivery.fired_at),
        "received_at": iso_utc(delivery.received_at),
        "replay": delivery.replay,
        "data": data,
    }
    if error is not None:
        doc["parse_error"] = error
    return orjson.dumps(doc)


def header_value(text: str) -> str:
    """Text from a webhook made safe for a header: a control character becomes "?".

    aiohttp refuses to send one, so an event type with a newline in it would fail every attempt.
    """
    return CONTROL_CHARS.sub("?", text) if not text.isprintable() else text


def build_request(
    destination: DestinationConfig,
    delivery: ClaimedDelivery,
    kinds: Mapping[str, InboundKind],
    now: float,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt."""
    if destination.format == "json":
        body = envelope(delivery, kinds.get(delivery.inbound))
        content_type = JSON_CONTENT_TYPE
    else:
        body = delivery.body
        content_type = delivery.content_type or "application/octet-stream"
    headers = dict(destination.headers)
    headers.update(
        {
            "Content-Type": header_value(content_type),
            "X-Relay-Event-Id": delivery.event_id,
            "X-Relay-Event-Type": header_value(delivery.type),
            "X-Relay-Source": delivery.source,
            "X-Relay-Inbound": delivery.inbound,
            "X-Relay-Attempt": str(delivery.attempt),
            "X-Relay-Delivery-Id": str(delivery.id),
        }
    )
    if delivery.replay:
        headers["X-Relay-Replay"] = "1"
    if destination.signing_secret:
        # webhook-id is the event id: the same across retries and replays, so a receiver can
        # deduplicate; X-Relay-Replay tells a deliberate replay apart.
        headers.update(
            standard_webhook_headers(destination.signing_secret, delivery.event_id, int(now), body)
        )
    return body, headers
