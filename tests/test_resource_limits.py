"""A real relay process under uploads and connections that hold on: its memory and its file
descriptors stay within what the config allows, and it says so in its log.

Each test caps what it uses itself: a budget of a few MiB, tens of connections, and a lowered
RLIMIT_NOFILE for the relay it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import resource
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.server.body import InflightBudget
from relay.server.listener import connection_limit
from tests.support import (
    RelayProcess,
    audience_inbounds,
    config_text,
    free_port,
    stored_bodies,
    wait_until,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LIMIT = 2 * MiB  # the audience inbound's max_body_bytes in these tests
BUDGET = 8 * MiB  # [server] max_inflight_bytes: four bodies at the limit


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def head(length: int, path: str = "/hooks/user?secret=s3cret") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def metric(relay: RelayProcess, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(relay.url("/metrics")) as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@dataclass
class Upload:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: asyncio.Task[bytes]


@contextlib.asynccontextmanager
async def running_relay(
    tmp_path: Path, preexec_fn: Callable[[], None] | None = None, **config: Any
) -> AsyncIterator[RelayProcess]:
    """A real relay process from ``config_text(**config)``, stopped on the way out."""
    port = free_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(config_text(tmp_path / "relay.db", port=port, **config))
    relay = RelayProcess(cfg, port, tmp_path / "relay.log", preexec_fn=preexec_fn)
    await relay.start()
    try:
        yield relay
    finally:
        relay.ensure_stopped()


@pytest.fixture
async def budget_relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    journey = """
[[inbound]]
name = "journey"
path = "/hooks/journey"
kind = "journey"
secret = "s3cret"
event_type = "journey.welcome"
"""
    async with running_relay(
        tmp_path,
        inbounds=audience_inbounds(LIMIT) + journey,
        max_body_bytes=LIMIT,
        server_extra=f"max_inflight_bytes = {BUDGET}",
    ) as relay:
        yield relay


async def _hold_uploads(relay: RelayProcess, count: int, body: bytes) -> list[Upload]:
    """Start ``count`` uploads of one byte less than their Content-Length, one at a time; the
    ones relay admits stay open, unanswered, holding their share of the budget."""
    uploads = []
    for _ in range(count):
        before = await metric(relay, "relay_request_body_bytes_in_progress")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(head(len(body)))
        answer = asyncio.create_task(reader.read(4096))

        async def decided(before: float = before, answer: asyncio.Task[bytes] = answer) -> bool:
            grown = await metric(relay, "relay_request_body_bytes_in_progress") > before
            return answer.done() or grown

        await wait_until(decided, what="relay to admit or refuse the upload")
        if not answer.done():
            writer.write(body[:-1])
            await writer.drain()
        uploads.append(Upload(reader, writer, answer))
    return uploads


async def test_uploads_past_the_budget_get_503_and_memory_is_bounded_and_given_back(
    budget_relay: RelayProcess,
) -> None:
    relay, pid = budget_relay, budget_relay.pid
    body = b"type=subscribe&data=" + b"x" * (LIMIT - 20)
    baseline = rss(pid)
    for _ in range(2):  # a second round reuses freed heap: that is where RSS used to stick
        uploads = await _hold_uploads(relay, 12, body)
        refused = [u for u in uploads if u.answer.done()]
        held = [u for u in uploads if not u.answer.done()]
        assert len(held) == BUDGET // LIMIT
        for u in refused:
            answer = u.answer.result()
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"Retry-After: 5\r\n" in answer
        assert await metric(relay, "relay_request_body_bytes_in_progress") == BUDGET
        # The held bodies are counted from before they were read; nothing else holds much.
        assert rss(pid) - baseline < 3 * BUDGET, (rss(pid) - baseline) / MiB
        for u in uploads:
            u.writer.close()
        await wait_until(
            lambda: rss(pid) - baseline < BUDGET // 2,
            timeout=15,
            what="memory to be given back after the uploads closed",
        )
    # One line per aborted upload and per refusal, never a traceback; nothing was stored.
    assert await metric(relay, "relay_request_body_bytes_in_progress") == 0
    relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(relay.wait, 20) == 0
    log = relay.log.read_text()
    assert log.count("outcome=aborted status=400") == 2 * len(held)
    assert f"client closed the connection after {LIMIT - 1} of {LIMIT} bytes" in log
    assert log.count("outcome=overloaded status=503") == 2 * len(refused)
    assert "Traceback" not in log
    assert stored_bodies(relay.config.with_name("relay.db")) == []


async def test_each_kind_gets_its_own_body_limit_before_the_body_is_read(
    budget_relay: RelayProcess,
) -> None:
    # The journey inbound sets no max_body_bytes: its kind's default, 256 KiB, holds; the
    # audience inbound's own 2 MiB does. Neither waits for a body that is never sent.
    for path, length, expected in (
        ("/hooks/journey?secret=s3cret", 256 * 1024 + 1, b"HTTP/1.1 413 "),
        ("/hooks/user?secret=s3cret", LIMIT + 1, b"HTTP/1.1 413 "),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", budget_relay.port)
        writer.write(head(length, path))
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        assert answer.startswith(expected), answer
    async with aiohttp.ClientSession() as s:
        big = b"a=" + b"x" * (LIMIT - 2)
        async with s.post(budget_relay.url("/hooks/user?secret=s3cret"), data=io.BytesIO(big)) as r:
            assert r.status == 200


def test_a_share_of_the_budget_is_all_or_nothing_and_given_back_whole() -> None:
    budget = InflightBudget(10)
    with budget.hold() as first, budget.hold() as second:
        assert first.take(6) and not second.take(5) and second.take(4)
        assert (budget.in_use, budget.peak) == (10, 10)
        assert not first.take(1)
    assert budget.in_use == 0
    assert budget.take_peak() == 10 and budget.take_peak() == 0


FD_LIMIT = 128  # RLIMIT_NOFILE of the relay under test: 64 for connections, 64 kept back


@pytest.fixture
async def fd_relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    def lower_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    # read_timeout is long: what closes a connection that sends nothing is header_timeout.
    async with running_relay(
        tmp_path, lower_fd_limit, server_extra="header_timeout = 1.0\nread_timeout = 60.0"
    ) as relay:
        yield relay


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.01):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def _webhook(port: int) -> bytes:
    body = b"type=subscribe&data%5Bid%5D=1"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(len(body)) + body)
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return answer


async def test_connections_past_the_limit_are_refused_and_idle_ones_closed_after_header_timeout(
    fd_relay: RelayProcess,
) -> None:
    relay = fd_relay
    await wait_until(
        lambda: "max_connections lowered from 10000 to 64" in relay.log.read_text(),
        what="the start-up line saying how many connections fit the fd limit",
    )
    idle = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(80)]
    try:
        await wait_until(
            lambda: "refusing connections: 64 open, max_connections is 64" in relay.log.read_text(),
            what="the refusal to be logged",
        )

        # Connections that send no request are closed after header_timeout (1 s), not after
        # read_timeout (60 s): a real webhook gets in again.
        async def all_closed() -> bool:
            return all([await _closed(r) for r, _ in idle])

        await wait_until(all_closed, timeout=10, what="idle connections to be closed")
        assert (await _webhook(relay.port)).startswith(b"HTTP/1.1 200 ")
    finally:
        for _, w in idle:
            w.close()
    assert await metric(relay, 'relay_connections_rejected_total{reason="max_connections"}') == 16
    assert await metric(relay, 'relay_connections_rejected_total{reason="header_timeout"}') == 64
    relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(relay.wait, 20) == 0
    log = relay.log.read_text()
    # One line for the burst of refusals, one for the burst of slow connections: not 80.
    assert log.count("refusing connections") == 1
    assert log.count("sent no complete request headers") == 1
    assert "Traceback" not in log


async def test_accept_failing_for_lack_of_fds_is_logged_and_the_waiting_webhook_is_served(
    fd_relay: RelayProcess,
) -> None:
    relay, pid = fd_relay, fd_relay.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 4, FD_LIMIT))
    idle = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(8)]
    try:
        webhook = asyncio.create_task(_webhook(relay.port))
        await wait_until(
            lambda: "cannot accept connections: Too many open files" in relay.log.read_text(),
            what="the failed accept to be logged",
        )
        assert not webhook.done()
        # Descriptors come back: the webhook waited in the backlog and is answered, not dropped.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        assert (await webhook).startswith(b"HTTP/1.1 200 ")
    finally:
        for _, w in idle:
            w.close()
    assert await metric(relay, 'relay_connections_rejected_total{reason="fd_exhausted"}') >= 1
    relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(relay.wait, 20) == 0
    log = relay.log.read_text()
    assert log.count("cannot accept connections") == 1
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("configured", "fd_limit", "reserve", "expected"),
    [
        (10000, 65536, 84, 10000),  # the systemd unit's limit: room for all
        (10000, 1024, 84, 940),  # a shell's default: what fits
        (100, 1024, 84, 100),
        (10000, 70, 64, 8),  # a handful, whatever happens
    ],
)
def test_max_connections_fits_under_the_descriptor_limit(
    configured: int, fd_limit: int, reserve: int, expected: int
) -> None:
    assert connection_limit(configured, fd_limit, reserve) == expected
