"""Taking turns at the SQLite write lock between the worker processes of one relay.

SQLite lets one transaction write at a time, and a connection that finds the lock taken does
not queue for it: its busy handler sleeps and retries, backing off to 100 ms between tries.
Two processes that each commit in a tight loop (group commit under load) then do not share
the lock: the one that holds it releases and takes it again long before the sleeper wakes,
and the sleeper's requests wait out the busy timeout and fail. So the workers queue for it
with two exclusive ``flock``\\s beside the database:

- ``<database>.write-turn`` is held while a worker picks its batch and runs its transaction.
  Taking it first and picking the batch after means everything that queued up meanwhile goes
  into that one commit.
- ``<database>.write-queue`` is held by the one worker waiting for the turn, until it has it.
  A worker that has just had its turn must get past the queue lock before it can wait for the
  turn again, so when another is waiting, they alternate: none starves, however fast it
  commits. (The kernel wakes waiters at once when a lock is let go; there is no sleep.)

Uncontended, taking the turn is a few system calls on the event loop; a worker that has to
wait does so on its writer thread. A worker killed holding a lock (``kill -9``) loses it with
its process, and SQLite rolls back the transaction it had not committed. ``BEGIN IMMEDIATE``
with the busy timeout stays the backstop for writers outside relay (a ``sqlite3`` shell).

    turn = WriteTurn.open(db_path)
    await turn.take(writer_executor)
    ...pick the batch...
    await loop.run_in_executor(writer_executor, turn.then_release, apply_batch, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")

TURN = ".write-turn"
QUEUE = ".write-queue"


def _open(path: str) -> int:
    # Opened by each process itself: a descriptor inherited from the supervisor would be one
    # open file description, and flock would let every worker hold it at once.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class WriteTurn:
    """This process's place in the queue for the write lock it shares with its siblings."""

    def __init__(self, turn: int, queue: int) -> None:
        self._turn = turn
        self._queue = queue
        self.held = False

    @classmethod
    def open(cls, database: str) -> WriteTurn:
        turn = _open(database + TURN)
        try:
            return cls(turn, _open(database + QUEUE))
        except OSError:
            os.close(turn)
            raise

    async def take(self, executor: Executor | None) -> None:
        """Hold the turn; when another worker has it, wait on ``executor``'s thread."""
        assert executor is not None, "the store is open"
        if _try(self._queue):
            if _try(self._turn):
                fcntl.flock(self._queue, fcntl.LOCK_UN)
                self.held = True
                return
            waiting = executor.submit(self._wait_for_turn)
        else:
            waiting = executor.submit(self._queue_then_wait)
        try:
            await asyncio.wrap_future(waiting)
        except asyncio.CancelledError:
            # The thread takes the turn all the same: give it back as soon as it has.
            waiting.add_done_callback(lambda _: self.release())
            raise
        self.held = True

    def then_release(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, then give the turn back, on the calling (writer) thread: the sibling
        waiting for it need not wait for this worker's event loop to come round as well."""
        try:
            return fn(*args)
        finally:
            self.release()

    def _queue_then_wait(self) -> None:
        fcntl.flock(self._queue, fcntl.LOCK_EX)
        self._wait_for_turn()

    def _wait_for_turn(self) -> None:
        try:
            fcntl.flock(self._turn, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._queue, fcntl.LOCK_UN)

    def release(self) -> None:
        self.held = False
        with contextlib.suppress(OSError):
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._turn)
        os.close(self._queue)
