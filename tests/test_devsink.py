"""The development sink prints what relay forwards, and answers with the status asked for."""

from __future__ import annotations

import io

import aiohttp
from aiohttp.test_utils import TestServer

from relay.cli.devsink import create_sink


async def test_sink_prints_relay_headers_and_body() -> None:
    out = io.StringIO()
    server = TestServer(create_sink(out, status=202), host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.make_url("/hook"),
                data=b"type=subscribe",
                headers={"X-Relay-Event-Type": "subscribe", "X-Other": "x"},
            ) as response,
        ):
            assert response.status == 202
    finally:
        await server.close()
    printed = out.getvalue()
    assert "POST /hook 14 bytes Event-Type=subscribe" in printed
    assert "X-Other" not in printed
    assert "type=subscribe" in printed
