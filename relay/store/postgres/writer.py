"""The PostgreSQL writer: group commit of ingests, attempt records and pings on one connection.

Concurrent requests queue their writes; the writer takes whatever has queued up and commits it
as one transaction (with synchronous_commit on), then answers each caller. Under load many
requests share one commit; alone, a request gets its own at once. The writer owns its connection:
when it is lost, queued writes fail (503: Mailchimp retries), new ones fail at once while it is
down, and it reconnects by itself with backoff, so relay recovers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from relay.model import (
    AttemptResult,
    ClaimedDelivery,
    Decision,
    DeliveryState,
    NewEvent,
    RawRequest,
)
from relay.store.base import StoreError
from relay.store.gate import Gate
from relay.store.ordering import Releases, delivery_key
from relay.store.postgres import gates, ordering
from relay.store.postgres.connect import CONNECTION_ERRORS, clean_text, lock_key, store_error
from relay.store.rules import (
    dead_reason,
    email_key,
    initial_state,
    recorded_error,
    resolver,
    stored_size,
)
from relay.store.sqlfile import load_queries

log = logging.getLogger("relay.store")

Q = load_queries("relay.store.postgres")
MAX_BATCH = 512
CHANNEL = "relay"
POSITIONS_LOCK = lock_key("event positions")
# The words the SQLite backend uses at its cap, so operators see one reason either way.
FULL = "database or disk is full"


@dataclass(eq=False)
class Op:
    future: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class IngestOp(Op):
    request: RawRequest
    events: Sequence[NewEvent]
    event_ids: Sequence[str]


@dataclass(eq=False)
class CompleteOp(Op):
    delivery: ClaimedDelivery
    result: AttemptResult
    decision: Decision
    gate: Gate | None = None  # with a breaker: answered with a Completion instead of a bool


@dataclass(eq=False)
class PingOp(Op):
    owner: str


@dataclass
class Outcome:
    results: list[Any]
    due: set[str]
    circuits: set[str] = field(default_factory=set)  # destinations whose circuit changed


class Writer:
    """One connection, one transaction per batch of queued writes."""

    def __init__(
        self,
        connect: Callable[[], Any],
        dedup_window: float,
        on_commit: Callable[[int, float, set[str], set[str]], None],
    ) -> None:
        self._connect = connect
        self._dedup_window = dedup_window
        self._on_commit = on_commit
        self._conn: asyncpg.Connection | None = None
        self._queue: list[Op] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._known_destinations: set[str] = set()
        self.down_reason: str | None = None
        # Set while the database is over storage.max_size_mb: webhooks are refused (and /readyz
        # says so), attempts are still recorded.
        self.full = False

    async def open(self) -> None:
        try:
            self._conn = await self._connect()
        except CONNECTION_ERRORS as exc:
            raise store_error(exc) from None
        self._task = asyncio.create_task(self._loop(), name="relay-postgres-writer")

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(self._conn.close(), 2.0)
            self._conn = None

    async def submit(self, op: Op) -> Any:
        if self._closing or self._task is None or self._task.done():
            raise StoreError("store is closed")
        if self.down_reason is not None:
            # Refused at once rather than queued behind a reconnect: the sender retries.
            raise StoreError(f"PostgreSQL unavailable: {self.down_reason}")
        if self.full and isinstance(op, IngestOp | PingOp):
            raise StoreError(FULL)
        self._queue.append(op)
        self._wakeup.set()
        return await op.future

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._conn is not None and self._conn.is_closed():
                    # Dropped while idle (a server restart): nothing queued was sent yet, so
                    # one fresh connection at once spares those requests a 503.
                    await self._replace_connection()
                if self._conn is None and not self._closing:
                    await self._reconnect()
                while self._queue and self._conn is not None:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._run_isolated(batch)
                if self._closing:
                    return
        finally:
            for op in self._queue:
                if not op.future.done():
                    op.future.set_exception(StoreError("store is closed"))
            self._queue = []

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                self._conn = await self._connect()
            except CONNECTION_ERRORS as exc:
                self.down_reason = str(store_error(exc))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
                continue
            log.warning("PostgreSQL writer reconnected")
            self.down_reason = None
            self._known_destinations.clear()
            return

    async def _replace_connection(self) -> None:
        self._conn = None
        try:
            self._conn = await self._connect()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        log.error("PostgreSQL writer connection lost: %s", store_error(exc))
        self.down_reason = str(store_error(exc))
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None
        # Whatever queued meanwhile would wait for a reconnect: fail it now, the senders retry.
        for op in self._queue:
            if not op.future.done():
                op.future.set_exception(StoreError(f"PostgreSQL unavailable: {self.down_reason}"))
        self._queue = []
        self._wakeup.set()

    async def _run_isolated(self, ops: list[Op]) -> None:
        """Run ops as one transaction; if it fails, retry each alone so one bad op fails alone."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        conn = self._conn
        assert conn is not None
        try:
            outcome = await self._apply(conn, ops)
        except CONNECTION_ERRORS as exc:
            # The commit's outcome may be unknown: answer 503, and a retry of a webhook that did
            # commit is stored as a duplicate, never delivered twice.
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(store_error(exc))
            self._lost(exc)
            return
        except Exception as exc:
            if len(ops) > 1:
                for op in ops:
                    if self._conn is None:
                        op.future.set_exception(StoreError(f"PostgreSQL unavailable: {exc}"))
                        continue
                    await self._run_isolated([op])
                return
            if isinstance(exc, asyncpg.PostgresError | StoreError):
                log.error("storage write failed: %s", store_error(exc))
                error = store_error(exc)
            else:  # a bug in an operation: fail its caller, keep the writer
                log.exception("storage operation failed")
                error = StoreError(f"internal error: {exc!r}")
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        self._on_commit(len(ops), loop.time() - started, outcome.due, outcome.circuits)
        for op, result in zip(ops, outcome.results, strict=True):
            if not op.future.done():
                op.future.set_result(result)

    async def _apply(self, conn: asyncpg.Connection, ops: Sequence[Op]) -> Outcome:
        outcome = Outcome(results=[None] * len(ops), due=set())
        releases = Releases()
        ingests = [(i, op) for i, op in enumerate(ops) if isinstance(op, IngestOp)]
        completes = [(i, op) for i, op in enumerate(ops) if isinstance(op, CompleteOp)]
        async with conn.transaction():
            if completes:
                results = await _write_completes(
                    conn, [op for _, op in completes], outcome.circuits, releases
                )
                for (i, _), result in zip(completes, results, strict=True):
                    outcome.results[i] = result
            for ping in ops:
                if isinstance(ping, PingOp):
                    await conn.execute(Q["heartbeat"], ping.owner)
            if ingests:
                results = await self._write_ingests(
                    conn, [op for _, op in ingests], outcome.due, releases
                )
                for (i, _), result in zip(ingests, results, strict=True):
                    outcome.results[i] = result
            # Last, after every other lock: subscriber queues touched by this batch.
            outcome.due |= await ordering.release(conn, releases)
            if outcome.due:
                await conn.execute(Q["notify"], CHANNEL, "due:" + ",".join(sorted(outcome.due)))
            if outcome.circuits:
                changed = ",".join(sorted(outcome.circuits))
                await conn.execute(Q["notify"], CHANNEL, "circuit:" + changed)
        return outcome

    async def _write_ingests(
        self, conn: asyncpg.Connection, ops: Sequence[IngestOp], due: set[str], releases: Releases
    ) -> list[dict[str, str]]:
        names = sorted({name for op in ops for e in op.events for name in e.destinations})
        paused: frozenset[str] = frozenset()
        if names:
            if not self._known_destinations.issuperset(names):
                await conn.execute(Q["ensure_destinations"], names)
            rows = await conn.fetch(Q["lock_destinations"], names)
            paused = frozenset(r[0] for r in rows if r[1])
        requests = []
        usage: dict[str, int] = {}
        for r in (op.request for op in ops):
            headers = clean_text(orjson.dumps(r.headers).decode()) or ""
            usage[r.inbound] = usage.get(r.inbound, 0) + stored_size(r.body, headers)
            requests.append(
                (r.id, r.inbound, r.method, clean_text(r.path), clean_text(r.query), headers,
                 r.body, clean_text(r.content_type), r.peer, r.received_at)
            )  # fmt: skip
        await conn.execute(Q["insert_requests"], *_columns(requests, 10))
        originals = await self._originals(conn, ops)
        duplicates: list[dict[str, str]] = []
        events: list[tuple[Any, ...]] = []
        deliveries: list[tuple[str, str, str, int | None]] = []
        for op in ops:
            dups: dict[str, str] = {}
            duplicates.append(dups)
            for event_id, e in zip(op.event_ids, op.events, strict=True):
                original = originals.get(e.dedup_key) if e.dedup_key else None
                duplicate_of = original if original != event_id else None
                if duplicate_of is not None:
                    dups[event_id] = duplicate_of
                events.append(
                    (event_id, op.request.id, e.inbound, e.source, clean_text(e.type),
                     e.received_at, e.fired_at, clean_text(e.list_id), clean_text(e.email),
                     clean_text(e.parse_error), clean_text(e.dedup_key), duplicate_of, e.payload,
                     e.payload_content_type, clean_text(email_key(e.email)))
                )  # fmt: skip
                for name in () if duplicate_of is not None else e.destinations:
                    state = initial_state(name, paused)
                    if state is DeliveryState.PENDING:
                        due.add(name)
                    key = delivery_key(e, name)
                    releases.joined(name, key)
                    deliveries.append((event_id, name, state.value, key))
        # From here to commit, one ingest at a time across every process: positions are taken in
        # commit order, and the inbounds' usage rows (locked by the update until commit) cost no
        # more waiting than the lock already does.
        await conn.execute(Q["lock_positions"], POSITIONS_LOCK)
        inbounds = sorted(usage)
        await conn.execute(Q["add_usage"], inbounds, [usage[i] for i in inbounds])
        if events:
            first = int(await conn.fetchval(Q["take_positions"], len(events)))
            rows = [(*row[:14], first + n, row[14]) for n, row in enumerate(events)]
            await conn.execute(Q["insert_events"], *_columns(rows, 16))
        if deliveries:
            # Queues are held before their deliveries get ids: ids are then queue order.
            await ordering.lock(conn, releases)
            await conn.execute(Q["insert_deliveries"], *_columns(deliveries, 4))
        self._known_destinations.update(names)
        return duplicates

    async def _originals(self, conn: asyncpg.Connection, ops: Sequence[IngestOp]) -> dict[str, str]:
        """Dedup key -> the original's event id (possibly one of this batch's own events)."""
        if self._dedup_window <= 0:
            return {}
        first: dict[str, str] = {}
        for op in ops:
            for event_id, e in zip(op.event_ids, op.events, strict=True):
                if e.dedup_key:
                    first.setdefault(clean_text(e.dedup_key) or "", event_id)
        if not first:
            return {}
        keys = sorted(first)
        won = {
            r[0]
            for r in await conn.fetch(
                Q["upsert_dedup"], keys, [first[k] for k in keys], self._dedup_window
            )
        }
        originals = {k: first[k] for k in won}
        others = [k for k in keys if k not in won]
        if others:
            originals.update((r[0], r[1]) for r in await conn.fetch(Q["dedup_originals"], others))
        return originals


async def _write_completes(
    conn: asyncpg.Connection, ops: Sequence[CompleteOp], circuits: set[str], releases: Releases
) -> list[Any]:
    """Each op's answer: whether it held its lease, or with a breaker, its Completion."""
    # Circuits move first: one that is open holds back what an attempt decided.
    gated = (
        await gates.complete_gated(conn, [(o.delivery, o.result, o.decision, o.gate) for o in ops])
        if any(op.gate is not None for op in ops)
        else {}
    )
    attempts = []
    updates = []
    for i, op in enumerate(ops):
        d, r = op.delivery, op.result
        dec = gated[i].decision if i in gated else op.decision
        attempts.append(
            (d.id, d.attempt, r.started_at, r.duration, r.outcome.value, r.status,
             clean_text(r.error), r.response_head)
        )  # fmt: skip
        updates.append(
            (d.id, d.attempt, dec.state.value, dec.next_attempt_at, r.started_at + r.duration,
             r.status, clean_text(recorded_error(r, dec)), clean_text(dead_reason(dec)),
             resolver(d.id))
        )  # fmt: skip
    held = {int(r[0]) for r in await conn.fetch(Q["complete"], *_columns(updates, 9))}
    for op, update in zip(ops, updates, strict=True):
        if op.delivery.id in held:
            releases.finished(op.delivery.destination, op.delivery.order_key, op.delivery.id,
                              update[2])  # fmt: skip
    await conn.execute(Q["insert_attempts"], *_columns(attempts, 8))
    if gated:
        uncharged = [ops[i].delivery for i, c in gated.items() if not c.charged]
        await gates.hold_attempts(conn, [d for d in uncharged if d.id in held])
        circuits.update(ops[i].delivery.destination for i, c in gated.items() if c.change)
    return [
        dataclasses.replace(gated[i], held=op.delivery.id in held)
        if i in gated
        else op.delivery.id in held
        for i, op in enumerate(ops)
    ]


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for unnest($1::type[], ...)."""
    return [[row[i] for row in rows] for i in range(width)] if rows else [[] for _ in range(width)]
