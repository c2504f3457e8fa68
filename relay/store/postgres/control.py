"""PostgreSQL side of operator control over single deliveries and replays: retry now, resolve,
discard, cancel a replay, list replays, how destinations fare lately, and the audit trail.

A mixin of ``PostgresStore``, like ``archive``: what other processes must hear of (a delivery
due now, a cancelled replay) is NOTIFYed inside the transaction that does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from relay.model import (
    AuditPage,
    AuditRecord,
    DeliveryFilter,
    DeliveryRecord,
    NewAudit,
    ReplayPage,
    ReplayState,
)
from relay.store.base import Signal, SignalKind, Signals
from relay.store.filters import POSTGRES, waiting_count_query, waiting_ids_query
from relay.store.health import HealthReport, health_query, health_report
from relay.store.postgres import ordering
from relay.store.postgres.connect import clean_text
from relay.store.postgres.writer import CHANNEL, Q
from relay.store.rows import delivery_record, replay_record

_NO_CURSOR = 2**63 - 1

if TYPE_CHECKING:
    from relay.store.postgres.archive import _Transaction


class PostgresControl:
    """Operator control of deliveries and replays, and the audit trail (see ``Archive``)."""

    signals: Signals

    if TYPE_CHECKING:

        async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

        def _transaction(self) -> _Transaction: ...

    # -- one delivery ----------------------------------------------------------------------------

    async def get_delivery(self, delivery_id: int) -> DeliveryRecord | None:
        rows = await self._fetch(Q["delivery"], delivery_id)
        return delivery_record(rows[0]) if rows else None

    async def retry_delivery(self, delivery_id: int) -> bool:
        async with self._transaction() as conn:
            destination = await conn.fetchval(Q["retry_delivery"], delivery_id)
            if destination is not None:
                await conn.execute(Q["notify"], CHANNEL, f"due:{destination}")
        if destination is not None:
            self.signals.emit(Signal(SignalKind.DUE, str(destination)))
        return destination is not None

    async def resolve_delivery(self, delivery_id: int, by: str, reason: str | None) -> bool:
        rows = await self._fetch(
            Q["resolve_delivery"], delivery_id, clean_text(by), clean_text(reason)
        )
        return bool(rows)

    # -- waiting deliveries in bulk --------------------------------------------------------------

    async def count_waiting(self, where: DeliveryFilter) -> int:
        sql, params = waiting_count_query(POSTGRES, where)
        rows = await self._fetch(sql, *params)
        return int(rows[0][0])

    async def discard(self, where: DeliveryFilter, batch: int = 500) -> dict[str, int]:
        counts: dict[str, int] = {}
        states = [s.value for s in where.states]
        after = 0
        while True:
            sql, params = waiting_ids_query(POSTGRES, where, after, batch)
            async with self._transaction() as conn:
                ids = [int(r[0]) for r in await conn.fetch(sql, *params)]
                rows = await conn.fetch(Q["discard_ids"], ids, states)
                # A discarded head lets the next of its subscriber's deliveries go.
                due = await ordering.finished(conn, rows, "discarded")
                if due:
                    await conn.execute(Q["notify"], CHANNEL, "due:" + ",".join(sorted(due)))
            self.signals.emit_due(due)
            names = [str(r[0]) for r in rows]
            for name in names:
                counts[name] = counts.get(name, 0) + 1
            if len(ids) < batch:
                return counts
            after = ids[-1]

    # -- replays ---------------------------------------------------------------------------------

    async def replay_state(self, replay_id: int) -> ReplayState | None:
        rows = await self._fetch(Q["replay_state"], replay_id)
        return ReplayState(rows[0][0]) if rows else None

    async def list_replays(self, limit: int, before: int | None = None) -> ReplayPage:
        rows = await self._fetch(
            Q["list_replays"], before if before is not None else _NO_CURSOR, limit + 1
        )
        replays = tuple(replay_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return ReplayPage(replays, replays[-1].id if more and replays else None)

    async def cancel_replay(self, replay_id: int, by: str) -> bool:
        async with self._transaction() as conn:
            cancelled = await conn.fetchval(Q["cancel_replay"], replay_id, clean_text(by))
            if cancelled is not None:
                # Its owner, in whichever process, stops feeding it at once.
                await conn.execute(Q["notify"], CHANNEL, f"replay:{replay_id}")
        if cancelled is not None:
            self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))
        return cancelled is not None

    # -- how destinations fare -------------------------------------------------------------------

    async def destination_health(self, since: float, limit: int = 10_000) -> HealthReport:
        sql, params = health_query(POSTGRES, since, limit)
        return health_report(await self._fetch(sql, *params), since, limit)

    # -- the audit trail -------------------------------------------------------------------------

    async def record_audit(self, entry: NewAudit) -> int:
        rows = await self._fetch(
            Q["record_audit"], clean_text(entry.operator), entry.action.value,
            clean_text(entry.target), clean_text(entry.detail), clean_text(entry.peer),
        )  # fmt: skip
        return int(rows[0][0])

    async def list_audit(
        self,
        limit: int,
        before: int | None = None,
        action: str | None = None,
        operator: str | None = None,
    ) -> AuditPage:
        rows = await self._fetch(
            Q["list_audit"], before if before is not None else _NO_CURSOR, limit + 1,
            action, operator,
        )  # fmt: skip
        entries = tuple(_audit(r) for r in rows[:limit])
        more = len(rows) > limit
        return AuditPage(entries, entries[-1].id if more and entries else None)


def _audit(r: Sequence[Any]) -> AuditRecord:
    return AuditRecord(*r)
