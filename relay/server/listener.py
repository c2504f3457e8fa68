"""relay's listening socket: its own accept loop in front of aiohttp's protocol.

    runner = relay_runner(app, settings.server)
    await runner.setup()
    site = RelaySite(runner, host, port, app[RELAY_KEY].gate)
    await site.start()

Accepting in relay rather than in the event loop lets it count connections and close those past
``[server] max_connections`` as they arrive, close a connection that has not sent a request's
headers within ``[server] header_timeout``, and say so when accept fails for lack of file
descriptors. (uvloop's accept handles that silently: libuv accepts and drops the waiting
connections; asyncio's logs a traceback per failure.) Each of these is one log line at most every
ten seconds, however large the flood, and a counter in ``relay_connections_rejected_total``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay.config import ServerConfig, Settings
from relay.obs.logs import Throttled
from relay.obs.metrics import Metrics

log = logging.getLogger("relay.listener")

# Out of descriptors or kernel memory: the connection waits in the backlog, and accepting
# resumes after a pause (not at once: the listening socket stays readable, and retrying at once
# would spin).
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_DELAY = 0.5
# Accepted per readiness callback, so that a flood of connections cannot starve the loop.
ACCEPT_BATCH = 128
# Descriptors kept for everything but client connections: storage files, the listening
# sockets, logs, the event loop's own; deliveries add their destinations' concurrency.
BASE_FD_RESERVE = 64
MIN_CONNECTIONS = 8

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fd_reserve(settings: Settings) -> int:
    """File descriptors relay needs besides client connections."""
    return BASE_FD_RESERVE + sum(d.concurrency for d in settings.destinations)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit, which
    only the service manager can raise); the soft limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def connection_limit(configured: int, fd_limit: int, reserve: int) -> int:
    """How many client connections may be open: the configured number, or fewer when the
    descriptor limit would run out first (then the refusals are relay's, logged, not EMFILE)."""
    return max(MIN_CONNECTIONS, min(configured, fd_limit - reserve))


class ConnectionGate:
    """Admits client connections up to a limit, and closes those slow to send headers."""

    def __init__(self, server: ServerConfig, metrics: Metrics) -> None:
        self.limit = server.max_connections
        self.header_timeout = server.header_timeout
        self.open = 0
        self.accepting = 0  # accepted, their protocol not yet connected
        self._by_protocol: dict[asyncio.Protocol, _Guarded] = {}
        self._rejected = metrics.connections_rejected
        metrics.connections_open.set_function(lambda: self.open)
        self._refusals = Throttled(log, logging.WARNING)
        self._accept_failures = Throttled(log, logging.ERROR)
        self._slow_headers = Throttled(log, logging.INFO)

    def fit_to_fd_limit(self, reserve: int) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return
        fitted = connection_limit(self.limit, soft, reserve)
        if fitted < self.limit:
            log.warning(
                "max_connections lowered from %d to %d: this process may open %d file"
                " descriptors (RLIMIT_NOFILE) and keeps %d for storage and deliveries; raise"
                " LimitNOFILE (systemd) or ulimit -n (containers) to allow more",
                self.limit, fitted, soft, reserve,
            )  # fmt: skip
            self.limit = fitted

    def admit(self) -> bool:
        if self.open + self.accepting < self.limit:
            self.accepting += 1
            return True
        self._rejected.labels("max_connections").inc()
        self._refusals.log(
            "refusing connections: %d open, max_connections is %d",
            self.open + self.accepting,
            self.limit,
        )
        return False

    def accept_failed(self, exc: OSError) -> None:
        hint = ""
        if exc.errno in _OUT_OF_RESOURCES:
            self._rejected.labels("fd_exhausted").inc()
            hint = "; raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections"
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._accept_failures.log(
            "cannot accept connections: %s (%d open, RLIMIT_NOFILE %d); they wait in the"
            " backlog, retrying every %gs%s",
            exc.strerror or exc, self.open, soft, ACCEPT_RETRY_DELAY, hint,
        )  # fmt: skip

    def protocol(self, inner: asyncio.Protocol) -> _Guarded:
        return _Guarded(inner, self)

    def connection_of(self, protocol: Any) -> _Guarded | None:
        return self._by_protocol.get(protocol)

    def _connected(self, guarded: _Guarded) -> None:
        self.accepting -= 1
        self.open += 1
        self._by_protocol[guarded.inner] = guarded

    def _disconnected(self, guarded: _Guarded) -> None:
        self.open -= 1
        self._by_protocol.pop(guarded.inner, None)

    def _headers_timed_out(self) -> None:
        self._rejected.labels("header_timeout").inc()
        self._slow_headers.log(
            "closed a connection that sent no complete request headers within %gs",
            self.header_timeout,
        )


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with relay's header timer in front of it."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate) -> None:
        self.inner = inner
        self._gate = gate
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._connected = False
        self.was_connected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._connected = self.was_connected = True
        self._gate._connected(self)
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # A further request on a kept-alive connection: its headers are due from its first byte.
        if self._timer is None and not self._in_request:
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._connected:
            self._connected = False
            self._gate._disconnected(self)
        self.inner.connection_lost(exc)

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._in_request and self._transport is not None:
            self._gate._headers_timed_out()
            self._transport.close()


def connection_middleware(gate: ConnectionGate) -> Any:
    """Tells a connection's header timer that its request's headers are in, and when it ends."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guarded = gate.connection_of(request.protocol)
        if guarded is None:  # served by another site (aiohttp's test server, say)
            return await handler(request)
        guarded.request_started()
        try:
            return await handler(request)
        finally:
            guarded.request_finished()

    return middleware


class _Acceptor(asyncio.AbstractServer):
    """Accepts on listening sockets and hands each admitted connection to aiohttp."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        gate: ConnectionGate,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = factory
        self._gate = gate
        self._connecting: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._serving = True
        for sock in sockets:
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Out of descriptors, mostly; whatever it is, the socket stays readable, so
                # accepting pauses instead of spinning, and the waiting connections keep.
                self._gate.accept_failed(exc)
                self._pause()
                return
            if not self._gate.admit():
                conn.close()
                continue
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        made: list[_Guarded] = []

        def protocol() -> asyncio.Protocol:
            made.append(self._gate.protocol(self._factory()))
            return made[0]

        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._loop.connect_accepted_socket(protocol, sock=conn)
        except BaseException as exc:
            if not (made and made[0].was_connected):
                self._gate.accepting -= 1
            conn.close()
            if not isinstance(exc, OSError):  # a peer that reset at once is not an error
                raise

    def _pause(self) -> None:
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._serving:
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        if self._paused is not None:
            self._paused.cancel()
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in self._connecting:
            task.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("relay's listener is stopped through its site")

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)


class RelaySite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGate."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        *,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._gate = host, port, gate
        # Several worker processes listen on one address, each with its own accept queue, and
        # the kernel spreads new connections across them ([server] workers).
        self._reuse_port = reuse_port
        self._bound: int | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return self._bound if self._bound is not None else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "runner.setup() comes first"
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        # "localhost" may resolve to the same address more than once (one per protocol).
        addresses = dict.fromkeys((family, address) for family, _, _, _, address in infos)
        sockets: list[socket.socket] = []
        try:
            for family, address in addresses:
                sockets.append(
                    socket.create_server(
                        address, family=family, backlog=self._backlog, reuse_port=self._reuse_port
                    )
                )
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._bound = sockets[0].getsockname()[1]
        self._server = _Acceptor(sockets, server, self._gate)


def relay_runner(app: web.Application, server: ServerConfig) -> web.AppRunner:
    """aiohttp's runner with relay's server settings, for ``relay serve`` and tests alike."""
    return web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # aiohttp's defaults let an idle client keep a connection for an hour, and a request
        # still in progress delay shutdown by up to two minutes.
        keepalive_timeout=server.read_timeout,
        shutdown_timeout=server.shutdown_grace,
    )
