"""The embedded SQLite backend: WAL, synchronous=FULL, and group commit through one writer.

Every write (ingest, claims, attempt records) is queued to a single writer task, which hands
whatever has queued up to its own thread as one transaction with one fsync, then answers each
caller. Under load many requests share a commit; alone, a request gets its own commit without
waiting for a timer. Reads (admin API, metrics, next-due times) use a separate aiosqlite
connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from relay.config import StorageConfig
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
)
from relay.store.base import DestinationStats, Signal, SignalKind, Store, StoreError
from relay.store.gate import (
    STATE_COLUMNS,
    CircuitChange,
    CircuitEvent,
    Completion,
    Gate,
    GatedClaim,
    GateState,
    state_of,
)
from relay.store.gate import reset as reset_gate
from relay.store.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    REQUEST_COLUMNS,
    attempt_record,
    delivery_record,
    event_record,
    request_record,
)
from relay.store.siblings import Siblings
from relay.store.sqlite import gates
from relay.store.sqlite.admin import SqliteAdminMixin
from relay.store.sqlite.control import SqliteControlMixin
from relay.store.sqlite.migrate import migrate
from relay.store.sqlite.sibling_signals import SiblingSignals
from relay.store.sqlite.turn import WriteTurn
from relay.store.sqlite.writer import (
    BatchOutcome,
    CallOp,
    ClaimOp,
    CompleteOp,
    IngestOp,
    Op,
    PageLimits,
    PingOp,
    apply_batch,
    clock,
)

log = logging.getLogger("relay.store")

MAX_BATCH = 512

# Nothing is claimed for a paused destination until resume, which signals its worker: a due
# retry left pending by the pause must not make the worker poll.
_NEXT_DUE = (
    "SELECT min(next_attempt_at) FROM deliveries"
    " WHERE destination = ? AND state IN ('pending', 'delivering')"
    " AND NOT EXISTS (SELECT 1 FROM destination_state WHERE name = ? AND paused = 1)"
)
# Dead letters are the unresolved dead deliveries, counted from their own partial index (named:
# without statistics SQLite would rather read every dead delivery, resolved ones too).
_STATS = (
    "SELECT state, destination, count(*) FROM deliveries"
    " WHERE state IN ('pending', 'delivering', 'paused') GROUP BY state, destination"
    " UNION ALL SELECT 'dead', destination, count(*) FROM deliveries INDEXED BY deliveries_dead"
    " WHERE state = 'dead' AND resolved_at IS NULL GROUP BY destination"
)
_OLDEST_PENDING = (
    "SELECT created_at FROM deliveries WHERE state = 'pending' AND destination = ?"
    " ORDER BY id LIMIT 1"
)


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` to a filesystem path."""
    return url.removeprefix("sqlite:///")


def _pragmas(config: StorageConfig) -> list[str]:
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={config.sqlite.synchronous}",
        f"PRAGMA busy_timeout={int(config.sqlite.busy_timeout * 1000)}",
    ]


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


class SqliteStore(SqliteAdminMixin, SqliteControlMixin, Store):
    """SQLite backend. One writer connection on its own thread, one aiosqlite reader."""

    def __init__(
        self,
        config: StorageConfig,
        dedup_window: float = 86400.0,
        siblings: Siblings | None = None,
    ) -> None:
        super().__init__()
        # One of several worker processes on this file ([server] workers): signals go to the
        # siblings too, and write transactions take turns with theirs.
        self._sibling_signals = SiblingSignals(siblings) if siblings is not None else None
        if self._sibling_signals is not None:
            self.signals = self._sibling_signals
        self._turn: WriteTurn | None = None
        self.config = config
        self.dedup_window = dedup_window
        self.path = sqlite_path(config.url)
        self._executor: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[Op] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._limits: PageLimits | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._on_writer(self._open_writer)
            self._reader = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self.config.sqlite.busy_timeout
            )
            for pragma in _pragmas(self.config):
                await self._reader.execute(pragma)
            if self._sibling_signals is not None:
                self._turn = WriteTurn.open(self.path)
                self._sibling_signals.open()
        except (sqlite3.Error, OSError) as exc:
            await self._close_connections()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from None
        self._task = asyncio.create_task(self._write_loop(), name="relay-sqlite-writer")

    async def _on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self.config.sqlite.busy_timeout,
            check_same_thread=False,
        )
        try:
            for pragma in _pragmas(self.config):
                conn.execute(pragma)
            if self.config.max_size_mb is not None:
                # A cap refuses new webhooks (503, Mailchimp retries) before the disk fills.
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                pages = max(1, int(self.config.max_size_mb * 1024 * 1024) // page_size)
                conn.execute(f"PRAGMA max_page_count={pages}")
                self._limits = PageLimits.below(pages)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._sibling_signals is not None:
            self._sibling_signals.close()
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._reader.close()
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._on_writer(self._writer.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._writer = self._reader = self._executor = None
        if self._turn is not None:
            self._turn.close()
            self._turn = None

    # -- the writer --------------------------------------------------------------------------

    async def _submit(self, op: Op) -> Any:
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
                    if self._turn is not None:  # sibling workers: wait for the write lock first
                        await self._turn.take(self._executor)
                    try:
                        await self._run_batch()
                    finally:
                        if self._turn is not None:
                            self._turn.release()
                if self._closing:
                    return
        finally:
            for op in self._queue:
                if not op.future.done():
                    op.future.set_exception(StoreError("store is closed"))
            self._queue = []

    async def _run_batch(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        calls = [op for op in batch if isinstance(op, CallOp)]
        grouped = [op for op in batch if not isinstance(op, CallOp)]
        if grouped:
            await self._run_isolated(grouped)
        for call in calls:
            await self._run_isolated([call])

    async def _apply(self, ops: list[Op]) -> BatchOutcome:
        args = (apply_batch, self._writer, ops, self.dedup_window, self._limits)
        if self._turn is None:
            outcome: BatchOutcome = await self._on_writer(*args)
            return outcome
        if not self._turn.held:  # a retry of ops one by one, or an admin call after the batch
            await self._turn.take(self._executor)
        outcome = await self._on_writer(self._turn.then_release, *args)
        return outcome

    async def _run_isolated(self, ops: list[Op]) -> None:
        """Run ops as one transaction; if it fails, retry each alone so one bad op fails alone."""
        started = time.perf_counter()
        try:
            outcome = await self._apply(ops)
        except Exception as exc:
            # A lock held by another connection fails every op alike, and retrying them one by
            # one would make the k-th caller wait k busy timeouts: fail the batch at once.
            if len(ops) > 1 and not _is_locked(exc):
                for op in ops:
                    await self._run_isolated([op])
                return
            if isinstance(exc, StoreError):  # an operation's own refusal, rolled back
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(exc)
                return
            if isinstance(exc, sqlite3.Error):
                log.error("storage write failed: %s", exc)
                reason = str(exc)
            else:  # a bug in an operation: fail its callers, keep the writer
                log.exception("storage operation failed")
                reason = f"internal error: {exc!r}"
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(StoreError(reason))
            return
        if self.on_commit is not None:
            self.on_commit(len(ops), time.perf_counter() - started)
        for op, result in zip(ops, outcome.results, strict=True):
            if not op.future.done():
                op.future.set_result(result)
        self.signals.emit_due(outcome.due)
        for name in outcome.circuits:
            self.signals.emit(Signal(SignalKind.CIRCUIT, name))

    # -- the Store interface: writes ---------------------------------------------------------

    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> IngestResult:
        # Ids are made here, on the event loop, in the order ops join the writer's queue, which is
        # the order they commit: an events cursor never passes an id that commits later.
        ids = tuple(new_ids(len(events)))
        duplicates: dict[str, str] = await self._submit(IngestOp(request, events, ids))
        return IngestResult(ids, duplicates)

    async def claim(self, destination: str, limit: int, lease: float) -> list[ClaimedDelivery]:
        claimed: list[ClaimedDelivery] = await self._submit(ClaimOp(destination, limit, lease))
        return claimed

    async def complete(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision
    ) -> bool:
        held: bool = await self._submit(CompleteOp(delivery, result, decision))
        return held

    async def claim_gated(
        self, destination: str, limit: int, lease: float, gate: Gate
    ) -> GatedClaim:
        claim: GatedClaim = await self._submit(ClaimOp(destination, limit, lease, gate))
        return claim

    async def complete_gated(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision, gate: Gate
    ) -> Completion:
        done: Completion = await self._submit(CompleteOp(delivery, result, decision, gate))
        return done

    async def now(self) -> float:
        return clock()

    async def ping(self) -> None:
        await self._submit(PingOp())

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` on the writer's thread and connection inside its own transaction."""
        return await self._submit(CallOp(fn))

    # -- the Store interface: reads ----------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreError("store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def due_in(self, destination: str) -> float | None:
        rows = await self._read(_NEXT_DUE, (destination, destination))
        value = rows[0][0] if rows else None
        return float(value) - clock() if value is not None else None

    async def gate_states(self) -> dict[str, GateState]:
        rows = await self._read(f"SELECT name, {STATE_COLUMNS} FROM destination_gates")
        return {str(r[0]): state_of(r[1:]) for r in rows}

    async def reset_circuit(self, name: str) -> CircuitChange | None:
        def reset(conn: sqlite3.Connection) -> bool:
            state = gates.read(conn, name)
            if state != reset_gate(state):
                gates.write(conn, name, reset_gate(state), clock())
            return state.open

        was_open: bool = await self.call(reset)
        self.signals.emit(Signal(SignalKind.CIRCUIT, name))
        return CircuitChange(CircuitEvent.CLOSED, "reset by an operator") if was_open else None

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
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS}, payload, payload_content_type FROM events WHERE id = ?",
            (event_id,),
        )
        if not rows:
            return None
        row = rows[0]
        event = event_record(row)
        (req,) = await self._read(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?", (event.request_id,)
        )
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
            payload=bytes(row[13]) if row[13] is not None else request.body,
            payload_content_type=row[14] if row[14] is not None else request.content_type,
            deliveries=tuple(delivery_record(d, tuple(attempts.get(d[0], ()))) for d in deliveries),
        )
