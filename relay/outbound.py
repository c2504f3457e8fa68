"""What relay sends to a destination for a delivery: body and headers (pure, no I/O)."""

from __future__ import annotations

from relay.config import DestinationConfig
from relay.model import ClaimedDelivery


def build_request(
    destination: DestinationConfig, delivery: ClaimedDelivery
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt; the original bytes and Content-Type by default."""
    headers = dict(destination.headers)
    headers.update(
        {
            "Content-Type": delivery.content_type or "application/octet-stream",
            "X-Relay-Event-Id": delivery.event_id,
            "X-Relay-Event-Type": delivery.type,
            "X-Relay-Source": delivery.source,
            "X-Relay-Inbound": delivery.inbound,
            "X-Relay-Attempt": str(delivery.attempt),
            "X-Relay-Delivery-Id": str(delivery.id),
        }
    )
    if delivery.replay:
        headers["X-Relay-Replay"] = "1"
    return delivery.body, headers
