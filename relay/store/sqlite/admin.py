"""SQLite side of operator control: lists, replay jobs, pause and resume, leases and pruning.

A mixin of ``SqliteStore``: reads go to the reader connection through ``_read``; writes go
through ``call``, so each one is a short transaction of its own on the single writer and ingest
never waits behind a whole bulk operation, only behind one batch of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
from relay.store.base import ReplayEndedError, Signal, SignalKind, Signals
from relay.store.codec import filter_to_json
from relay.store.filters import (
    RECEIVE_SLACK,
    SQLITE,
    UNFINISHED,
    candidates_query,
    count_query,
    deliveries_query,
    events_query,
    id_bound,
)
from relay.store.ordering import Releases, keys_for
from relay.store.rows import REPLAY_COLUMNS, event_record, listing_record, replay_record
from relay.store.rules import initial_state
from relay.store.sqlite import ordering
from relay.store.sqlite.writer import ADD_USAGE, IN_CHUNK, PAUSED, clock


class SqliteAdminMixin:
    """The operator-control half of ``SqliteStore`` (see ``Archive``)."""

    signals: Signals

    if TYPE_CHECKING:

        async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

        async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

    # -- reads -------------------------------------------------------------------------------

    async def list_events(
        self, where: EventFilter, limit: int, before: int | None = None
    ) -> EventPage:
        sql, params = events_query(SQLITE, where, limit + 1, before)
        rows = await self._read(sql, params)
        events = tuple(event_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return EventPage(events=events, next_cursor=events[-1].seq if more and events else None)

    async def count_events(self, where: EventFilter) -> int:
        sql, params = count_query(SQLITE, where)
        rows = await self._read(sql, params)
        return int(rows[0][0])

    async def replay_candidates(
        self, where: EventFilter, after: int | None, limit: int, with_payload: bool
    ) -> list[ReplayCandidate]:
        sql, params = candidates_query(SQLITE, where, after, limit, with_payload)
        return [
            ReplayCandidate(
                event=event_record(r),
                payload=bytes(r[13]) if with_payload else None,
                content_type=r[14] if with_payload else None,
            )
            for r in await self._read(sql, params)
        ]

    async def list_deliveries(
        self,
        state: DeliveryState | None,
        destination: str | None,
        limit: int,
        before: int | None = None,
    ) -> DeliveryPage:
        sql, params = deliveries_query(SQLITE, state, destination, limit + 1, before)
        rows = await self._read(sql, params)
        listed = tuple(listing_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return DeliveryPage(listed, listed[-1].delivery.id if more and listed else None)

    async def get_replay(self, replay_id: int) -> ReplayRecord | None:
        rows = await self._read(f"SELECT {REPLAY_COLUMNS} FROM replays WHERE id = ?", [replay_id])
        if not rows:
            return None
        counts = await self._read(
            "SELECT destination, state, count(*) FROM deliveries WHERE replay_id = ?"
            " GROUP BY destination, state ORDER BY destination, state",
            [replay_id],
        )
        return replay_record(rows[0], counts)

    async def replay_backlog(self, replay_id: int, destination: str) -> int:
        rows = await self._read(
            "SELECT count(*) FROM deliveries WHERE replay_id = ? AND destination = ?"
            " AND state IN ('pending', 'delivering')",
            [replay_id, destination],
        )
        return int(rows[0][0])

    async def inbound_usage(self) -> dict[str, int]:
        rows = await self._read("SELECT inbound, bytes FROM inbound_usage")
        return {str(r[0]): int(r[1]) for r in rows}

    async def paused_destinations(self) -> frozenset[str]:
        return frozenset(str(r[0]) for r in await self._read(PAUSED))

    # -- replay jobs -------------------------------------------------------------------------

    # Write functions run on the writer's thread inside its transaction; an exception rolls
    # that transaction back and fails this caller alone, as a StoreError.
    async def start_replay(
        self, replay: NewReplay, owner: str | None = None, lease: float = 0.0
    ) -> int:
        def insert(conn: sqlite3.Connection) -> int:
            now = clock()
            cursor = conn.execute(
                "INSERT INTO replays (requested_by, requested_at, filter, destinations, total,"
                " state, spec, owner, lease_until) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    replay.requested_by, now, replay.filter,
                    orjson.dumps(list(replay.destinations)).decode(), replay.total,
                    ReplayState.RUNNING.value, filter_to_json(replay.where), owner,
                    now + lease if owner is not None else None,
                ),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        replay_id: int = await self.call(insert)
        if owner is None:
            self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))
        return replay_id

    async def claim_replay(self, owner: str, lease: float) -> ReplayRecord | None:
        def take(conn: sqlite3.Connection) -> ReplayRecord | None:
            now = clock()
            row = conn.execute(
                f"UPDATE replays SET owner = ?, lease_until = ? WHERE id = (SELECT id FROM"
                f" replays WHERE state = 'running' AND (lease_until IS NULL OR lease_until < ?)"
                f" ORDER BY id LIMIT 1) RETURNING {REPLAY_COLUMNS}",
                (owner, now + lease, now),
            ).fetchone()
            return replay_record(row) if row is not None else None

        record: ReplayRecord | None = await self.call(take)
        return record

    async def renew_replay(self, replay_id: int, owner: str, lease: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE replays SET lease_until = ? WHERE id = ? AND owner = ?"
                " AND state = 'running'",
                (clock() + lease, replay_id, owner),
            )
            return cursor.rowcount > 0

        held: bool = await self.call(renew)
        return held

    async def add_replay_deliveries(
        self,
        replay_id: int,
        pairs: Sequence[tuple[str, str]],
        matched: int,
        cursor: int | None = None,
        owner: str | None = None,
        ordered: frozenset[str] = frozenset(),
    ) -> list[CreatedDelivery]:
        def insert(conn: sqlite3.Connection) -> tuple[list[CreatedDelivery], set[str]]:
            if owner is not None and not conn.execute(
                "SELECT 1 FROM replays WHERE id = ? AND owner = ? AND state = 'running'",
                (replay_id, owner),
            ).fetchone():
                raise ReplayEndedError(f"replay {replay_id} is no longer run by this process")
            now = clock()
            paused = frozenset(str(r[0]) for r in conn.execute(PAUSED))
            keys = keys_for(pairs, ordered, _event_facts(conn, pairs, ordered))
            releases = Releases()
            rows = []
            for (event_id, name), key in zip(pairs, keys, strict=True):
                # An ordered one joins the end of its subscriber's queue (released below).
                releases.joined(name, key)
                rows.append(
                    (event_id, name, initial_state(name, paused).value,
                     now if key is None else None, now, now, replay_id, key, event_id)
                )  # fmt: skip
            first = conn.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0]
            # An event pruned since the replay read it gets no delivery: one without its event
            # could be claimed but never sent, and would hold its lease forever.
            conn.executemany(
                "INSERT INTO deliveries (event_id, destination, state, next_attempt_at,"
                " created_at, updated_at, replay_id, order_key) SELECT ?,?,?,?,?,?,?,?"
                " WHERE EXISTS (SELECT 1 FROM events WHERE id = ?)",
                rows,
            )
            made = [
                CreatedDelivery(r[0], r[1], r[2], DeliveryState(r[3]))
                for r in conn.execute(
                    "SELECT id, event_id, destination, state FROM deliveries WHERE id > ?"
                    " ORDER BY id",
                    (first,),
                )
            ]
            conn.execute(
                "UPDATE replays SET matched = matched + ?, created = created + ?,"
                " cursor = coalesce(?, cursor) WHERE id = ?",
                (matched, len(made), cursor, replay_id),
            )
            return made, ordering.release(conn, releases, now)

        created: list[CreatedDelivery]
        due: set[str]
        created, due = await self.call(insert)
        waiting = {c.destination for c in created if c.state is DeliveryState.PENDING}
        self.signals.emit_due(due | waiting)
        return created

    async def finish_replay(self, replay_id: int, state: ReplayState) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE replays SET state = ?, finished_at = ?, owner = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'running'",
                (state.value, clock(), replay_id),
            )

        await self.call(update)

    async def release_replay(self, replay_id: int, owner: str) -> None:
        """Give a running replay up (this process is stopping): another one takes it at once."""

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE replays SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?",
                (replay_id, owner),
            )

        await self.call(update)
        self.signals.emit(Signal(SignalKind.REPLAY, str(replay_id)))

    # -- pause, leases, retention --------------------------------------------------------------

    async def pause_destination(self, name: str) -> int:
        return await self._set_paused(name, paused=True)

    async def resume_destination(self, name: str) -> int:
        moved = await self._set_paused(name, paused=False)
        self.signals.emit(Signal(SignalKind.DUE, name))
        return moved

    async def _set_paused(self, name: str, *, paused: bool) -> int:
        def update(conn: sqlite3.Connection) -> int:
            now = clock()
            conn.execute(
                "INSERT INTO destination_state (name, paused, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
                " updated_at = excluded.updated_at",
                (name, int(paused), now),
            )
            if paused:
                # Only waiting deliveries are held; one in flight finishes its attempt.
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'paused', updated_at = ?"
                    " WHERE destination = ? AND state = 'pending'",
                    (now, name),
                )
            else:
                # Due now, but in their old order: min() keeps earlier ones first. One waiting
                # behind an earlier delivery of its subscriber (relay.store.ordering) waits on.
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'pending', updated_at = ?,"
                    " next_attempt_at = CASE WHEN order_key IS NOT NULL"
                    " AND next_attempt_at IS NULL THEN NULL"
                    " ELSE min(coalesce(next_attempt_at, ?), ?) END"
                    " WHERE destination = ? AND state = 'paused'",
                    (now, now, now, name),
                )
            return cursor.rowcount

        moved: int = await self.call(update)
        self.signals.emit(Signal(SignalKind.PAUSE, name))
        return moved

    async def try_lease(self, name: str, owner: str, seconds: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = clock()
            cursor = conn.execute(
                "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET owner = excluded.owner, until = excluded.until"
                " WHERE leases.owner = excluded.owner OR leases.until < ?",
                (name, owner, now + seconds, now),
            )
            return cursor.rowcount > 0

        held: bool = await self.call(take)
        return held

    async def count_prunable(self, older_than: float) -> int:
        rows = await self._read(
            f"SELECT count(*) FROM events e WHERE {_PRUNABLE}",
            _prunable_params(clock() - older_than),
        )
        return int(rows[0][0])

    async def prune(self, older_than: float, batch: int = 500) -> PruneResult:
        cutoff = clock() - older_than
        after = ""
        events = requests = 0
        while True:
            done, deleted, last = await self.call(_prune_batch(cutoff, after, batch))
            events += done
            requests += deleted
            if last is None:
                return PruneResult(deleted_events=events, deleted_requests=requests)
            after = last


# What prune deletes, and what its dry run (count_prunable) counts: one condition for both, so
# the count is what a prune at the same cutoff takes. Parameters: _prunable_params(cutoff).
_PRUNABLE = (
    "e.id < ? AND e.received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
    f" WHERE d.event_id = e.id AND d.state IN {UNFINISHED})"
)


def _prunable_params(cutoff: float) -> list[Any]:
    return [id_bound(cutoff + RECEIVE_SLACK), cutoff]


def _prune_batch(
    cutoff: float, after: str, batch: int
) -> Callable[[sqlite3.Connection], tuple[int, int, str | None]]:
    def run(conn: sqlite3.Connection) -> tuple[int, int, str | None]:
        # Checked inside the deleting transaction, so a delivery created meanwhile (a replay)
        # keeps its event.
        rows = conn.execute(
            f"SELECT e.id, e.request_id FROM events e WHERE e.id > ? AND {_PRUNABLE}"
            " ORDER BY e.id LIMIT ?",
            [after, *_prunable_params(cutoff), batch],
        ).fetchall()
        if not rows:
            return 0, 0, None
        ids = [r[0] for r in rows]
        request_ids = sorted({r[1] for r in rows})
        marks = ",".join("?" * len(ids))
        conn.execute(
            "DELETE FROM attempts WHERE delivery_id IN"
            f" (SELECT id FROM deliveries WHERE event_id IN ({marks}))",
            ids,
        )
        conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
        conn.execute(
            "DELETE FROM dedup WHERE key IN (SELECT dedup_key FROM events WHERE id IN"
            f" ({marks}) AND dedup_key IS NOT NULL) AND event_id IN ({marks})",
            ids + ids,
        )
        conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        gone = conn.execute(
            f"DELETE FROM requests WHERE id IN ({','.join('?' * len(request_ids))})"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE request_id = requests.id)"
            " RETURNING inbound, length(body) + length(CAST(headers AS BLOB))",
            request_ids,
        ).fetchall()
        freed: dict[str, int] = {}
        for inbound, size in gone:
            freed[inbound] = freed.get(inbound, 0) - int(size)
        conn.executemany(ADD_USAGE, sorted(freed.items()))
        last = ids[-1] if len(ids) == batch else None
        return len(ids), len(gone), last

    return run


def _event_facts(
    conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]], ordered: frozenset[str]
) -> dict[str, tuple[str | None, str | None]]:
    """List id and email of the events a replay sends to ordered destinations (their queues)."""
    wanted = sorted({event_id for event_id, name in pairs if name in ordered})
    facts: dict[str, tuple[str | None, str | None]] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        facts.update(
            (str(r[0]), (r[1], r[2]))
            for r in conn.execute(
                f"SELECT id, list_id, email FROM events WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        )
    return facts
