"""The core pipeline end to end: real sockets, real downstream servers, on each storage backend."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3

import pytest

from relay.model import DeliveryState, EventFilter
from tests.backends import SQLITE_FILE, RelayBackend, sqlite_file
from tests.support import (
    SAMPLES,
    RelayFactory,
    RelayUnderTest,
    Sink,
    destination,
    sample,
    wait_until,
)

AUDIENCE_SAMPLES = sorted(p.name for p in SAMPLES.glob("mc_*.txt") if ".meta." not in p.name)


def _meta_event(name: str) -> str:
    meta = (SAMPLES / name.replace(".txt", ".meta.txt")).read_text()
    return next(
        line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Event:")
    )


async def count_rows(backend: RelayBackend, table: str) -> int:
    return int(await backend.scalar(f"SELECT count(*) FROM {table}"))


@pytest.mark.parametrize("name", AUDIENCE_SAMPLES)
async def test_each_sample_arrives_byte_identical_with_its_type(
    name: str, relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    body = sample(name)
    status, _ = await relay.post("/hooks/user", body)
    assert status == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1, what="the delivery")
    got = sink.at("/crm")[0]
    assert got.body == body
    assert got.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert got.headers["X-Relay-Event-Type"] == _meta_event(name)
    assert got.headers["X-Relay-Source"] == "user"
    assert got.headers["X-Relay-Inbound"] == "audience-user"
    assert got.headers["X-Relay-Attempt"] == "1"
    assert "X-Relay-Replay" not in got.headers
    detail = await relay.relay.store.get_event(got.headers["X-Relay-Event-Id"])
    assert detail is not None
    assert detail.request.body == body
    assert detail.event.type == _meta_event(name)


async def test_fan_out_to_two_destinations_with_custom_headers(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    dests = destination("crm", sink.url("/crm"), headers={"Authorization": "Bearer t0k"})
    dests += destination("analytics", sink.url("/analytics"))
    relay = await start_relay(relay_backend.config(dests))
    status, _ = await relay.post("/hooks/user", sample("mc_doc_subscribe.txt"))
    assert status == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1 and len(sink.at("/analytics")) == 1)
    crm, analytics = sink.at("/crm")[0], sink.at("/analytics")[0]
    assert crm.headers["Authorization"] == "Bearer t0k"
    assert "Authorization" not in analytics.headers
    assert crm.headers["X-Relay-Event-Id"] == analytics.headers["X-Relay-Event-Id"]


@pytest.mark.parametrize(
    ("filters", "path", "sample_name", "expected"),
    [
        ({"types": ["subscribe"]}, "/hooks/user", "mc_doc_subscribe.txt", True),
        ({"types": ["subscribe"]}, "/hooks/user", "mc_doc_unsubscribe.txt", False),
        ({"sources": ["admin"]}, "/hooks/admin", "mc_doc_subscribe.txt", True),
        ({"sources": ["admin"]}, "/hooks/user", "mc_doc_subscribe.txt", False),
        (
            {"types": ["unsubscribe"], "sources": ["user"]},
            "/hooks/user",
            "mc_doc_unsubscribe.txt",
            True,
        ),
        (
            {"types": ["unsubscribe"], "sources": ["user"]},
            "/hooks/admin",
            "mc_doc_unsubscribe.txt",
            False,
        ),
    ],
)
async def test_types_and_sources_filters_decide_who_gets_an_event(
    filters: dict[str, list[str]],
    path: str,
    sample_name: str,
    expected: bool,
    relay_backend: RelayBackend,
    sink: Sink,
    start_relay: RelayFactory,
) -> None:
    dests = destination("filtered", sink.url("/filtered"), **filters)
    dests += destination("everything", sink.url("/everything"))
    relay = await start_relay(relay_backend.config(dests))
    assert (await relay.post(path, sample(sample_name)))[0] == 200
    # "everything" has no filter: once it has the event, "filtered" has had its chance too,
    # since both deliveries were committed in the same transaction.
    await wait_until(lambda: len(sink.at("/everything")) == 1)
    await wait_until(lambda: len(sink.at("/filtered")) == int(expected), timeout=1.0)
    names = {r[0] for r in await relay_backend.rows("SELECT destination FROM deliveries")}
    assert ("filtered" in names) is expected


async def test_failing_destination_is_retried_until_it_answers(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 500, 500, 500, 200)
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 4, what="four attempts")
    assert [r.headers["X-Relay-Attempt"] for r in sink.at("/crm")] == ["1", "2", "3", "4"]
    event_id = sink.at("/crm")[0].headers["X-Relay-Event-Id"]

    async def delivered() -> bool:
        d = await relay.relay.store.get_event(event_id)
        return d is not None and d.deliveries[0].state is DeliveryState.DELIVERED

    await wait_until(delivered, what="state delivered")
    detail = await relay.relay.store.get_event(event_id)
    assert detail is not None
    (delivery,) = detail.deliveries
    assert delivery.attempts == 4
    assert [a.status for a in delivery.attempt_log] == [500, 500, 500, 200]
    assert [a.outcome for a in delivery.attempt_log] == ["5xx", "5xx", "5xx", "2xx"]
    assert delivery.attempt_log[0].response_head == b"sink says hi"
    assert all(a.duration >= 0 for a in delivery.attempt_log)
    starts = [a.started_at for a in delivery.attempt_log]
    assert starts == sorted(starts)
    # Backoff: at least initial_delay (0.05 s) between attempts.
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(starts))


async def test_retry_after_header_delays_next_attempt(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", (429, {"Retry-After": "1"}), 200)
    relay = await start_relay(
        relay_backend.config(
            destination("crm", sink.url("/crm"), retry={"max_delay": 5.0}),
        )
    )
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the retry")
    first, second = sink.at("/crm")
    assert second.at - first.at >= 0.95


async def test_retry_after_is_capped_at_max_delay(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", (503, {"Retry-After": "3600"}), 200)
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2, timeout=5.0, what="the capped retry")


async def _final_state(relay: RelayUnderTest, event_id: str) -> DeliveryState:
    detail = await relay.relay.store.get_event(event_id)
    assert detail is not None
    return detail.deliveries[0].state


async def test_delivery_is_dead_after_max_attempts(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 502)
    relay = await start_relay(
        relay_backend.config(
            destination("crm", sink.url("/crm"), retry={"max_attempts": 3}),
        )
    )
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 3)
    event_id = sink.at("/crm")[0].headers["X-Relay-Event-Id"]

    async def dead() -> bool:
        return await _final_state(relay, event_id) is DeliveryState.DEAD

    await wait_until(dead, what="state dead")
    detail = await relay.relay.store.get_event(event_id)
    assert detail is not None
    # The error that killed it, not a summary; the summary is why it was given up.
    assert detail.deliveries[0].last_error == "HTTP 502: sink says hi"
    assert detail.deliveries[0].dead_reason == "gave up after 3 attempts"
    assert len(sink.at("/crm")) == 3  # no fourth attempt


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_permanent_4xx_is_dead_at_once(
    status: int, relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", status)
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    event_id = sink.at("/crm")[0].headers["X-Relay-Event-Id"]

    async def dead() -> bool:
        return await _final_state(relay, event_id) is DeliveryState.DEAD

    await wait_until(dead)
    detail = await relay.relay.store.get_event(event_id)
    assert detail is not None
    assert detail.deliveries[0].last_error == f"HTTP {status}: sink says hi"
    assert detail.deliveries[0].dead_reason == f"permanent failure: HTTP {status}"
    assert detail.deliveries[0].attempts == 1


@pytest.mark.parametrize("status", [408, 429])
async def test_408_and_429_are_retried(
    status: int, relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", status, 200)
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2)


async def test_pending_deliveries_resume_after_restart(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503)
    slow_retry = {"initial_delay": 0.2, "max_delay": 0.2, "max_attempts": 50}
    first = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm"), retry=slow_retry))
    )
    bodies = [sample(n) for n in AUDIENCE_SAMPLES]
    for body in bodies:
        assert (await first.post("/hooks/user", body))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) >= len(bodies), what="first attempts")
    await first.stop()
    sink.on("/crm", 200)
    sink.received.clear()
    second = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm"), retry=slow_retry))
    )
    ids = [e.id for e in (await second.relay.store.list_events(EventFilter(), 100)).events]
    assert len(ids) == len(bodies)

    async def all_delivered() -> bool:
        for event_id in ids:
            d = await second.relay.store.get_event(event_id)
            if d is None or d.deliveries[0].state is not DeliveryState.DELIVERED:
                return False
        return True

    await wait_until(all_delivered, what="every event delivered after the restart")
    # At least once: every stored body reached the destination after the restart.
    assert {r.body for r in sink.at("/crm")} == set(bodies)


@pytest.mark.capability(SQLITE_FILE)
async def test_store_failure_answers_503_and_nothing_is_delivered(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    db = sqlite_file(relay_backend)
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    # Another process holds the write lock: relay's commit cannot happen within busy_timeout.
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        status, text = await relay.post("/hooks/user", sample("mc_doc_unsubscribe.txt"))
        assert status == 503
        assert "storage unavailable" in text
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await count_rows(relay_backend, "events") == 1
    # Recovered by itself: the next request is stored and delivered.
    assert (await relay.post("/hooks/user", sample("mc_doc_cleaned.txt")))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 2)
    assert [r.headers["X-Relay-Event-Type"] for r in sink.at("/crm")] == ["subscribe", "cleaned"]


@pytest.mark.parametrize(
    "query", ["secret=wrong", "", "secret=", "secret=s3cre", "secret=s3cret0", "Secret=s3cret"]
)
async def test_wrong_or_missing_secret_is_401_and_not_stored(
    query: str, relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    status, text = await relay.post("/hooks/user", sample("mc_doc_subscribe.txt"), query=query)
    assert status == 401
    assert "secret" in text
    assert await count_rows(relay_backend, "requests") == 0


async def test_oversized_body_is_413_and_not_stored(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    big = b"type=subscribe&data%5Bemail%5D=" + b"a" * 70000
    status, _ = await relay.post("/hooks/user", big)
    assert status == 413
    assert await count_rows(relay_backend, "requests") == 0


async def test_oversized_chunked_body_is_413_while_reading(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1024

    assert relay.session is not None
    async with relay.session.post(
        relay.url("/hooks/user") + "?secret=s3cret",
        data=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 413
    assert await count_rows(relay_backend, "requests") == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_url_validation_get_and_head_answer_200(
    method: str, relay_backend: RelayBackend, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config())
    assert relay.session is not None
    async with relay.session.request(method, relay.url("/hooks/user")) as response:
        assert response.status == 200


async def test_empty_post_answers_200_and_stores_nothing(
    relay_backend: RelayBackend, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config())
    assert (await relay.post("/hooks/user", b"", query=""))[0] == 200
    assert await count_rows(relay_backend, "requests") == 0


async def test_unparseable_body_is_stored_as_unknown_and_still_delivered(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    body = b"\xff\xfe not a mailchimp body {"
    assert (await relay.post("/hooks/user", body, content_type="text/plain"))[0] == 200
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    got = sink.at("/crm")[0]
    assert got.body == body
    assert got.headers["Content-Type"] == "text/plain"
    assert got.headers["X-Relay-Event-Type"] == "unknown"
    detail = await relay.relay.store.get_event(got.headers["X-Relay-Event-Id"])
    assert detail is not None
    assert detail.event.parse_error


async def test_request_is_stored_whole_with_secrets_masked(
    relay_backend: RelayBackend, start_relay: RelayFactory
) -> None:
    relay = await start_relay(relay_backend.config())
    body = sample("mc_doc_profile.txt")
    status, _ = await relay.post(
        "/hooks/admin", body, query="secret=s3cret&x=1", headers={"X-Trace": "abc"}
    )
    assert status == 200
    (event,) = (await relay.relay.store.list_events(EventFilter(), 10)).events
    detail = await relay.relay.store.get_event(event.id)
    assert detail is not None
    req = detail.request
    assert (req.method, req.path, req.body) == ("POST", "/hooks/admin", body)
    assert req.query == "secret=REDACTED&x=1"
    assert ("X-Trace", "abc") in req.headers
    assert req.peer == "127.0.0.1"
    assert req.content_type == "application/x-www-form-urlencoded"
    ev = detail.event
    assert (ev.inbound, ev.source, ev.type) == ("audience-admin", "admin", "profile")
    assert (ev.list_id, ev.email) == ("a6b5da1054", "api@mailchimp.com")
    assert ev.fired_at is not None


async def test_concurrent_requests_share_commits(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    import asyncio

    relay = await start_relay(relay_backend.config(destination("crm", sink.url("/crm"))))
    bodies = [
        sample("mc_doc_subscribe.txt").replace(b"8a25ff1d98", f"{i:010d}".encode())
        for i in range(200)
    ]
    statuses = await asyncio.gather(*(relay.post("/hooks/user", b) for b in bodies))
    assert statuses.count((200, "OK\n")) == 200
    assert await count_rows(relay_backend, "events") == 200
    assert await count_rows(relay_backend, "deliveries") == 200
    metrics = relay.relay.metrics
    commits = metrics.commit_batch._sum.get()
    count = sum(b.get() for b in metrics.commit_batch._buckets)
    assert commits >= 200
    # Group commit: far fewer transactions than operations.
    assert count < commits / 2
    await wait_until(lambda: len(sink.at("/crm")) == 200)


@pytest.mark.capability(SQLITE_FILE)
async def test_stopping_while_a_claim_waits_sends_what_the_claim_took(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    db = sqlite_file(relay_backend)
    sink.on("/crm", 503, 200)
    dests = destination(
        "crm", sink.url("/crm"), retry={"max_attempts": 5, "initial_delay": 0.4, "max_delay": 0.4}
    )
    # A long busy timeout: the retry's claim waits for the lock instead of failing.
    text = relay_backend.config(dests).replace("busy_timeout = 0.3", "busy_timeout = 5")
    relay = await start_relay(text)
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200

    def rows() -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as conn:
            return list(conn.execute("SELECT state, attempts FROM deliveries"))

    await wait_until(lambda: rows() == [("pending", 1)], what="a first failed attempt")
    # Another process holds the write lock when the retry falls due: its claim waits for it.
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        await asyncio.sleep(0.7)
        stopping = asyncio.create_task(relay.relay.dispatcher.stop(grace=3.0))
        await asyncio.sleep(0.2)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await stopping
    # The claim committed once the lock was free; its delivery was sent before the stop ended,
    # not left leased and unsent until the lease ran out.
    assert len(sink.at("/crm")) == 2
    assert rows() == [("delivered", 2)]


async def test_max_age_ends_retries_counted_from_the_delivery_creation(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 503)
    retry = {"max_attempts": 100, "initial_delay": 0.1, "max_delay": 0.1, "max_age": 0.5}
    relay = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm"), retry=retry))
    )
    assert (await relay.post("/hooks/user", sample("mc_doc_subscribe.txt")))[0] == 200

    async def state() -> list[tuple[object, ...]]:
        return await relay_backend.rows(
            "SELECT state, attempts, last_error, dead_reason FROM deliveries"
        )

    async def dead() -> bool:
        return (await state())[0][0] == "dead"

    await wait_until(dead, what="max_age to end the retries")
    ((_, attempts, last_error, reason),) = await state()
    assert isinstance(attempts, int) and 2 <= attempts <= 6
    assert last_error == "HTTP 503: sink says hi"
    assert reason == f"gave up after {attempts} attempts: max_age 0.5s reached"
    assert len(sink.at("/crm")) == attempts
