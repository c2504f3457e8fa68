"""Values a sender controls (event types, header values) cannot forge log lines, grow without
bound, or reach a destination as something other than what relay decided.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote_plus

import aiohttp
import orjson
import pytest

from relay.obs.logs import BufferedHandler, JsonFormatter, TextFormatter
from relay.pipeline.events import MAX_TYPE_CHARS
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    FORM,
    RelayFactory,
    RelayProcess,
    Sink,
    config_text,
    destination,
    free_port,
    wait_until,
)

FORGED = "2026-01-01T00:00:00.000Z INFO relay.ingest request inbound=forged outcome=accepted"
LINE_START = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


def audience_body(event_type: str) -> bytes:
    return (
        f"type={quote_plus(event_type)}&fired_at=2026-11-02+10%3A00%3A00"
        "&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=a6b5da1054&data%5Bemail%5D=ann%40example.com"
    ).encode()


@pytest.fixture
async def text_relay(tmp_path: Path, sink: Sink) -> AsyncIterator[RelayProcess]:
    port = free_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        config_text(tmp_path / "relay.db", destination("all", sink.url("/all")), port=port)
    )
    rp = RelayProcess(cfg, port, tmp_path / "relay.log")
    await rp.start()
    yield rp
    rp.ensure_stopped()


async def test_a_type_cannot_forge_a_log_line_or_outgrow_its_bound(
    text_relay: RelayProcess, sink: Sink
) -> None:
    forging = "subscribe\n" + FORGED + "\r\x1b[2J\u2028"
    huge = "billing_" + "x" * 60_000  # within the body limit, far over any header limit
    async with aiohttp.ClientSession() as s:
        for event_type in (forging, huge):
            async with s.post(
                text_relay.url("/hooks/user?secret=s3cret"),
                data=audience_body(event_type),
                headers={"Content-Type": FORM},
            ) as r:
                assert r.status == 200
    await wait_until(lambda: len(sink.at("/all")) == 2, what="both events delivered")
    delivered = sorted(r.headers["X-Relay-Event-Type"] for r in sink.at("/all"))
    assert delivered[0] == ("billing_" + "x" * 60_000)[:MAX_TYPE_CHARS]
    assert delivered[1].startswith("subscribe?2026-01-01")  # header-safe, one line
    text_relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(text_relay.wait, 20) == 0
    lines = text_relay.log.read_text().splitlines()
    request_lines = [line for line in lines if "relay.ingest request" in line]
    assert len(request_lines) == 2
    assert any("type=subscribe\\n2026-01-01T00:00:00.000Z" in line for line in request_lines)
    for line in lines:
        assert LINE_START.match(line) or line.startswith("relay "), line
        assert not line.startswith(FORGED)
        assert "\x1b" not in line and "\r" not in line and "\u2028" not in line
        assert len(line) < 1000


@pytest.mark.parametrize("json_format", [False, True])
def test_every_log_format_writes_one_line_per_record(json_format: bool) -> None:
    stream = io.StringIO()
    handler = BufferedHandler(stream)
    handler.json = json_format
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    logger = logging.Logger("relay.test")
    logger.addHandler(handler)
    logger.warning("type=%s reason=%s", "a\nb", "c\x1b[31md\x85")
    handler.write_line(logging.INFO, "relay.ingest", "type=e\nf\u2028g")
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if json_format:
        messages = [orjson.loads(line)["message"] for line in lines]
    else:
        messages = [line.split(" ", 3)[3] for line in lines]
    assert messages == ["type=a\\nb reason=c\\x1b[31md\\x85", "type=e\\nf\\u2028g"]


JOURNEY = """
[[inbound]]
name = "welcome"
path = "/hooks/journey"
kind = "journey"
secret = "s3cret"
source = "journey"
event_type = "journey.welcome"
event_type_header = "X-Journey-Event"
event_types = ["journey.*"]
"""


async def test_a_header_type_outside_event_types_keeps_the_configured_type(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    dests = destination("crm", sink.url("/crm"), types=["subscribe"])
    dests += destination("journeys", sink.url("/journeys"), types=["journey.*"])
    relay = await start_relay(config_text(db, dests, inbounds=JOURNEY))
    body = b'{"email": "ann@example.com"}'
    for claimed in ("subscribe", "journey.café"):
        status, _ = await relay.post(
            "/hooks/journey", body, "application/json", headers={"X-Journey-Event": claimed}
        )
        assert status == 200
    await wait_until(lambda: len(sink.at("/journeys")) == 2, what="both journey events")
    types = [r.headers["X-Relay-Event-Type"] for r in sink.at("/journeys")]
    # The refused claim keeps the inbound's type; a UTF-8 header arrives as it was sent.
    assert sorted(types) == ["journey.café", "journey.welcome"]
    assert sink.at("/crm") == []
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT type, parse_error FROM events"))
    assert rows == {
        "journey.welcome": "event type header 'subscribe' not in event_types",
        "journey.café": None,
    }


async def test_a_non_utf8_operator_header_is_400_and_no_traceback(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start_relay(
        config_text(tmp_path / "relay.db", destination("crm", sink.url("/crm")), extra=ADMIN_TABLE)
    )
    assert (await relay.post("/hooks/user", audience_body("subscribe")))[0] == 200
    body = b'{"filter": {}}'
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        b"POST /admin/replay HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"X-Relay-Operator: dana\xff\xfe\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"X-Relay-Operator" in answer
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
