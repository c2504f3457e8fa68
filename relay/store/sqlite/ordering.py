"""SQLite side of ordered delivery (``relay.store.ordering``): release subscriber queues.

Runs inside the writer's transaction, which holds the database's write lock: no other process
adds to a queue or finishes a head meanwhile, so no lock of its own is needed.
"""

from __future__ import annotations

import sqlite3

from relay.store.ordering import Releases

# A queue's head: its earliest unfinished delivery (the partial index deliveries_order).
_HEAD = (
    "SELECT id, next_attempt_at IS NULL FROM deliveries INDEXED BY deliveries_order"
    " WHERE destination = ? AND order_key = ?"
    " AND state IN ('pending', 'delivering', 'paused') ORDER BY id LIMIT 1"
)
_RELEASE = "UPDATE deliveries SET next_attempt_at = ?, after_dead = ? WHERE id = ?"


def release(conn: sqlite3.Connection, releases: Releases, now: float) -> set[str]:
    """Make each queue's head due now if it was waiting; the destinations that got one."""
    due: set[str] = set()
    for queue in releases.sorted():
        row = conn.execute(_HEAD, queue).fetchone()
        if row is not None and row[1]:
            conn.execute(_RELEASE, (now, releases.after_dead.get(queue), row[0]))
            due.add(queue[0])
    return due
