"""PostgreSQL side of ordered delivery (``relay.store.ordering``): lock and release subscriber
queues.

Processes sharing the database add to queues and finish heads at once. Each transaction that
does holds the queues' rows in ``order_queues`` (locked in one order) from before it adds a
delivery until it commits, and reads heads only once it holds them (each statement sees what
was committed before it began): so ids within a queue are given in lock order, and whichever of
two transactions comes second sees what the first did, and releases the head the first could
not see.
"""

from __future__ import annotations

import asyncpg

from relay.store.ordering import Queue, Releases
from relay.store.sqlfile import load_queries

Q = load_queries("relay.store.postgres")


def _columns(queues: list[Queue]) -> tuple[list[str], list[int]]:
    return [q[0] for q in queues], [q[1] for q in queues]


async def lock(conn: asyncpg.Connection, releases: Releases) -> None:
    """Hold these queues to the end of the transaction (before adding deliveries to them)."""
    if releases.queues:
        await conn.execute(Q["lock_queues"], *_columns(releases.sorted()))


async def release(conn: asyncpg.Connection, releases: Releases) -> set[str]:
    """Make each queue's head due now if it was waiting; the destinations that got one."""
    if not releases.queues:
        return set()
    queues = _columns(releases.sorted())
    await conn.execute(Q["lock_queues"], *queues)
    heads = await conn.fetch(Q["queue_heads"], *queues)
    waiting = [(str(r[0]), int(r[1]), int(r[2])) for r in heads if r[2] is not None and r[3]]
    if waiting:
        await conn.execute(
            Q["release_heads"],
            [w[2] for w in waiting],
            [releases.after_dead.get((w[0], w[1])) for w in waiting],
        )
    empty: list[Queue] = [(str(r[0]), int(r[1])) for r in heads if r[2] is None]
    if empty:
        await conn.execute(Q["drop_queues"], *_columns(empty))
    return {w[0] for w in waiting}


async def finished(conn: asyncpg.Connection, rows: list[asyncpg.Record], state: str) -> set[str]:
    """Release the queues of deliveries just moved to ``state`` (rows of destination,
    order_key, id); the destinations whose next delivery became due."""
    releases = Releases()
    for destination, key, delivery_id in rows:
        releases.finished(destination, key, delivery_id, state)
    return await release(conn, releases)
