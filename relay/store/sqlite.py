"""The embedded SQLite backend: WAL, synchronous=FULL, and group commit through one writer task.

Every write (ingest, claims, attempt records) is queued to a single writer, which runs whatever
has queued up as one transaction with one fsync and then answers each caller. Under load many
requests share a commit; alone, a request gets its own commit without waiting for a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from relay.config import StorageConfig
from relay.model import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    Decision,
    DeliveryRecord,
    DeliveryState,
    EventDetail,
    EventRecord,
    NewEvent,
    RawRequest,
)
from relay.store.base import DestinationStats, Store, StoreError
from relay.store.sqlite_admin import SqliteAdminMixin

log = logging.getLogger("relay.store")

MAX_BATCH = 512

_INSERT_REQUEST = (
    "INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type, peer,"
    " received_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, request_id, inbound, source, type, received_at, fired_at, list_id,"
    " email, parse_error, dedup_key, duplicate_of, payload, payload_content_type)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,"
    " updated_at) VALUES (?,?,?,?,?,?)"
)
# The partial index deliveries_due covers exactly this WHERE clause, in next_attempt_at order.
_CLAIM = """
UPDATE deliveries
   SET state = 'delivering', attempts = attempts + 1, next_attempt_at = :lease, updated_at = :now
 WHERE id IN (SELECT id FROM deliveries
               WHERE destination = :destination AND state IN ('pending', 'delivering')
                 AND next_attempt_at <= :now
               ORDER BY next_attempt_at LIMIT :limit)
RETURNING id
"""
_CLAIMED_DETAIL = """
SELECT d.id, d.event_id, d.destination, d.attempts, d.replay_id IS NOT NULL,
       e.inbound, e.source, e.type, e.received_at,
       coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type)
  FROM deliveries d JOIN events e ON e.id = d.event_id JOIN requests r ON r.id = e.request_id
 WHERE d.id IN ({ids})
 ORDER BY d.next_attempt_at, d.id
"""
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status, error,"
    " response_head) VALUES (?,?,?,?,?,?,?,?)"
)
# A delivery leaves 'delivering' only if it still holds this attempt's lease: a worker that
# outlived its lease must not overwrite the newer attempt that took the delivery over.
_COMPLETE = (
    "UPDATE deliveries SET state = ?, next_attempt_at = ?, updated_at = ?, delivered_at = ?,"
    " last_status = ?, last_error = ? WHERE id = ? AND attempts = ? AND state = 'delivering'"
)
_NEXT_DUE = (
    "SELECT min(next_attempt_at) FROM deliveries"
    " WHERE destination = ? AND state IN ('pending', 'delivering')"
)
_STATS = (
    "SELECT state, destination, count(*) FROM deliveries"
    " WHERE state IN ('pending', 'delivering', 'paused', 'dead') GROUP BY state, destination"
)
_OLDEST_PENDING = (
    "SELECT created_at FROM deliveries WHERE state = 'pending' AND destination = ?"
    " ORDER BY id LIMIT 1"
)


@dataclass(eq=False)
class _Op:
    future: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class _Ingest(_Op):
    request: RawRequest
    events: Sequence[NewEvent]


@dataclass(eq=False)
class _Claim(_Op):
    destination: str
    limit: int
    now: float
    lease_until: float


@dataclass(eq=False)
class _Complete(_Op):
    delivery: ClaimedDelivery
    result: AttemptResult
    decision: Decision


@dataclass(eq=False)
class _Ping(_Op):
    pass


@dataclass(eq=False)
class _Call(_Op):
    """Any other write (admin operations): runs alone in its own transaction."""

    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` to a filesystem path."""
    return url.removeprefix("sqlite:///")


class SqliteStore(SqliteAdminMixin, Store):
    """SQLite backend. One writer connection (group commit) and one reader connection."""

    def __init__(self, config: StorageConfig) -> None:
        super().__init__()
        self.config = config
        self.path = sqlite_path(config.url)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[_Op] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._paused: frozenset[str] = frozenset()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._migrate(self._writer)
            self._reader = await self._connect()
            rows = await self._writer.execute_fetchall(
                "SELECT name FROM destination_state WHERE paused = 1"
            )
            self._paused = frozenset(r[0] for r in rows)
        except (sqlite3.Error, OSError) as exc:
            await self._close_connections()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from None
        self._task = asyncio.create_task(self._write_loop(), name="relay-sqlite-writer")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.config.busy_timeout
        )
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={self.config.synchronous}")
        await conn.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout * 1000)}")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        rows = await conn.execute_fetchall("PRAGMA user_version")
        current = int(next(iter(rows))[0])
        for version, script in migrations():
            if version <= current:
                continue
            log.info("applying schema migration %04d", version)
            # executescript commits first; the version bump is inside the script's transaction.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()
        self._writer = self._reader = None

    # -- the writer --------------------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._closing or self._task is None or self._task.done():
            raise StoreError("store is closed")
        self._queue.append(op)
        self._wakeup.set()
        return await op.future

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._run(batch)
                if self._closing:
                    return
        finally:
            for op in self._queue:
                if not op.future.done():
                    op.future.set_exception(StoreError("store is closed"))
            self._queue = []

    async def _run(self, batch: list[_Op]) -> None:
        calls = [op for op in batch if isinstance(op, _Call)]
        grouped = [op for op in batch if not isinstance(op, _Call)]
        if grouped:
            await self._run_isolated(grouped)
        for call in calls:
            await self._run_isolated([call])

    async def _run_isolated(self, ops: list[_Op]) -> None:
        """Run ops as one transaction; if it fails, retry each alone so one bad op fails alone."""
        try:
            results = await self._transaction(ops)
        except sqlite3.Error as exc:
            if len(ops) > 1:
                for op in ops:
                    await self._run_isolated([op])
                return
            log.error("storage write failed: %s", exc)
            if not ops[0].future.done():
                ops[0].future.set_exception(StoreError(str(exc)))
            return
        for op, result in zip(ops, results, strict=True):
            if not op.future.done():
                op.future.set_result(result)

    async def _transaction(self, ops: list[_Op]) -> list[Any]:
        conn = self._writer
        assert conn is not None
        started = time.perf_counter()
        results: list[Any] = [None] * len(ops)
        due: set[str] = set()
        await conn.execute("BEGIN IMMEDIATE")
        try:
            ingests = [op for op in ops if isinstance(op, _Ingest)]
            if ingests:
                due |= await self._write_ingests(conn, ingests)
            completes = [op for op in ops if isinstance(op, _Complete)]
            if completes:
                await self._write_completes(conn, completes)
            for i, op in enumerate(ops):
                if isinstance(op, _Claim):
                    results[i] = await self._claim(conn, op)
                elif isinstance(op, _Ping):
                    await conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?)",
                        (str(time.time()),),
                    )
                elif isinstance(op, _Call):
                    results[i] = await op.fn(conn)
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        if self.on_commit is not None:
            self.on_commit(len(ops), time.perf_counter() - started)
        self._notify_due(frozenset(due))
        return results

    async def _write_ingests(self, conn: aiosqlite.Connection, ops: list[_Ingest]) -> set[str]:
        requests = []
        events = []
        deliveries = []
        due: set[str] = set()
        paused = self._paused
        for op in ops:
            r = op.request
            requests.append(
                (
                    r.id,
                    r.inbound,
                    r.method,
                    r.path,
                    r.query,
                    orjson.dumps(r.headers).decode(),
                    r.body,
                    r.content_type,
                    r.peer,
                    r.received_at,
                )
            )
            for e in op.events:
                events.append(
                    (
                        e.id,
                        e.request_id,
                        e.inbound,
                        e.source,
                        e.type,
                        e.received_at,
                        e.fired_at,
                        e.list_id,
                        e.email,
                        e.parse_error,
                        e.dedup_key,
                        None,
                        e.payload,
                        e.payload_content_type,
                    )
                )
                for name in e.destinations:
                    state = DeliveryState.PAUSED if name in paused else DeliveryState.PENDING
                    if state is DeliveryState.PENDING:
                        due.add(name)
                    deliveries.append(
                        (e.id, name, state.value, e.received_at, e.received_at, e.received_at)
                    )
        await conn.executemany(_INSERT_REQUEST, requests)
        if events:
            await conn.executemany(_INSERT_EVENT, events)
        if deliveries:
            await conn.executemany(_INSERT_DELIVERY, deliveries)
        return due

    async def _write_completes(self, conn: aiosqlite.Connection, ops: list[_Complete]) -> None:
        attempts = []
        updates = []
        for op in ops:
            d, r, dec = op.delivery, op.result, op.decision
            attempts.append(
                (
                    d.id,
                    d.attempt,
                    r.started_at,
                    r.duration,
                    r.outcome.value,
                    r.status,
                    r.error,
                    r.response_head,
                )
            )
            finished = r.started_at + r.duration
            last_error = dec.reason or r.error or (f"HTTP {r.status}" if r.status else None)
            if dec.state is DeliveryState.DELIVERED:
                last_error = None
            updates.append(
                (
                    dec.state.value,
                    dec.next_attempt_at,
                    finished,
                    finished if dec.state is DeliveryState.DELIVERED else None,
                    r.status,
                    last_error,
                    d.id,
                    d.attempt,
                )
            )
        await conn.executemany(_INSERT_ATTEMPT, attempts)
        await conn.executemany(_COMPLETE, updates)

    async def _claim(self, conn: aiosqlite.Connection, op: _Claim) -> list[ClaimedDelivery]:
        if op.destination in self._paused:
            return []
        rows = await conn.execute_fetchall(
            _CLAIM,
            {
                "destination": op.destination,
                "now": op.now,
                "lease": op.lease_until,
                "limit": op.limit,
            },
        )
        ids = [int(r[0]) for r in rows]
        if not ids:
            return []
        detail = await conn.execute_fetchall(
            _CLAIMED_DETAIL.format(ids=",".join("?" * len(ids))), ids
        )
        return [
            ClaimedDelivery(
                id=row[0],
                event_id=row[1],
                destination=row[2],
                attempt=row[3],
                replay=bool(row[4]),
                inbound=row[5],
                source=row[6],
                type=row[7],
                received_at=row[8],
                body=bytes(row[9]),
                content_type=row[10],
            )
            for row in detail
        ]

    # -- the Store interface -----------------------------------------------------------------

    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> None:
        await self._submit(_Ingest(request, events))

    async def claim(
        self, destination: str, limit: int, now: float, lease_until: float
    ) -> list[ClaimedDelivery]:
        result: list[ClaimedDelivery] = await self._submit(
            _Claim(destination, limit, now, lease_until)
        )
        return result

    async def complete(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision
    ) -> None:
        await self._submit(_Complete(delivery, result, decision))

    async def ping(self) -> None:
        await self._submit(_Ping())

    async def call(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run ``fn`` on the writer connection inside its own transaction."""
        return await self._submit(_Call(fn))

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreError("store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def next_due(self, destination: str) -> float | None:
        rows = await self._read(_NEXT_DUE, (destination,))
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def destination_stats(self) -> list[DestinationStats]:
        counts: dict[str, dict[str, int]] = {}
        for state, destination, n in await self._read(_STATS):
            counts.setdefault(destination, {})[state] = n
        stats = []
        for destination, by_state in sorted(counts.items()):
            oldest = None
            if by_state.get("pending"):
                rows = await self._read(_OLDEST_PENDING, (destination,))
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
        rows = await self._read(f"SELECT {EVENT_COLUMNS}, payload, payload_content_type"
                                " FROM events WHERE id = ?", (event_id,))  # fmt: skip
        if not rows:
            return None
        row = rows[0]
        event = event_record(row)
        req = (await self._read(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?",
                                (event.request_id,)))[0]  # fmt: skip
        request = request_record(req)
        deliveries = await self._read(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ? ORDER BY id", (event_id,)
        )
        attempts: dict[int, list[AttemptRecord]] = {}
        if deliveries:
            ids = [d[0] for d in deliveries]
            for a in await self._read(
                f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM attempts"
                f" WHERE delivery_id IN ({','.join('?' * len(ids))}) ORDER BY id",
                ids,
            ):
                attempts.setdefault(a[0], []).append(attempt_record(a[1:]))
        return EventDetail(
            event=event,
            request=request,
            payload=bytes(row[12]) if row[12] is not None else request.body,
            payload_content_type=row[13] if row[13] is not None else request.content_type,
            deliveries=tuple(delivery_record(d, tuple(attempts.get(d[0], ()))) for d in deliveries),
        )


EVENT_COLUMNS = (
    "id, request_id, inbound, source, type, received_at, fired_at, list_id, email, parse_error,"
    " dedup_key, duplicate_of"
)
REQUEST_COLUMNS = "id, inbound, method, path, query, headers, body, content_type, peer, received_at"
DELIVERY_COLUMNS = (
    "id, event_id, destination, state, attempts, next_attempt_at, created_at, updated_at,"
    " delivered_at, last_status, last_error, replay_id"
)
ATTEMPT_COLUMNS = "number, started_at, duration, outcome, status, error, response_head"


def event_record(row: Sequence[Any]) -> EventRecord:
    return EventRecord(*row[:12])


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
        attempt_log=attempts,
    )  # fmt: skip


def attempt_record(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        number=row[0], started_at=row[1], duration=row[2], outcome=row[3], status=row[4],
        error=row[5], response_head=bytes(row[6] or b""),
    )  # fmt: skip


def migrations() -> list[tuple[int, str]]:
    """The numbered ``NNNN_name.sql`` scripts shipped with relay, in order."""
    folder = resources.files("relay.store") / "sql" / "sqlite"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)
