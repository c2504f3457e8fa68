"""Decide what follows a delivery attempt: delivered, retried later, or dead.

    decide(policy, attempt=3, result=result, now=time.time())  # -> Decision(PENDING, at)

The backoff math is tenacity's: ``wait_random_exponential`` ("full jitter" with a floor), so
attempt n waits a uniform time in [initial_delay, min(max_delay, initial_delay * 2**(n-1))].
"""

from __future__ import annotations

import email.utils
import math
from typing import TYPE_CHECKING

import tenacity

from relay.config import RetryPolicy
from relay.model import AttemptOutcome, AttemptResult, Decision, DeliveryState

if TYPE_CHECKING:
    from datetime import datetime

# 408 and 429 say "try again later"; every other 4xx says the request itself is refused.
_RETRYABLE_4XX = frozenset({408, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class _AttemptState(tenacity.RetryCallState):
    """A RetryCallState carrying only the attempt number, which is all the wait strategies read."""

    def __init__(self, attempt_number: int) -> None:
        super().__init__(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        self.attempt_number = attempt_number


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    wait = tenacity.wait_random_exponential(
        multiplier=policy.initial_delay, max=policy.max_delay, min=policy.initial_delay
    )
    return float(wait(_AttemptState(attempt)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone admits "²", which float() refuses
        return float(value)
    try:
        when: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def outcome_for_status(status: int) -> AttemptOutcome:
    if 200 <= status < 300:
        return AttemptOutcome.SUCCESS
    if 300 <= status < 400:
        return AttemptOutcome.REDIRECT
    if 400 <= status < 500:
        return AttemptOutcome.CLIENT_ERROR
    return AttemptOutcome.SERVER_ERROR


def decide(
    policy: RetryPolicy,
    attempt: int,
    result: AttemptResult,
    now: float,
    created_at: float | None = None,
) -> Decision:
    """The state a delivery moves to after ``result`` of attempt number ``attempt``.

    ``created_at`` is when the delivery was made; with ``max_age`` set, a retry that would fall
    after ``created_at + max_age`` is not made.
    """
    if result.outcome is AttemptOutcome.SUCCESS:
        return Decision(DeliveryState.DELIVERED)
    status = result.status
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return Decision(DeliveryState.DEAD, reason=f"permanent failure: HTTP {status}")
    if attempt >= policy.max_attempts:
        return Decision(DeliveryState.DEAD, reason=f"gave up after {attempt} attempts")
    delay = backoff_delay(policy, attempt)
    if status in _RETRY_AFTER_STATUSES and result.retry_after is not None:
        delay = min(result.retry_after, policy.max_delay)
    max_age = policy.max_age
    if max_age is not None and created_at is not None and now + delay > created_at + max_age:
        return Decision(
            DeliveryState.DEAD,
            reason=f"gave up after {attempt} attempts: max_age {max_age:g}s reached",
        )
    return Decision(DeliveryState.PENDING, next_attempt_at=now + delay)
