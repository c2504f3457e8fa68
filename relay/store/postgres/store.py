"""The PostgreSQL backend: shared by any number of relay processes, on any number of machines.

Three kinds of connection per process: the writer's (group commit of ingests, attempt records and
pings), the listener's (LISTEN for other processes' signals), and a pool for everything else
(claims, admin reads and writes, replay jobs, pruning). Any of them may drop: the pool reconnects
on next use, the writer and the listener reconnect by themselves, and meanwhile what cannot be
done answers 503 (StoreError) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.config import StorageConfig, redact_url
from relay.ids import new_ids
from relay.model import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    Decision,
    EventDetail,
    IngestResult,
    NewEvent,
    RawRequest,
    process_owner,
)
from relay.store.base import ANY, DestinationStats, Signal, SignalKind, Store, StoreError
from relay.store.gate import Completion, Gate, GatedClaim
from relay.store.postgres import gates, ordering
from relay.store.postgres.archive import PostgresArchive
from relay.store.postgres.connect import (
    CONNECTION_ERRORS,
    STORE_ERRORS,
    connect_kwargs,
    store_error,
)
from relay.store.postgres.control import PostgresControl
from relay.store.postgres.listener import Listener
from relay.store.postgres.migrate import migrate
from relay.store.postgres.writer import CHANNEL, FULL, CompleteOp, IngestOp, PingOp, Q, Writer
from relay.store.rows import attempt_record, delivery_record, event_record, request_record
from relay.store.rules import ORPHANED

log = logging.getLogger("relay.store")

# How often the database size is compared with storage.max_size_mb (it is not cheap to read per
# request; a few seconds over the cap is what the cap's margin is for).
SIZE_CHECK = 5.0


class PostgresStore(PostgresArchive, PostgresControl, Store):
    def __init__(self, config: StorageConfig, dedup_window: float = 86400.0) -> None:
        super().__init__()
        self.config = config
        self.dedup_window = dedup_window
        self.owner = process_owner()
        self._pool: asyncpg.Pool | None = None
        self._size_task: asyncio.Task[None] | None = None
        self._writer = Writer(
            functools.partial(asyncpg.connect, **connect_kwargs(config, "writer")),
            dedup_window,
            self._committed,
        )
        self._listener = Listener(
            functools.partial(asyncpg.connect, **connect_kwargs(config, "listener")),
            self.signals,
            self._everything_may_have_changed,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        kwargs = connect_kwargs(self.config, "pool")
        try:
            self._pool = await asyncpg.create_pool(
                # No floor to keep: while the server is down asyncpg would log a traceback for
                # every failed attempt to restore it. Connections are made on demand.
                min_size=0,
                max_size=self.config.postgresql.pool_size,
                # Idle connections go soon, so a failover or restart is not met by stale ones.
                max_inactive_connection_lifetime=60.0,
                reset=_no_reset,
                **kwargs,
            )
            async with self._pool.acquire() as conn:
                if await conn.fetchval("SHOW synchronous_commit") == "off":
                    raise StoreError("synchronous_commit is off: a 2xx could precede durability")
                await migrate(conn)
        except STORE_ERRORS as exc:
            await self._close_pool()
            raise StoreError(
                f"cannot open PostgreSQL database {redact_url(self.config.url)}: {store_error(exc)}"
            ) from None
        except StoreError:
            await self._close_pool()
            raise
        await self._writer.open()
        self._listener.start()
        if self.config.max_size_mb is not None:
            self._size_task = asyncio.create_task(self._watch_size(), name="relay-postgres-size")

    async def _watch_size(self) -> None:
        assert self.config.max_size_mb is not None
        cap = self.config.max_size_mb * 1024 * 1024
        while True:
            try:
                size = float((await self._fetch(Q["database_size"]))[0][0])
            except StoreError as exc:
                log.warning("could not read the database size: %s", exc)
            else:
                if (size >= cap) != self._writer.full:
                    log.warning(
                        "database size %.0f MB is %s storage.max_size_mb (%g): webhooks %s",
                        size / 1024 / 1024,
                        "at or over" if size >= cap else "back under",
                        self.config.max_size_mb,
                        "get 503" if size >= cap else "are taken again",
                    )
                self._writer.full = size >= cap
            await asyncio.sleep(SIZE_CHECK)

    async def close(self) -> None:
        if self._size_task is not None:
            self._size_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._size_task
            self._size_task = None
        await self._listener.stop()
        await self._writer.close()
        await self._close_pool()

    async def _close_pool(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except CONNECTION_ERRORS:
                self._pool.terminate()
            self._pool = None

    def _committed(self, ops: int, seconds: float, due: set[str], circuits: set[str]) -> None:
        if self.on_commit is not None:
            self.on_commit(ops, seconds)
        # This process's workers hear it now; the others through the notification.
        self.signals.emit_due(due)
        for name in circuits:
            self.signals.emit(Signal(SignalKind.CIRCUIT, name))

    def _everything_may_have_changed(self) -> None:
        self.signals.emit(Signal(SignalKind.DUE, ANY))
        self.signals.emit(Signal(SignalKind.REPLAY, ANY))
        self.signals.emit(Signal(SignalKind.CIRCUIT, ANY))

    # -- pool access -------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            return list(await self._pool.fetch(sql, *args))
        except STORE_ERRORS as exc:
            raise store_error(exc) from None

    async def _notify(self, conn: asyncpg.Connection, payload: str) -> None:
        await conn.execute(Q["notify"], CHANNEL, payload)

    # -- DeliveryQueue -------------------------------------------------------------------------

    async def now(self) -> float:
        rows = await self._fetch(Q["now"])
        return float(rows[0][0])

    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> IngestResult:
        ids = tuple(new_ids(len(events)))
        duplicates: dict[str, str] = await self._writer.submit(IngestOp(request, events, ids))
        return IngestResult(ids, duplicates)

    async def claim(self, destination: str, limit: int, lease: float) -> list[ClaimedDelivery]:
        claimed, orphans = _claimed(await self._fetch(Q["claim"], destination, limit, lease))
        if orphans:
            async with self._transaction() as conn:
                await ordering.finished(
                    conn, await conn.fetch(Q["orphaned"], orphans, ORPHANED), "dead"
                )
        return claimed

    async def claim_gated(
        self, destination: str, limit: int, lease: float, gate: Gate
    ) -> GatedClaim:
        async def claim(conn: asyncpg.Connection, n: int) -> list[ClaimedDelivery]:
            claimed, orphans = _claimed(await conn.fetch(Q["claim"], destination, n, lease))
            if orphans:
                await ordering.finished(
                    conn, await conn.fetch(Q["orphaned"], orphans, ORPHANED), "dead"
                )
            return claimed

        async with self._transaction() as conn:
            return await gates.claim_gated(conn, destination, limit, lease, gate, claim)

    async def complete(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision
    ) -> bool:
        held: bool = await self._writer.submit(CompleteOp(delivery, result, decision))
        return held

    async def complete_gated(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision, gate: Gate
    ) -> Completion:
        done: Completion = await self._writer.submit(CompleteOp(delivery, result, decision, gate))
        return done

    async def due_in(self, destination: str) -> float | None:
        rows = await self._fetch(Q["due_in"], destination)
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def ping(self) -> None:
        await self._writer.submit(PingOp(self.owner))

    def trouble(self) -> str | None:
        if self._writer.down_reason is not None:
            return f"PostgreSQL unavailable: {self._writer.down_reason}"
        return FULL if self._writer.full else None

    # -- reads ---------------------------------------------------------------------------------

    async def destination_stats(self) -> list[DestinationStats]:
        counts: dict[str, dict[str, int]] = {}
        for state, destination, n in await self._fetch(Q["stats"]):
            counts.setdefault(destination, {})[state] = n
        stats = []
        for destination, by_state in sorted(counts.items()):
            oldest = None
            if by_state.get("pending"):
                rows = await self._fetch(Q["oldest_pending"], destination)
                oldest = float(rows[0][0]) if rows else None
            stats.append(
                DestinationStats(
                    destination=destination,
                    pending=by_state.get("pending", 0),
                    delivering=by_state.get("delivering", 0),
                    paused=by_state.get("paused", 0),
                    dead=by_state.get("dead", 0),
                    oldest_pending_at=oldest,
                )
            )
        return stats

    async def get_event(self, event_id: str) -> EventDetail | None:
        rows = await self._fetch(Q["event"], event_id)
        if not rows:
            return None
        row = rows[0]
        event = event_record(row)
        (req,) = await self._fetch(Q["request"], event.request_id)
        request = request_record(req)
        deliveries = await self._fetch(Q["event_deliveries"], event_id)
        attempts: dict[int, list[AttemptRecord]] = {}
        if deliveries:
            for a in await self._fetch(Q["delivery_attempts"], [d[0] for d in deliveries]):
                attempts.setdefault(a[0], []).append(attempt_record(a[1:]))
        return EventDetail(
            event=event,
            request=request,
            payload=bytes(row[13]) if row[13] is not None else request.body,
            payload_content_type=row[14] if row[14] is not None else request.content_type,
            deliveries=tuple(delivery_record(d, tuple(attempts.get(d[0], ()))) for d in deliveries),
        )


def _claimed(rows: Sequence[asyncpg.Record]) -> tuple[list[ClaimedDelivery], list[int]]:
    """Rows of the claim statement as deliveries, and the ids of those whose event is gone: such
    a delivery can never be sent, and left leased it would be claimed again at every lease
    expiry, forever (the caller marks them dead)."""
    claimed = [
        ClaimedDelivery(
            id=r[0], event_id=r[1], destination=r[2], attempt=r[3], replay=r[4],
            inbound=r[5], source=r[6], type=r[7], received_at=r[8], body=bytes(r[9]),
            content_type=r[10], fired_at=r[11], created_at=r[12], claimed_at=r[13],
            held_attempts=r[15], order_key=r[16],
        )
        for r in rows
        if not r[14]
    ]  # fmt: skip
    return claimed, [int(r[0]) for r in rows if r[14]]


async def _no_reset(conn: asyncpg.Connection) -> None:
    """relay keeps no session state on pooled connections: skip the reset round trip."""
