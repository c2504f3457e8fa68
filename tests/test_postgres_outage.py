"""PostgreSQL stopped under load and started again: relay answers 503 meanwhile, loses nothing
that got a 200, and recovers by itself, with no restart of relay.

The database server here is a private one made for this test (initdb in a temporary folder, on
its own port), so stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.support import (
    Load,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    sample,
    wait_until,
)

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@dataclass
class PrivatePostgres:
    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
            "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=on",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (pg_ctl, initdb) not found: apt-get install postgresql"
        if os.environ.get("CI") or os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # Not under pytest's tmp_path: as root, the server runs as the postgres user, which must be
    # able to reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="relay-test-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(data, "postgres")
    server = PrivatePostgres(bin_dir, data, free_port())
    try:
        server._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        server.start()
        yield server
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(data),
             "-m", "immediate", "stop"] if os.geteuid() == 0 else
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def relay_on_private_postgres(
    tmp_path: Path, sink: Sink, private_postgres: PrivatePostgres
) -> AsyncIterator[RelayProcess]:
    port = free_port()
    dests = destination("crm", sink.url("/crm"), timeout=1.0, concurrency=8)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(config_text(tmp_path / "unused.db", dests, port=port,
                               storage_url=private_postgres.url))  # fmt: skip
    relay = RelayProcess(cfg, port, tmp_path / "relay.log")
    await relay.start()
    yield relay
    relay.ensure_stopped()


async def _ready(relay: RelayProcess) -> int:
    async with aiohttp.ClientSession() as s, s.get(relay.url("/readyz")) as r:
        return r.status


async def test_postgresql_stopped_for_ten_seconds_under_load(
    relay_on_private_postgres: RelayProcess, private_postgres: PrivatePostgres, sink: Sink
) -> None:
    relay = relay_on_private_postgres
    load = Load(relay.port, clients=4, bodies=(sample("mc_doc_subscribe.txt"),))
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    try:
        await wait_until(lambda: len(load.acked) > 100, what="traffic before the outage")
        await asyncio.to_thread(private_postgres.stop)
        acked_before = len(load.acked)
        await asyncio.sleep(2.0)
        during = len(load.acked) - acked_before
        assert await _ready(relay) == 503
        await asyncio.sleep(8.0)
        assert load.statuses.get(503, 0) > 0
        # A 200 while the database is down would be a lie: nothing could be committed.
        assert len(load.acked) - acked_before == during <= 4 * 2  # at most the in-flight batch
        await asyncio.to_thread(private_postgres.start)

        async def ready_again() -> bool:
            return await _ready(relay) == 200

        await wait_until(ready_again, timeout=20, what="/readyz to recover without a restart")
        resumed = len(load.acked)
        await wait_until(lambda: len(load.acked) > resumed + 100, what="ingest to resume")
    finally:
        stop.set()
        await task
    conn = await asyncpg.connect(private_postgres.url)
    try:
        stored = Counter(bytes(r[0]) for r in await conn.fetch("SELECT body FROM requests"))

        async def all_delivered() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'delivering')"
            )
            return bool(n == 0)

        await wait_until(all_delivered, timeout=30, what="every delivery to finish")
    finally:
        await conn.close()
    assert not [b for b in load.acked if b not in stored], "an acknowledged request was lost"
    assert set(stored) <= {r.body for r in sink.at("/crm")}, "a stored event was not delivered"
    assert relay.proc is not None and relay.proc.poll() is None, "relay restarted or died"
    print(
        f"\n[postgresql outage 10 s] acknowledged={len(load.acked)} statuses={load.statuses}"
        f" stored={sum(stored.values())} lost=0"
    )
