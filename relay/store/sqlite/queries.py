"""SQL the SQLite backend composes from operator filters (pure; exposed for the plan tests)."""

from __future__ import annotations

from typing import Any

from relay.model import DeliveryState, EventFilter, encode_ulid
from relay.store.sqlite.rows import DELIVERY_COLUMNS, EVENT_COLUMNS

# An event id embeds the millisecond its event was made, a little after its request arrived
# (the body is read first, possibly slowly). Time filters bound the id with this much slack, so
# the primary key narrows the search, and compare received_at exactly on what the bound lets in.
ID_SLACK = 3600.0
UNFINISHED = "('pending', 'delivering', 'paused')"


def id_bound(ts: float) -> str:
    """The smallest event id (ULID) that can be made at Unix time ``ts``."""
    return encode_ulid(max(0, int(ts * 1000)) << 80)


def prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def event_where(where: EventFilter) -> tuple[list[str], list[Any]]:
    """SQL terms (on ``events e``) and parameters for a filter; each term can use an index."""
    terms: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("inbound", where.inbound),
        ("type", where.type),
        ("source", where.source),
        ("list_id", where.list_id),
        ("email", where.email),
    ):
        if value is not None:
            terms.append(f"e.{column} = ?")
            params.append(value)
    # Time bounds become position bounds, so paging in position order stays an index range:
    # events commit within ID_SLACK of being received, so every event received from `since` on
    # comes after the last one received ID_SLACK before it, and every event received before
    # `until` comes before the first one received ID_SLACK after it.
    if where.since is not None:
        terms += [
            "e.seq > coalesce((SELECT seq FROM events WHERE received_at < ?"
            " ORDER BY received_at DESC LIMIT 1), 0)",
            "e.received_at >= ?",
        ]
        params += [where.since - ID_SLACK, where.since]
    if where.until is not None:
        terms += [
            "e.seq < coalesce((SELECT seq FROM events WHERE received_at >= ?"
            " ORDER BY received_at LIMIT 1), 9223372036854775807)",
            "e.received_at < ?",
        ]
        params += [where.until + ID_SLACK, where.until]
    if where.originals_only:
        terms.append("e.duplicate_of IS NULL")
    if where.state is not None or where.destination is not None:
        sub: list[str] = []
        if where.state is not None:
            sub.append("state = ?")
            params.append(where.state.value)
        if where.destination is not None:
            sub.append("destination = ?")
            params.append(where.destination)
        terms.append(f"e.id IN (SELECT event_id FROM deliveries WHERE {' AND '.join(sub)})")
    return terms, params


def _where(terms: list[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def events_query(where: EventFilter, limit: int, before: int | None) -> tuple[str, list[Any]]:
    """The events-list query: newest first (by position), below the cursor."""
    terms, params = event_where(where)
    if before is not None:
        terms.append("e.seq < ?")
        params.append(before)
    sql = (
        f"SELECT {prefixed(EVENT_COLUMNS, 'e')} FROM events e{_where(terms)}"
        " ORDER BY e.seq DESC LIMIT ?"
    )
    return sql, [*params, limit]


def count_query(where: EventFilter) -> tuple[str, list[Any]]:
    terms, params = event_where(where)
    return f"SELECT count(*) FROM events e{_where(terms)}", params


def candidates_query(
    where: EventFilter, after: int | None, limit: int, with_payload: bool
) -> tuple[str, list[Any]]:
    """Matching events oldest first (by position), above the cursor; bytes only if asked."""
    terms, params = event_where(where)
    if after is not None:
        terms.append("e.seq > ?")
        params.append(after)
    columns = prefixed(EVENT_COLUMNS, "e")
    source = "events e"
    if with_payload:
        columns += ", coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type)"
        source += " JOIN requests r ON r.id = e.request_id"
    sql = f"SELECT {columns} FROM {source}{_where(terms)} ORDER BY e.seq LIMIT ?"
    return sql, [*params, limit]


def deliveries_query(
    state: DeliveryState | None, destination: str | None, limit: int, before: int | None
) -> tuple[str, list[Any]]:
    """The deliveries-list query: newest first, below the cursor."""
    terms: list[str] = []
    params: list[Any] = []
    for term, value in (
        ("d.state = ?", state.value if state is not None else None),
        ("d.destination = ?", destination),
        ("d.id < ?", before),
    ):
        if value is not None:
            terms.append(term)
            params.append(value)
    sql = (
        f"SELECT {prefixed(DELIVERY_COLUMNS, 'd')}, e.inbound, e.source, e.type, e.email,"
        f" e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id{_where(terms)}"
        " ORDER BY d.id DESC LIMIT ?"
    )
    return sql, [*params, limit]
