"""Ordered delivery through real `relay serve` processes, real sockets and a real downstream:
a destination that fails subscriber A's first event three times gets A's later events only
after it, in order, while subscriber B's arrive meanwhile; the same across a kill -9 while A is
held, on both backends, and with three processes on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.backends import RelayBackend
from tests.pg import pg_url
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    RelayProcess,
    config_text,
    destination,
    free_port,
    wait_until,
)

__all__ = ["pg_url"]
pytestmark = pytest.mark.slow
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

RETRY = {"max_attempts": 10, "initial_delay": 0.2, "max_delay": 0.4}
# A's first event, then the rest of A's and B's, in the order they are posted.
POSTS = [
    ("ann@example.com", "a1"),
    ("ann@example.com", "a2"),
    ("bob@example.com", "b1"),
    ("ANN@example.com", "a3"),  # the same subscriber: emails are compared lower-cased
    ("bob@example.com", "b2"),
    ("ann@example.com", "a4"),
]


@dataclass
class Seen:
    kind: str  # "start" or "done"
    event: str  # data[id]: a1, a2, b1, ...
    status: int = 0


@dataclass
class OrderSink:
    """A downstream that fails chosen events a number of times and logs every attempt's start
    and answer, in the order they happen, with how many of one subscriber overlapped."""

    failures: dict[str, int] = field(default_factory=dict)
    log: list[Seen] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    overlap: int = 0
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode()))
        event, email = form["data[id]"], form["data[email]"].lower()
        self.headers[event] = dict(request.headers)
        self.log.append(Seen("start", event))
        self.in_flight[email] = self.in_flight.get(email, 0) + 1
        self.overlap = max(self.overlap, self.in_flight[email])
        try:
            await asyncio.sleep(0.02)  # an attempt takes a while: overlaps would show
        finally:
            # Also when the handler is cancelled because the sender was killed mid-attempt: that
            # attempt is over, and the one sent again after its lease does not overlap it.
            self.in_flight[email] -= 1
        status = 200
        if self.failures.get(event, 0) > 0:
            self.failures[event] -= 1
            status = 503
        self.log.append(Seen("done", event, status))
        return web.Response(status=status)

    def answered(self, event: str) -> bool:
        return any(s.kind == "done" and s.event == event for s in self.log)

    async def everything_delivered(self, timeout: float = 60) -> None:
        every = {event for _, event in POSTS}
        await wait_until(lambda: set(self.delivered()) == every, timeout=timeout, what="all")

    def delivered(self) -> list[str]:
        return [s.event for s in self.log if s.kind == "done" and s.status == 200]

    def index(self, kind: str, event: str, status: int | None = None) -> int:
        return next(
            i for i, s in enumerate(self.log)
            if s.kind == kind and s.event == event and (status is None or s.status == status)
        )  # fmt: skip

    def check_order(self, others_first: bool = True) -> None:
        """A's events delivered in order, none started before the one ahead of it was answered
        200; B's delivered before A's first got through; one at a time. (An attempt answered
        just before a kill -9, and so not recorded, is sent again: at least once.)

        After a kill -9, B's delivery may have been leased by the killed process and waits for
        its lease to run out, which can be after A's retries end: ``others_first=False``."""
        delivered = self.delivered()
        for who, events in (("a", ["a1", "a2", "a3", "a4"]), ("b", ["b1", "b2"])):
            theirs = [e for e in delivered if e.startswith(who)]
            assert theirs == sorted(theirs) and sorted(set(theirs)) == events, delivered
        for earlier, later in (("a1", "a2"), ("a2", "a3"), ("a3", "a4")):
            assert self.index("start", later) > self.index("done", earlier, 200), self.log
        if others_first:
            assert self.index("done", "b2", 200) < self.index("done", "a1", 200), self.log
        assert self.overlap == 1


@pytest.fixture
async def order_sink() -> AsyncIterator[OrderSink]:
    sink = OrderSink()
    app = web.Application()
    app.router.add_post("/crm", sink.handle)
    sink.server = TestServer(app, host="127.0.0.1")
    await sink.server.start_server()
    yield sink
    await sink.server.close()


def ordered_crm(sink: OrderSink, **options: object) -> str:
    assert sink.server is not None
    retry = dict(RETRY, **options.pop("retry", {}))  # type: ignore[call-overload]
    return destination(
        "crm", str(sink.server.make_url("/crm")), ordering="subscriber", concurrency=4,
        timeout=2.0, retry=retry, **options,
    )  # fmt: skip


async def post_in_order(ports: list[int], posts: list[tuple[str, str]]) -> None:
    """Each webhook after the previous one was acknowledged (round robin over ``ports``)."""
    async with aiohttp.ClientSession() as session:
        for n, (email, event) in enumerate(posts):
            body = urlencode(
                {"type": "subscribe", "fired_at": "2026-11-02 10:00:00", "data[id]": event,
                 "data[email]": email, "data[list_id]": "a6b5da1054"}
            )  # fmt: skip
            url = f"http://127.0.0.1:{ports[n % len(ports)]}/hooks/user?secret=s3cret"
            async with session.post(url, data=body, headers=FORM) as r:
                assert r.status == 200, await r.text()


@pytest.fixture
async def relay(
    tmp_path: Path, relay_backend: RelayBackend, order_sink: OrderSink
) -> AsyncIterator[RelayProcess]:
    port = free_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(relay_backend.config(ordered_crm(order_sink), port=port, extra=ADMIN_TABLE))
    process = RelayProcess(cfg, port, tmp_path / "relay.log")
    await process.start()
    yield process
    process.ensure_stopped()


async def test_a_held_subscriber_waits_in_order_while_others_flow(
    relay: RelayProcess, order_sink: OrderSink
) -> None:
    order_sink.failures["a1"] = 3
    await post_in_order([relay.port], POSTS)
    await order_sink.everything_delivered()
    order_sink.check_order()


async def test_kill_9_while_a_subscriber_is_held_keeps_its_order(
    relay: RelayProcess, order_sink: OrderSink
) -> None:
    order_sink.failures["a1"] = 3
    await post_in_order([relay.port], POSTS)
    # A's first has failed and waits for its retry; B's got through: kill.
    await wait_until(
        lambda: "b2" in order_sink.delivered() and order_sink.answered("a1"),
        timeout=30, what="A held and B delivered",
    )  # fmt: skip
    relay.kill(signal.SIGKILL)
    await asyncio.to_thread(relay.wait, 10)
    assert not {"a2", "a3", "a4"} & {s.event for s in order_sink.log}
    await relay.start()
    await order_sink.everything_delivered()
    order_sink.check_order(others_first=False)


async def test_after_a_dead_predecessor_the_next_goes_and_says_so(
    relay: RelayProcess, order_sink: OrderSink
) -> None:
    order_sink.failures["a1"] = 100  # more than max_attempts: it ends dead
    await post_in_order([relay.port], POSTS[:2])
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        # While A's first retries, its second waits, and "retry now" says why it cannot.
        async with session.get(relay.url("/admin/deliveries?state=pending&destination=crm")) as r:
            waiting = [d for d in orjson.loads(await r.read())["deliveries"]
                       if d["next_attempt_at"] is None]  # fmt: skip
        async with session.post(relay.url(f"/admin/deliveries/{waiting[0]['id']}/retry")) as r:
            assert r.status == 409 and "waits behind" in await r.text()
    await wait_until(lambda: "a2" in order_sink.delivered(), timeout=60, what="a2 delivered")
    dead = int(order_sink.headers["a1"]["X-Relay-Delivery-Id"])
    event_id = order_sink.headers["a2"]["X-Relay-Event-Id"]
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.get(relay.url(f"/admin/events/{event_id}")) as r:
            detail = orjson.loads(await r.read())
        async with session.get(relay.url(f"/console/events/{event_id}")) as r:
            page = await r.text()
    assert [d["after_dead"] for d in detail["deliveries"]] == [dead]
    assert "went after a dead predecessor" in page and f"delivery {dead}" in page
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "events", "show", event_id, "--url", relay.url(""),
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert f"went after a dead predecessor: delivery {dead}" in out.decode()


async def test_three_processes_on_postgresql_keep_each_subscriber_in_order(
    tmp_path: Path, pg_url: str, order_sink: OrderSink
) -> None:
    order_sink.failures["a1"] = 3
    relays = []
    for n in range(3):
        port = free_port()
        cfg = tmp_path / f"relay{n}.toml"
        cfg.write_text(config_text(None, ordered_crm(order_sink), port=port, storage_url=pg_url))
        relays.append(RelayProcess(cfg, port, tmp_path / f"relay{n}.log"))
    try:
        await asyncio.gather(*(r.start() for r in relays))
        await post_in_order([r.port for r in relays], POSTS)
        # One of them dies while A is held; the other two carry on.
        await wait_until(lambda: order_sink.answered("a1"), timeout=30, what="A's first to fail")
        relays[0].kill(signal.SIGKILL)
        await order_sink.everything_delivered()
        order_sink.check_order(others_first=False)
    finally:
        for r in relays:
            r.ensure_stopped()
