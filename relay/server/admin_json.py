"""The admin API's JSON: reading filters and bodies, and rendering stored records (pure).

Times go out twice: as ISO-8601 UTC strings for people and as ``*_unix`` floats for scripts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.model import (
    AttemptRecord,
    AuditRecord,
    DeliveryListing,
    DeliveryRecord,
    DeliveryState,
    EventFilter,
    EventRecord,
    RawRequest,
    ReplayRecord,
    iso_utc,
)
from relay.server.control import DestinationStatus
from relay.store.rules import UNFINISHED

# What a cursor is, as a bad one's error says.
EVENTS_CURSOR = "the next_cursor of a previous page"
DELIVERIES_CURSOR = "a delivery id"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# The query parameter (and replay filter key) for each EventFilter field.
FILTER_KEYS = {
    "inbound": "inbound",
    "type": "type",
    "source": "source",
    "list": "list_id",
    "email": "email",
    "state": "state",
    "destination": "destination",
    "since": "since",
    "until": "until",
}
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class BadRequestError(Exception):
    """The request cannot be carried out as sent; the message is the one-line reason."""


def parse_time(key: str, value: Any) -> float:
    """Unix seconds, or an ISO-8601 date or date-time (UTC unless it names an offset)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _in_range(key, float(value))
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"{key}: expected an ISO-8601 time or Unix seconds")
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return _in_range(key, float(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{key}: {text!r} is not an ISO-8601 time or Unix seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _in_range(key, parsed.timestamp())


# 9999-12-31T23:59:59Z: beyond it a time cannot be shown as a date, and a larger number is
# most likely milliseconds given where seconds were meant.
_LATEST = 253402300799.0


def _in_range(key: str, seconds: float) -> float:
    if not 0.0 <= seconds <= _LATEST:
        raise BadRequestError(
            f"{key}: out of range (Unix seconds, not milliseconds, from 1970 to 9999)"
        )
    return seconds


def parse_filter(raw: Mapping[str, Any], ignore: frozenset[str] = frozenset()) -> EventFilter:
    """An EventFilter from query parameters or a replay's ``filter`` object."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ignore:
            continue
        field = FILTER_KEYS.get(key)
        if field is None:
            known = ", ".join(sorted(FILTER_KEYS))
            raise BadRequestError(f"unknown filter {key!r} (known: {known})")
        if value is None or value == "":
            continue
        if field in ("since", "until"):
            values[field] = parse_time(key, value)
        elif field == "state":
            try:
                values[field] = DeliveryState(value)
            except ValueError:
                states = ", ".join(s.value for s in DeliveryState)
                raise BadRequestError(f"state: {value!r} is not one of {states}") from None
        elif isinstance(value, str):
            values[field] = value
        else:
            raise BadRequestError(f"{key}: expected a string")
    return EventFilter(**values)


def filter_json(where: EventFilter) -> str:
    """The filter as stored with a replay: only the keys that were set, as the API names them."""
    out: dict[str, Any] = {}
    for key, field in FILTER_KEYS.items():
        value = getattr(where, field)
        if value is not None:
            out[key] = iso_utc(value) if field in ("since", "until") else str(value)
    return orjson.dumps(out).decode()


def parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    number = parse_id(text)
    if number is None or not 1 <= number <= MAX_LIMIT:
        raise BadRequestError(f"limit: expected a whole number from 1 to {MAX_LIMIT}")
    return number


def parse_id(text: str) -> int | None:
    """A non-negative integer that fits a database id, or None."""
    # isdigit() alone admits digits such as "²" that int() refuses; SQLite ids are 64-bit.
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def parse_cursor(text: str | None, expected: str) -> int | None:
    """A page cursor (a position or id from a previous page), or None for the first page."""
    if not text:
        return None
    number = parse_id(text)
    if number is None:
        raise BadRequestError(f"cursor: expected {expected}")
    return number


def parse_flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequestError(f"{key}: expected true or false")
    return value


def parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequestError("body must be a JSON object")
    return value


def parse_body(body: bytes, known: Collection[str]) -> dict[str, Any]:
    """A request body as a JSON object holding only ``known`` keys (an empty body is ``{}``)."""
    value = parse_object(body)
    check_keys(value, known)
    return value


def check_keys(given: Collection[str], known: Collection[str], what: str = "key") -> None:
    """Refuse a key the handler does not read, before anything is done.

    Ignoring it is how a misspelt ``dry_run`` deleted everything, or a misspelt ``destinations``
    turned "to these destinations" into "to every destination".
    """
    unknown = sorted(set(given) - set(known))
    if unknown:
        accepted = f"known: {', '.join(sorted(known))}" if known else "none are accepted here"
        raise BadRequestError(f"unknown {what} {unknown[0]!r} ({accepted})")


MAX_REASON = 500


def parse_reason(value: Any) -> str | None:
    """Why an operator resolved a delivery: one line of printable text, or None when not given.

    >>> parse_reason("  fixed by hand  ")
    'fixed by hand'
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.isprintable():
        raise BadRequestError("reason: expected one line of text")
    if len(value) > MAX_REASON:
        raise BadRequestError(f"reason: at most {MAX_REASON} characters")
    return value.strip() or None


def parse_names(value: Any, key: str = "destinations") -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequestError(f"{key}: expected a list of destination names")
    return tuple(dict.fromkeys(value))


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "received_at": iso_utc(e.received_at),
        "received_at_unix": e.received_at,
        "inbound": e.inbound,
        "type": e.type,
        "source": e.source,
        "list_id": e.list_id,
        "email": e.email,
        "fired_at": iso_utc(e.fired_at),
        "fired_at_unix": e.fired_at,
        "parse_error": e.parse_error,
        "duplicate_of": e.duplicate_of,
    }


def request_json(r: RawRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "method": r.method,
        "path": r.path,
        "query": r.query,
        "headers": [list(h) for h in r.headers],
        "content_type": r.content_type,
        "peer": r.peer,
        "received_at": iso_utc(r.received_at),
        "received_at_unix": r.received_at,
        "body_b64": base64.b64encode(r.body).decode("ascii"),
    }


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": iso_utc(a.started_at),
        "started_at_unix": a.started_at,
        "duration": a.duration,
        "outcome": a.outcome,
        "status": a.status,
        "error": a.error,
        "response_head": a.response_head.decode("utf-8", "replace"),
    }


def delivery_json(d: DeliveryRecord, with_attempts: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "event_id": d.event_id,
        "destination": d.destination,
        "state": d.state.value,
        "attempts": d.attempts,
        "next_attempt_at": iso_utc(d.next_attempt_at),
        "created_at": iso_utc(d.created_at),
        "updated_at": iso_utc(d.updated_at),
        "delivered_at": iso_utc(d.delivered_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "dead_reason": d.dead_reason,
        "resolved_at": iso_utc(d.resolved_at),
        "resolved_by": d.resolved_by,
        "resolve_reason": d.resolve_reason,
        "replay_id": d.replay_id,
        # Ordered destinations: the dead delivery of the same subscriber this one went after.
        "after_dead": d.after_dead,
    }
    if with_attempts:
        out["attempts_log"] = [attempt_json(a) for a in d.attempt_log]
    return out


def listing_json(item: DeliveryListing) -> dict[str, Any]:
    return {
        **delivery_json(item.delivery),
        "inbound": item.inbound,
        "source": item.source,
        "type": item.type,
        "email": item.email,
        "received_at": iso_utc(item.received_at),
    }


def replay_summary_json(r: ReplayRecord) -> dict[str, Any]:
    """A replay in a list: what it is and how far it got, without counting its deliveries."""
    return {
        "id": r.id,
        "state": r.state.value,
        "requested_by": r.requested_by,
        "requested_at": iso_utc(r.requested_at),
        "filter": orjson.loads(r.filter),
        "destinations": list(r.destinations),
        "total": r.total,
        "matched": r.matched,
        "created": r.created,
        "finished_at": iso_utc(r.finished_at),
        "cancelled_by": r.cancelled_by,
    }


def replay_json(r: ReplayRecord) -> dict[str, Any]:
    """A replay with its progress (matched of total events, deliveries created) and outcome
    (what became of those deliveries: delivered, dead, still pending, discarded)."""
    per: dict[str, dict[str, int]] = {}
    for destination, state, n in r.counts:
        per.setdefault(destination, {})[state.value] = n
    return {
        **replay_summary_json(r),
        "replay_id": r.id,
        "delivered": r.in_state(DeliveryState.DELIVERED),
        "dead": r.in_state(DeliveryState.DEAD),
        "pending": r.in_state(*UNFINISHED),
        "discarded": r.in_state(DeliveryState.DISCARDED),
        "per_destination": dict(r.per_destination),
        "outcome_per_destination": per,
    }


def audit_json(a: AuditRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": iso_utc(a.at),
        "at_unix": a.at,
        "operator": a.operator,
        "action": a.action,
        "target": a.target,
        "detail": orjson.loads(a.detail),
        "peer": a.peer,
    }


def gate_json(d: DestinationStatus) -> dict[str, Any]:
    """A destination's rate limit and circuit breaker as the admin API shows them: each None
    when it is not configured."""
    config, gate = d.config, d.gate
    rate = None
    if config is not None and config.rate_limit is not None:
        rate = {"per_second": config.rate_limit.rate, "burst": config.rate_limit.burst}
    circuit = None
    if config is not None and config.breaker is not None:
        open_ = gate is not None and gate.open
        circuit = {
            "state": "open" if open_ else "closed",
            "failures": gate.failures if gate is not None else 0,
            "threshold": config.breaker.failures,
            "opened_at": iso_utc(gate.opened_at) if gate is not None else None,
            "reason": gate.reason if gate is not None else None,
            "next_probe_at": iso_utc(gate.probe_at) if gate is not None and open_ else None,
        }
    return {"rate": rate, "circuit": circuit}
