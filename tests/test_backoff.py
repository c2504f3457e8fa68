"""Retry decisions are pure: a table of results and the state each leads to."""

from __future__ import annotations

import pytest

from relay.config import RetryPolicy
from relay.model import AttemptOutcome, AttemptResult, DeliveryState
from relay.pipeline.backoff import backoff_delay, decide, parse_retry_after

POLICY = RetryPolicy(max_attempts=5, initial_delay=2.0, max_delay=30.0)
NOW = 1_000_000.0


def result(status: int | None, outcome: AttemptOutcome | None = None,
           retry_after: float | None = None) -> AttemptResult:  # fmt: skip
    if outcome is None:
        outcome = AttemptOutcome.SUCCESS if status and status < 300 else AttemptOutcome.SERVER_ERROR
        if status and 400 <= status < 500:
            outcome = AttemptOutcome.CLIENT_ERROR
    return AttemptResult(outcome=outcome, started_at=NOW, duration=0.1, status=status,
                         retry_after=retry_after)  # fmt: skip


@pytest.mark.parametrize(
    ("attempt", "res", "state"),
    [
        (1, result(200), DeliveryState.DELIVERED),
        (1, result(204), DeliveryState.DELIVERED),
        (1, result(500), DeliveryState.PENDING),
        (1, result(301, AttemptOutcome.REDIRECT), DeliveryState.PENDING),
        (1, result(400), DeliveryState.DEAD),
        (1, result(401), DeliveryState.DEAD),
        (1, result(404), DeliveryState.DEAD),
        (1, result(408), DeliveryState.PENDING),
        (1, result(429), DeliveryState.PENDING),
        (1, result(None, AttemptOutcome.TIMEOUT), DeliveryState.PENDING),
        (1, result(None, AttemptOutcome.CONNECTION_ERROR), DeliveryState.PENDING),
        (4, result(503), DeliveryState.PENDING),
        (5, result(503), DeliveryState.DEAD),
        (5, result(200), DeliveryState.DELIVERED),
    ],
)
def test_decision_table(attempt: int, res: AttemptResult, state: DeliveryState) -> None:
    assert decide(POLICY, attempt, res, NOW).state is state


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_stays_between_initial_and_max_and_grows(attempt: int) -> None:
    ceiling = min(POLICY.max_delay, POLICY.initial_delay * 2 ** (attempt - 1))
    delays = [backoff_delay(POLICY, attempt) for _ in range(200)]
    assert all(POLICY.initial_delay <= d <= ceiling for d in delays)
    if ceiling > POLICY.initial_delay:
        assert len(set(delays)) > 1  # jittered


def test_retry_after_is_used_for_429_and_503_and_capped() -> None:
    d = decide(POLICY, 1, result(429, retry_after=7.0), NOW)
    assert d.next_attempt_at == NOW + 7.0
    d = decide(POLICY, 1, result(503, retry_after=10_000.0), NOW)
    assert d.next_attempt_at == NOW + POLICY.max_delay
    d = decide(POLICY, 1, result(500, retry_after=7.0), NOW)
    assert d.next_attempt_at is not None and d.next_attempt_at == NOW + POLICY.initial_delay


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-1", None),
        ("\u00b2", None),  # a Unicode digit: str.isdigit() says yes, float() says no
        ("\u0663", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412450.0  # 2015-10-21 07:27:30 UTC
    assert parse_retry_after(header, now) == expected


def test_max_age_ends_retries_that_would_fall_after_it() -> None:
    aged = RetryPolicy(max_attempts=50, initial_delay=2.0, max_delay=40.0, max_age=60.0)
    created = NOW - 50.0
    # The next attempt would be 2-8 s from NOW: within 60 s of creation, so it is made.
    d = decide(aged, 3, result(500), NOW, created)
    assert d.state is DeliveryState.PENDING
    # Nine seconds later it would fall at 61 s or after: dead, and the reason says why.
    d = decide(aged, 4, result(500), NOW + 9.0, created)
    assert d.state is DeliveryState.DEAD
    assert d.reason == "gave up after 4 attempts: max_age 60s reached"
    # A Retry-After past the age counts too; success is success whatever the age.
    d = decide(aged, 3, result(429, retry_after=30.0), NOW, created)
    assert d.state is DeliveryState.DEAD
    assert decide(aged, 9, result(200), NOW + 1000.0, created).state is DeliveryState.DELIVERED
    # Without max_age, or without a creation time, only attempts count.
    assert decide(POLICY, 1, result(500), NOW + 1e9, created).state is DeliveryState.PENDING
    assert decide(aged, 4, result(500), NOW + 9.0).state is DeliveryState.PENDING
