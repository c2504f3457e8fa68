"""Dead letters as an on-call operator meets them: the README's runbook run twice sends nothing
twice, the dead-letter list says why each one died, and resolving one by hand takes it out of
every count. A real `relay serve`, a real downstream, the CLI; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.pg import create_database, drop_database
from tests.support import (
    ADMIN_TABLE,
    Sink,
    config_text,
    destination,
    free_port,
    subscribe_body,
    wait_until,
)
from tests.test_cli import Running, cli
from tests.test_process import RelayProcess

RETRY = {"max_attempts": 2, "initial_delay": 0.05, "max_delay": 0.05}


@pytest.fixture(params=["sqlite", "postgresql"])
async def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def flaky(tmp_path: Path, sink: Sink, storage_url: str) -> AsyncIterator[Running]:
    """A relay whose destination "flaky" answers 500 (for now) and "crm" 200."""
    sink.on("/flaky", (500, {}))
    port = free_port()
    cfg = tmp_path / "relay.toml"
    dests = destination("flaky", sink.url("/flaky"), retry=RETRY) + destination(
        "crm", sink.url("/crm"), retry=RETRY
    )
    cfg.write_text(
        config_text(
            tmp_path / "relay.db", dests, extra=ADMIN_TABLE, port=port, storage_url=storage_url
        )
    )
    process = RelayProcess(cfg, port, tmp_path / "relay.log")
    await process.start()
    try:
        yield Running(process, f"http://127.0.0.1:{port}", cfg)
    finally:
        process.kill(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)


async def dead_count(url: str, name: str) -> int:
    listed = await cli("destinations", "list", "--json", url=url)
    (row,) = [d for d in orjson.loads(listed.out)["destinations"] if d["name"] == name]
    return int(row["counts"]["dead"])


async def metric(url: str, line_start: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    (line,) = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


DEAD_FLAKY = 'relay_deliveries{destination="flaky",state="dead"}'


async def test_the_dead_letter_runbook_run_twice_sends_nothing_twice(
    flaky: Running, sink: Sink
) -> None:
    url = flaky.url
    await flaky.post(*(subscribe_body(f"user{n}@example.com") for n in range(3)))
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the healthy destination")

    async def three_dead() -> bool:
        return await dead_count(url, "flaky") == 3

    await wait_until(three_dead, timeout=20, what="three dead letters")
    assert await metric(url, DEAD_FLAKY) == 3

    sink.on("/flaky", 200)  # the destination is fixed
    runbook = ("replay", "--state", "dead", "--destination", "flaky", "--to", "flaky")
    dry = await cli(*runbook, "--dry-run", url=url)
    assert dry.out.strip() == "dry run: 3 events match; would create 3 deliveries (flaky 3)"
    first = await cli(*runbook, url=url)
    assert first.code == 0, first.err
    assert "3 events, 3 deliveries" in first.out

    def replayed() -> int:
        return sum(1 for r in sink.at("/flaky") if r.headers.get("X-Relay-Replay") == "1")

    await wait_until(lambda: replayed() == 3, what="the replayed dead letters")

    async def resolved() -> bool:
        return await dead_count(url, "flaky") == 0 and await metric(url, DEAD_FLAKY) == 0

    await wait_until(resolved, what="the dead letters to resolve")
    # Run again, as the operator did: nothing matches, nothing is sent.
    again_dry = await cli(*runbook, "--dry-run", url=url)
    assert again_dry.out.strip() == "dry run: 0 events match; would create 0 deliveries (none)"
    again = await cli(*runbook, url=url)
    assert again.code == 0, again.err
    assert "0 events, 0 deliveries" in again.out
    listed = await cli("events", "list", "--state", "dead", "--destination", "flaky", url=url)
    assert listed.out.strip() == "no matching events"
    assert replayed() == 3
    assert len(sink.at("/crm")) == 3

    # The dead deliveries are history: shown as dead and resolved, with what resolved them.
    history = await cli("deliveries", "list", "--state", "dead", "--json", url=url)
    assert orjson.loads(history.out)["deliveries"] == []
    event_id = sink.at("/crm")[0].headers["X-Relay-Event-Id"]
    shown = orjson.loads((await cli("events", "show", event_id, "--json", url=url)).out)
    (old,) = [d for d in shown["deliveries"] if d["state"] == "dead"]
    (new,) = [d for d in shown["deliveries"] if d["destination"] == "flaky" and d["replay_id"]]
    assert new["state"] == "delivered"
    assert old["resolved_by"] == f"delivery {new['id']}" and old["resolved_at"]
    assert (old["last_status"], old["last_error"]) == (500, "HTTP 500: sink says hi")
    assert old["dead_reason"] == "gave up after 2 attempts"
    text = await cli("events", "show", event_id, url=url)
    assert "dead (resolved)" in text.out
    assert f"resolved {old['resolved_at']} by delivery {new['id']}" in text.out


async def test_the_dead_letter_list_shows_the_status_and_error_that_killed_each(
    flaky: Running, sink: Sink
) -> None:
    await flaky.post(subscribe_body("ann@example.com"))

    async def dead() -> bool:
        return await dead_count(flaky.url, "flaky") == 1

    await wait_until(dead, timeout=20, what="a dead letter")
    table = await cli("deliveries", "list", "--state", "dead", url=flaky.url)
    header, row = table.out.splitlines()
    assert header.split() == [
        "ID", "EVENT", "DESTINATION", "STATE", "TYPE", "TRIES", "UPDATED", "STATUS", "ERROR",
    ]  # fmt: skip
    assert row.split()[2:6] == ["flaky", "dead", "subscribe", "2"]
    assert row.split()[7:] == ["500", "HTTP", "500:", "sink", "says", "hi"]
    assert "gave up" not in table.out

    (item,) = orjson.loads(
        (await cli("deliveries", "list", "--state", "dead", "--json", url=flaky.url)).out
    )["deliveries"]
    resolved = await cli(
        "deliveries", "resolve", str(item["id"]), "--reason", "crm has it", "--operator",
        "dana", url=flaky.url,
    )  # fmt: skip
    assert resolved.code == 0, resolved.err
    assert resolved.out.strip() == f"delivery {item['id']} (flaky): resolved by dana"
    assert await dead_count(flaky.url, "flaky") == 0
    assert await metric(flaky.url, DEAD_FLAKY) == 0
    twice = await cli("deliveries", "resolve", str(item["id"]), url=flaky.url)
    assert twice.code == 1
    assert twice.err.strip() == f"relay: delivery {item['id']} was already resolved by dana"
    audit = await cli("audit", "list", "--action", "resolve", "--json", url=flaky.url)
    (entry,) = orjson.loads(audit.out)["entries"]
    assert (entry["operator"], entry["target"]) == ("dana", str(item["id"]))
    assert entry["detail"] == {"reason": "crm has it"} and entry["peer"] == "127.0.0.1"


async def test_a_connection_refused_is_the_error_a_dead_letter_keeps(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    cfg = tmp_path / "relay.toml"
    dests = destination("down", f"http://127.0.0.1:{closed}/hook", retry=RETRY)
    cfg.write_text(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE, port=port))
    process = RelayProcess(cfg, port, tmp_path / "relay.log")
    await process.start()
    running = Running(process, f"http://127.0.0.1:{port}", cfg)
    try:
        await running.post(subscribe_body("ann@example.com"))

        async def dead() -> bool:
            return await dead_count(running.url, "down") == 1

        await wait_until(dead, timeout=20)
        table = await cli("deliveries", "list", "--state", "dead", url=running.url)
        row = table.out.splitlines()[1]
        assert row.split()[7:] == ["-", "cannot", "connect:", "Connection", "refused"], row
    finally:
        process.kill(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)
