"""Cancelling a background replay through another relay process than the one running it: two
`relay serve` processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson

from tests.pg import pg_url
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    subscribe_body,
    wait_until,
)

__all__ = ["pg_url"]

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Relay-Operator": "dana"}


async def call(relay: RelayProcess, method: str, path: str, body: object = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    data = orjson.dumps(body) if body is not None else None
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, relay.url(path), data=data, headers=HEADERS) as r,
    ):
        return r.status, orjson.loads(await r.read())


async def test_a_replay_cancelled_through_another_process_stops_in_the_one_running_it(
    tmp_path: Path, sink: Sink, pg_url: str
) -> None:
    sink.hang.add("/crm")  # nothing drains: the replay waits for room once its window is full
    # crm takes only unsubscribes: the stored subscribes reach it by replay alone.
    dests = destination("crm", sink.url("/crm"), types=["unsubscribe"], concurrency=1)
    relays = []
    for n in range(2):
        port = free_port()
        cfg = tmp_path / f"relay{n}.toml"
        cfg.write_text(
            config_text(tmp_path / "unused.db", dests, extra=ADMIN_TABLE, port=port,
                        storage_url=pg_url)
        )  # fmt: skip
        relays.append(RelayProcess(cfg, port, tmp_path / f"relay{n}.log"))
    running, other = relays
    await running.start()
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(600):  # more than a replay completes inline
                async with session.post(
                    running.url("/hooks/user?secret=s3cret"),
                    data=subscribe_body(f"user{n}@example.com"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ) as r:
                    assert r.status == 200
        status, answer = await call(
            running, "POST", "/admin/replay",
            {"filter": {"type": "subscribe"}, "destinations": ["crm"]},
        )  # fmt: skip
        assert (status, answer["state"]) == (202, "running"), answer
        replay_id = answer["replay_id"]

        async def fed() -> bool:
            _, shown = await call(running, "GET", f"/admin/replays/{replay_id}")
            return bool(shown["created"] > 0)

        await wait_until(fed, timeout=20, what="the replay to start feeding")
        # Started only now: the replay is the first process's, not this one's.
        await other.start()
        status, cancelled = await call(other, "POST", f"/admin/replays/{replay_id}/cancel")
        assert status == 200, cancelled
        assert (cancelled["state"], cancelled["cancelled_by"]) == ("cancelled", "dana")
        stopped = f"replay={replay_id} is cancelled; this process stops feeding it"
        await wait_until(
            lambda: stopped in running.log.read_text(), timeout=5, what="the owner to stop"
        )
        _, shown = await call(running, "GET", f"/admin/replays/{replay_id}")
        assert shown["created"] == cancelled["created"] < 600
        assert shown["state"] == "cancelled"
        _, audit = await call(running, "GET", "/admin/audit?action=cancel")
        (entry,) = audit["entries"]
        assert (entry["operator"], entry["target"]) == ("dana", str(replay_id))
    finally:
        for relay in relays:
            if relay.proc is not None and relay.proc.poll() is None:
                relay.kill(signal.SIGTERM)
                await asyncio.to_thread(relay.wait, 20)
