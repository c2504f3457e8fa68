"""Reading how a destination is paced: ``rate`` and ``burst``, ``[destination.breaker]``, and
``ordering``.

    rate = 50                      # at most 50 attempts a second, all processes together
    ordering = "subscriber"        # one subscriber's deliveries one at a time, in receive order
    [destination.breaker]
    failures = 20                  # consecutive down-signals before the circuit opens

Kept apart from the reader of the other destination keys, which are about what to send where.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from relay.config import checks
from relay.config.schema import BreakerPolicy, RateLimit
from relay.config.walker import TreeWalker

PACING_KEYS = frozenset({"rate", "burst", "ordering"})  # besides the breaker table
BREAKER_KEYS = frozenset({"failures", "probe_interval", "max_probe_interval"})
ORDERINGS = checks.one_of("none", "subscriber")


class Pacing(TypedDict):
    rate_limit: RateLimit | None
    breaker: BreakerPolicy | None
    ordering: str


def pacing(walker: TreeWalker, raw: Mapping[str, Any], p: str) -> Pacing:
    """The DestinationConfig fields read here. ``ordering``: "subscriber" sends one
    subscriber's deliveries one at a time, in the order relay received their events
    (relay.store.ordering); "none" (the default) sends them as they fall due."""
    return Pacing(
        rate_limit=rate_limit(walker, raw, p),
        breaker=breaker(walker, raw, p),
        ordering=walker.get(raw, p, "ordering", str, "none", ORDERINGS),
    )


def rate_limit(walker: TreeWalker, raw: Mapping[str, Any], p: str) -> RateLimit | None:
    """``rate`` (attempts a second) and ``burst``; None when there is no ``rate``."""
    if "rate" not in raw:
        if "burst" in raw:
            walker.fail(f"{p}burst", "needs rate (it is the rate limit's burst)")
        return None
    rate = walker.get(raw, p, "rate", float, 0.0, checks.positive)
    if rate <= 0:
        return None
    burst = walker.get(raw, p, "burst", int, int(RateLimit.default_burst(rate)), checks.positive)
    return RateLimit(rate=rate, burst=float(burst))


def breaker(walker: TreeWalker, raw: Mapping[str, Any], p: str) -> BreakerPolicy | None:
    """``[destination.breaker]``; None when the table is absent (no circuit breaker)."""
    if "breaker" not in raw:
        return None
    table = raw["breaker"]
    if not isinstance(table, dict):
        walker.fail(f"{p}breaker", "must be a table ([destination.breaker])")
        return None
    bp = f"{p}breaker."
    walker.unknown(table, bp, BREAKER_KEYS)
    default = BreakerPolicy()
    policy = BreakerPolicy(
        failures=walker.get(table, bp, "failures", int, default.failures, checks.positive),
        probe_interval=walker.get(
            table, bp, "probe_interval", float, default.probe_interval, checks.positive
        ),
        max_probe_interval=walker.get(
            table, bp, "max_probe_interval", float, default.max_probe_interval, checks.positive
        ),
    )
    if policy.max_probe_interval < policy.probe_interval:
        walker.fail(f"{bp}max_probe_interval", "must be at least probe_interval")
    return policy
