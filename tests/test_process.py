"""A real `relay serve` process stopped with SIGTERM: it stops accepting, keeps its promises and
exits within a bounded time. SIGKILL is covered in test_crash.py.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    Load,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    stored_bodies,
    unfinished,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def proc_env(tmp_path: Path, sink: Sink) -> AsyncIterator[tuple[RelayProcess, Path]]:
    port = free_port()
    db = tmp_path / "relay.db"
    cfg = tmp_path / "relay.toml"
    retry = {"max_attempts": 50, "initial_delay": 0.05, "max_delay": 0.5}
    dests = destination("crm", sink.url("/crm"), timeout=1.0, concurrency=8, retry=retry)
    dests += destination("all", sink.url("/all"), timeout=1.0, types=["subscribe"], retry=retry)
    cfg.write_text(config_text(db, dests, port=port))
    rp = RelayProcess(cfg, port, tmp_path / "relay.log")
    yield rp, db
    rp.ensure_stopped()


async def _refuses_connections(rp: RelayProcess) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(rp.url("/healthz")) as r:
            await r.read()
            return False
    except aiohttp.ClientConnectionError:
        return True


async def test_sigterm_stops_accepting_keeps_acknowledged_work_and_exits_in_bounded_time(
    proc_env: tuple[RelayProcess, Path], sink: Sink
) -> None:
    rp, db = proc_env
    sink.hang.add("/crm")  # deliveries in flight when SIGTERM arrives
    await rp.start()
    load = Load(rp.port, clients=4)
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    await wait_until(lambda: len(load.acked) >= 50 and len(sink.at("/crm")) > 0, timeout=30)
    started = time.monotonic()
    rp.kill(signal.SIGTERM)
    # While the hung deliveries use up the 2 s grace, the listener is already closed.
    await wait_until(lambda: _refuses_connections(rp), timeout=5, what="the listener to close")
    assert rp.proc is not None and rp.proc.poll() is None, "exited before the grace period"
    code = await asyncio.to_thread(rp.wait, 30)
    elapsed = time.monotonic() - started
    stop.set()
    await task
    assert code == 0
    # shutdown_grace is 2 s in the test config; allow for process teardown on a loaded machine.
    assert elapsed < 15
    assert set(load.acked) <= set(stored_bodies(db))
    log = rp.log.read_text()
    assert "shutting down" in log and "relay stopped" in log
    # The attempts cancelled at the deadline keep their lease and are retried after a restart.
    sink.hang.clear()
    await rp.start()
    await wait_until(lambda: unfinished(db) == 0, timeout=20, what="every delivery to finish")
    assert set(load.acked) <= {r.body for r in sink.at("/crm")}
    rp.kill(signal.SIGTERM)
    assert await asyncio.to_thread(rp.wait, 20) == 0


async def test_sigterm_is_not_held_up_by_a_client_that_never_finishes_its_body(
    proc_env: tuple[RelayProcess, Path],
) -> None:
    rp, _ = proc_env
    await rp.start()
    idle = [socket.create_connection(("127.0.0.1", rp.port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", rp.port))
    slow.sendall(
        b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ntype=subsc"
    )
    try:
        # Let the request reach its handler, which now waits for the other 990 bytes.
        async with aiohttp.ClientSession() as s, s.get(rp.url("/healthz")) as r:
            assert r.status == 200
        started = time.monotonic()
        rp.kill(signal.SIGTERM)
        code = await asyncio.to_thread(rp.wait, 30)
        assert code == 0
        assert time.monotonic() - started < 10
    finally:
        for s in [*idle, slow]:
            s.close()


async def test_a_body_that_fails_to_decompress_is_415_and_one_log_line(
    proc_env: tuple[RelayProcess, Path],
) -> None:
    rp, db = proc_env
    await rp.start()
    body = b"not gzip at all"
    reader, writer = await asyncio.open_connection("127.0.0.1", rp.port)
    writer.write(
        b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: relay\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 415 ")
    rp.kill(signal.SIGTERM)
    await asyncio.to_thread(rp.wait, 20)
    log = rp.log.read_text()
    assert "outcome=unsupported status=415" in log
    assert "rejected: ContentEncodingError (HTTP 400)" in log
    assert "Traceback" not in log
    assert stored_bodies(db) == []
