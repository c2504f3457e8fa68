"""A destination's gate: its rate limit (a token bucket) and its circuit breaker, as pure state.

Both backends keep one ``GateState`` per gated destination (table ``destination_gates``), lock
its row in the transactions that claim and complete that destination's deliveries, and move it
only with the functions here; so every process sharing a store shares one bucket and one
circuit, and the rules are the same on both backends. Times are the store's clock.

    admit(gate, state, now, want=10, paused=False)   # -> Admission(grant=5)  (5 tokens left)

The circuit: closed, it counts consecutive attempts that say the destination is down
(``is_down``); at ``failures`` it opens. Open, claims hand out nothing but one probe at a time
(the oldest due delivery), ``probe_interval`` after opening, then at doubling intervals up to
``max_probe_interval``. Any attempt that gets an answer other than a down-signal (a 2xx, a 4xx,
a 500) closes it again; so does an operator (``reset``). Pause wins over both: a paused
destination is given nothing, not even a probe.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.config import BreakerPolicy, DestinationConfig, RateLimit
from relay.model import AttemptOutcome, AttemptResult, ClaimedDelivery, Decision
from relay.store.rules import held_by_circuit

# Answers that say "the service is not there" rather than "the service refuses this request".
DOWN_STATUSES = frozenset({502, 503, 504})
_DOWN_OUTCOMES = frozenset({AttemptOutcome.CONNECTION_ERROR, AttemptOutcome.TIMEOUT})


@dataclass(frozen=True, slots=True)
class Gate:
    """What a gated claim and complete need from a destination's configuration."""

    rate_limit: RateLimit | None = None
    breaker: BreakerPolicy | None = None
    max_age: float | None = None

    @classmethod
    def of(cls, destination: DestinationConfig) -> Gate | None:
        """The destination's gate; None when it has neither a rate limit nor a breaker."""
        if destination.rate_limit is None and destination.breaker is None:
            return None
        return cls(destination.rate_limit, destination.breaker, destination.retry.max_age)


@dataclass(frozen=True, slots=True)
class GateState:
    """One destination's shared state, as stored (a missing row is the default: a full bucket
    and a closed circuit)."""

    tokens: float | None = None  # None: a full bucket
    tokens_at: float | None = None
    failures: int = 0  # consecutive down-signals
    opened_at: float | None = None  # None: the circuit is closed
    reason: str | None = None  # why it opened
    probe_interval: float | None = None  # the interval before the next probe, while open
    probe_at: float | None = None  # no probe before this
    probe_id: int | None = None  # the delivery being sent as the probe
    probe_until: float | None = None  # that probe's lease

    @property
    def open(self) -> bool:
        return self.opened_at is not None


class CircuitEvent(enum.StrEnum):
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """A circuit that opened or closed in a transaction, for its one log line."""

    event: CircuitEvent
    reason: str


@dataclass(frozen=True, slots=True)
class Admission:
    """How many deliveries a claim may take now, and whether the one it takes is a probe."""

    grant: int
    probe: bool = False
    # When the gate itself holds work back (no tokens, circuit open): seconds until it may let
    # some through; None when it does not.
    wait: float | None = None


@dataclass(frozen=True, slots=True)
class GatedClaim:
    deliveries: list[ClaimedDelivery]
    # Seconds until the gate lets more through, when it is what kept the claim short; None
    # when the claim took all it was let take (or all that was due).
    wait: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    held: bool  # the attempt still held its lease (see DeliveryQueue.complete)
    decision: Decision  # what was recorded: an open circuit may hold a delivery back
    charged: bool = True  # False: the attempt did not count against max_attempts
    change: CircuitChange | None = None


# An attempt as a gated complete records it: the delivery, its result, what the worker decided,
# and its destination's gate.
Attempted = tuple[ClaimedDelivery, AttemptResult, Decision, Gate | None]


def is_down(result: AttemptResult) -> bool:
    """Whether an attempt says the destination is down: no connection, no answer in time, or a
    gateway's 502, 503 or 504. Any other answer, a 4xx or a 500 included, says it is up."""
    return result.outcome in _DOWN_OUTCOMES or result.status in DOWN_STATUSES


def describe(result: AttemptResult) -> str:
    if result.error:
        return result.error
    return f"HTTP {result.status}" if result.status is not None else result.outcome.value


def tokens_now(limit: RateLimit, state: GateState, now: float) -> float:
    """The bucket refilled up to ``now`` (a clock that stepped back refills nothing)."""
    if state.tokens is None or state.tokens_at is None:
        return limit.burst
    return min(limit.burst, state.tokens + max(0.0, now - state.tokens_at) * limit.rate)


def admit(gate: Gate, state: GateState, now: float, want: int, paused: bool) -> Admission:
    """How many of ``want`` deliveries a claim may take now."""
    if paused or want <= 0:
        # The resume signals the workers; nothing to wait for until then.
        return Admission(0)
    tokens = tokens_now(gate.rate_limit, state, now) if gate.rate_limit else math.inf
    if gate.breaker is not None and state.open:
        if state.probe_id is not None and state.probe_until is not None and state.probe_until > now:
            return Admission(0, wait=state.probe_until - now)
        if state.probe_at is not None and state.probe_at > now:
            return Admission(0, wait=state.probe_at - now)
        if tokens < 1:
            return Admission(0, wait=_refill_time(gate.rate_limit, tokens, 1.0))
        return Admission(1, probe=True)
    grant = want if math.isinf(tokens) else min(want, int(tokens))
    if grant >= want or gate.rate_limit is None:
        return Admission(grant)
    # Wait until the bucket holds what this claim wanted (or a burst), not one token: a claim
    # per token would be a transaction per delivery.
    target = min(float(want), gate.rate_limit.burst)
    return Admission(grant, wait=_refill_time(gate.rate_limit, tokens - grant, target))


def _refill_time(limit: RateLimit | None, tokens: float, target: float) -> float:
    assert limit is not None
    return max(0.001, (target - tokens) / limit.rate)


def claimed(
    gate: Gate,
    state: GateState,
    now: float,
    admission: Admission,
    taken: list[int],
    lease_until: float,
) -> tuple[GateState, float | None]:
    """The state after a claim took the deliveries ``taken`` (ids, oldest due first) under
    ``admission``, and how long the worker should wait for the gate (None: not the gate's
    doing, as when fewer were due than it let through)."""
    new = state
    if gate.rate_limit is not None:
        left = tokens_now(gate.rate_limit, state, now) - len(taken)
        new = dataclasses.replace(new, tokens=left, tokens_at=now)
    if admission.grant == 0:
        return new, admission.wait
    if len(taken) < admission.grant:
        return new, None
    if admission.probe:
        # Nothing more goes until the probe has its answer (or its lease runs out).
        return dataclasses.replace(new, probe_id=taken[0], probe_until=lease_until), (
            lease_until - now
        )
    return new, admission.wait


def attempted(
    policy: BreakerPolicy,
    state: GateState,
    now: float,
    delivery_id: int,
    result: AttemptResult,
) -> tuple[GateState, CircuitChange | None]:
    """The circuit after an attempt of delivery ``delivery_id`` ended with ``result``."""
    if not is_down(result):
        if not state.open:
            return (state if state.failures == 0 else _closed(state)), None
        probe = "the probe" if state.probe_id == delivery_id else "an attempt"
        return _closed(state), CircuitChange(CircuitEvent.CLOSED, f"{probe} got {describe(result)}")
    failures = state.failures + 1
    if state.open:
        if state.probe_id != delivery_id:
            return dataclasses.replace(state, failures=failures), None
        interval = min(
            2 * (state.probe_interval or policy.probe_interval), policy.max_probe_interval
        )
        return dataclasses.replace(
            state,
            failures=failures,
            probe_interval=interval,
            probe_at=now + interval,
            probe_id=None,
            probe_until=None,
        ), None
    if failures < policy.failures:
        return dataclasses.replace(state, failures=failures), None
    reason = f"{failures} consecutive failures, the last: {describe(result)}"
    opened = dataclasses.replace(
        state,
        failures=failures,
        opened_at=now,
        reason=reason,
        probe_interval=policy.probe_interval,
        probe_at=now + policy.probe_interval,
        probe_id=None,
        probe_until=None,
    )
    return opened, CircuitChange(CircuitEvent.OPENED, reason)


def settle(
    states: dict[str, GateState],
    entries: Sequence[Attempted],
    now: float,
) -> dict[int, Completion]:
    """Move the circuits in ``states`` (by destination, updated in place) by the attempts of the
    entries whose gate has a breaker, in order; for each such entry (by index) what to record:
    its decision (an open circuit may hold a delivery back, see ``held_by_circuit``), whether
    it is charged, and any change of the circuit. ``held`` is the caller's to set."""
    out: dict[int, Completion] = {}
    for i, (delivery, result, decision, gate) in enumerate(entries):
        if gate is None or gate.breaker is None:
            continue
        name = delivery.destination
        state, change = attempted(
            gate.breaker, states.get(name, GateState()), now, delivery.id, result
        )
        states[name] = state
        final, charged = held_by_circuit(
            decision, is_down(result), state.open, now, delivery.created_at, gate.max_age
        )
        out[i] = Completion(held=False, decision=final, charged=charged, change=change)
    return out


def breaker_destinations(entries: Sequence[Attempted]) -> list[str]:
    """The destinations whose circuits ``settle`` moves, in the order to lock their rows."""
    return sorted(
        {d.destination for d, _, _, g in entries if g is not None and g.breaker is not None}
    )


def reset(state: GateState) -> GateState:
    """Closed by hand: the count starts again; the bucket is left as it is."""
    return _closed(state)


def _closed(state: GateState) -> GateState:
    return dataclasses.replace(
        state,
        failures=0,
        opened_at=None,
        reason=None,
        probe_interval=None,
        probe_at=None,
        probe_id=None,
        probe_until=None,
    )


# The columns of destination_gates that make a GateState, in its fields' order.
STATE_COLUMNS = (
    "tokens, tokens_at, failures, opened_at, open_reason, probe_interval, probe_at, probe_id,"
    " probe_until"
)


def state_of(row: Sequence[Any] | None) -> GateState:
    """A GateState from a row of ``STATE_COLUMNS`` (a missing row: the default state)."""
    if row is None:
        return GateState()
    return GateState(*row[:9])


def row_of(state: GateState) -> tuple[Any, ...]:
    """A GateState as the values of ``STATE_COLUMNS``."""
    return dataclasses.astuple(state)


# How many claims in one transaction may find their deliveries past max_age (and mark them
# dead) before the worker is told to claim again at once: a backlog that aged out during an
# outage is cleared in bounded transactions.
EXPIRY_ROUNDS = 5
