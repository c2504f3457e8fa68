"""The ingest part of a PostgreSQL group commit: a batch's requests, events and deliveries.

One round trip for a batch with no ordered destination (``relay_ingest``, migration 0008, its
own transaction), else two in the writer's transaction (``relay_ingest_head`` and
``relay_ingest_tail``, migration 0007), instead of one per statement: the writer shares the
event loop with request handling, so under load every round trip also waits for a loop turn,
and that wait, not the database, bounded ingest. With two calls, the decisions between them
(which event is a duplicate, which delivery is paused, which subscriber queue it joins) are
made here by relay.store.rules, as on SQLite; ``relay_ingest`` makes the first two in SQL, and
the store contract suite holds both paths to the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from relay.store.ordering import Releases, new_deliveries
from relay.store.postgres.connect import clean_text, columns, lock_key
from relay.store.rules import email_key, stored_size
from relay.store.sqlfile import load_queries

if TYPE_CHECKING:
    from relay.model import NewEvent
    from relay.store.postgres.writer import IngestOp

Q = load_queries("relay.store.postgres")
POSITIONS_LOCK = lock_key("event positions")


@dataclass
class Written:
    duplicates: list[dict[str, str]]  # per op: event id -> the original's id
    notified: bool  # the tail sent the batch's wake-up


async def write(
    conn: asyncpg.Connection,
    ops: Sequence[IngestOp],
    *,
    due: set[str],
    releases: Releases,
    dedup_window: float,
    known_destinations: set[str],
    channel: str,
) -> Written:
    """Store ``ops`` in the open transaction; ``due`` gains the destinations given a delivery
    that is due now, ``releases`` the subscriber queues joined. The wake-up is sent with the
    last call unless queues are to be released first (the caller then sends it)."""
    names = sorted({name for op in ops for e in op.events for name in e.destinations})
    if names and not known_destinations.issuperset(names):
        await conn.execute(Q["ensure_destinations"], names)
    keys = _first_claims(ops) if dedup_window > 0 else {}
    requests = _request_rows(ops)
    head = await conn.fetch(
        Q["ingest_head"], names, *columns(requests, 10), list(keys), list(keys.values()),
        dedup_window,
    )  # fmt: skip
    paused = frozenset(r[1] for r in head if r[0] == "d" and r[2] == "true")
    originals = {r[1]: r[2] for r in head if r[0] == "k"}
    usage = _usage(requests)
    duplicates: list[dict[str, str]] = []
    events: list[tuple[Any, ...]] = []
    deliveries: list[tuple[str, str, str, int | None]] = []
    for op in ops:
        dups: dict[str, str] = {}
        duplicates.append(dups)
        for event_id, e in zip(op.event_ids, op.events, strict=True):
            original = originals.get(clean_text(e.dedup_key) or "") if e.dedup_key else None
            duplicate_of = original if original != event_id else None
            if duplicate_of is not None:
                dups[event_id] = duplicate_of
            row = _event_row(event_id, op.request.id, e)
            events.append((*row[:11], duplicate_of, *row[11:]))
            if duplicate_of is None:
                for name, state, key in new_deliveries(e, paused, due, releases):
                    deliveries.append((event_id, name, state.value, key))
    queues = releases.sorted() if deliveries and releases.queues else []
    # Queues released after the tail may make more destinations due: the caller notifies then.
    note = None if releases.queues or not due else "due:" + ",".join(sorted(due))
    inbounds = sorted(usage)
    await conn.execute(
        Q["ingest_tail"], POSITIONS_LOCK, inbounds, [usage[i] for i in inbounds],
        *columns(events, 15), [q[0] for q in queues], [q[1] for q in queues],
        *columns(deliveries, 4), channel, note,
    )  # fmt: skip
    known_destinations.update(names)
    return Written(duplicates, notified=note is not None)


def single(ops: Sequence[IngestOp]) -> bool:
    """Whether ``write_single`` can store these: no delivery joins a subscriber queue."""
    return not any(e.ordered for op in ops for e in op.events)


async def write_single(
    conn: asyncpg.Connection,
    ops: Sequence[IngestOp],
    *,
    due: set[str],
    dedup_window: float,
    known_destinations: set[str],
    channel: str,
) -> list[dict[str, str]]:
    """Store ``ops`` (none with an ordered destination) with one statement, its own
    transaction, which sends the wake-up too; each op's duplicates, as ``write``."""
    names = sorted({name for op in ops for e in op.events for name in e.destinations})
    keys = _first_claims(ops) if dedup_window > 0 else {}
    requests = _request_rows(ops)
    usage = _usage(requests)
    inbounds = sorted(usage)
    events: list[tuple[Any, ...]] = []
    deliveries: list[tuple[str, str]] = []
    for op in ops:
        for event_id, e in zip(op.event_ids, op.events, strict=True):
            events.append(_event_row(event_id, op.request.id, e))
            deliveries.extend((event_id, name) for name in e.destinations)
    rows = await conn.fetch(
        Q["ingest"], names, not known_destinations.issuperset(names), *columns(requests, 10),
        list(keys), list(keys.values()), dedup_window, POSITIONS_LOCK, inbounds,
        [usage[i] for i in inbounds], *columns(events, 14), *columns(deliveries, 2), channel,
    )  # fmt: skip
    known_destinations.update(names)
    originals = {r[1]: r[2] for r in rows if r[0] == "x"}
    due.update(r[1] for r in rows if r[0] == "u")
    return [{i: originals[i] for i in op.event_ids if i in originals} for op in ops]


def _event_row(event_id: str, request_id: str, e: NewEvent) -> tuple[Any, ...]:
    """An event's columns as relay_ingest takes them (relay_ingest_tail: duplicate_of after
    the dedup key)."""
    return (
        event_id, request_id, e.inbound, e.source, clean_text(e.type), e.received_at,
        e.fired_at, clean_text(e.list_id), clean_text(e.email), clean_text(e.parse_error),
        clean_text(e.dedup_key), e.payload, e.payload_content_type,
        clean_text(email_key(e.email)),
    )  # fmt: skip


def _usage(requests: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    """Bytes each inbound's requests take, as relay.store.rules counts them."""
    usage: dict[str, int] = {}
    for _, inbound, _, _, _, headers, body, *_ in requests:
        usage[inbound] = usage.get(inbound, 0) + stored_size(body, headers)
    return usage


def _first_claims(ops: Sequence[IngestOp]) -> dict[str, str]:
    """Each dedup key of the batch (sorted) with the first event that carries it."""
    first: dict[str, str] = {}
    for op in ops:
        for event_id, e in zip(op.event_ids, op.events, strict=True):
            if e.dedup_key:
                first.setdefault(clean_text(e.dedup_key) or "", event_id)
    return {k: first[k] for k in sorted(first)}


def _request_rows(ops: Sequence[IngestOp]) -> list[tuple[Any, ...]]:
    return [
        (r.id, r.inbound, r.method, clean_text(r.path), clean_text(r.query),
         clean_text(orjson.dumps(r.headers).decode()) or "", r.body, clean_text(r.content_type),
         r.peer, r.received_at)
        for r in (op.request for op in ops)
    ]  # fmt: skip
