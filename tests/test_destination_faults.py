"""Downstream misbehaviour, from HTTP errors to broken TCP: each is recorded as an attempt with the
documented outcome (AttemptOutcome), retried per the policy, and nothing is lost. A destination
that hangs or refuses connections only uses up its own concurrency; healthy ones stay prompt.

Protocol-level faults come from a raw asyncio server, so relay meets the bytes a broken
server really sends (partial headers, a reset mid-body, one byte at a time).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.delivery.sender import RESPONSE_HEAD_BYTES
from relay.model import DeliveryRecord, DeliveryState
from tests.support import (
    RelayFactory,
    RelayUnderTest,
    Sink,
    config_text,
    destination,
    free_port,
    sample,
    wait_until,
)

BODY = sample("mc_doc_subscribe.txt")

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Downstream:
    """A raw TCP server: connection n is handled by behaviour n (the last one repeats)."""

    behaviours: list[Behaviour]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    async def start(self) -> Downstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.requests.append(head + await reader.readexactly(length))
            n = len(self.requests) - 1
            await self.behaviours[min(n, len(self.behaviours) - 1)](reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def answer(status: int, body: bytes = b"ok", headers: str = "") -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return behave


OK = answer(200)


def raw(data: bytes, *, abort: bool = True) -> Behaviour:
    """Write ``data`` and then reset the connection (abort) or close it."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if abort:
            writer.transport.abort()

    return behave


def dribble(data: bytes, every: float) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)

    return behave


def until_released(downstream_ref: list[Downstream]) -> Behaviour:
    """Hang until the test sets ``release``, then answer 200."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await downstream_ref[0].release.wait()
        await OK(reader, writer)

    return behave


def endless_body() -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (4096, b"z" * 4096)
        while True:
            writer.write(chunk)
            await writer.drain()

    return behave


@pytest.fixture
async def downstreams() -> AsyncIterator[list[Downstream]]:
    started: list[Downstream] = []
    yield started
    for d in started:
        await d.close()


async def start_downstream(started: list[Downstream], *behaviours: Behaviour) -> Downstream:
    d = await Downstream(list(behaviours)).start()
    started.append(d)
    return d


RETRY = {"max_attempts": 5, "initial_delay": 0.05, "max_delay": 0.1}


async def only_delivery(relay: RelayUnderTest) -> DeliveryRecord:
    store = relay.relay.store
    db = Path(relay.settings.storage.url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        (event_id,) = conn.execute("SELECT id FROM events").fetchone()
    detail = await store.get_event(event_id)
    assert detail is not None
    (delivery,) = detail.deliveries
    return delivery


async def settled(relay: RelayUnderTest, state: DeliveryState) -> DeliveryRecord:
    async def reached() -> bool:
        return (await only_delivery(relay)).state is state

    await wait_until(reached, timeout=10, what=f"the delivery to be {state}")
    return await only_delivery(relay)


async def relay_for(
    start_relay: RelayFactory, tmp_path: Path, url: str, **options: object
) -> RelayUnderTest:
    options.setdefault("timeout", 0.5)
    options.setdefault("retry", RETRY)
    relay = await start_relay(config_text(tmp_path / "relay.db", destination("d", url, **options)))
    assert (await relay.post("/hooks/user", BODY))[0] == 200
    return relay


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


FAULTS = {
    "500": (answer(500, b"oops"), "5xx", 500, None),
    "503": (answer(503, b"", "Retry-After: 0\r\n"), "5xx", 503, None),
    "hang": (hang, "timeout", None, "timed out after 0.5s"),
    "partial-headers-then-reset": (
        raw(b"HTTP/1.1 200 OK\r\nContent-Len"),
        "connection_error",
        None,
        None,
    ),
    "headers-then-reset-mid-body": (
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
        "connection_error",
        None,
        None,
    ),
    "close-without-answer": (
        raw(b"", abort=False),
        "connection_error",
        None,
        "server disconnected",
    ),
    "garbage-status-line": (
        raw(b"SMTP READY\r\n\r\n", abort=False),
        "connection_error",
        None,
        None,
    ),
    "one-byte-at-a-time-past-the-timeout": (
        dribble(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0.05),
        "timeout",
        None,
        None,
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_is_recorded_with_its_outcome_then_retried_until_delivered(
    fault: str, tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    behaviour, outcome, status, error = FAULTS[fault]
    down = await start_downstream(downstreams, behaviour, OK)
    relay = await relay_for(start_relay, tmp_path, down.url())
    delivery = await settled(relay, DeliveryState.DELIVERED)
    first, *_, last = delivery.attempt_log
    assert (first.outcome, first.status) == (outcome, status)
    if error is not None:
        assert first.error == error
    assert first.duration < 0.5 + 0.5
    assert (last.outcome, last.status) == ("2xx", 200)
    assert delivery.attempts == len(delivery.attempt_log) == 2
    # Every attempt carried the exact bytes.
    assert all(r.endswith(BODY) for r in down.requests)


async def test_connection_refused_is_connection_error_until_the_port_opens(
    tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    port = free_port()  # nothing listens here yet
    relay = await relay_for(
        start_relay, tmp_path, f"http://127.0.0.1:{port}/hook", retry={**RETRY, "max_attempts": 100}
    )

    async def refused_twice() -> bool:
        return (await only_delivery(relay)).attempts >= 2

    await wait_until(refused_twice, what="two refused attempts")
    down = Downstream([OK], port=port)
    downstreams.append(await down.start())
    delivery = await settled(relay, DeliveryState.DELIVERED)
    first = delivery.attempt_log[0]
    assert first.outcome == "connection_error"
    assert first.error == "cannot connect: Connection refused"
    assert delivery.attempt_log[-1].outcome == "2xx"


async def test_429_retry_after_is_a_4xx_attempt_and_delays_the_retry(
    tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    down = await start_downstream(downstreams, answer(429, b"slow down", "Retry-After: 1\r\n"), OK)
    relay = await relay_for(start_relay, tmp_path, down.url(), retry={**RETRY, "max_delay": 5.0})
    delivery = await settled(relay, DeliveryState.DELIVERED)
    first, second = delivery.attempt_log
    assert (first.outcome, first.status, first.response_head) == ("4xx", 429, b"slow down")
    assert second.started_at - first.started_at >= 0.95


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_not_followed_but_recorded_as_3xx_and_retried_per_policy(
    status: int, tmp_path: Path, sink: Sink, start_relay: RelayFactory,
    downstreams: list[Downstream],
) -> None:  # fmt: skip
    target = sink.url("/elsewhere")
    down = await start_downstream(downstreams, answer(status, b"", f"Location: {target}\r\n"))
    relay = await relay_for(start_relay, tmp_path, down.url(), retry={**RETRY, "max_attempts": 3})
    delivery = await settled(relay, DeliveryState.DEAD)
    assert [(a.outcome, a.status) for a in delivery.attempt_log] == [("3xx", status)] * 3
    assert delivery.last_error == f"HTTP {status}"  # a redirect's body is empty
    assert delivery.dead_reason == "gave up after 3 attempts"
    assert sink.received == []  # the Location was never visited
    assert len(down.requests) == 3


async def test_huge_response_body_keeps_only_the_first_kilobyte(
    tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    huge = bytes(range(256)) * (10 * 4096)  # 10 MiB
    down = await start_downstream(downstreams, answer(500, huge), answer(200, huge))
    relay = await relay_for(start_relay, tmp_path, down.url())
    delivery = await settled(relay, DeliveryState.DELIVERED)
    assert [a.response_head for a in delivery.attempt_log] == [huge[:RESPONSE_HEAD_BYTES]] * 2


async def test_endless_response_body_is_cut_off_and_the_success_recorded_promptly(
    tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    down = await start_downstream(downstreams, endless_body())
    relay = await relay_for(start_relay, tmp_path, down.url(), timeout=5.0)
    delivery = await settled(relay, DeliveryState.DELIVERED)
    (attempt,) = delivery.attempt_log
    assert attempt.outcome == "2xx"
    assert attempt.response_head == b"z" * RESPONSE_HEAD_BYTES
    assert attempt.duration < 2.0


async def test_a_response_dribbled_byte_by_byte_within_the_timeout_is_read_whole(
    tmp_path: Path, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    text = b"accepted, thanks"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
    down = await start_downstream(downstreams, dribble(response, 0.005))
    relay = await relay_for(start_relay, tmp_path, down.url(), timeout=5.0)
    delivery = await settled(relay, DeliveryState.DELIVERED)
    (attempt,) = delivery.attempt_log
    assert (attempt.outcome, attempt.response_head) == ("2xx", text)


async def test_stuck_and_refusing_destinations_do_not_slow_a_healthy_one(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory, downstreams: list[Downstream]
) -> None:
    ref: list[Downstream] = []
    stuck = await start_downstream(downstreams, until_released(ref))
    ref.append(stuck)
    refused_port = free_port()
    retry = {"max_attempts": 1000, "initial_delay": 0.05, "max_delay": 0.2}
    dests = destination("stuck", stuck.url(), timeout=30.0, concurrency=2, retry=retry)
    dests += destination(
        "refusing", f"http://127.0.0.1:{refused_port}/", concurrency=2, retry=retry
    )
    dests += destination("healthy", sink.url("/healthy"), concurrency=2, retry=retry)
    relay = await start_relay(config_text(tmp_path / "relay.db", dests))
    n = 40
    t0 = time.monotonic()
    for i in range(n):
        body = BODY.replace(b"8a25ff1d98", f"{i:010d}".encode())
        assert (await relay.post("/hooks/user", body))[0] == 200
    await wait_until(lambda: len(sink.at("/healthy")) == n, timeout=10, what="healthy deliveries")
    healthy_done = time.monotonic() - t0
    # The stuck destination has all its concurrency hung: exactly 2 requests, no answers.
    assert len(stuck.requests) == 2
    assert healthy_done < 3.0, healthy_done
    stats = {s.destination: s for s in await relay.relay.store.destination_stats()}
    assert stats["stuck"].delivering == 2 and stats["stuck"].pending == n - 2
    # Recovery: the stuck destination answers and the refusing one comes up; both drain.
    stuck.release.set()
    downstreams.append(await Downstream([OK], port=refused_port).start())

    async def drained() -> bool:
        s = await relay.relay.store.destination_stats()
        return all(x.pending == 0 and x.delivering == 0 for x in s)

    await wait_until(drained, timeout=15, what="the backlog to drain")
    assert len(stuck.requests) == n
    print(f"\n[isolation] healthy destination got {n} events in {healthy_done:.2f}s "
          f"while 'stuck' had 2/2 slots hung and 'refusing' refused")  # fmt: skip
