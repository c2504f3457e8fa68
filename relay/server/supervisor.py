"""The parent of several ``relay serve`` worker processes (``[server] workers = N | "auto"``).

One relay process keeps one core busy; ``workers`` runs N of them on one machine, on one store.
The supervisor does no HTTP itself. It checks the listen addresses are free, brings the
schema up to date once (so the workers do not race to migrate), then starts N copies of
``relay serve`` with the same config file, each told its number (``relay.store.siblings``). Each
worker binds the listen address(es) with SO_REUSEPORT: the kernel gives each its own accept
queue and spreads new connections across them, and a worker that is not listening (starting,
restarting) gets none. Each worker is a whole relay: ingest, delivery, admin API, /readyz.

- A worker that dies is started again, after 0.5 s doubling to 30 s while it keeps dying
  within 10 s of starting; each death and restart is logged. Its acknowledged requests were
  committed before their 200; its leased deliveries are retried after their lease.
- SIGTERM or SIGINT: passed to every worker, each drains as a single relay does (stops
  accepting, finishes in-flight requests and deliveries within ``shutdown_grace``); the
  supervisor waits for all, then exits 0.
- SIGHUP: the supervisor reads the config file first; if it is invalid or changes what needs a
  restart, it logs why and the workers keep their configuration; otherwise each worker gets
  SIGHUP and reloads itself (``relay.server.reload``).
- The supervisor holds each worker's end of a pipe: when the supervisor dies, however it dies,
  the workers read end-of-file and shut down gracefully (no orphans keep serving).

    code = await Supervisor(settings, config_path, lock_env, lock_fds).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relay.config import ConfigError, Settings, load_config
from relay.obs.logs import FLUSH_INTERVAL, flush_logs
from relay.server.reload import fixed_changes
from relay.store import StoreError
from relay.store.migrate import migrate_store
from relay.store.siblings import Siblings

log = logging.getLogger("relay.supervisor")

SUPERVISOR_FD_ENV = "RELAY_SUPERVISOR_FD"
RESTART_MIN = 0.5
RESTART_MAX = 30.0
# A worker that ran this long before dying was healthy: its next restart is at once again.
STABLE_AFTER = 10.0
# After SIGTERM, how long past the workers' own shutdown_grace before they are killed.
DRAIN_SLACK = 30.0


def restart_delay(previous: float, ran_for: float) -> float:
    """How long to wait before starting a worker again that died after ``ran_for`` seconds.

    >>> restart_delay(0.0, 600.0), restart_delay(0.5, 1.0), restart_delay(16.0, 1.0)
    (0.5, 1.0, 30.0)
    """
    if ran_for >= STABLE_AFTER or previous <= 0:
        return RESTART_MIN
    return min(previous * 2, RESTART_MAX)


def how_it_ended(returncode: int) -> str:
    """``exited with status 1`` or ``killed by SIGKILL``, as a log line says it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        config_path: Path,
        child_env: Mapping[str, str],
        pass_fds: tuple[int, ...],
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        # The store lock's descriptor and variable: the workers share the supervisor's lock.
        self._child_env = dict(child_env)
        self._pass_fds = pass_fds
        self._slots = [_Slot(i) for i in range(settings.server.workers)]
        self._stopping = asyncio.Event()
        self._run_dir: Path | None = None
        self._lifeline: tuple[int, int] | None = None
        self._failed_drain = False

    async def run(self, announce: Callable[[], None]) -> int:
        """Start the workers, keep them running until SIGTERM or SIGINT, then drain them."""
        try:
            held = _hold_addresses(self.settings)
        except OSError as exc:
            return _fatal(str(exc))
        try:
            await migrate_store(self.settings.storage)
        except StoreError as exc:
            _release(held)
            return _fatal(f"cannot start: {exc}")
        self._run_dir = Path(tempfile.mkdtemp(prefix="relay-"))
        self._lifeline = os.pipe()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        flusher = asyncio.create_task(_flush_loop(), name="relay-log-flush")
        try:
            for slot in self._slots:
                slot.task = asyncio.create_task(self._keep(slot), name=f"relay-worker-{slot.index}")
            announce()
            await self._stopping.wait()
            log.info("shutting down: draining %d workers", len(self._slots))
            for slot in self._slots:
                self._signal(slot, signal.SIGTERM)
            await self._drain()
        finally:
            flusher.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for fd in self._lifeline:
                os.close(fd)
            shutil.rmtree(self._run_dir, ignore_errors=True)
            _release(held)
        log.info("relay stopped: every worker drained")
        flush_logs()
        return 1 if self._failed_drain else 0

    async def _keep(self, slot: _Slot) -> None:
        """Run worker ``slot`` until shutdown, starting it again whenever it dies."""
        while not self._stopping.is_set():
            try:
                slot.proc = await self._spawn(slot.index)
            except OSError as exc:
                log.error("cannot start worker %d: %s", slot.index, exc)
                code: int | None = None
            else:
                slot.started = time.monotonic()
                log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)
                if self._stopping.is_set():  # shutdown began while it was being started
                    self._signal(slot, signal.SIGTERM)
                assert slot.proc.stdout is not None
                await pass_lines_on(slot.proc.stdout, sys.stderr.fileno())
                code = await slot.proc.wait()
            if self._stopping.is_set():
                # A worker still starting has no handler yet: SIGTERM ends it at once, which
                # is fine (it had acknowledged nothing).
                if code not in (0, None, -signal.SIGTERM):
                    self._failed_drain = True
                    log.error("worker %d %s while draining", slot.index, how_it_ended(code))
                return
            slot.delay = restart_delay(slot.delay, time.monotonic() - slot.started)
            ended = "could not start" if code is None else how_it_ended(code)
            log.error("worker %d %s; restarting it in %gs", slot.index, ended, slot.delay)
            flush_logs()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(slot.delay):
                    await self._stopping.wait()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        assert self._run_dir is not None
        assert self._lifeline is not None
        siblings = Siblings(self._run_dir, index, len(self._slots))
        lifeline = self._lifeline[0]
        env = {
            **os.environ,
            **self._child_env,
            **siblings.env(),
            SUPERVISOR_FD_ENV: str(lifeline),
        }
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(self.config_path),
            env=env,
            pass_fds=(*self._pass_fds, lifeline),
            # Its log lines come through the supervisor (pass_lines_on), whole.
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own process group: a terminal's Ctrl-C or hang-up reaches the supervisor
            # only, which passes it on once, in order.
            process_group=0,
        )  # fmt: skip

    def _signal(self, slot: _Slot, sig: int) -> None:
        if slot.proc is not None and slot.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(sig)

    async def _drain(self) -> None:
        tasks = [s.task for s in self._slots if s.task is not None]
        deadline = self.settings.server.shutdown_grace + DRAIN_SLACK
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        if pending:
            self._failed_drain = True
            for slot in self._slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    log.error("worker %d did not stop within %gs; killing it", slot.index, deadline)
                    self._signal(slot, signal.SIGKILL)
            await asyncio.wait(pending)

    def _reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        except OSError as exc:
            problems = [f"{self.config_path}: {exc.strerror or exc}"]
        else:
            problems = fixed_changes(self.settings, new)
        if problems:
            for problem in problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the workers keep running the configuration they have")
            flush_logs()
            return
        log.info("reload: config file valid, passing SIGHUP to %d workers", len(self._slots))
        for slot in self._slots:
            self._signal(slot, signal.SIGHUP)


async def pass_lines_on(stream: asyncio.StreamReader, fd: int) -> None:
    """Copy a worker's output to ``fd`` until it ends, in writes of whole lines.

    Each worker buffers its log lines and writes them in blocks. Written straight to one shared
    pipe or journald socket, blocks of several processes could interleave mid-line (only writes
    up to PIPE_BUF bytes are atomic); copied here, by one writer, every line stays whole.
    """
    tail = b""
    while chunk := await stream.read(1 << 16):
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            tail += chunk
            continue
        _write_all(fd, tail + chunk[:cut])
        tail = chunk[cut:]
    if tail:
        _write_all(fd, tail + b"\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            time.sleep(0.001)  # a non-blocking stderr that is full: wait for its reader
        except OSError:
            return  # nowhere to write (stderr closed): the lines are lost, the workers go on


def _hold_addresses(settings: Settings) -> list[socket.socket]:
    """Bind (not listen on) each address with SO_REUSEPORT: it fails now, with one reason, if
    another program has the port, and keeps the port for this relay's workers while they
    restart. A bound socket that does not listen gets no connections."""
    addresses = [(settings.server.host, settings.server.port)]
    if settings.admin.listen is not None:
        addresses.append(settings.admin.listen)
    held: list[socket.socket] = []
    for host, port in addresses:
        try:
            for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            _release(held)
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"cannot listen on {host}:{port}: {reason}") from None
    return held


async def _flush_loop() -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        flush_logs()


def _release(held: list[socket.socket]) -> None:
    for sock in held:
        sock.close()


def _fatal(message: str) -> int:
    log.critical("%s", message)
    flush_logs()
    return 1


def watch_supervisor(env: Mapping[str, str], on_gone: Callable[[], None]) -> None:
    """In a worker: call ``on_gone`` when the supervisor has died (its end of the pipe closed)."""
    text = env.get(SUPERVISOR_FD_ENV)
    if text is None or not text.isdecimal():
        return
    fd = int(text)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            gone = os.read(fd, 1) == b""
        except BlockingIOError:
            return
        except OSError:
            gone = True
        if gone:
            loop.remove_reader(fd)
            log.warning("the supervisor is gone: shutting down")
            on_gone()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
