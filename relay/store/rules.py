"""Domain rules every backend applies the same way (pure): kept here so no backend invents its own.

    initial_state("crm", paused=frozenset({"crm"}))   # -> DeliveryState.PAUSED
"""

from __future__ import annotations

from collections.abc import Collection

from relay.model import AttemptResult, Decision, DeliveryState

# Why a delivery died without an attempt: its event was pruned after the delivery was made.
ORPHANED = "its event is no longer stored"
# Unfinished states: a delivery in one keeps its event from being pruned.
UNFINISHED = (DeliveryState.PENDING, DeliveryState.DELIVERING, DeliveryState.PAUSED)


def initial_state(destination: str, paused: Collection[str]) -> DeliveryState:
    """A new delivery waits as paused while its destination is paused, else it is due now."""
    return DeliveryState.PAUSED if destination in paused else DeliveryState.PENDING


def recorded_error(result: AttemptResult, decision: Decision) -> str | None:
    """What a delivery keeps as its last error after an attempt: None once delivered."""
    if decision.state is DeliveryState.DELIVERED:
        return None
    if decision.reason:
        return decision.reason
    if result.error:
        return result.error
    return f"HTTP {result.status}" if result.status is not None else None


def is_duplicate(first_seen: float | None, now: float, window: float) -> bool:
    """Whether an event whose dedup key was first stored at ``first_seen`` repeats it now."""
    return first_seen is not None and window > 0 and now - first_seen <= window


def expired(created_at: float | None, max_age: float | None, now: float) -> bool:
    """Whether a delivery is past its ``max_age``: no attempt is made for it any more."""
    return max_age is not None and created_at is not None and now >= created_at + max_age


def expired_reason(max_age: float) -> str:
    """Why a delivery held back (by a rate limit or an open circuit) died without an attempt."""
    return f"max_age {max_age:g}s reached before it could be sent"


def held_by_circuit(
    decision: Decision,
    down: bool,
    circuit_open: bool,
    now: float,
    created_at: float | None,
    max_age: float | None,
) -> tuple[Decision, bool]:
    """The decision to record for an attempt that ended with its destination's circuit open
    (after this attempt's own effect on it), and whether the attempt counts against
    ``max_attempts``.

    An attempt that failed with a down-signal while the destination is known to be down (the
    probe, one in flight when the circuit opened, the one that opened it) is not charged: its
    delivery waits for the circuit to close instead of dying of attempts. ``max_age`` still
    applies. Anything else is recorded as decided, and charged.

    >>> dead = Decision(DeliveryState.DEAD, reason="gave up after 3 attempts")
    >>> held_by_circuit(dead, down=True, circuit_open=True, now=50.0, created_at=0.0,
    ...                 max_age=None)
    (Decision(state=<DeliveryState.PENDING: 'pending'>, next_attempt_at=50.0, reason=None), False)
    >>> held_by_circuit(dead, down=True, circuit_open=False, now=50.0, created_at=0.0,
    ...                 max_age=None)[1]
    True
    """
    if not (down and circuit_open) or decision.state is DeliveryState.DELIVERED:
        return decision, True
    if max_age is not None and expired(created_at, max_age, now):
        reason = f"max_age {max_age:g}s reached while the destination was down"
        return Decision(DeliveryState.DEAD, reason=reason), False
    if decision.state is DeliveryState.PENDING:
        return decision, False
    # Given up on attempts (or on an age it has not reached yet): due again, held back by the
    # circuit until it closes.
    return Decision(DeliveryState.PENDING, next_attempt_at=now), False
