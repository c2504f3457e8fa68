"""SQL composed from operator filters, the same for every backend but for placeholders (pure).

    events_query(SQLITE, EventFilter(type="subscribe"), 51, before=None)  # -> (sql, params)

Exposed for the query-plan tests, which check that every filter shape is an index range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.ids import encode_ulid
from relay.model import DeliveryFilter, DeliveryState, EventFilter
from relay.store.globs import parse_glob, upper_bound
from relay.store.rows import DELIVERY_COLUMNS, EVENT_COLUMNS, LISTING_EVENT_COLUMNS
from relay.store.rules import email_key

# Events are stored within this many seconds of being received (a body read slowly, clocks of
# several machines a little apart). Time filters bound positions with this slack, so paging in
# position order stays an index range, and compare received_at exactly on what the bound admits.
RECEIVE_SLACK = 3600.0
UNFINISHED = "('pending', 'delivering', 'paused')"
MAX_POSITION = 9223372036854775807


@dataclass(frozen=True)
class Dialect:
    """How a backend writes the n-th bound parameter, and a glob."""

    numbered: bool  # PostgreSQL's $1, $2 ... or SQLite's ?
    regex_globs: bool  # a PostgreSQL regular expression, or SQLite's GLOB
    # How dead letters are read: SQLite is told to use their partial index, which without
    # statistics it would pass over for one that also reads every resolved dead delivery.
    dead_letter_hint: str = ""


SQLITE = Dialect(numbered=False, regex_globs=False, dead_letter_hint=" INDEXED BY deliveries_dead")
POSTGRES = Dialect(numbered=True, regex_globs=True)


@dataclass
class Params:
    dialect: Dialect
    values: list[Any] = field(default_factory=list)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self.dialect.numbered else "?"


def id_bound(ts: float) -> str:
    """The smallest event id (ULID) that can be made at Unix time ``ts``."""
    return encode_ulid(max(0, int(ts * 1000)) << 80)


def prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def position_before(p: Params, ts: float) -> str:
    """SQL for a position every event received before ``ts`` is below (see RECEIVE_SLACK)."""
    return (
        "coalesce((SELECT seq FROM events WHERE received_at >= "
        f"{p.add(ts + RECEIVE_SLACK)} ORDER BY received_at LIMIT 1), {MAX_POSITION})"
    )


def event_terms(p: Params, where: EventFilter) -> list[str]:
    """SQL terms (on ``events e``) for a filter; each can use an index."""
    terms: list[str] = []
    for column, value in (
        ("inbound", where.inbound),
        ("source", where.source),
        ("list_id", where.list_id),
        ("email_key", email_key(where.email)),
    ):
        if value is not None:
            terms.append(f"e.{column} = {p.add(value)}")
    if where.type is not None:
        terms += type_terms(p, where.type)
    if where.since is not None:
        # Every event received from `since` on comes after the last one received RECEIVE_SLACK
        # before it.
        terms.append(
            "e.seq > coalesce((SELECT seq FROM events WHERE received_at < "
            f"{p.add(where.since - RECEIVE_SLACK)} ORDER BY received_at DESC LIMIT 1), 0)"
        )
        terms.append(f"e.received_at >= {p.add(where.since)}")
    if where.until is not None:
        terms.append(f"e.seq < {position_before(p, where.until)}")
        terms.append(f"e.received_at < {p.add(where.until)}")
    if where.originals_only:
        terms.append("e.duplicate_of IS NULL")
    if where.state is not None or where.destination is not None:
        sub: list[str] = []
        if where.state is not None:
            sub += delivery_state_terms(p, where.state, "")
        if where.destination is not None:
            sub.append(f"destination = {p.add(where.destination)}")
        table = _deliveries(p.dialect, where.state, "")
        terms.append(f"e.id IN (SELECT event_id FROM {table} WHERE {' AND '.join(sub)})")
    return terms


def _deliveries(dialect: Dialect, state: DeliveryState | None, alias: str) -> str:
    table = f"deliveries {alias}" if alias else "deliveries"
    return table + dialect.dead_letter_hint if state is DeliveryState.DEAD else table


def type_terms(p: Params, pattern: str) -> list[str]:
    """An event type, or a glob of them (``unsub*``) as destination filters take: its literal
    prefix bounds an index range, and the glob itself checks what the range holds."""
    glob = parse_glob(pattern)
    if glob.never:
        return ["1 = 0"]
    if not glob.is_pattern:
        return [f"e.type = {p.add(glob.literal())}"]
    terms = []
    if prefix := glob.prefix:
        terms.append(f"e.type >= {p.add(prefix)}")
        if (upper := upper_bound(prefix)) is not None:
            terms.append(f"e.type < {p.add(upper)}")
    if p.dialect.regex_globs:
        terms.append(f"e.type ~ {p.add(glob.postgres_regex())}")
    else:
        terms.append(f"e.type GLOB {p.add(glob.sqlite_glob())}")
    return terms


def delivery_state_terms(p: Params, state: DeliveryState, alias: str) -> list[str]:
    """A delivery in ``state``; for ``dead``, a dead letter: dead and not resolved (spelt
    as the partial index deliveries_dead is, literally, so the planner can prove it applies)."""
    if state is DeliveryState.DEAD:
        return [f"{alias}state = 'dead'", f"{alias}resolved_at IS NULL"]
    return [f"{alias}state = {p.add(state.value)}"]


def _where(terms: list[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def events_query(
    dialect: Dialect, where: EventFilter, limit: int, before: int | None
) -> tuple[str, list[Any]]:
    """The events-list query: newest first (by position), below the cursor."""
    p = Params(dialect)
    terms = event_terms(p, where)
    if before is not None:
        terms.append(f"e.seq < {p.add(before)}")
    sql = (
        f"SELECT {prefixed(EVENT_COLUMNS, 'e')} FROM events e{_where(terms)}"
        f" ORDER BY e.seq DESC LIMIT {p.add(limit)}"
    )
    return sql, p.values


def count_query(dialect: Dialect, where: EventFilter) -> tuple[str, list[Any]]:
    p = Params(dialect)
    return f"SELECT count(*) FROM events e{_where(event_terms(p, where))}", p.values


def candidates_query(
    dialect: Dialect, where: EventFilter, after: int | None, limit: int, with_payload: bool
) -> tuple[str, list[Any]]:
    """Matching events oldest first (by position), above the cursor; bytes only if asked."""
    p = Params(dialect)
    terms = event_terms(p, where)
    if after is not None:
        terms.append(f"e.seq > {p.add(after)}")
    columns = prefixed(EVENT_COLUMNS, "e")
    source = "events e"
    if with_payload:
        columns += ", coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type)"
        source += " JOIN requests r ON r.id = e.request_id"
    sql = f"SELECT {columns} FROM {source}{_where(terms)} ORDER BY e.seq LIMIT {p.add(limit)}"
    return sql, p.values


def deliveries_query(
    dialect: Dialect,
    state: DeliveryState | None,
    destination: str | None,
    limit: int,
    before: int | None,
) -> tuple[str, list[Any]]:
    """The deliveries-list query: newest first, below the cursor."""
    p = Params(dialect)
    terms: list[str] = []
    if state is not None:
        terms += delivery_state_terms(p, state, "d.")
    if destination is not None:
        terms.append(f"d.destination = {p.add(destination)}")
    if before is not None:
        terms.append(f"d.id < {p.add(before)}")
    sql = (
        f"SELECT {prefixed(DELIVERY_COLUMNS, 'd')}, {LISTING_EVENT_COLUMNS}"
        f" FROM {_deliveries(dialect, state, 'd')} JOIN events e ON e.id = d.event_id"
        f"{_where(terms)}"
        f" ORDER BY d.id DESC LIMIT {p.add(limit)}"
    )
    return sql, p.values


def waiting_terms(p: Params, where: DeliveryFilter) -> list[str]:
    """SQL terms (on ``deliveries d``) for the waiting deliveries an operator means."""
    states = ", ".join(p.add(s.value) for s in where.states)
    terms = [f"d.state IN ({states})"]
    if where.destination is not None:
        terms.append(f"d.destination = {p.add(where.destination)}")
    if where.replay_id is not None:
        terms.append(f"d.replay_id = {p.add(where.replay_id)}")
    if event := event_terms(p, where.event):
        terms.append(f"d.event_id IN (SELECT e.id FROM events e WHERE {' AND '.join(event)})")
    return terms


def waiting_count_query(dialect: Dialect, where: DeliveryFilter) -> tuple[str, list[Any]]:
    """How many deliveries a discard would take now (its dry run)."""
    p = Params(dialect)
    return f"SELECT count(*) FROM deliveries d{_where(waiting_terms(p, where))}", p.values


def waiting_ids_query(
    dialect: Dialect, where: DeliveryFilter, after: int, limit: int
) -> tuple[str, list[Any]]:
    """The next ``limit`` of them by id, above ``after``: a discard takes them a batch at a
    time, each batch its own short transaction."""
    p = Params(dialect)
    terms = [*waiting_terms(p, where), f"d.id > {p.add(after)}"]
    sql = f"SELECT d.id FROM deliveries d{_where(terms)} ORDER BY d.id LIMIT {p.add(limit)}"
    return sql, p.values
