"""Shared test helpers and fixtures: real downstream servers, real relay apps, real SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from relay.config import Settings, parse_config
from relay.server.app import ADMIN_APP_KEY, RELAY_KEY, Relay, create_app
from relay.server.listener import RelaySite, relay_runner

REPO = Path(__file__).resolve().parents[1]
# Mailchimp's sample bodies and signature vectors, byte for byte: the repository carries them so
# that a clone alone runs every test (tests/fixtures/mailchimp/README.md says where they come from).
MAILCHIMP = REPO / "tests" / "fixtures" / "mailchimp"
SAMPLES = MAILCHIMP / "samples"
FORM = "application/x-www-form-urlencoded"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Sink:
    """A real downstream HTTP server that records what it gets and answers as scripted."""

    server: TestServer | None = None
    received: list[Received] = field(default_factory=list)
    # Per path: a list of (status, headers) answered in order; the last one repeats.
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    # Per path: seconds to wait before answering (a slow but working destination).
    delay: dict[str, float] = field(default_factory=dict)
    inflight: int = 0

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def on(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.script[path] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body, time.time()))
        self.inflight += 1
        try:
            if request.path in self.hang:
                await asyncio.sleep(3600)
            await asyncio.sleep(self.delay.get(request.path, 0.0))
        finally:
            self.inflight -= 1
        answers = self.script.get(request.path)
        status, headers = (200, {})
        if answers:
            status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(status=status, headers=headers, text="sink says hi")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", s.handle)
    s.server = TestServer(app, host="127.0.0.1")
    await s.server.start_server()
    yield s
    await s.server.close()


# Two audience inbounds, one per source, both with the URL secret "s3cret".
AUDIENCE_INBOUNDS = """
[[inbound]]
name = "audience-user"
path = "/hooks/user"
kind = "mailchimp"
secret = "s3cret"
source = "user"

[[inbound]]
name = "audience-admin"
path = "/hooks/admin"
kind = "mailchimp"
secret = "s3cret"
source = "admin"
"""


def audience_inbounds(max_body_bytes: int) -> str:
    """AUDIENCE_INBOUNDS with the user one's own body limit, over its kind's default (256 KiB)."""
    return AUDIENCE_INBOUNDS.replace(
        'source = "user"\n', f'source = "user"\nmax_body_bytes = {max_body_bytes}\n', 1
    )


def config_text(
    db: Path | None,
    destinations: str = "",
    inbounds: str | None = None,
    extra: str = "",
    port: int = 0,
    max_body_bytes: int = 65536,
    server_extra: str = "",
    storage_url: str | None = None,
) -> str:
    """A relay config; the store is the SQLite file ``db`` unless ``storage_url`` names another."""
    if inbounds is None:
        inbounds = AUDIENCE_INBOUNDS
    assert db is not None or storage_url is not None, "config_text needs a store"
    return f"""
[server]
listen = "127.0.0.1:{port or 8080}"
max_body_bytes = {max_body_bytes}
shutdown_grace = 2.0
{server_extra}

[storage]
url = "{storage_url or f"sqlite:///{db}"}"
{extra}

[storage.sqlite]
busy_timeout = 0.3

{inbounds}
{destinations}
"""


def destination(name: str, url: str, **options: Any) -> str:
    """A [[destination]] table; retry delays default to milliseconds so tests do not sleep."""
    retry = {"max_attempts": 5, "initial_delay": 0.05, "max_delay": 0.2}
    retry.update(options.pop("retry", {}))
    options.setdefault("timeout", 2.0)
    lines = [f'[[destination]]\nname = "{name}"\nurl = "{url}"']
    for key, value in options.items():
        lines.append(f"{key} = {toml_value(value)}")
    lines.append("[destination.retry]")
    lines += [f"{k} = {toml_value(v)}" for k, v in retry.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    return str(value)


class RelayUnderTest:
    """A relay app served on a real socket as `relay serve` serves it (its runner settings and
    its listener), with a client session to post to it.

    With ``[admin] listen`` the operator half is served on a second real socket
    (``admin_server``); ``admin_url`` gives its addresses (the main one's without it).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(self.settings, registry=CollectorRegistry())
        self.runners: list[web.AppRunner] = []
        self.site: RelaySite | None = None
        self.admin_server: RelaySite | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> RelayUnderTest:
        self.site = await self._serve(self.app)
        admin = self.app.get(ADMIN_APP_KEY)
        if admin is not None:
            self.admin_server = await self._serve(admin)
        self.session = aiohttp.ClientSession()
        return self

    async def _serve(self, app: web.Application) -> RelaySite:
        runner = relay_runner(app, self.settings.server)
        await runner.setup()
        self.runners.append(runner)
        site = RelaySite(runner, "127.0.0.1", 0, self.relay.gate)
        await site.start()
        return site

    def admin_url(self, path: str) -> str:
        site = self.admin_server or self.site
        assert site is not None
        return f"http://127.0.0.1:{site.port}{path}"

    @property
    def relay(self) -> Relay:
        return self.app[RELAY_KEY]

    @property
    def port(self) -> int:
        assert self.site is not None
        return self.site.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def post(
        self,
        path: str,
        body: bytes,
        content_type: str = FORM,
        query: str = "secret=s3cret",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        assert self.session is not None
        url = self.url(path) + (f"?{query}" if query else "")
        all_headers = {"Content-Type": content_type, **(headers or {})}
        # aiohttp warns that large bytes bodies block the loop; a file-like body streams.
        data = io.BytesIO(body) if len(body) > 512 * 1024 else body
        async with self.session.post(url, data=data, headers=all_headers) as response:
            return response.status, await response.text()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for runner in reversed(self.runners):
            await runner.cleanup()


RelayFactory = Callable[[str], Awaitable[RelayUnderTest]]


@pytest.fixture
async def start_relay() -> AsyncIterator[RelayFactory]:
    """Start relays from config text; each is stopped at the end of the test."""
    started: list[RelayUnderTest] = []

    async def start(text: str) -> RelayUnderTest:
        r = await RelayUnderTest(parse_config(text, {})).start()
        started.append(r)
        return r

    yield start
    for r in reversed(started):
        await r.stop()


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


class RelayProcess:
    """A real ``relay serve`` process, started from a config file, its output kept in ``log``."""

    def __init__(
        self,
        config: Path,
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.port, self.log = config, port, log
        self.env = env
        # Runs in the child before relay starts: lower its resource limits, say.
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    async def start(self) -> None:
        env = {**os.environ, **self.env} if self.env is not None else None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self.preexec_fn,
            )

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"relay exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url("/readyz")) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=20, what="relay to become ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Load:
    """Concurrent clients posting unique webhooks until stopped; remembers what got a 200.

    Bodies alternate between the ``bodies`` templates; each carries a unique id in place of
    ``marker`` so that every stored or delivered copy can be traced to one request.
    """

    port: int
    clients: int = 8
    bodies: tuple[bytes, ...] = ()
    marker: bytes = b"8a25ff1d98"
    path: str = "/hooks/user?secret=s3cret"
    # Put in front of each unique id: loads that run side by side need different tags.
    tag: str = "c"
    acked: list[bytes] = field(default_factory=list)
    sent: int = 0
    unanswered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        templates = self.bodies or (sample("mc_doc_subscribe.txt"),)

        async def client(n: int) -> None:
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    self.sent += 1
                    template = templates[self.sent % len(templates)]
                    body = template.replace(self.marker, f"{self.tag}{n}-{self.sent:08d}".encode())
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{self.port}{self.path}",
                            data=body,
                            headers={"Content-Type": FORM},
                        ) as r:
                            self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                            if r.status == 200:
                                self.acked.append(body)
                    except (aiohttp.ClientError, ConnectionError):
                        self.unanswered += 1
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(client(i) for i in range(self.clients)))


# Reads of a relay's state behind its back, the same on every backend (tests/backends.py).
BODIES = "SELECT body FROM requests"
DELIVERY_STATES = "SELECT state, count(*) FROM deliveries GROUP BY state"


def sqlite_rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=5.0)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def bodies_of(rows: list[tuple[Any, ...]]) -> list[bytes]:
    return [bytes(r[0]) for r in rows]


def count_states(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    return {str(state): int(n) for state, n in rows}


def stored_bodies(db: Path) -> list[bytes]:
    return bodies_of(sqlite_rows(db, BODIES))


def delivery_states(db: Path) -> dict[str, int]:
    return count_states(sqlite_rows(db, DELIVERY_STATES))


def unfinished_in(states: dict[str, int]) -> int:
    return states.get("pending", 0) + states.get("delivering", 0)


def unfinished(db: Path) -> int:
    return unfinished_in(delivery_states(db))


# -- admin API helpers (operator control tests) -----------------------------------------------

ADMIN_TOKEN = "adm1n-t0ken"
ADMIN_TABLE = f'[admin]\ntoken = "{ADMIN_TOKEN}"\n'


async def admin_call(
    relay: RelayUnderTest,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = ADMIN_TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Call the relay's admin API; the status and the decoded JSON answer."""
    import orjson  # imported here so this section stays an append-only addition

    assert relay.session is not None
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = orjson.dumps(body) if body is not None else None
    async with relay.session.request(
        method, relay.admin_url(path), data=data, headers=all_headers
    ) as response:
        raw = await response.read()
        assert response.content_type == "application/json", raw
        return response.status, orjson.loads(raw)


def subscribe_body(email: str, list_id: str = "a6b5da1054", kind: str = "subscribe") -> bytes:
    """An audience webhook body like Mailchimp's, for one address."""
    from urllib.parse import urlencode

    return urlencode(
        {
            "type": kind,
            "fired_at": "2026-11-02 10:00:00",
            "data[id]": email.split("@")[0],
            "data[email]": email,
            "data[list_id]": list_id,
            "data[merges][EMAIL]": email,
        }
    ).encode()


# -- rate limits and circuit breakers -----------------------------------------------------------

MANDRILL_INBOUND = """
[[inbound]]
name = "tx"
path = "/hooks/tx"
kind = "mandrill"
secret = "s3cret"
source = "tx"
"""


def mandrill_batch(n: int, tag: str) -> bytes:
    """One Mandrill post of ``n`` distinct events (one delivery each per destination): a
    backlog of thousands of deliveries in a few requests."""
    import json
    from urllib.parse import quote_plus

    events = [
        {"event": "send", "_id": f"{tag}-{i}", "ts": 1420303407, "msg": {"email": f"{i}@ex.com"}}
        for i in range(n)
    ]
    return b"mandrill_events=" + quote_plus(json.dumps(events)).encode()


def busiest_second(times: list[float], window: float = 1.0) -> int:
    """The most arrivals in any ``window`` seconds (a sliding window, not calendar seconds)."""
    ordered = sorted(times)
    most = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most
