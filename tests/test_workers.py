"""``[server] workers = 2``: real supervisor and worker processes on one port and one store.

Webhooks posted to the shared port are each stored once and delivered byte for byte; a worker
killed with SIGKILL under load is started again and loses nothing it acknowledged; SIGTERM
drains every worker and the supervisor exits 0; SIGHUP reaches every worker, and only once the
supervisor has found the file valid; a second supervisor on the same SQLite file is refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.backends import SQLITE_FILE, RelayBackend
from tests.support import (
    FORM,
    Load,
    RelayProcess,
    Sink,
    destination,
    free_port,
    sample,
    wait_until,
)

pytestmark = pytest.mark.slow

SUBSCRIBE = sample("mc_doc_subscribe.txt")
UNSUBSCRIBE = sample("mc_doc_unsubscribe.txt")
RETRY = {"max_attempts": 100, "initial_delay": 0.05, "max_delay": 0.3}


def workers_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux: /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


@dataclass
class Rig:
    relay: RelayProcess
    store: RelayBackend
    sink: Sink
    config: Path


@pytest.fixture
async def rig(tmp_path: Path, sink: Sink, relay_backend: RelayBackend) -> AsyncIterator[Rig]:
    port = free_port()
    dests = destination("crm", sink.url("/crm"), timeout=1.0, concurrency=8, retry=RETRY)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(relay_backend.config(dests, port=port, server_extra="workers = 2"))
    relay = RelayProcess(cfg, port, tmp_path / "relay.log")
    yield Rig(relay, relay_backend, sink, cfg)
    relay.ensure_stopped()  # its workers see it go and stop too


async def two_workers(rig: Rig, other_than: frozenset[int] = frozenset()) -> list[int]:
    found: list[int] = []

    def ready() -> bool:
        found[:] = workers_of(rig.relay.pid)
        return len(found) == 2 and not (set(found) & other_than)

    await wait_until(ready, timeout=20, what="two worker processes")
    return found


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def both_in_metrics(rig: Rig) -> bool:
    """Whether one scrape, whichever worker answers it, has every worker's series."""
    status, text = await get(rig.relay.url("/metrics"))
    assert status == 200
    return 'worker="0"' in text and 'worker="1"' in text


async def test_workers_share_the_port_survive_sigkill_and_drain_on_sigterm(rig: Rig) -> None:
    await rig.relay.start()
    first = await two_workers(rig)
    load = Load(rig.relay.port, clients=8, bodies=(SUBSCRIBE, UNSUBSCRIBE))
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    try:
        await wait_until(lambda: len(load.acked) >= 150, timeout=30, what="load")
        os.kill(first[0], signal.SIGKILL)
        # The supervisor starts a new worker in the killed one's place; the load goes on.
        await two_workers(rig, other_than=frozenset({first[0]}))
        await wait_until(lambda: both_in_metrics(rig), timeout=20, what="the new worker to serve")
        target = len(load.acked) + 150
        await wait_until(lambda: len(load.acked) >= target, timeout=30, what="more load")
    finally:
        stop.set()
        await task
    assert "worker 0 killed by SIGKILL; restarting it" in rig.relay.log.read_text()

    stored = Counter(await rig.store.stored_bodies())
    assert not [b for b, n in stored.items() if n > 1], "a request was stored twice"
    assert not [b for b in load.acked if b not in stored], "an acknowledged request was lost"

    async def finished() -> bool:
        return await rig.store.unfinished() == 0

    await wait_until(finished, timeout=40, what="every delivery to finish")
    assert set(await rig.store.delivery_states()) == {"delivered"}
    delivered = Counter(r.body for r in rig.sink.at("/crm"))
    # Byte for byte: the bodies posted are the bodies delivered, each at least once (twice
    # only for attempts the killed worker had in flight).
    assert set(stored) <= set(delivered)
    assert set(delivered) <= set(stored)
    assert all(r.headers["Content-Type"] == FORM for r in rig.sink.at("/crm"))
    print(
        f"\n[workers] sent={load.sent} acknowledged={len(load.acked)} stored={len(stored)}"
        f" delivered={len(delivered)} attempts={sum(delivered.values())} statuses={load.statuses}"
    )

    survivors = workers_of(rig.relay.pid)
    rig.relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(rig.relay.wait, 30) == 0
    assert not [p for p in survivors if Path(f"/proc/{p}").exists()], "a worker outlived it"
    log = rig.relay.log.read_text()
    assert log.count("shutting down: no new connections") == 2
    assert "every worker drained" in log


@pytest.mark.capability(SQLITE_FILE)
async def test_sighup_reaches_every_worker_once_the_file_is_valid(
    rig: Rig, sink: Sink, tmp_path: Path
) -> None:
    await rig.relay.start()
    await two_workers(rig)
    # Another relay on the same SQLite file is refused, workers or not.
    second = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(rig.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "in use by another relay serve" in second.stderr

    good = rig.config.read_text()
    rig.config.write_text(good + "\n[[destination]]\nname = 'broken'\n")
    rig.relay.kill(signal.SIGHUP)
    await wait_until(lambda: "reload refused" in rig.relay.log.read_text(), what="refusal")
    assert "reloading the configuration" not in rig.relay.log.read_text()

    rig.config.write_text(good + destination("audit", sink.url("/audit"), retry=RETRY))
    rig.relay.kill(signal.SIGHUP)

    def reloaded() -> bool:
        return rig.relay.log.read_text().count("configuration reloaded") == 2

    await wait_until(reloaded, what="both workers to reload")
    # Whichever worker takes them, new webhooks reach the destination the reload added.
    async with aiohttp.ClientSession() as s:
        for i in range(8):
            body = SUBSCRIBE.replace(b"8a25ff1d98", f"hup-{i}".encode())
            url = rig.relay.url("/hooks/user?secret=s3cret")
            async with s.post(url, data=body, headers={"Content-Type": FORM}) as r:
                assert r.status == 200
    await wait_until(lambda: len(sink.at("/audit")) == 8, what="deliveries to the new one")

    async def finished() -> bool:
        return await rig.store.unfinished() == 0

    await wait_until(finished, what="every delivery to be recorded")
    # Both workers were woken for each one; the lease gave each to one of them.
    assert sorted(Counter(r.body for r in sink.at("/audit")).values()) == [1] * 8
    rig.relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(rig.relay.wait, 30) == 0


@pytest.mark.capability(SQLITE_FILE)  # the same on every backend: one is enough
async def test_sigterm_while_the_workers_start_stops_them_all_and_exits_0(rig: Rig) -> None:
    with rig.relay.log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(rig.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until(lambda: len(workers_of(proc.pid)) == 2, what="workers to be started")
        started = workers_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, rig.relay.log.read_text()
        assert not [p for p in started if Path(f"/proc/{p}").exists()], "a worker outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
