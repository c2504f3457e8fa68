"""Signals between the worker processes of one relay on one SQLite file: unix datagrams.

PostgreSQL carries signals between processes itself (LISTEN/NOTIFY); SQLite has nothing of the
kind, so each worker binds a datagram socket in the supervisor's run directory and, after each
commit that wakes someone, sends ``kind:name[,name...]`` to its siblings' sockets: a delivery
that one worker's ingest made due is claimed at once by whichever worker's destination loop is
free, and a pause, resume, replay or circuit change made through one worker's admin API takes
effect in all of them. A datagram is sent only after its commit, so a sibling that hears it
finds the rows. Datagrams to a sibling that is restarting (its socket gone) or whose queue is
full are dropped: every waiter also re-checks the store at least once a second
(``base.POLL_INTERVAL``), and a worker that (re)starts reads the store's state afresh anyway.

    signals = SiblingSignals(siblings)   # in place of Signals(), before anyone subscribes
    signals.open()                       # on the event loop: bind and start hearing
    signals.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from relay.store.base import Signal, SignalKind, Signals, parse_signals
from relay.store.siblings import Siblings

log = logging.getLogger("relay.store")

KIND = "signals"
# Datagrams read per readiness callback: a burst cannot starve the event loop.
READ_BATCH = 64
MAX_DATAGRAM = 65536


class SiblingSignals(Signals):
    """Signals: this process's subscribers hear them at once, the sibling workers by datagram."""

    def __init__(self, siblings: Siblings) -> None:
        super().__init__()
        self._siblings = siblings
        self._peers = [siblings.socket(KIND, i) for i in siblings.others()]
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        path = self._siblings.socket(KIND)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._receive)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            os.unlink(self._siblings.socket(KIND))

    def emit(self, signal: Signal) -> None:
        super().emit(signal)
        self._send(f"{signal.kind}:{signal.name}")

    def emit_due(self, destinations: frozenset[str] | set[str]) -> None:
        if not destinations:
            return
        for name in destinations:
            super().emit(Signal(SignalKind.DUE, name))
        self._send(f"{SignalKind.DUE}:{','.join(sorted(destinations))}")

    def _send(self, payload: str) -> None:
        if self._sock is None:
            return
        data = payload.encode()
        for peer in self._peers:
            # Gone (restarting), not yet bound, or its queue full: the poll covers it.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, peer)

    def _receive(self) -> None:
        assert self._sock is not None
        for _ in range(READ_BATCH):
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # never fatal: signals are a shortcut
                log.warning("sibling signal socket: %s", exc)
                return
            for signal in parse_signals(data.decode(errors="replace")):
                # Heard, not re-sent: the sibling that committed told everyone itself.
                super().emit(signal)
