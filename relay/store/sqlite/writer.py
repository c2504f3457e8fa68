"""The SQLite writer's batch: queued operations applied as one transaction, on the writer thread.

Everything here is synchronous and runs on the writer's own thread, so a whole batch (dedup
lookup, inserts, claims, attempt records, commit) costs one thread hop and one fsync, however
many webhooks it carries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.model import (
    AttemptResult,
    ClaimedDelivery,
    Decision,
    DeliveryState,
    NewEvent,
    RawRequest,
)
from relay.store.gate import Gate
from relay.store.ordering import Releases, new_deliveries
from relay.store.rules import (
    ORPHANED,
    dead_reason,
    email_key,
    is_duplicate,
    recorded_error,
    resolver,
    stored_size,
)
from relay.store.sqlite import gates, ordering

PING_HEADROOM = 16 * 1024
# Bound on parameters per IN (...) query; SQLite allows 32766 but short lists plan better.
IN_CHUNK = 500

_INSERT_REQUEST = (
    "INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type, peer,"
    " received_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, request_id, inbound, source, type, received_at, fired_at, list_id,"
    " email, parse_error, dedup_key, duplicate_of, payload, payload_content_type, seq,"
    " email_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_DEDUP = (
    "INSERT INTO dedup (key, event_id, first_seen) VALUES (?,?,?) ON CONFLICT (key)"
    " DO UPDATE SET event_id = excluded.event_id, first_seen = excluded.first_seen"
)
PAUSED = "SELECT name FROM destination_state WHERE paused = 1"
ADD_USAGE = (
    "INSERT INTO inbound_usage (inbound, bytes) VALUES (?, ?)"
    " ON CONFLICT (inbound) DO UPDATE SET bytes = bytes + excluded.bytes"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,"
    " updated_at, order_key) VALUES (?,?,?,?,?,?,?)"
)
# The partial index deliveries_due covers exactly this WHERE clause, in next_attempt_at order.
# A paused destination is checked here, in the claiming transaction, so a pause made by any
# process stops every process's claims at once.
_CLAIM = """
SELECT id FROM deliveries
 WHERE destination = :destination AND state IN ('pending', 'delivering')
   AND next_attempt_at <= :now
   AND NOT EXISTS (SELECT 1 FROM destination_state WHERE name = :destination AND paused = 1)
 ORDER BY next_attempt_at LIMIT :limit
"""
# Read first, then leased, within one write transaction (nothing else writes meanwhile): the
# lease overwrites next_attempt_at, and the due order is what the claim hands out.
_LEASE = (
    "UPDATE deliveries SET state = 'delivering', attempts = attempts + 1, next_attempt_at = ?,"
    " updated_at = ? WHERE id IN ({ids})"
)
_CLAIMED_DETAIL = """
SELECT d.id, d.event_id, d.destination, d.attempts, d.replay_id IS NOT NULL,
       e.inbound, e.source, e.type, e.received_at,
       coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type), e.fired_at,
       d.created_at, d.held_attempts, d.order_key
  FROM deliveries d JOIN events e ON e.id = d.event_id JOIN requests r ON r.id = e.request_id
 WHERE d.id IN ({ids})
"""
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status, error,"
    " response_head) VALUES (?,?,?,?,?,?,?,?)"
)
# A delivery leaves 'delivering' only if it still holds this attempt's lease: a worker that
# outlived its lease must not overwrite the newer attempt that took the delivery over.
_COMPLETE = (
    "UPDATE deliveries SET state = ?, next_attempt_at = ?, updated_at = ?, delivered_at = ?,"
    " last_status = ?, last_error = ?, dead_reason = ?"
    " WHERE id = ? AND attempts = ? AND state = 'delivering'"
)
# A delivered event resolves the dead letters of the same event to the same destination, in
# the transaction that records the delivery: "replay the dead letters" never sees them again.
RESOLVE_DEAD = (
    "UPDATE deliveries SET resolved_at = ?, resolved_by = ?"
    " WHERE destination = ? AND event_id = ? AND state = 'dead' AND resolved_at IS NULL"
)


# A dead delivery of this destination that no delivery of its event has resolved yet. Named
# index: without statistics the planner takes deliveries_state, which walks every dead
# delivery of the destination, resolved ones included, to find one that is not.
DEAD_LETTER_WAITING = (
    "SELECT 1 FROM deliveries INDEXED BY deliveries_dead"
    " WHERE destination = ? AND state = 'dead' AND resolved_at IS NULL LIMIT 1"
)


@dataclass(eq=False)
class Op:
    """One queued write; its future is resolved on the event loop after the commit."""

    future: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class IngestOp(Op):
    request: RawRequest
    events: Sequence[NewEvent]
    event_ids: Sequence[str]


@dataclass(eq=False)
class ClaimOp(Op):
    destination: str
    limit: int
    lease: float
    gate: Gate | None = None  # answered with a GatedClaim instead of a list


@dataclass(eq=False)
class CompleteOp(Op):
    delivery: ClaimedDelivery
    result: AttemptResult
    decision: Decision
    gate: Gate | None = None  # with a breaker: answered with a Completion instead of a bool


@dataclass(eq=False)
class PingOp(Op):
    pass


@dataclass(eq=False)
class CallOp(Op):
    """Any other write (admin operations): runs alone in its own transaction."""

    fn: Callable[[sqlite3.Connection], Any]


@dataclass
class BatchOutcome:
    results: list[Any]
    # Destinations with deliveries that became due with this commit (their workers are woken).
    due: set[str]
    # Destinations whose circuit opened or closed with this commit.
    circuits: set[str] = field(default_factory=set)


def clock() -> float:
    """The SQLite store's clock: the machine's, which every process using the file shares."""
    return time.time()


@dataclass(frozen=True)
class PageLimits:
    """Where a size-capped database stops taking webhooks, and where it stops claiming.

    Both sit below the hard cap (max_page_count), so that once ingest is refused there is still
    room to record the attempts of what was already taken: a delivery whose successful attempt
    cannot be recorded would be sent again at every lease expiry.
    """

    ingest: int
    claim: int

    @classmethod
    def below(cls, hard_cap: int) -> PageLimits:
        reserve = max(32, hard_cap // 20)
        return cls(ingest=max(1, hard_cap - reserve), claim=max(1, hard_cap - reserve // 4))


def _pages_used(conn: sqlite3.Connection) -> int:
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return pages - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _full() -> sqlite3.OperationalError:
    # The words SQLite itself uses at the hard cap, so callers see one reason either way.
    return sqlite3.OperationalError("database or disk is full")


def apply_batch(
    conn: sqlite3.Connection,
    ops: Sequence[Op],
    dedup_window: float,
    limits: PageLimits | None = None,
) -> BatchOutcome:
    """Apply ``ops`` in one transaction; on any error roll back and raise."""
    outcome = BatchOutcome(results=[None] * len(ops), due=set())
    releases = Releases()
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read under the write lock: no other process can pause or write meanwhile.
        now = clock()
        ingests = [(i, op) for i, op in enumerate(ops) if isinstance(op, IngestOp)]
        if ingests:
            duplicates = _write_ingests(conn, [op for _, op in ingests], now, dedup_window,
                                        outcome.due, releases)  # fmt: skip
            if limits is not None and _pages_used(conn) > limits.ingest:
                raise _full()
            for (i, _), dups in zip(ingests, duplicates, strict=True):
                outcome.results[i] = dups
        completes = [(i, op) for i, op in enumerate(ops) if isinstance(op, CompleteOp)]
        if completes:
            results = _write_completes(
                conn, [op for _, op in completes], now, outcome.circuits, releases
            )
            for (i, _), result in zip(completes, results, strict=True):
                outcome.results[i] = result
        if releases.queues:
            outcome.due |= ordering.release(conn, releases, now)
        for i, op in enumerate(ops):
            if isinstance(op, ClaimOp):
                full = limits is not None and _pages_used(conn) > limits.claim
                outcome.results[i] = _claim_op(conn, op, now, full)
            elif isinstance(op, PingOp):
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?)",
                    (str(now),),
                )
                # A full database still rewrites the heartbeat in place: prove there is room
                # for new rows too, or /readyz says ready while ingest answers 503.
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('headroom', zeroblob(?))",
                    (PING_HEADROOM,),
                )
                if limits is not None and _pages_used(conn) > limits.ingest:
                    raise _full()
                conn.execute("DELETE FROM meta WHERE key = 'headroom'")
            elif isinstance(op, CallOp):
                outcome.results[i] = op.fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcome


def _originals(
    conn: sqlite3.Connection, ops: Sequence[IngestOp], now: float, dedup_window: float
) -> dict[str, str]:
    """Dedup key -> id of the original stored with it within the dedup window."""
    keys = sorted({e.dedup_key for op in ops for e in op.events if e.dedup_key})
    if not keys or dedup_window <= 0:
        return {}
    found: dict[str, str] = {}
    for start in range(0, len(keys), IN_CHUNK):
        chunk = keys[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT key, event_id, first_seen FROM dedup WHERE key IN ({marks})", chunk
        )
        found.update(
            (str(key), str(event_id))
            for key, event_id, first_seen in rows
            if is_duplicate(first_seen, now, dedup_window)
        )
    return found


def _write_ingests(
    conn: sqlite3.Connection,
    ops: Sequence[IngestOp],
    now: float,
    dedup_window: float,
    due: set[str],
    releases: Releases,
) -> list[dict[str, str]]:
    requests = []
    events = []
    deliveries = []
    originals = _originals(conn, ops, now, dedup_window)
    fresh: list[tuple[str, str, float]] = []
    paused = frozenset(str(r[0]) for r in conn.execute(PAUSED))
    # Positions are taken under the write lock, so they are commit order (see migration 0003).
    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    duplicates: list[dict[str, str]] = []
    usage: dict[str, int] = {}
    for op in ops:
        r = op.request
        headers = orjson.dumps(r.headers).decode()
        usage[r.inbound] = usage.get(r.inbound, 0) + stored_size(r.body, headers)
        requests.append(
            (
                r.id, r.inbound, r.method, r.path, r.query, headers, r.body, r.content_type,
                r.peer, r.received_at,
            )
        )  # fmt: skip
        dups: dict[str, str] = {}
        duplicates.append(dups)
        for event_id, e in zip(op.event_ids, op.events, strict=True):
            duplicate_of = originals.get(e.dedup_key) if e.dedup_key else None
            if duplicate_of is not None:
                dups[event_id] = duplicate_of
            elif e.dedup_key:
                originals[e.dedup_key] = event_id
                fresh.append((e.dedup_key, event_id, now))
            seq += 1
            events.append(
                (
                    event_id, r.id, e.inbound, e.source, e.type, e.received_at, e.fired_at,
                    e.list_id, e.email, e.parse_error, e.dedup_key, duplicate_of, e.payload,
                    e.payload_content_type, seq, email_key(e.email),
                )
            )  # fmt: skip
            # A retried webhook is kept, as every request is, but not delivered twice.
            if duplicate_of is None:
                for name, state, key in new_deliveries(e, paused, due, releases):
                    next_at = now if key is None else None
                    deliveries.append((event_id, name, state.value, next_at, now, now, key))
    conn.executemany(_INSERT_REQUEST, requests)
    conn.executemany(ADD_USAGE, sorted(usage.items()))
    if events:
        conn.executemany(_INSERT_EVENT, events)
    if fresh and dedup_window > 0:
        conn.executemany(_UPSERT_DEDUP, fresh)
    if deliveries:
        conn.executemany(_INSERT_DELIVERY, deliveries)
    return duplicates


def _write_completes(
    conn: sqlite3.Connection,
    ops: Sequence[CompleteOp],
    now: float,
    circuits: set[str],
    releases: Releases,
) -> list[Any]:
    """Each op's answer: whether it held its lease, or with a breaker, its Completion."""
    # Circuits move first: one that is open holds back what an attempt decided.
    gated = (
        gates.complete_gated(
            conn, [(op.delivery, op.result, op.decision, op.gate) for op in ops], now
        )
        if any(op.gate is not None for op in ops)
        else {}
    )
    attempts = []
    held = []
    resolved = []
    for i, op in enumerate(ops):
        d, r = op.delivery, op.result
        dec = gated[i].decision if i in gated else op.decision
        attempts.append(
            (d.id, d.attempt, r.started_at, r.duration, r.outcome.value, r.status, r.error,
             r.response_head)
        )  # fmt: skip
        finished = r.started_at + r.duration
        delivered = dec.state is DeliveryState.DELIVERED
        cursor = conn.execute(
            _COMPLETE,
            (dec.state.value, dec.next_attempt_at, finished, finished if delivered else None,
             r.status, recorded_error(r, dec), dead_reason(dec), d.id, d.attempt),
        )  # fmt: skip
        held.append(cursor.rowcount > 0)
        if cursor.rowcount > 0:
            releases.finished(d.destination, d.order_key, d.id, dec.state)
        if delivered and cursor.rowcount > 0:
            resolved.append((finished, resolver(d.id), d.destination, d.event_id))
    conn.executemany(_INSERT_ATTEMPT, attempts)
    if resolved:
        # Most destinations have no dead letter waiting: one probe of the partial index per
        # destination spares a statement per delivered attempt (2 us each, in a drain).
        waiting = {name for name in {r[2] for r in resolved} if _has_dead_letters(conn, name)}
        if waiting:
            conn.executemany(RESOLVE_DEAD, [r for r in resolved if r[2] in waiting])
    uncharged = [ops[i].delivery for i, c in gated.items() if held[i] and not c.charged]
    gates.hold_attempts(conn, uncharged)
    circuits.update(ops[i].delivery.destination for i, c in gated.items() if c.change)
    return [
        dataclasses.replace(gated[i], held=ok) if i in gated else ok for i, ok in enumerate(held)
    ]


def _has_dead_letters(conn: sqlite3.Connection, destination: str) -> bool:
    return conn.execute(DEAD_LETTER_WAITING, (destination,)).fetchone() is not None


def _claim_op(conn: sqlite3.Connection, op: ClaimOp, now: float, full: bool) -> Any:
    """A list of claimed deliveries, or with a gate, a GatedClaim (nothing while full)."""
    if op.gate is None:
        return [] if full else _claim(conn, op.destination, op.limit, op.lease, now)

    def claim(limit: int) -> list[ClaimedDelivery]:
        return [] if full else _claim(conn, op.destination, limit, op.lease, now)

    return gates.claim_gated(conn, op.destination, op.limit, op.lease, op.gate, now, claim)


def _claim(
    conn: sqlite3.Connection, destination: str, limit: int, lease: float, now: float
) -> list[ClaimedDelivery]:
    params = {"destination": destination, "now": now, "limit": limit}
    ids = [int(r[0]) for r in conn.execute(_CLAIM, params).fetchall()]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    conn.execute(_LEASE.format(ids=marks), (now + lease, now, *ids))
    detail = {row[0]: row for row in conn.execute(_CLAIMED_DETAIL.format(ids=marks), ids)}
    claimed = [
        ClaimedDelivery(
            id=row[0], event_id=row[1], destination=row[2], attempt=row[3], replay=bool(row[4]),
            inbound=row[5], source=row[6], type=row[7], received_at=row[8], body=bytes(row[9]),
            content_type=row[10], fired_at=row[11], created_at=row[12], claimed_at=now,
            held_attempts=row[13], order_key=row[14],
        )
        for row in (detail[i] for i in ids if i in detail)
    ]  # fmt: skip
    if len(claimed) < len(ids):
        # A delivery whose event is gone can never be sent; left leased it would be claimed
        # again at every lease expiry, forever.
        orphans = set(ids) - {c.id for c in claimed}
        dead = conn.execute(
            f"UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, updated_at = ?,"
            f" last_error = ?, dead_reason = ? WHERE id IN ({','.join('?' * len(orphans))})"
            " RETURNING destination, order_key, id",
            (now, ORPHANED, ORPHANED, *orphans),
        ).fetchall()
        releases = Releases()
        for destination, key, delivery_id in dead:
            releases.finished(destination, key, delivery_id, DeliveryState.DEAD)
        ordering.release(conn, releases, now)
    return claimed
