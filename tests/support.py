"""Shared test helpers and fixtures: real downstream servers, real relay apps, real SQLite."""

from __future__ import annotations

import asyncio
import socket
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

from relay.app import RELAY_KEY, Relay, create_app
from relay.config import Settings, parse_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "mailchimp"
SAMPLES = SHARED / "samples"
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
        if request.path in self.hang:
            await asyncio.sleep(3600)
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


def config_text(
    db: Path,
    destinations: str = "",
    inbounds: str | None = None,
    extra: str = "",
    port: int = 0,
) -> str:
    if inbounds is None:
        inbounds = """
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
    return f"""
[server]
listen = "127.0.0.1:{port or 8080}"
max_body_bytes = 65536
shutdown_grace = 2.0

[storage]
url = "sqlite:///{db}"
busy_timeout = 0.3
{extra}
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
    """A relay app served on a real socket, with a client session to post to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: TestServer | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> RelayUnderTest:
        app = create_app(self.settings, registry=CollectorRegistry())
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession()
        return self

    @property
    def relay(self) -> Relay:
        assert self.server is not None
        return self.server.app[RELAY_KEY]

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

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
        async with self.session.post(url, data=body, headers=all_headers) as response:
            return response.status, await response.text()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.close()


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
        method, relay.url(path), data=data, headers=all_headers
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
