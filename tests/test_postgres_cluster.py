"""Several real `relay serve` processes on one PostgreSQL database, as CONTRACT.md promises them.

Each process accepts webhooks and runs delivery workers; each delivery is sent by one process at
a time; pause, resume and the events cursor hold across processes; a process killed at any moment
loses no acknowledged request and leaves no delivery stuck.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from tests.pg import pg_url
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    Load,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    sample,
    subscribe_body,
    wait_until,
)

__all__ = ["pg_url"]
pytestmark = pytest.mark.slow

SUBSCRIBE = sample("mc_doc_subscribe.txt")
UNSUBSCRIBE = sample("mc_doc_unsubscribe.txt")
RETRY = {"max_attempts": 100, "initial_delay": 0.05, "max_delay": 0.3}


@dataclass
class Cluster:
    relays: list[RelayProcess]
    url: str
    sink: Sink

    async def query(self, sql: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    async def states(self) -> dict[str, int]:
        rows = await self.query("SELECT state, count(*) FROM deliveries GROUP BY state")
        return {r[0]: r[1] for r in rows}

    async def unfinished(self) -> int:
        states = await self.states()
        return states.get("pending", 0) + states.get("delivering", 0)

    async def admin(self, n: int, method: str, path: str) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.relays[n].url(path), headers=headers) as r,
        ):
            return r.status, orjson.loads(await r.read())


@pytest.fixture
async def cluster(tmp_path: Path, sink: Sink, pg_url: str) -> AsyncIterator[Cluster]:
    dests = destination("crm", sink.url("/crm"), timeout=1.0, concurrency=8, retry=RETRY)
    dests += destination(
        "subs", sink.url("/subs"), timeout=1.0, concurrency=4, types=["subscribe"], retry=RETRY
    )
    relays = []
    for n in range(3):
        port = free_port()
        cfg = tmp_path / f"relay{n}.toml"
        cfg.write_text(
            config_text(tmp_path / "unused.db", dests, extra=ADMIN_TABLE, port=port,
                        storage_url=pg_url)
        )  # fmt: skip
        relays.append(RelayProcess(cfg, port, tmp_path / f"relay{n}.log"))
    await asyncio.gather(*(r.start() for r in relays))
    yield Cluster(relays, pg_url, sink)
    for r in relays:
        r.ensure_stopped()


async def test_three_relays_killed_at_random_under_load_lose_nothing_acknowledged(
    cluster: Cluster,
) -> None:
    # Slow enough downstream that attempts are in flight when a process dies.
    cluster.sink.delay["/crm"] = 0.05
    loads = [
        Load(r.port, clients=3, bodies=(SUBSCRIBE, UNSUBSCRIBE), tag=f"r{n}")
        for n, r in enumerate(cluster.relays)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop)) for load in loads]
    rng = random.Random(11)
    kills = 10
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            victim = cluster.relays[rng.randrange(3)]
            victim.kill(signal.SIGKILL)
            await asyncio.to_thread(victim.wait, 10)
            await victim.start()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    acked = [b for load in loads for b in load.acked]
    stored = Counter(bytes(r[0]) for r in await cluster.query("SELECT body FROM requests"))
    assert not [b for b, n in stored.items() if n > 1], "a request was stored twice"
    assert not [b for b in acked if b not in stored], "an acknowledged request was lost"
    # Deliveries leased by a killed process become due again when the lease (1 s + 5 s) ends,
    # and one of the surviving processes sends them.
    async def finished() -> bool:
        return await cluster.unfinished() == 0

    await wait_until(finished, timeout=60, what="every delivery to finish")
    assert set(await cluster.states()) == {"delivered"}
    to_crm = Counter(r.body for r in cluster.sink.at("/crm"))
    to_subs = Counter(r.body for r in cluster.sink.at("/subs"))
    assert set(stored) <= set(to_crm), "a stored event never reached crm"
    assert {b for b in stored if b.startswith(b"type=subscribe")} <= set(to_subs)
    assert not any(b.startswith(b"type=unsubscribe") for b in to_subs), "filter ignored"
    print(
        f"\n[3 relays, postgresql] kills={kills} acknowledged={len(acked)}"
        f" stored={sum(stored.values())} unanswered={sum(x.unanswered for x in loads)}"
        f" statuses={[x.statuses for x in loads]} sent_to_crm={sum(to_crm.values())}"
        f" duplicate_sends={sum(to_crm.values()) - len(to_crm)} lost=0"
    )


async def test_a_pause_through_one_relay_holds_what_another_takes_until_a_third_resumes(
    cluster: Cluster,
) -> None:
    b = cluster.relays[1]
    assert (await cluster.admin(0, "POST", "/admin/destinations/crm/pause"))[0] == 200
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            body = subscribe_body(f"held{i}@example.com")
            async with s.post(b.url("/hooks/user?secret=s3cret"), data=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 200  # fmt: skip
    await wait_until(lambda: len(cluster.sink.at("/subs")) == 5, what="the unpaused destination")
    # Every process's workers re-check at least once a second: two seconds of nothing is proof.
    await asyncio.sleep(2.0)
    assert cluster.sink.at("/crm") == []
    assert (await cluster.states()).get("paused") == 5
    assert (await cluster.admin(2, "POST", "/admin/destinations/crm/resume"))[0] == 200
    await wait_until(lambda: len(cluster.sink.at("/crm")) == 5, what="the resumed destination")


async def test_the_events_cursor_pages_through_three_writers_exactly_once(
    cluster: Cluster,
) -> None:
    loads = [Load(r.port, clients=4, tag=f"w{n}") for n, r in enumerate(cluster.relays)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop)) for load in loads]
    await wait_until(lambda: sum(len(x.acked) for x in loads) > 300, what="events to pile up")
    # Paged while all three keep writing: every event at or below the first page's top must be
    # seen exactly once, however the three processes' commits interleaved.
    seen: list[str] = []
    cursor = None
    top = None
    while True:
        path = "/admin/events?limit=25" + (f"&cursor={cursor}" if cursor else "")
        status, page = await cluster.admin(random.randrange(3), "GET", path)
        assert status == 200
        events = page["events"]  # type: ignore[index]
        if top is None and events:
            top = events[0]["id"]
        seen += [e["id"] for e in events]
        cursor = page["next_cursor"]  # type: ignore[index]
        if cursor is None:
            break
    stop.set()
    await asyncio.gather(*tasks)
    assert len(seen) == len(set(seen)), "an event was listed twice"
    rows = await cluster.query("SELECT id, seq FROM events ORDER BY seq")
    positions = {r[0]: r[1] for r in rows}
    expected = {i for i, seq in positions.items() if seq <= positions[top]}
    assert set(seen) == expected, f"{len(expected - set(seen))} events were skipped"
    assert len(expected) > 300
