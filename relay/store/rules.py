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
