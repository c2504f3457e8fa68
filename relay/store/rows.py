"""Column lists and row-to-record mapping, for every backend (rows are sequences of values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from relay.model import (
    AttemptRecord,
    DeliveryListing,
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    RawRequest,
    ReplayRecord,
    ReplayState,
)
from relay.store.codec import filter_from_json

EVENT_COLUMNS = (
    "id, request_id, inbound, source, type, received_at, fired_at, list_id, email, parse_error,"
    " dedup_key, duplicate_of, seq"
)
DELIVERY_COLUMNS = (
    "id, event_id, destination, state, attempts, next_attempt_at, created_at, updated_at,"
    " delivered_at, last_status, last_error, replay_id, dead_reason, resolved_at, resolved_by,"
    " resolve_reason, after_dead"
)
# A listed delivery's event facts, after DELIVERY_COLUMNS (see listing_record).
LISTING_EVENT_COLUMNS = "e.inbound, e.source, e.type, e.email, e.received_at"
_DELIVERY_WIDTH = 17
REPLAY_COLUMNS = (
    "id, requested_by, requested_at, filter, destinations, total, matched, created, state,"
    " finished_at, spec, cursor, cancelled_by"
)
REQUEST_COLUMNS = "id, inbound, method, path, query, headers, body, content_type, peer, received_at"
ATTEMPT_COLUMNS = "number, started_at, duration, outcome, status, error, response_head"


def event_record(row: Sequence[Any]) -> EventRecord:
    return EventRecord(*row[:13])


def request_record(row: Sequence[Any]) -> RawRequest:
    headers = tuple((str(k), str(v)) for k, v in orjson.loads(row[5]))
    return RawRequest(
        id=row[0], inbound=row[1], method=row[2], path=row[3], query=row[4], headers=headers,
        body=bytes(row[6]), content_type=row[7], peer=row[8], received_at=row[9],
    )  # fmt: skip


def delivery_record(row: Sequence[Any], attempts: tuple[AttemptRecord, ...] = ()) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0], event_id=row[1], destination=row[2], state=DeliveryState(row[3]),
        attempts=row[4], next_attempt_at=row[5], created_at=row[6], updated_at=row[7],
        delivered_at=row[8], last_status=row[9], last_error=row[10], replay_id=row[11],
        dead_reason=row[12], resolved_at=row[13], resolved_by=row[14], resolve_reason=row[15],
        after_dead=row[16], attempt_log=attempts,
    )  # fmt: skip


def listing_record(row: Sequence[Any]) -> DeliveryListing:
    """A row of DELIVERY_COLUMNS then LISTING_EVENT_COLUMNS."""
    n = _DELIVERY_WIDTH
    return DeliveryListing(
        delivery=delivery_record(row[:n]), inbound=row[n], source=row[n + 1], type=row[n + 2],
        email=row[n + 3], received_at=row[n + 4],
    )  # fmt: skip


def attempt_record(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        number=row[0], started_at=row[1], duration=row[2], outcome=row[3], status=row[4],
        error=row[5], response_head=bytes(row[6] or b""),
    )  # fmt: skip


def replay_record(row: Sequence[Any], counts: Sequence[Sequence[Any]] = ()) -> ReplayRecord:
    """A row of REPLAY_COLUMNS, with its deliveries' (destination, state, count) rows."""
    return ReplayRecord(
        id=row[0], requested_by=row[1], requested_at=row[2], filter=row[3],
        destinations=tuple(orjson.loads(row[4])), total=row[5], matched=row[6], created=row[7],
        state=ReplayState(row[8]), finished_at=row[9],
        counts=tuple((str(c[0]), DeliveryState(c[1]), int(c[2])) for c in counts),
        where=filter_from_json(row[10]), cursor=row[11], cancelled_by=row[12],
    )  # fmt: skip
