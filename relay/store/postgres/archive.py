"""PostgreSQL side of operator control: lists, replay jobs, pause and resume, leases, pruning.

A mixin of ``PostgresStore``. Every write is a short transaction on a pooled connection, and
every change other processes must hear of is NOTIFYed inside it, so they hear it once committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from relay.model import (
    CreatedDelivery,
    DeliveryPage,
    DeliveryState,
    EventFilter,
    EventPage,
    NewReplay,
    PruneResult,
    ReplayCandidate,
    ReplayRecord,
    ReplayState,
)
from relay.store.base import ReplayEndedError, Signal, SignalKind, Signals, StoreError
from relay.store.codec import filter_to_json
from relay.store.filters import (
    POSTGRES,
    RECEIVE_SLACK,
    candidates_query,
    count_query,
    deliveries_query,
    events_query,
)
from relay.store.gate import CircuitChange, CircuitEvent, GateState, row_of, state_of
from relay.store.gate import reset as reset_gate
from relay.store.ordering import Releases, keys_for
from relay.store.postgres import ordering
from relay.store.postgres.connect import STORE_ERRORS, store_error
from relay.store.postgres.writer import CHANNEL, Q
from relay.store.rows import event_record, listing_record, replay_record
from relay.store.rules import initial_state


class PostgresArchive:
    """The operator-control half of ``PostgresStore`` (see ``Archive``)."""

    signals: Signals
    _pool: asyncpg.Pool | None

    if TYPE_CHECKING:

        async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

        async def now(self) -> float: ...

    # -- reads -------------------------------------------------------------------------------

    async def list_events(
        self, where: EventFilter, limit: int, before: int | None = None
    ) -> EventPage:
        sql, params = events_query(POSTGRES, where, limit + 1, before)
        rows = await self._fetch(sql, *params)
        events = tuple(event_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return EventPage(events=events, next_cursor=events[-1].seq if more and events else None)

    async def count_events(self, where: EventFilter) -> int:
        sql, params = count_query(POSTGRES, where)
        rows = await self._fetch(sql, *params)
        return int(rows[0][0])

    async def replay_candidates(
        self, where: EventFilter, after: int | None, limit: int, with_payload: bool
    ) -> list[ReplayCandidate]:
        sql, params = candidates_query(POSTGRES, where, after, limit, with_payload)
        return [
            ReplayCandidate(
                event=event_record(r),
                payload=bytes(r[13]) if with_payload else None,
                content_type=r[14] if with_payload else None,
            )
            for r in await self._fetch(sql, *params)
        ]

    async def list_deliveries(
        self,
        state: DeliveryState | None,
        destination: str | None,
        limit: int,
        before: int | None = None,
    ) -> DeliveryPage:
        sql, params = deliveries_query(POSTGRES, state, destination, limit + 1, before)
        rows = await self._fetch(sql, *params)
        listed = tuple(listing_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return DeliveryPage(listed, listed[-1].delivery.id if more and listed else None)

    async def get_replay(self, replay_id: int) -> ReplayRecord | None:
        rows = await self._fetch(Q["replay"], replay_id)
        if not rows:
            return None
        return replay_record(rows[0], await self._fetch(Q["replay_counts"], replay_id))

    async def replay_backlog(self, replay_id: int, destination: str) -> int:
        rows = await self._fetch(Q["replay_backlog"], replay_id, destination)
        return int(rows[0][0])

    async def inbound_usage(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in await self._fetch(Q["inbound_usage"])}

    async def paused_destinations(self) -> frozenset[str]:
        return frozenset(str(r[0]) for r in await self._fetch(Q["paused"]))

    # -- replay jobs -------------------------------------------------------------------------

    async def start_replay(
        self, replay: NewReplay, owner: str | None = None, lease: float = 0.0
    ) -> int:
        async with self._transaction() as conn:
            replay_id = int(
                await conn.fetchval(
                    Q["start_replay"], replay.requested_by, replay.filter,
                    orjson.dumps(list(replay.destinations)).decode(), replay.total,
                    filter_to_json(replay.where), owner, lease,
                )
            )  # fmt: skip
            if owner is None:
                await conn.execute(Q["notify"], CHANNEL, f"replay:{replay_id}")
        if owner is None:
            # This process's runner hears it now, whatever state its listener is in.
            self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))
        return replay_id

    async def claim_replay(self, owner: str, lease: float) -> ReplayRecord | None:
        rows = await self._fetch(Q["claim_replay"], owner, lease)
        return replay_record(rows[0]) if rows else None

    async def renew_replay(self, replay_id: int, owner: str, lease: float) -> bool:
        return bool(await self._fetch(Q["renew_replay"], replay_id, owner, lease))

    async def add_replay_deliveries(
        self,
        replay_id: int,
        pairs: Sequence[tuple[str, str]],
        matched: int,
        cursor: int | None = None,
        owner: str | None = None,
        ordered: frozenset[str] = frozenset(),
    ) -> list[CreatedDelivery]:
        names = sorted({name for _, name in pairs})
        async with self._transaction() as conn:
            if owner is not None and not await conn.fetchval(Q["own_replay"], replay_id, owner):
                raise ReplayEndedError(f"replay {replay_id} is no longer run by this process")
            paused: frozenset[str] = frozenset()
            if names:
                await conn.execute(Q["ensure_destinations"], names)
                rows = await conn.fetch(Q["lock_destinations"], names)
                paused = frozenset(r[0] for r in rows if r[1])
            made: list[CreatedDelivery] = []
            releases = Releases()
            keys: list[int | None] = [None] * len(pairs)
            if any(name in ordered for _, name in pairs):
                wanted = sorted({e for e, name in pairs if name in ordered})
                facts = {r[0]: (r[1], r[2]) for r in await conn.fetch(Q["event_facts"], wanted)}
                keys = keys_for(pairs, ordered, facts)
                for (_, name), key in zip(pairs, keys, strict=True):
                    releases.joined(name, key)
                # Held before the deliveries get ids: they join the end of their queues.
                await ordering.lock(conn, releases)
            if pairs:
                made = [
                    CreatedDelivery(int(r[0]), r[1], r[2], DeliveryState(r[3]))
                    for r in await conn.fetch(
                        Q["insert_replay_deliveries"],
                        [e for e, _ in pairs],
                        [n for _, n in pairs],
                        [initial_state(n, paused).value for _, n in pairs],
                        replay_id,
                        keys,
                    )
                ]
            await conn.execute(Q["replay_progress"], replay_id, matched, len(made), cursor)
            released = await ordering.release(conn, releases)
            due = sorted(
                released | {c.destination for c in made if c.state is DeliveryState.PENDING}
            )
            if due:
                await conn.execute(Q["notify"], CHANNEL, "due:" + ",".join(due))
        self.signals.emit_due(set(due))
        return made

    async def finish_replay(self, replay_id: int, state: ReplayState) -> None:
        await self._fetch(Q["finish_replay"], replay_id, state.value)

    async def release_replay(self, replay_id: int, owner: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(Q["release_replay"], replay_id, owner)
            await conn.execute(Q["notify"], CHANNEL, f"replay:{replay_id}")
        self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))

    # -- pause, leases, retention --------------------------------------------------------------

    async def pause_destination(self, name: str) -> int:
        return await self._set_paused(name, paused=True)

    async def resume_destination(self, name: str) -> int:
        return await self._set_paused(name, paused=False)

    async def _set_paused(self, name: str, *, paused: bool) -> int:
        async with self._transaction() as conn:
            # Takes the row lock: waits for ingests that read the old state to commit, so the
            # update below sees (and holds) the deliveries they made.
            await conn.execute(Q["set_paused"], name, paused)
            status = await conn.execute(Q["hold_pending" if paused else "release_paused"], name)
            await conn.execute(Q["notify"], CHANNEL, f"pause:{name}")
            if not paused:
                await conn.execute(Q["notify"], CHANNEL, f"due:{name}")
        self.signals.emit(Signal(SignalKind.PAUSE, name))
        if not paused:
            self.signals.emit(Signal(SignalKind.DUE, name))
        return int(status.split()[-1])

    # -- circuits -------------------------------------------------------------------------------

    async def gate_states(self) -> dict[str, GateState]:
        return {str(r[0]): state_of(r[1:]) for r in await self._fetch(Q["gate_states"])}

    async def reset_circuit(self, name: str) -> CircuitChange | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(Q["lock_gate"], name)
            state = state_of(row)
            if state != reset_gate(state):
                await conn.execute(Q["save_gate"], name, *row_of(reset_gate(state)))
            await conn.execute(Q["notify"], CHANNEL, f"circuit:{name}")
        self.signals.emit(Signal(SignalKind.CIRCUIT, name))
        return CircuitChange(CircuitEvent.CLOSED, "reset by an operator") if state.open else None

    async def try_lease(self, name: str, owner: str, seconds: float) -> bool:
        return bool(await self._fetch(Q["try_lease"], name, owner, seconds))

    async def count_prunable(self, older_than: float) -> int:
        below, cutoff = await self._prune_bounds(older_than)
        rows = await self._fetch(Q["count_prunable"], below, cutoff)
        return int(rows[0][0])

    async def _prune_bounds(self, older_than: float) -> tuple[int, float]:
        """The position every prunable event is below, and the receive time it is before."""
        cutoff = await self.now() - older_than
        rows = await self._fetch(Q["position_before"], cutoff + RECEIVE_SLACK)
        return int(rows[0][0]), cutoff

    async def prune(self, older_than: float, batch: int = 500) -> PruneResult:
        below, cutoff = await self._prune_bounds(older_than)
        after = 0
        events = requests = 0
        while True:
            done, deleted, last = await self._prune_batch(after, below, cutoff, batch)
            events += done
            requests += deleted
            if last is None:
                return PruneResult(deleted_events=events, deleted_requests=requests)
            after = last

    async def _prune_batch(
        self, after: int, below: int, cutoff: float, batch: int
    ) -> tuple[int, int, int | None]:
        async with self._transaction() as conn:
            rows = await conn.fetch(Q["prune_candidates"], after, below, cutoff, batch)
            if not rows:
                return 0, 0, None
            # A new statement, so a new snapshot: it sees every delivery committed before the
            # locks above were granted, and none can be made for these events after them.
            kept = {r[0] for r in await conn.fetch(Q["unfinished_of"], [r[0] for r in rows])}
            gone = [r for r in rows if r[0] not in kept]
            ids = [r[0] for r in gone]
            requests = []
            if ids:
                await conn.execute(Q["prune_attempts"], ids)
                await conn.execute(Q["prune_deliveries"], ids)
                await conn.execute(Q["prune_dedup"], [r[2] for r in gone if r[2]], ids)
                await conn.execute(Q["prune_events"], ids)
                requests = await conn.fetch(Q["prune_requests"], sorted({r[1] for r in gone}))
                freed: dict[str, int] = {}
                for inbound, size in requests:
                    freed[inbound] = freed.get(inbound, 0) - int(size)
                if freed:
                    names = sorted(freed)
                    await conn.execute(Q["add_usage"], names, [freed[n] for n in names])
            last = int(rows[-1][3]) if len(rows) == batch else None
            return len(ids), len(requests), last

    def _transaction(self) -> _Transaction:
        if self._pool is None:
            raise StoreError("store is closed")
        return _Transaction(self._pool)


class _Transaction:
    """A pooled connection in a transaction; asyncpg failures become StoreError."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._pool.acquire()
            self._tx = self._conn.transaction()
            await self._tx.start()
        except STORE_ERRORS as exc:
            await self._release()
            raise store_error(exc) from None
        return self._conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                await self._tx.commit()
            else:
                await self._tx.rollback()
        except STORE_ERRORS as error:
            if exc is None:
                raise store_error(error) from None
        finally:
            await self._release()
        if isinstance(exc, STORE_ERRORS) and not isinstance(exc, StoreError):
            raise store_error(exc) from None

    async def _release(self) -> None:
        if self._conn is not None:
            try:
                await self._pool.release(self._conn)
            except STORE_ERRORS:
                self._conn.terminate()
            self._conn = None
