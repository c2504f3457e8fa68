"""SQLite side of operator control over single deliveries and replays: retry now, resolve,
discard, cancel a replay, list replays, how destinations fare lately, and the audit trail.

A mixin of ``SqliteStore``, like ``admin``: reads on the reader connection, each write its own
short transaction on the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from relay.model import (
    AuditPage,
    AuditRecord,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    NewAudit,
    ReplayPage,
    ReplayState,
)
from relay.store.base import Signal, SignalKind, Signals
from relay.store.filters import SQLITE, waiting_count_query, waiting_ids_query
from relay.store.health import HealthReport, health_query, health_report
from relay.store.ordering import Releases
from relay.store.rows import DELIVERY_COLUMNS, REPLAY_COLUMNS, delivery_record, replay_record
from relay.store.sqlite import ordering
from relay.store.sqlite.writer import clock

_AUDIT_COLUMNS = "id, at, operator, action, target, detail, peer"


class SqliteControlMixin:
    """Operator control of deliveries and replays, and the audit trail (see ``Archive``)."""

    signals: Signals

    if TYPE_CHECKING:

        async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

        async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

    # -- one delivery ----------------------------------------------------------------------------

    async def get_delivery(self, delivery_id: int) -> DeliveryRecord | None:
        rows = await self._read(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", [delivery_id]
        )
        return delivery_record(rows[0]) if rows else None

    async def retry_delivery(self, delivery_id: int) -> bool:
        def update(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "UPDATE deliveries SET next_attempt_at = min(next_attempt_at, ?), updated_at = ?"
                " WHERE id = ? AND state = 'pending' AND next_attempt_at IS NOT NULL"
                " RETURNING destination",
                (clock(), clock(), delivery_id),
            ).fetchone()
            return str(row[0]) if row is not None else None

        destination: str | None = await self.call(update)
        if destination is not None:
            self.signals.emit(Signal(SignalKind.DUE, destination))
        return destination is not None

    async def resolve_delivery(self, delivery_id: int, by: str, reason: str | None) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE deliveries SET resolved_at = ?, resolved_by = ?, resolve_reason = ?"
                " WHERE id = ? AND state = 'dead' AND resolved_at IS NULL",
                (clock(), by, reason, delivery_id),
            )
            return cursor.rowcount > 0

        done: bool = await self.call(update)
        return done

    # -- waiting deliveries in bulk --------------------------------------------------------------

    async def count_waiting(self, where: DeliveryFilter) -> int:
        sql, params = waiting_count_query(SQLITE, where)
        rows = await self._read(sql, params)
        return int(rows[0][0])

    async def discard(self, where: DeliveryFilter, batch: int = 500) -> dict[str, int]:
        Batch = tuple[list[str], int, set[str]]

        def discard_batch(after: int) -> Callable[[sqlite3.Connection], Batch]:
            def run(conn: sqlite3.Connection) -> Batch:
                now = clock()
                sql, params = waiting_ids_query(SQLITE, where, after, batch)
                ids = [int(r[0]) for r in conn.execute(sql, params)]
                if not ids:
                    return [], 0, set()
                marks = ",".join("?" * len(ids))
                # The states again: a delivery claimed since is in flight and keeps going.
                states = ",".join("?" * len(where.states))
                names = conn.execute(
                    f"UPDATE deliveries SET state = 'discarded', next_attempt_at = NULL,"
                    f" updated_at = ? WHERE id IN ({marks}) AND state IN ({states})"
                    " RETURNING destination, order_key, id",
                    [now, *ids, *(s.value for s in where.states)],
                ).fetchall()
                releases = Releases()
                for name, key, delivery_id in names:
                    releases.finished(name, key, delivery_id, DeliveryState.DISCARDED)
                # A discarded head lets the next of its subscriber's deliveries go.
                due = ordering.release(conn, releases, now)
                return [str(r[0]) for r in names], ids[-1] if len(ids) == batch else 0, due

            return run

        counts: dict[str, int] = {}
        after = 0
        while True:
            names, last, due = await self.call(discard_batch(after))
            self.signals.emit_due(due)
            for name in names:
                counts[name] = counts.get(name, 0) + 1
            if not last:
                return counts
            after = last

    # -- replays ---------------------------------------------------------------------------------

    async def replay_state(self, replay_id: int) -> ReplayState | None:
        rows = await self._read("SELECT state FROM replays WHERE id = ?", [replay_id])
        return ReplayState(rows[0][0]) if rows else None

    async def list_replays(self, limit: int, before: int | None = None) -> ReplayPage:
        rows = await self._read(
            f"SELECT {REPLAY_COLUMNS} FROM replays WHERE id < ? ORDER BY id DESC LIMIT ?",
            [before if before is not None else 2**63 - 1, limit + 1],
        )
        replays = tuple(replay_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return ReplayPage(replays, replays[-1].id if more and replays else None)

    async def cancel_replay(self, replay_id: int, by: str) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE replays SET state = 'cancelled', finished_at = ?, cancelled_by = ?,"
                " owner = NULL, lease_until = NULL WHERE id = ? AND state = 'running'",
                (clock(), by, replay_id),
            )
            return cursor.rowcount > 0

        cancelled: bool = await self.call(update)
        if cancelled:
            self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))
        return cancelled

    # -- how destinations fare -------------------------------------------------------------------

    async def destination_health(self, since: float, limit: int = 10_000) -> HealthReport:
        sql, params = health_query(SQLITE, since, limit)
        return health_report(await self._read(sql, params), since, limit)

    # -- the audit trail -------------------------------------------------------------------------

    async def record_audit(self, entry: NewAudit) -> int:
        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO audit (at, operator, action, target, detail, peer)"
                " VALUES (?,?,?,?,?,?)",
                (clock(), entry.operator, entry.action.value, entry.target, entry.detail,
                 entry.peer),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        entry_id: int = await self.call(insert)
        return entry_id

    async def list_audit(
        self,
        limit: int,
        before: int | None = None,
        action: str | None = None,
        operator: str | None = None,
    ) -> AuditPage:
        sql, params = audit_query(action, operator, before, limit + 1)
        rows = await self._read(sql, params)
        entries = tuple(AuditRecord(*r) for r in rows[:limit])
        more = len(rows) > limit
        return AuditPage(entries, entries[-1].id if more and entries else None)


def audit_query(
    action: str | None, operator: str | None, before: int | None, limit: int
) -> tuple[str, list[Any]]:
    terms = ["id < ?"]
    params: list[Any] = [before if before is not None else 2**63 - 1]
    for column, value in (("action", action), ("operator", operator)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    sql = (
        f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(terms)}"
        " ORDER BY id DESC LIMIT ?"
    )
    return sql, [*params, limit]
