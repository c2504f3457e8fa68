"""How destinations fared lately, as every process's attempts in the store say (the console's
overview reads it): attempts and 2xx answers per destination since a time, the latest failed
attempt with what it got, and an honest window when there were more attempts than it reads."""

from __future__ import annotations

import dataclasses
import time

from relay.model import AttemptOutcome
from relay.store import DestinationHealth, FailedAttempt, Store
from tests.store_contract.kit import DELIVERED, LEASE, attempt, ingest_one, retry_at


async def attempted(
    store: Store,
    destination: str,
    started_at: float,
    status: int | None = 200,
    *,
    error: str | None = None,
    head: bytes = b"",
) -> int:
    """One attempt, started at ``started_at``, of a new delivery to ``destination``; its id."""
    await ingest_one(store, destination)
    (claimed,) = await store.claim(destination, 10, LEASE)
    result = dataclasses.replace(
        attempt(status, error=error, response_head=head), started_at=started_at
    )
    ok = result.outcome is AttemptOutcome.SUCCESS
    assert await store.complete(claimed, result, DELIVERED if ok else retry_at(time.time() + 3600))
    return claimed.id


async def test_attempts_since_a_time_are_counted_per_destination_with_the_latest_failure(
    store: Store,
) -> None:
    now = time.time()
    await attempted(store, "crm", now - 7200, 500)  # before the window: not counted
    await attempted(store, "crm", now - 50)
    await attempted(store, "crm", now - 45, 500, head=b"HTTP/1.1 500\r\n\r\nolder")
    busy = await attempted(store, "crm", now - 40, 503, head=b"HTTP/1.1 503\r\nbusy")
    await attempted(store, "crm", now - 30)
    refused = await attempted(store, "hr", now - 20, None, error="cannot connect: refused")
    await attempted(store, "analytics", now - 10)

    report = await store.destination_health(now - 3600)

    assert report.complete and report.since == now - 3600
    assert dict(report.destinations) == {
        "crm": DestinationHealth(
            "crm", 4, 2, FailedAttempt(busy, now - 40, 503, "HTTP 503: HTTP/1.1 503 busy")
        ),
        "hr": DestinationHealth(
            "hr", 1, 0, FailedAttempt(refused, now - 20, None, "cannot connect: refused")
        ),
        "analytics": DestinationHealth("analytics", 1, 1, None),
    }
    assert report.destinations["crm"].success_percent == 50.0


async def test_more_attempts_than_the_limit_count_the_newest_and_say_from_when(
    store: Store,
) -> None:
    now = time.time()
    for n in range(5):
        await attempted(store, "crm", now - 50 + 10 * n, 200 if n % 2 else 500)

    report = await store.destination_health(now - 3600, limit=3)

    assert not report.complete
    assert report.since == now - 30  # the oldest of the three newest
    crm = report.destinations["crm"]
    assert (crm.attempts, crm.succeeded) == (3, 1)
    assert crm.last_failure is not None and crm.last_failure.started_at == now - 10


async def test_no_attempts_make_an_empty_complete_report(store: Store) -> None:
    await ingest_one(store, "crm")  # a delivery, not yet attempted
    report = await store.destination_health(time.time() - 60)
    assert report.complete and dict(report.destinations) == {}
