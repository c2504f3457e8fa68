"""SQLite side of operator control: event and delivery lists, replays, pause and pruning.

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
    DeliveryListing,
    DeliveryPage,
    DeliveryState,
    EventFilter,
    EventPage,
    NewReplay,
    PruneResult,
    ReplayCandidate,
    ReplayRecord,
    ReplayState,
    encode_ulid,
)
from relay.store.base import StoreError
from relay.store.sqlite.rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    delivery_record,
    event_record,
)

# An event id embeds the millisecond its event was made, a little after its request arrived
# (the body is read first, possibly slowly). Time filters bound the id with this much slack, so
# the primary key narrows the search, and compare received_at exactly on what the bound lets in.
ID_SLACK = 3600.0
_UNFINISHED = "('pending', 'delivering', 'paused')"


def id_bound(ts: float) -> str:
    """The smallest event id (ULID) that can be made at Unix time ``ts``."""
    return encode_ulid(max(0, int(ts * 1000)) << 80)


def _prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def event_where(where: EventFilter) -> tuple[list[str], list[Any]]:
    """SQL terms (on ``events e``) and parameters for a filter; each term can use an index."""
    terms: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("inbound", where.inbound),
        ("type", where.type),
        ("source", where.source),
        ("list_id", where.list_id),
        ("email", where.email),
    ):
        if value is not None:
            terms.append(f"e.{column} = ?")
            params.append(value)
    if where.since is not None:
        terms += ["e.id >= ?", "e.received_at >= ?"]
        params += [id_bound(where.since - ID_SLACK), where.since]
    if where.until is not None:
        terms += ["e.id < ?", "e.received_at < ?"]
        params += [id_bound(where.until + ID_SLACK), where.until]
    if where.originals_only:
        terms.append("e.duplicate_of IS NULL")
    if where.state is not None or where.destination is not None:
        sub: list[str] = []
        if where.state is not None:
            sub.append("state = ?")
            params.append(where.state.value)
        if where.destination is not None:
            sub.append("destination = ?")
            params.append(where.destination)
        terms.append(f"e.id IN (SELECT event_id FROM deliveries WHERE {' AND '.join(sub)})")
    return terms, params


def events_query(where: EventFilter, limit: int, before: str | None) -> tuple[str, list[Any]]:
    """The events-list query: newest first, below the cursor (exposed for the plan test)."""

    terms, params = event_where(where)
    if before is not None:
        terms.append("e.id < ?")
        params.append(before)
    sql = (
        f"SELECT {_prefixed(EVENT_COLUMNS, 'e')} FROM events e"
        f"{' WHERE ' + ' AND '.join(terms) if terms else ''} ORDER BY e.id DESC LIMIT ?"
    )
    return sql, [*params, limit]


def deliveries_query(
    state: DeliveryState | None, destination: str | None, limit: int, before: int | None
) -> tuple[str, list[Any]]:
    """The deliveries-list query: newest first, below the cursor (exposed for the plan test)."""

    terms: list[str] = []
    params: list[Any] = []
    for term, value in (
        ("d.state = ?", state.value if state is not None else None),
        ("d.destination = ?", destination),
        ("d.id < ?", before),
    ):
        if value is not None:
            terms.append(term)
            params.append(value)
    sql = (
        f"SELECT {_prefixed(DELIVERY_COLUMNS, 'd')}, e.inbound, e.source, e.type, e.email,"
        " e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id"
        f"{' WHERE ' + ' AND '.join(terms) if terms else ''} ORDER BY d.id DESC LIMIT ?"
    )
    return sql, [*params, limit]


_REPLAY_COLUMNS = (
    "id, requested_by, requested_at, filter, destinations, total, matched, created, state,"
    " finished_at"
)


class SqliteAdminMixin:
    """The operator-control half of ``SqliteStore`` (see ``Store``'s last section)."""

    _paused: frozenset[str]

    if TYPE_CHECKING:

        async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

        async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

        def _notify_due(self, destinations: frozenset[str]) -> None: ...

    # -- reads -------------------------------------------------------------------------------

    async def list_events(
        self, where: EventFilter, limit: int, before: str | None = None
    ) -> EventPage:

        sql, params = events_query(where, limit + 1, before)
        rows = await self._read(sql, params)
        events = tuple(event_record(r) for r in rows[:limit])
        more = len(rows) > limit
        return EventPage(events=events, next_cursor=events[-1].id if more and events else None)

    async def count_events(self, where: EventFilter) -> int:
        terms, params = event_where(where)
        rows = await self._read(
            f"SELECT count(*) FROM events e{' WHERE ' + ' AND '.join(terms) if terms else ''}",
            params,
        )
        return int(rows[0][0])

    async def replay_candidates(
        self, where: EventFilter, after: str | None, limit: int, with_payload: bool
    ) -> list[ReplayCandidate]:

        terms, params = event_where(where)
        if after is not None:
            terms.append("e.id > ?")
            params.append(after)
        columns = _prefixed(EVENT_COLUMNS, "e")
        source = "events e"
        if with_payload:
            columns += (
                ", coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type)"
            )
            source += " JOIN requests r ON r.id = e.request_id"
        rows = await self._read(
            f"SELECT {columns} FROM {source}"
            f"{' WHERE ' + ' AND '.join(terms) if terms else ''} ORDER BY e.id LIMIT ?",
            [*params, limit],
        )
        return [
            ReplayCandidate(
                event=event_record(r),
                payload=bytes(r[12]) if with_payload else None,
                content_type=r[13] if with_payload else None,
            )
            for r in rows
        ]

    async def list_deliveries(
        self,
        state: DeliveryState | None,
        destination: str | None,
        limit: int,
        before: int | None = None,
    ) -> DeliveryPage:

        sql, params = deliveries_query(state, destination, limit + 1, before)
        rows = await self._read(sql, params)
        listed = tuple(
            DeliveryListing(
                delivery=delivery_record(r[:12]),
                inbound=r[12],
                source=r[13],
                type=r[14],
                email=r[15],
                received_at=r[16],
            )
            for r in rows[:limit]
        )
        more = len(rows) > limit
        return DeliveryPage(listed, listed[-1].delivery.id if more and listed else None)

    async def get_replay(self, replay_id: int) -> ReplayRecord | None:
        rows = await self._read(f"SELECT {_REPLAY_COLUMNS} FROM replays WHERE id = ?", [replay_id])
        if not rows:
            return None
        r = rows[0]
        counts = await self._read(
            "SELECT destination, count(*) FROM deliveries WHERE replay_id = ?"
            " GROUP BY destination ORDER BY destination",
            [replay_id],
        )
        return ReplayRecord(
            id=r[0], requested_by=r[1], requested_at=r[2], filter=r[3],
            destinations=tuple(orjson.loads(r[4])), total=r[5], matched=r[6], created=r[7],
            state=ReplayState(r[8]), finished_at=r[9],
            per_destination=tuple((str(c[0]), int(c[1])) for c in counts),
        )  # fmt: skip

    async def replay_backlog(self, replay_id: int, destination: str) -> int:
        rows = await self._read(
            "SELECT count(*) FROM deliveries WHERE replay_id = ? AND destination = ?"
            " AND state IN ('pending', 'delivering')",
            [replay_id, destination],
        )
        return int(rows[0][0])

    async def paused_destinations(self) -> frozenset[str]:
        rows = await self._read("SELECT name FROM destination_state WHERE paused = 1")
        return frozenset(str(r[0]) for r in rows)

    # -- writes ------------------------------------------------------------------------------

    # Write functions run on the writer's thread inside its transaction; an exception rolls
    # that transaction back and fails this caller alone, as a StoreError.
    async def start_replay(self, replay: NewReplay, now: float) -> int:
        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO replays (requested_by, requested_at, filter, destinations, total,"
                " state) VALUES (?,?,?,?,?,?)",
                (
                    replay.requested_by,
                    now,
                    replay.filter,
                    orjson.dumps(list(replay.destinations)).decode(),
                    replay.total,
                    ReplayState.RUNNING.value,
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        replay_id: int = await self.call(insert)
        return replay_id

    async def add_replay_deliveries(
        self, replay_id: int, pairs: Sequence[tuple[str, str]], matched: int, now: float
    ) -> list[CreatedDelivery]:
        def insert(conn: sqlite3.Connection) -> list[CreatedDelivery]:
            paused = self._paused
            rows = [
                (
                    event_id,
                    name,
                    (DeliveryState.PAUSED if name in paused else DeliveryState.PENDING).value,
                    now,
                    now,
                    now,
                    replay_id,
                    event_id,
                )
                for event_id, name in pairs
            ]
            first = conn.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0]
            # An event pruned since the replay read it gets no delivery: one without its event
            # could be claimed but never sent, and would hold its lease forever.
            conn.executemany(
                "INSERT INTO deliveries (event_id, destination, state, next_attempt_at,"
                " created_at, updated_at, replay_id) SELECT ?,?,?,?,?,?,?"
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
                "UPDATE replays SET matched = matched + ?, created = created + ? WHERE id = ?",
                (matched, len(made), replay_id),
            )
            return made

        created: list[CreatedDelivery] = await self.call(insert)
        self._notify_due(
            frozenset(c.destination for c in created if c.state is DeliveryState.PENDING)
        )
        return created

    async def finish_replay(self, replay_id: int, state: ReplayState, now: float) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE replays SET state = ?, finished_at = ? WHERE id = ?",
                (state.value, now, replay_id),
            )

        await self.call(update)

    async def interrupt_running_replays(self, now: float) -> int:
        def update(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE replays SET state = ?, finished_at = ? WHERE state = ?",
                (ReplayState.INTERRUPTED.value, now, ReplayState.RUNNING.value),
            )
            return cursor.rowcount

        count: int = await self.call(update)
        return count

    async def pause_destination(self, name: str, now: float) -> int:
        return await self._set_paused(name, now, paused=True)

    async def resume_destination(self, name: str, now: float) -> int:
        moved = await self._set_paused(name, now, paused=False)
        self._notify_due(frozenset({name}))
        return moved

    async def _set_paused(self, name: str, now: float, *, paused: bool) -> int:
        def update(conn: sqlite3.Connection) -> int:
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
                # Due now, but in their old order: min() keeps earlier ones first.
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'pending', updated_at = ?,"
                    " next_attempt_at = min(coalesce(next_attempt_at, ?), ?)"
                    " WHERE destination = ? AND state = 'paused'",
                    (now, now, now, name),
                )
            # The writer reads this set when it inserts new deliveries and claims due ones; it
            # changes here, on the writer, so no ingest sees a half-applied pause.
            self._paused = self._paused | {name} if paused else self._paused - {name}
            return cursor.rowcount

        try:
            moved: int = await self.call(update)
        except StoreError:
            # The transaction rolled back: take the flag from what is actually stored.
            self._paused = await self.paused_destinations()
            raise
        return moved

    async def prune(self, cutoff: float, batch: int = 500) -> PruneResult:
        after = ""
        events = requests = 0
        while True:
            done, deleted, last = await self.call(_prune_batch(cutoff, after, batch))
            events += done
            requests += deleted
            if last is None:
                return PruneResult(deleted_events=events, deleted_requests=requests)
            after = last


def _prune_batch(
    cutoff: float, after: str, batch: int
) -> Callable[[sqlite3.Connection], tuple[int, int, str | None]]:
    def run(conn: sqlite3.Connection) -> tuple[int, int, str | None]:
        # Checked inside the deleting transaction, so a delivery created meanwhile (a replay)
        # keeps its event.
        rows = conn.execute(
            "SELECT e.id, e.request_id FROM events e"
            " WHERE e.id > ? AND e.id < ? AND e.received_at < ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
            f" AND d.state IN {_UNFINISHED}) ORDER BY e.id LIMIT ?",
            (after, id_bound(cutoff + ID_SLACK), cutoff, batch),
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
        conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        cursor = conn.execute(
            f"DELETE FROM requests WHERE id IN ({','.join('?' * len(request_ids))})"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE request_id = requests.id)",
            request_ids,
        )
        last = ids[-1] if len(ids) == batch else None
        return len(ids), cursor.rowcount, last

    return run
