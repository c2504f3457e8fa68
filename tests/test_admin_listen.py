"""[admin] listen: the admin API, the console and /metrics on a private operator address, and
nothing of them on the public one, over real sockets."""

from __future__ import annotations

import signal
from argparse import Namespace
from pathlib import Path

import aiohttp
import pytest

from relay.cli.connect import admin_url
from relay.config import ConfigError, parse_config
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    RelayFactory,
    RelayProcess,
    Sink,
    admin_call,
    config_text,
    destination,
    free_port,
    subscribe_body,
)


async def test_admin_listen_keeps_operator_paths_off_the_public_address(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    text = config_text(
        tmp_path / "relay.db",
        destinations=destination("crm", sink.url("/crm")),
        extra=ADMIN_TABLE + 'listen = "127.0.0.1:8081"\n',
    )
    relay = await start_relay(text)
    assert relay.session is not None and relay.admin_server is not None
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in ("/admin/events", "/admin/destinations", "/console", "/console/login", "/metrics"):
        async with relay.session.get(relay.url(path), headers=bearer) as r:
            assert r.status == 404, path
    async with relay.session.post(relay.url("/admin/replay"), headers=bearer, json={}) as r:
        assert r.status == 404
    assert (await relay.post("/hooks/user", subscribe_body("pub@example.com")))[0] == 200
    for path in ("/healthz", "/readyz"):
        async with relay.session.get(relay.url(path)) as r:
            assert r.status == 200, path

    status, page = await admin_call(relay, "GET", "/admin/events")
    assert status == 200 and page["events"][0]["email"] == "pub@example.com"
    async with relay.session.get(relay.admin_url("/metrics")) as r:
        assert r.status == 200 and "relay_requests_received_total" in await r.text()
    async with relay.session.get(relay.admin_url("/console")) as r:
        assert r.status == 401 and 'action="/console/login"' in await r.text()
    # ...and the operator address takes no webhooks.
    async with relay.session.post(
        relay.admin_url("/hooks/user?secret=s3cret"), data=subscribe_body("x@example.com")
    ) as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ('"127.0.0.1:8080"', "admin.listen: must differ from server.listen"),
        ('"0.0.0.0:8080"', "admin.listen: must differ from server.listen"),
        ('"localhost"', "admin.listen: must be host:port"),
        ('"127.0.0.1:0"', "admin.listen: must be host:port"),
        ('""', "admin.listen: must be host:port"),
        ("8081", "admin.listen: must be a string"),
    ],
)
def test_admin_listen_must_be_its_own_address(listen: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[server]\nlisten = "127.0.0.1:8080"\n[admin]\nlisten = {listen}\n', {})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_admin_listen_is_read() -> None:
    settings = parse_config('[admin]\ntoken = "t"\nlisten = "127.0.0.1:9091"\n', {})
    assert settings.admin.listen == ("127.0.0.1", 9091)
    assert "on 127.0.0.1:9091" in settings.summary()


def test_cli_talks_to_the_admin_address_when_there_is_one(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nlisten = "0.0.0.0:8080"\n[admin]\nlisten = "127.0.0.1:9091"\n')
    assert admin_url(Namespace(url=None, config=str(config))) == "http://127.0.0.1:9091"
    config.write_text('[server]\nlisten = "0.0.0.0:8080"\n')
    assert admin_url(Namespace(url=None, config=str(config))) == "http://127.0.0.1:8080"


@pytest.mark.slow
async def test_relay_serve_listens_on_both_addresses(tmp_path: Path) -> None:
    public, admin = free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        config_text(
            tmp_path / "relay.db",
            port=public,
            extra=ADMIN_TABLE + f'listen = "127.0.0.1:{admin}"\n',
        )
    )
    relay = RelayProcess(config, public, tmp_path / "relay.log")
    try:
        await relay.start()
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=bearer) as client:
            for port, path, status in (
                (public, "/metrics", 404),
                (public, "/admin/events", 404),
                (admin, "/metrics", 200),
                (admin, "/admin/events", 200),
                (admin, "/readyz", 200),
            ):
                async with client.get(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == status, (port, path)
        relay.kill(signal.SIGTERM)
        assert relay.wait(20) == 0
    finally:
        relay.ensure_stopped()
    assert f"console on http://127.0.0.1:{admin}/console" in relay.log.read_text()
