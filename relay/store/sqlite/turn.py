"""Taking turns at the SQLite write lock between the worker processes of one relay.

SQLite lets one transaction write at a time, and a connection that finds the lock taken does
not queue for it: its busy handler sleeps and retries, backing off to 100 ms between tries.
Two processes that each commit in a tight loop (group commit under load) then do not share
the lock: the one that holds it releases and takes it again long before the sleeper wakes,
and the sleeper's requests wait out the busy timeout and fail. So each worker takes an
exclusive ``flock`` on ``<database>.write-turn`` around each write transaction: the kernel
wakes a waiter the moment the holder lets go, and the holder comes back for its next batch
only after a round trip through its event loop, by which time the waiter has the lock. The
lock is held only while the transaction runs; a worker killed holding it (``kill -9``) loses
it with its process, and SQLite rolls back the uncommitted transaction. ``BEGIN IMMEDIATE``
with the busy timeout stays the backstop for writers outside relay (a ``sqlite3`` shell).

    turn = WriteTurn.open(db_path)
    outcome = turn.around(apply_batch, conn, ops, ...)   # on the writer thread
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

SUFFIX = ".write-turn"


class WriteTurn:
    """An exclusive flock, held around each write transaction of this process."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, database: str) -> WriteTurn:
        # Opened by each process itself: a descriptor inherited from the supervisor would be
        # one open file description, and flock would let every worker hold it at once.
        return cls(os.open(database + SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def around(self, fn: Callable[..., T], *args: Any) -> T:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            return fn(*args)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
