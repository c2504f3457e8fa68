"""Signals from other relay processes: PostgreSQL LISTEN on a connection of its own.

Every process NOTIFYs in the transaction that changes something (``due:crm,dw``, ``pause:crm``,
``replay:7``), so the others hear it only once it is committed. A notification sent while this
process was not listening is lost: after every reconnect the listener tells its subscribers that
everything may have changed, and every waiter in relay re-checks the store at least once a second
anyway (base.POLL_INTERVAL). A one-second liveness query notices a connection that died silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import asyncpg

from relay.store.base import Signals, parse_signals
from relay.store.postgres.connect import CONNECTION_ERRORS, store_error
from relay.store.postgres.writer import CHANNEL

log = logging.getLogger("relay.store")

TICK = 1.0


class Listener:
    def __init__(
        self, connect: Callable[[], Any], signals: Signals, everything: Callable[[], None]
    ):
        self._connect = connect
        self._signals = signals
        # Called after (re)connecting: whatever was notified meanwhile is lost.
        self._everything = everything
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-postgres-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for signal in parse_signals(str(payload)):
            self._signals.emit(signal)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn: asyncpg.Connection = await self._connect()
            except CONNECTION_ERRORS as exc:
                log.warning("PostgreSQL listener cannot connect: %s", store_error(exc))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()

            def closed(_conn: object, lost: asyncio.Event = lost) -> None:
                lost.set()

            conn.add_termination_listener(closed)
            try:
                await conn.add_listener(CHANNEL, self._on_notification)
                delay = 0.1
                self.connected.set()
                self._everything()
                while not lost.is_set():
                    # A peer that vanished without a word is only noticed by asking.
                    await conn.fetchval("SELECT 1", timeout=2 * TICK)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TICK):
                            await lost.wait()
                log.warning("PostgreSQL listener connection closed; reconnecting")
            except CONNECTION_ERRORS as exc:
                log.warning("PostgreSQL listener lost: %s; reconnecting", store_error(exc))
            except Exception:
                # Signals are a shortcut (every waiter polls too): a surprise here must not stop
                # relay, only this connection.
                log.exception("PostgreSQL listener failed; reconnecting")
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                conn.terminate()
