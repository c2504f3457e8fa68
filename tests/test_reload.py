"""`kill -HUP` reloads the configuration of a running `relay serve`: destinations, inbounds and
the admin token change without a request dropped; a configuration that does not validate, or
that changes what only a restart can, is refused and the running one kept."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.config import parse_config
from relay.server.reload import describe_changes, fixed_changes
from tests.support import (
    AUDIENCE_INBOUNDS,
    Load,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    subscribe_body,
    wait_until,
)

# The two inbounds tests use, one at a time: audience-user (/hooks/user), audience-admin.
USER_INBOUND, ADMIN_INBOUND = (
    "[[inbound]]" + part for part in AUDIENCE_INBOUNDS.split("[[inbound]]")[1:]
)


def admin(token: str) -> str:
    return f'[admin]\ntoken = "{token}"\n'


@dataclass
class Served:
    process: RelayProcess
    config: Path
    db: Path
    port: int

    def write(self, dests: str, inbounds: str = USER_INBOUND, token: str = "one", **kw: str) -> None:
        self.config.write_text(
            config_text(self.db, dests, inbounds=inbounds, extra=admin(token), port=self.port,
                        **kw)  # type: ignore[arg-type]
        )  # fmt: skip

    async def reload(self, outcome: str) -> None:
        """SIGHUP, then wait for the log line saying how the reload ended."""
        before = self.process.log.read_text().count(outcome)
        self.process.kill(signal.SIGHUP)
        await wait_until(
            lambda: self.process.log.read_text().count(outcome) > before,
            what=f"the reload to log {outcome!r}",
        )

    async def get(self, path: str, token: str) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {token}", "X-Relay-Operator": "dana"}
        async with aiohttp.ClientSession() as s, s.get(self.process.url(path), headers=headers) as r:
            return r.status, orjson.loads(await r.read()) if r.content_type.endswith("json") else None

    async def post(self, path: str, body: bytes) -> int:
        async with aiohttp.ClientSession() as s, s.post(
            self.process.url(f"{path}?secret=s3cret"), data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as r:  # fmt: skip
            return r.status


@pytest.fixture
async def served(tmp_path: Path, sink: Sink) -> AsyncIterator[Served]:
    port = free_port()
    s = Served(
        RelayProcess(tmp_path / "relay.toml", port, tmp_path / "relay.log"),
        tmp_path / "relay.toml",
        tmp_path / "relay.db",
        port,
    )
    s.write(destination("crm", sink.url("/crm")))
    await s.process.start()
    yield s
    s.process.kill(signal.SIGTERM)
    await asyncio.to_thread(s.process.wait, 20)


async def test_a_reload_adds_destinations_and_inbounds_and_rotates_the_token_under_load(
    served: Served, sink: Sink
) -> None:
    load = Load(served.port, clients=4)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await wait_until(lambda: len(load.acked) >= 20, what="load before the reload")
    served.write(
        destination("crm", sink.url("/crm")) + destination("dw", sink.url("/dw")),
        inbounds=USER_INBOUND + ADMIN_INBOUND,
        token="two",
    )
    await served.reload("configuration reloaded")
    acked_at_reload = len(load.acked)
    await wait_until(lambda: len(load.acked) >= acked_at_reload + 20, what="load after it")
    stop.set()
    await running
    # Not one request was refused or left unanswered while the configuration changed.
    assert set(load.statuses) == {200} and load.unanswered == 0
    log = served.process.log.read_text()
    assert "configuration reloaded from" in log
    assert ": ~admin token, +destination dw, +inbound audience-admin" in log

    assert await served.post("/hooks/admin", subscribe_body("new@example.com")) == 200
    await wait_until(
        lambda: any(r.headers.get("X-Relay-Inbound") == "audience-admin" for r in sink.at("/dw")),
        what="the new inbound's event at the new destination",
    )
    assert (await served.get("/admin/events?limit=1", "one"))[0] == 401
    status, audit = await served.get("/admin/audit?action=reload", "two")
    assert status == 200
    (entry,) = audit["entries"]  # type: ignore[index]
    assert entry["operator"] == "signal:SIGHUP"
    assert "+destination dw" in entry["detail"]["changes"]
    async with aiohttp.ClientSession() as s, s.get(served.process.url("/metrics")) as r:
        metrics = await r.text()
    assert 'relay_deliveries_dead_total{destination="dw"} 0.0' in metrics
    assert 'relay_requests_received_total{inbound="audience-admin",outcome="accepted"} 1.0' in (
        metrics
    )


async def test_a_reload_removes_a_destination_and_an_inbound(served: Served, sink: Sink) -> None:
    served.write(
        destination("crm", sink.url("/crm")) + destination("dw", sink.url("/dw")),
        inbounds=USER_INBOUND + ADMIN_INBOUND,
    )
    await served.reload("configuration reloaded")
    served.write(destination("dw", sink.url("/dw")), inbounds=ADMIN_INBOUND)
    await served.reload("configuration reloaded")
    assert "-destination crm, -inbound audience-user" in served.process.log.read_text()
    await wait_until(
        lambda: "destination=crm removed from the configuration: its worker stopped"
        in served.process.log.read_text(),
        what="crm's worker to stop",
    )
    assert await served.post("/hooks/user", subscribe_body("gone@example.com")) == 404
    assert await served.post("/hooks/admin", subscribe_body("kept@example.com")) == 200
    await wait_until(lambda: len(sink.at("/dw")) == 1)
    assert sink.at("/crm") == []
    _, listed = await served.get("/admin/destinations", "one")
    assert [d["name"] for d in listed["destinations"]] == ["dw"]  # type: ignore[index]


async def test_a_configuration_that_does_not_validate_is_refused_and_the_old_one_kept(
    served: Served, sink: Sink
) -> None:
    served.config.write_text(
        served.config.read_text().replace(sink.url("/crm"), "ftp://nowhere")
        + '\n[[destination]]\nname = "crm"\nurl = "http://x"\n'
    )
    await served.reload("reload refused: the running configuration is kept")
    refused = [
        line for line in served.process.log.read_text().splitlines() if "reload refused" in line
    ]
    assert len(refused) == 3, refused
    assert "reload refused: destination[0].url: not an http(s) URL" in refused[0]
    assert "reload refused: destination[1].name: duplicate name 'crm'" in refused[1]
    assert await served.post("/hooks/user", subscribe_body("still@example.com")) == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1, what="delivery by the old config")
    assert (await served.get("/admin/events?limit=1", "one"))[0] == 200


async def test_storage_and_server_settings_are_not_reloaded(
    served: Served, sink: Sink, tmp_path: Path
) -> None:
    served.write(
        destination("crm", sink.url("/crm")) + destination("dw", sink.url("/dw")),
        storage_url=f"sqlite:///{tmp_path / 'other.db'}",
    )
    await served.reload("reload refused: the running configuration is kept")
    log = served.process.log.read_text()
    assert (
        "reload refused: storage.url: changed, but cannot change while relay runs: restart"
        " relay to apply it" in log
    )
    _, listed = await served.get("/admin/destinations", "one")
    assert [d["name"] for d in listed["destinations"]] == ["crm"]  # type: ignore[index]


# -- what a reload may change, and how it is described (pure) --------------------------------


def settings(text: str) -> object:
    return parse_config(text, {})


BASE = config_text(Path("/tmp/r.db"), destination("crm", "http://a/x"), extra=admin("t"))


@pytest.mark.parametrize(
    ("old", "new", "problems"),
    [
        (BASE, BASE.replace("127.0.0.1:8080", "127.0.0.1:9090"), ["server.listen"]),
        (BASE, BASE.replace("shutdown_grace = 2.0", "shutdown_grace = 3.0"),
         ["server.shutdown_grace"]),
        (BASE, BASE.replace("busy_timeout = 0.3", "busy_timeout = 0.4"),
         ["storage.sqlite.busy_timeout"]),
        (BASE, BASE + "\n[dedup]\nwindow = 10\n", ["dedup.window"]),
        (BASE, BASE.replace('token = "t"', 'token = "u"\nlisten = "127.0.0.1:9999"'),
         ["admin.listen"]),
        (BASE, BASE.replace("http://a/x", "http://b/y"), []),
    ],
)  # fmt: skip
def test_only_what_a_running_relay_can_take_is_reloaded(
    old: str, new: str, problems: list[str]
) -> None:
    found = fixed_changes(settings(old), settings(new))  # type: ignore[arg-type]
    assert [p.split(":")[0] for p in found] == problems


def test_changes_are_described_by_name_never_by_value() -> None:
    new = BASE.replace("http://a/x", "http://secret@b/y").replace('token = "t"', 'token = "z"')
    new += destination("dw", "http://c/z")
    changes = describe_changes(settings(BASE), settings(new))  # type: ignore[arg-type]
    assert changes == ["~admin token", "~destination crm (url)", "+destination dw"]
