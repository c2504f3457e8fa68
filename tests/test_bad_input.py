"""Hostile and broken input at the door: relay answers 200 or a 4xx, never a 5xx, stores only
what it acknowledges, and a slow or idle client cannot hold a connection (or the loop) forever.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import (
    RelayFactory,
    RelayProcess,
    RelayUnderTest,
    audience_inbounds,
    config_text,
    free_port,
    sample,
    stored_bodies,
    wait_until,
)

BODY = sample("mc_doc_subscribe.txt")


INBOUNDS = (
    audience_inbounds(1024 * 1024)
    + """
[[inbound]]
name = "journey"
path = "/hooks/journey"
kind = "journey"
event_type = "journey.welcome"
secret = "s3cret"
source = "journey"

[[inbound]]
name = "transactional"
path = "/hooks/mandrill"
kind = "mandrill"
secret = "s3cret"
source = "mandrill"
"""
)


@pytest.fixture
async def relay(tmp_path: Path, start_relay: RelayFactory) -> RelayUnderTest:
    return await start_relay(
        config_text(tmp_path / "relay.db", inbounds=INBOUNDS, max_body_bytes=1024 * 1024)
    )


def db_of(relay: RelayUnderTest) -> Path:
    return Path(relay.settings.storage.url.removeprefix("sqlite:///"))


def port_of(relay: RelayUnderTest) -> int:
    return relay.port


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, return everything the server answers until it closes (or 5 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read(65536)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def post_head(path: str, length: int | None = None, extra: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return head.encode() + extra + b"\r\n"


# -- size limits ------------------------------------------------------------------------------


async def test_endless_chunked_body_gets_413_before_it_ends(relay: RelayUnderTest) -> None:
    # No Content-Length and no final chunk: only a limit enforced while reading can answer.
    chunk = b"2000\r\n" + b"a" * 0x2000 + b"\r\n"
    request = post_head("/hooks/user?secret=s3cret", extra=b"Transfer-Encoding: chunked\r\n")
    response = await exchange(port_of(relay), request + chunk * 160)  # 1.25 MiB > 1 MiB
    assert status_of(response) == 413
    assert stored_bodies(db_of(relay)) == []


async def test_content_length_over_the_limit_is_413_without_reading_the_body(
    relay: RelayUnderTest,
) -> None:
    request = post_head("/hooks/user?secret=s3cret", length=50 * 1024 * 1024)
    response = await exchange(port_of(relay), request + b"type=subscribe")
    assert status_of(response) == 413
    assert stored_bodies(db_of(relay)) == []


# -- bodies that are broken but storable: kept byte for byte ---------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"%",
        b"%zz%%%",
        b"type=subscribe&data%5Bemail%5D=a%E2%82",  # truncated UTF-8 sequence
        b"&&&==&=&",
        b"type=subscribe&data%5Bmerges%5D%5B",  # truncated mid-key
        b"type=subscribe&data[",
        b"type=subscribe&data]]]][[[=1",
        b"\xff\xfe\xfd invalid utf-8 \xc3\x28",
        b"type=%FF%FE&fired_at=%00%00",
        b"type=subscribe\x00&data%5Bid%5D=\x00\x01",
        b"type=subscribe&type=unsubscribe&type=",  # duplicate keys
        b"=" * 5000,
    ],
    ids=repr,
)
async def test_malformed_form_bodies_are_stored_byte_identical(
    body: bytes, relay: RelayUnderTest
) -> None:
    status, _ = await relay.post("/hooks/user", body)
    assert status == 200
    assert stored_bodies(db_of(relay)) == [body]


async def test_ten_thousand_levels_of_brackets_are_stored_and_parsed_bounded(
    relay: RelayUnderTest,
) -> None:
    body = b"type=subscribe&data" + b"%5Ba%5D" * 10_000 + b"=x&data%5Bid%5D=1"
    status, _ = await relay.post("/hooks/user", body)
    assert status == 200
    assert stored_bodies(db_of(relay)) == [body]
    with sqlite3.connect(db_of(relay)) as conn:
        assert conn.execute("SELECT type FROM events").fetchone() == ("subscribe",)


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/hooks/journey", b"[" * 10_000 + b"]" * 10_000, "application/json"),
        ("/hooks/journey", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "application/json"),
        ("/hooks/journey", b"[" * 10_000, "application/json"),
        (
            "/hooks/mandrill",
            b"mandrill_events=" + b"%5B" * 10_000,
            "application/x-www-form-urlencoded",
        ),
        (
            "/hooks/mandrill",
            b"mandrill_events=[" + b'{"a":' * 5_000,
            "application/x-www-form-urlencoded",
        ),
    ],
    ids=["json-arrays", "json-objects", "json-unclosed", "mandrill-brackets", "mandrill-objects"],
)
async def test_absurdly_nested_json_is_stored_as_a_parse_error(
    path: str, body: bytes, content_type: str, relay: RelayUnderTest
) -> None:
    status, _ = await relay.post(path, body, content_type=content_type)
    assert status == 200
    assert stored_bodies(db_of(relay)) == [body]


async def test_a_hundred_thousand_fields_within_the_limit_are_stored(
    relay: RelayUnderTest,
) -> None:
    body = b"type=subscribe&" + b"&".join(b"%x=1" % i for i in range(100_000))
    assert len(body) < 1024 * 1024
    status, _ = await relay.post("/hooks/user", body)
    assert status == 200
    assert stored_bodies(db_of(relay)) == [body]


async def test_a_huge_body_being_parsed_does_not_stall_other_requests(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    limit = 8 * 1024 * 1024
    relay = await start_relay(
        config_text(db, inbounds=audience_inbounds(limit), max_body_bytes=limit)
    )
    # 8 MiB of fields, seconds of parsing: a flat `data` field sends it down the full parser.
    huge = b"data=x&" + b"a=1&" * (2 * 1024 * 1024 - 2)
    big = asyncio.create_task(relay.post("/hooks/user", huge))
    small_latencies = []
    while not big.done():
        t0 = time.perf_counter()
        status, _ = await relay.post("/hooks/user", BODY)
        assert status == 200
        small_latencies.append(time.perf_counter() - t0)
    assert (await big)[0] == 200
    # Parsed on the event loop, the big body would hold every small request until it was done:
    # one at most would be answered meanwhile. Parsed aside, they keep being answered. (Counted,
    # not timed: a loaded machine makes any one request slow, but not one-at-a-time.)
    assert len(small_latencies) >= 5, small_latencies
    # Commit order is id order even though the big one was parsed aside, so a client paging
    # the events list by id cursor cannot step past it before it is stored.
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY rowid")]
    assert len(ids) == len(small_latencies) + 1
    assert ids == sorted(ids)


# -- HTTP-level garbage: 4xx from the server, never 5xx ---------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (
            b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"Content-Length: 0\r\n\r\n",
            {400, 431},
        ),
        (
            b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"v" * 20_000
            + b"\r\nContent-Length: 0\r\n\r\n",
            {400, 431},
        ),
        (b"POST /hooks/user?secret=" + b"s" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {400, 414}),
        (b"POST /hooks/user HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", {400}),
        (b"POST /hooks/user HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", {400}),
        (
            b"POST /hooks/user HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            {400},
        ),
        (b"GARBAGE\r\n\r\n", {400}),
        (b"POST /hooks/user HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505}),
        (b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: x\r\nX-Bad\x00Name: v\r\n\r\n", {400}),
    ],
    ids=[
        "200-headers",
        "20k-header",
        "20k-request-line",
        "bad-length",
        "negative-length",
        "length-and-chunked",
        "garbage",
        "http-9.9",
        "nul-in-header-name",
    ],
)
async def test_malformed_http_is_a_4xx_and_stores_nothing(
    request_bytes: bytes, expected: set[int], relay: RelayUnderTest
) -> None:
    response = await exchange(port_of(relay), request_bytes)
    assert status_of(response) in expected
    assert b"Traceback" not in response
    assert stored_bodies(db_of(relay)) == []


@pytest.mark.parametrize("query", ["", "secret=", "secret=wrong", "secret=s3cre", "secret=s3cretX"])
async def test_wrong_or_missing_secret_is_401_not_stored_and_counted(
    query: str, relay: RelayUnderTest
) -> None:
    for _ in range(3):
        status, _ = await relay.post("/hooks/user", BODY, query=query)
        assert status == 401
    assert stored_bodies(db_of(relay)) == []
    assert relay.session is not None
    async with relay.session.get(relay.url("/metrics")) as r:
        metrics = await r.text()
    assert (
        'relay_requests_received_total{inbound="audience-user",outcome="rejected_auth"} 3.0'
        in metrics
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/hooks/nope?secret=s3cret", 404),
        ("POST", "/hooks/user/extra?secret=s3cret", 404),
        ("POST", "/hooks/USER?secret=s3cret", 404),
        ("GET", "/", 404),
        ("PUT", "/hooks/user?secret=s3cret", 405),
        ("DELETE", "/hooks/user?secret=s3cret", 405),
        ("PATCH", "/hooks/user?secret=s3cret", 405),
        ("OPTIONS", "/hooks/user?secret=s3cret", 405),
        ("TRACE", "/hooks/user?secret=s3cret", 405),
    ],
)
async def test_unknown_paths_are_404_and_other_methods_405(
    method: str, path: str, expected: int, relay: RelayUnderTest
) -> None:
    assert relay.session is not None
    async with relay.session.request(method, relay.url(path), data=BODY) as response:
        assert response.status == expected
        assert "Traceback" not in await response.text()
    assert stored_bodies(db_of(relay)) == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_cut_off_by_a_disconnect_is_not_stored(
    framing: str, relay: RelayUnderTest
) -> None:
    if framing == "chunked":
        head = post_head("/hooks/user?secret=s3cret", extra=b"Transfer-Encoding: chunked\r\n")
        partial = head + b"%x\r\n" % len(BODY) + BODY[:50]
    else:
        partial = post_head("/hooks/user?secret=s3cret", length=len(BODY)) + BODY[:50]
    response = await exchange(port_of(relay), partial, half_close=True)
    assert response == b"" or status_of(response) == 400
    # A complete request after it is stored; the broken one never is.
    assert (await relay.post("/hooks/user", BODY))[0] == 200
    assert stored_bodies(db_of(relay)) == [BODY]


# -- arbitrary bodies through a real socket -----------------------------------------------------

_form_pairs = st.lists(
    st.tuples(
        st.text(min_size=0, max_size=30).map(lambda s: s.replace("]", "[")),
        st.text(min_size=0, max_size=60),
    ),
    max_size=20,
)


def _form_body(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"data[{quote_plus(k)}]={quote_plus(v)}" for k, v in pairs).encode()


_bodies = st.one_of(
    st.binary(min_size=1, max_size=4096),
    _form_pairs.map(_form_body).filter(bool),
    st.text(min_size=1, max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=30,
    ).map(orjson.dumps),
)


async def test_any_storable_body_is_acknowledged_and_kept_byte_identical(
    relay: RelayUnderTest,
) -> None:
    port = port_of(relay)
    db = db_of(relay)

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        body=_bodies,
        path=st.sampled_from(["/hooks/user", "/hooks/journey", "/hooks/mandrill"]),
        content_type=st.sampled_from(
            ["application/x-www-form-urlencoded", "application/json", "text/plain", ""]
        ),
    )
    def post_anything(body: bytes, path: str, content_type: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request("POST", f"{path}?secret=s3cret", body=body, headers=headers)
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        assert response.status == 200, (response.status, text)
        with sqlite3.connect(db) as c:
            found = c.execute("SELECT count(*) FROM requests WHERE body = ?", (body,)).fetchone()
        assert found[0] >= 1

    # hypothesis drives a blocking client from a thread while relay serves on this loop.
    await asyncio.to_thread(post_anything)
    assert len(stored_bodies(db)) >= 50  # the examples really went through


# -- slow and idle clients, against a real process (the server options are set by `serve`) ----


@pytest.fixture
async def slow_relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    port = free_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(config_text(tmp_path / "relay.db", port=port, server_extra="read_timeout = 1.0"))
    rp = RelayProcess(cfg, port, tmp_path / "relay.log")
    await rp.start()
    yield rp
    rp.ensure_stopped()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    async with asyncio.timeout(within):
        return await reader.read(65536)


async def trickle(port: int, head: bytes, pieces: list[bytes]) -> tuple[bytes, float]:
    """Send ``head``, then one piece every 0.1 s; what the server answered, and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(head)

    async def drip() -> None:
        for piece in pieces:
            writer.write(piece)
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        answer = await _closed_by_server(reader, within=5.0)
    finally:
        dripping.cancel()
        writer.close()
    return answer, time.monotonic() - t0


async def test_a_client_trickling_headers_is_disconnected_after_read_timeout(
    slow_relay: RelayProcess,
) -> None:
    answer, elapsed = await trickle(
        slow_relay.port,
        b"POST /hooks/user?secret=s3cret HTTP/1.1\r\nHost: x\r\n",
        [b"X-Slow-%d: v\r\n" % i for i in range(1000)],
    )
    assert answer == b"" or status_of(answer) in {400, 408}
    assert elapsed < 4.0


async def test_a_client_trickling_its_body_gets_408_and_nothing_is_stored(
    slow_relay: RelayProcess,
) -> None:
    answer, elapsed = await trickle(
        slow_relay.port,
        post_head("/hooks/user?secret=s3cret", length=len(BODY)),
        [bytes([b]) for b in BODY[:-1]],
    )
    assert status_of(answer) == 408
    assert elapsed < 4.0
    assert stored_bodies(slow_relay.config.with_name("relay.db")) == []


async def test_many_idle_connections_neither_block_requests_nor_live_forever(
    slow_relay: RelayProcess,
) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", slow_relay.port) for _ in range(500)]
    try:
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", slow_relay.port)
        writer.write(post_head("/hooks/user?secret=s3cret", length=len(BODY)) + BODY)
        answer = await _closed_by_server(reader, within=5.0)
        writer.close()
        assert status_of(answer) == 200
        assert time.monotonic() - t0 < 2.0
        # Each idle socket is closed by the server once read_timeout (1 s) has passed.
        await wait_until(lambda: _read_eofs(idle), timeout=10, what="idle connections to be closed")
    finally:
        for _, w in idle:
            w.close()


async def _read_eofs(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> bool:
    for reader, _ in conns:
        if reader.at_eof():
            continue
        try:
            async with asyncio.timeout(0.001):
                await reader.read(1)
        except TimeoutError:
            return False
    return all(r.at_eof() for r, _ in conns)


async def test_a_compressed_body_is_415_and_not_stored(
    tmp_path: Path, start_relay: RelayFactory
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(config_text(db))
    for body in (gzip.compress(BODY), b"not gzip at all"):
        status, text = await relay.post("/hooks/user", body, headers={"Content-Encoding": "gzip"})
        assert (status, text) == (
            415,
            "Content-Encoding not accepted: send the body uncompressed\n",
        )
    assert (await relay.post("/hooks/user", BODY, headers={"Content-Encoding": "identity"}))[
        0
    ] == 200
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT body FROM requests")] == [BODY]
