"""Values every backend stores the same way: an event filter as JSON (a replay job's spec)."""

from __future__ import annotations

from typing import Any

import orjson

from relay.model import DeliveryState, EventFilter


def filter_to_json(where: EventFilter) -> str:
    doc = {
        "inbound": where.inbound,
        "type": where.type,
        "source": where.source,
        "list_id": where.list_id,
        "email": where.email,
        "state": where.state.value if where.state is not None else None,
        "destination": where.destination,
        "since": where.since,
        "until": where.until,
        "originals_only": where.originals_only,
    }
    return orjson.dumps({k: v for k, v in doc.items() if v is not None and v is not False}).decode()


def filter_from_json(text: str | None) -> EventFilter:
    doc: dict[str, Any] = orjson.loads(text) if text else {}
    state = doc.get("state")
    return EventFilter(
        inbound=doc.get("inbound"),
        type=doc.get("type"),
        source=doc.get("source"),
        list_id=doc.get("list_id"),
        email=doc.get("email"),
        state=DeliveryState(state) if state is not None else None,
        destination=doc.get("destination"),
        since=doc.get("since"),
        until=doc.get("until"),
        originals_only=bool(doc.get("originals_only", False)),
    )
