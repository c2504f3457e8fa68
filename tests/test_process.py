"""A real `relay serve` process: killed with SIGKILL under load, stopped with SIGTERM.

Every request that got a 200 must be stored exactly once with its exact bytes and delivered at
least once after the restart; nothing may stay stuck in 'delivering'.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import Sink, config_text, destination, free_port, sample, wait_until

BODY = sample("mc_doc_subscribe.txt")


class RelayProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"relay exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.port}/readyz") as r,
                ):
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


@pytest.fixture
async def proc_env(tmp_path: Path, sink: Sink) -> AsyncIterator[tuple[RelayProcess, Path]]:
    port = free_port()
    db = tmp_path / "relay.db"
    cfg = tmp_path / "relay.toml"
    dests = destination(
        "crm",
        sink.url("/crm"),
        timeout=1.0,
        concurrency=8,
        retry={"max_attempts": 50, "initial_delay": 0.05, "max_delay": 0.5},
    )
    dests += destination(
        "all",
        sink.url("/all"),
        timeout=1.0,
        types=["subscribe"],
        retry={"max_attempts": 50, "initial_delay": 0.05, "max_delay": 0.5},
    )
    cfg.write_text(config_text(db, dests, port=port))
    rp = RelayProcess(cfg, port, tmp_path / "relay.log")
    yield rp, db
    if rp.proc is not None and rp.proc.poll() is None:
        rp.proc.kill()
        rp.proc.wait(10)


async def _load(port: int, clients: int, stop: asyncio.Event, acked: list[bytes],
                counter: list[int]) -> None:  # fmt: skip
    async def client(n: int) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                counter[0] += 1
                body = BODY.replace(b"8a25ff1d98", f"c{n}-{counter[0]:08d}".encode())
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/hooks/user?secret=s3cret",
                        data=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    ) as r:
                        if r.status == 200:
                            acked.append(body)
                except (aiohttp.ClientError, ConnectionError):
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(client(i) for i in range(clients)))


def stored_bodies(db: Path) -> list[bytes]:
    with sqlite3.connect(db) as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT body FROM requests")]


def unfinished(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'delivering')"
        ).fetchone()[0])  # fmt: skip


async def test_sigkill_under_load_loses_nothing_acknowledged(
    proc_env: tuple[RelayProcess, Path], sink: Sink
) -> None:
    rp, db = proc_env
    acked: list[bytes] = []
    counter = [0]
    kills = 3
    for i in range(kills):
        await rp.start()
        stop = asyncio.Event()
        load = asyncio.create_task(_load(rp.port, 8, stop, acked, counter))
        target = len(acked) + 150
        await wait_until(lambda t=target: len(acked) >= t, timeout=30, what="load")  # type: ignore[misc]
        rp.kill(signal.SIGKILL)
        rp.wait(10)
        stop.set()
        await load
        assert i < kills
    await rp.start()
    stored = stored_bodies(db)
    assert len(stored) == len(set(stored)), "a request was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged requests were not stored"
    # After leases expire (timeout 1 s + 5 s) every delivery finishes; nothing stays stuck.
    await wait_until(lambda: unfinished(db) == 0, timeout=40, what="all deliveries to finish")
    delivered = {r.body for r in sink.at("/crm")}
    assert set(acked) <= delivered
    assert set(acked) <= {r.body for r in sink.at("/all")}
    rp.kill(signal.SIGTERM)
    assert rp.wait(20) == 0


async def test_sigterm_stops_gracefully_within_bounded_time(
    proc_env: tuple[RelayProcess, Path], sink: Sink
) -> None:
    rp, db = proc_env
    sink.hang.add("/crm")  # deliveries in flight when SIGTERM arrives
    await rp.start()
    acked: list[bytes] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(rp.port, 4, stop, acked, [0]))
    await wait_until(lambda: len(acked) >= 50 and len(sink.at("/crm")) > 0, timeout=30)
    started = time.monotonic()
    rp.kill(signal.SIGTERM)
    code = await asyncio.to_thread(rp.wait, 30)
    elapsed = time.monotonic() - started
    stop.set()
    await load
    assert code == 0
    # shutdown_grace is 2 s in the test config; allow for process teardown on a loaded machine.
    assert elapsed < 15
    assert set(acked) <= set(stored_bodies(db))
    assert os.path.exists(db)
    log = rp.log.read_text()
    assert "shutting down" in log and "relay stopped" in log
