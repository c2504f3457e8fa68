"""Circuit breakers against real downstream servers: a destination that is down gets a handful
of probes instead of thousands of attempts, burns no attempts, and gets its backlog at the rate
limit once it is back; a 4xx does not open a circuit; pause wins; an operator can close one."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import (
    ADMIN_TABLE,
    MANDRILL_INBOUND,
    RelayFactory,
    RelayUnderTest,
    Sink,
    admin_call,
    busiest_second,
    config_text,
    destination,
    free_port,
    mandrill_batch,
    subscribe_body,
    wait_until,
)
from tests.test_cli import cli
from tests.test_console import _browser, _login

RETRY = {"max_attempts": 3, "initial_delay": 0.05, "max_delay": 0.2}


class Downstream:
    """A destination's address with nothing listening on it until ``start`` (it is down)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sink = Sink()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> Sink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.sink.handle)
        self.sink.server = TestServer(app, host="127.0.0.1", port=self.port)
        await self.sink.server.start_server()
        return self.sink

    async def stop(self) -> None:
        if self.sink.server is not None:
            await self.sink.server.close()


@pytest.fixture
async def down() -> AsyncIterator[Downstream]:
    d = Downstream()
    yield d
    await d.stop()


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def count(db: Path, sql: str) -> int:
    return int(rows(db, sql)[0][0])  # type: ignore[call-overload]


async def circuit(relay: RelayUnderTest, name: str = "crm") -> dict[str, object]:
    _, answer = await admin_call(relay, "GET", "/admin/destinations")
    (found,) = [d for d in answer["destinations"] if d["name"] == name]
    assert found["circuit"] is not None
    return dict(found["circuit"])


def circuit_is(relay: RelayUnderTest, state: str) -> Callable[[], object]:
    async def check() -> bool:
        return (await circuit(relay))["state"] == state

    return check


def log_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def scrape(relay: RelayUnderTest) -> str:
    assert relay.session is not None
    async with relay.session.get(relay.admin_url("/metrics")) as r:
        return await r.text()


def metric(text: str, name: str, destination: str = "crm") -> float:
    prefix = f'{name}{{destination="{destination}"}} '
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_an_outage_costs_a_few_probes_no_dead_letters_and_the_backlog_drains_at_the_rate(
    tmp_path: Path, down: Downstream, start_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rate, burst, backlog, failures = 400, 40, 2000, 5
    db = tmp_path / "relay.db"
    dest = destination(
        "crm", down.url("/crm"), rate=rate, concurrency=10, timeout=2.0, retry=RETRY
    ) + f"[destination.breaker]\nfailures = {failures}\nprobe_interval = 0.5\nmax_probe_interval = 2\n"
    relay = await start_relay(
        config_text(db, dest, inbounds=MANDRILL_INBOUND, extra=ADMIN_TABLE, max_body_bytes=1 << 20)
    )
    started = time.monotonic()
    for n in range(4):
        assert (await relay.post("/hooks/tx", mandrill_batch(backlog // 4, f"b{n}")))[0] == 200
    await wait_until(circuit_is(relay, "open"), what="the circuit to open")
    assert "relay_destination_circuit_open{destination=\"crm\"} 1.0" in await scrape(relay)
    # The outage lasts ten seconds, during which every one of the 2,000 deliveries is due.
    await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - started)))
    attempts = count(db, "SELECT count(*) FROM attempts")
    probes = metric(await scrape(relay), "relay_circuit_probes_total")
    # Up to `failures` plus what was in flight when it opened, then one probe at a time
    # (after 0.5 s, 1 s, then every 2 s): a handful, not thousands (or 6,000 with the retries).
    assert 1 <= probes <= 8
    assert attempts <= failures + 10 + probes
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'") == 0

    sink = await down.start()
    await wait_until(
        lambda: count(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'") == backlog,
        timeout=60,
        what="the backlog to drain",
    )
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0
    assert len({r.body for r in sink.at("/crm")}) == backlog
    assert busiest_second([r.at for r in sink.at("/crm")]) <= (rate + burst) * 1.1
    # Deliveries that failed while it was known to be down were not charged those attempts.
    assert count(db, "SELECT max(attempts - held_attempts) FROM deliveries") <= RETRY["max_attempts"]
    assert len(log_lines(caplog, "destination=crm circuit opened")) == 1
    (closed,) = log_lines(caplog, "destination=crm circuit closed")
    assert "the probe got HTTP 200" in closed
    assert (await circuit(relay))["state"] == "closed"
    metrics = await scrape(relay)
    assert "relay_destination_circuit_open{destination=\"crm\"} 0.0" in metrics
    assert metric(metrics, "relay_delivery_attempts_held_total") >= probes


async def test_a_destination_refusing_some_events_with_400_keeps_its_circuit_closed(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    # Three down-signals in a row would open it; a 400 between them says the service is up.
    sink.on("/crm", 503, 503, 400, 503, 503, 400, 503, 503, 400, 200)
    dest = destination("crm", sink.url("/crm"), concurrency=1, retry={**RETRY, "max_attempts": 10})
    dest += "[destination.breaker]\nfailures = 3\nprobe_interval = 30\n"
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, dest, extra=ADMIN_TABLE))
    for n in range(4):
        assert (await relay.post("/hooks/user", subscribe_body(f"u{n}@example.com")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) >= 10, what="every answer to be used")
    await wait_until(
        lambda: count(db, "SELECT count(*) FROM deliveries WHERE state IN ('pending',"
                          " 'delivering')") == 0,
        what="every delivery to finish",
    )  # fmt: skip
    assert log_lines(caplog, "circuit opened") == []
    assert await circuit(relay) == {
        "state": "closed", "failures": 0, "threshold": 3, "opened_at": None, "reason": None,
        "next_probe_at": None,
    }  # fmt: skip
    assert rows(db, "SELECT state, count(*) FROM deliveries GROUP BY state ORDER BY state") == [
        ("dead", 3),  # the three refused with 400: permanent
        ("delivered", 1),
    ]


async def _open_circuit(
    tmp_path: Path, down: Downstream, start_relay: RelayFactory, probe_interval: float
) -> tuple[RelayUnderTest, Path]:
    dest = destination("crm", down.url("/crm"), concurrency=2, retry=RETRY)
    dest += f"[destination.breaker]\nfailures = 2\nprobe_interval = {probe_interval}\n"
    dest += f"max_probe_interval = {probe_interval}\n"
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db, dest, extra=ADMIN_TABLE))
    for n in range(3):
        assert (await relay.post("/hooks/user", subscribe_body(f"r{n}@example.com")))[0] == 200
    await wait_until(circuit_is(relay, "open"), what="the circuit to open")
    return relay, db


async def test_an_operator_closes_an_open_circuit_by_hand(
    tmp_path: Path, down: Downstream, start_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    # No probe for a minute: only the reset can send the backlog within this test.
    relay, db = await _open_circuit(tmp_path, down, start_relay, probe_interval=60.0)
    admin = relay.admin_url("")
    listed = await cli("destinations", "list", url=admin)
    assert listed.code == 0 and "open since" in listed.out, listed
    sink = await down.start()
    result = await cli("destinations", "reset", "crm", url=admin)
    assert result.code == 0, result
    assert result.out.strip() == "crm: circuit closed (was open); its deliveries go out again"
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the held deliveries")
    (closed,) = log_lines(caplog, "circuit closed")
    assert "reset by an operator" in closed
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0
    again = await cli("destinations", "reset", "crm", url=admin)
    assert again.out.strip() == "crm: circuit closed (was not open); its deliveries go out again"
    status, answer = await admin_call(relay, "POST", "/admin/destinations/nope/reset")
    assert (status, answer) == (404, {"error": "unknown destination: nope"})


async def test_reset_of_a_destination_without_a_breaker_says_so(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    dest = destination("crm", sink.url("/crm"), rate=5)
    relay = await start_relay(config_text(tmp_path / "relay.db", dest, extra=ADMIN_TABLE))
    status, answer = await admin_call(relay, "POST", "/admin/destinations/crm/reset")
    assert (status, answer) == (409, {"error": "destination crm has no [destination.breaker]"})
    _, listed = await admin_call(relay, "GET", "/admin/destinations")
    (crm,) = listed["destinations"]
    assert (crm["rate"], crm["circuit"]) == ({"per_second": 5.0, "burst": 1.0}, None)


async def test_pause_wins_over_an_open_circuit(
    tmp_path: Path, down: Downstream, start_relay: RelayFactory
) -> None:
    relay, db = await _open_circuit(tmp_path, down, start_relay, probe_interval=0.2)
    status, _ = await admin_call(relay, "POST", "/admin/destinations/crm/pause")
    assert status == 200
    sink = await down.start()
    # Five probe intervals: a probe would have gone out (and closed the circuit) by now.
    await asyncio.sleep(1.0)
    assert sink.received == []
    assert (await circuit(relay))["state"] == "open"
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'paused'") >= 1
    await admin_call(relay, "POST", "/admin/destinations/crm/resume")
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the backlog after resume")
    await wait_until(circuit_is(relay, "closed"), what="the probe to close the circuit")
    assert count(db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0


async def test_the_console_shows_an_open_circuit_and_closes_it_with_a_csrf_checked_form(
    tmp_path: Path, down: Downstream, start_relay: RelayFactory
) -> None:
    relay, _ = await _open_circuit(tmp_path, down, start_relay, probe_interval=60.0)
    reset = relay.admin_url("/console/destinations/crm/reset")
    async with _browser() as client:
        csrf = await _login(client, relay)
        async with client.get(relay.admin_url("/console")) as r:
            page = await r.text()
        assert "2 consecutive failures, the last: cannot connect: Connection refused" in page
        assert 'action="/console/destinations/crm/reset"' in page and "Close circuit" in page
        async with client.post(reset, data={}, allow_redirects=False) as r:
            assert r.status == 403
        assert (await circuit(relay))["state"] == "open"
        sink = await down.start()
        async with client.post(reset, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
            location = r.headers["Location"]
        async with client.get(relay.admin_url(location)) as r:
            page = await r.text()
    assert "Closed the circuit of crm: its waiting deliveries go out again." in page
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the held deliveries")
