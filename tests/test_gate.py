"""Rate limits and circuit breakers are pure state machines: tables of cases, and a property
of the token bucket over any window of time."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import BreakerPolicy, ConfigError, RateLimit, parse_config
from relay.model import AttemptOutcome, AttemptResult, Decision, DeliveryState
from relay.store.gate import (
    Admission,
    CircuitEvent,
    Gate,
    GateState,
    admit,
    attempted,
    claimed,
    is_down,
    reset,
    tokens_now,
)
from relay.store.rules import expired, held_by_circuit

NOW = 1_000_000.0
RATE = RateLimit(rate=50.0, burst=5.0)
POLICY = BreakerPolicy(failures=3, probe_interval=1.0, max_probe_interval=4.0)
LIMITED = Gate(rate_limit=RATE)
BREAKER = Gate(breaker=POLICY)
BOTH = Gate(rate_limit=RATE, breaker=POLICY)
OPEN = GateState(failures=3, opened_at=NOW - 5, reason="down", probe_interval=1.0, probe_at=NOW)


def result(status: int | None = None, outcome: AttemptOutcome | None = None) -> AttemptResult:
    if outcome is None:
        outcome = AttemptOutcome.SUCCESS if status and status < 300 else AttemptOutcome.SERVER_ERROR
        if status and 400 <= status < 500:
            outcome = AttemptOutcome.CLIENT_ERROR
    error = None if status is not None else "cannot connect: Connection refused"
    return AttemptResult(outcome=outcome, started_at=NOW, duration=0.1, status=status, error=error)


REFUSED = result(outcome=AttemptOutcome.CONNECTION_ERROR)


@pytest.mark.parametrize(
    ("res", "down"),
    [
        (result(outcome=AttemptOutcome.CONNECTION_ERROR), True),
        (result(outcome=AttemptOutcome.TIMEOUT), True),
        (result(502), True),
        (result(503), True),
        (result(504), True),
        (result(500), False),  # the service answered: its bug, not an outage
        (result(501), False),
        (result(400), False),
        (result(404), False),
        (result(429), False),  # up, and asking to slow down
        (result(301, AttemptOutcome.REDIRECT), False),
        (result(200), False),
    ],
)
def test_down_signals_are_connection_errors_timeouts_and_gateway_answers(
    res: AttemptResult, down: bool
) -> None:
    assert is_down(res) is down


# -- the token bucket ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "want", "grant", "wait"),
    [
        (GateState(), 10, 5, 0.1),  # a full bucket gives a burst, then waits for another
        (GateState(), 3, 3, None),
        (GateState(tokens=0.5, tokens_at=NOW), 10, 0, 0.09),
        (GateState(tokens=0.5, tokens_at=NOW), 1, 0, 0.01),
        (GateState(tokens=0.0, tokens_at=NOW - 0.05), 10, 2, 0.09),  # 2.5 tokens by now
        (GateState(tokens=0.0, tokens_at=NOW - 60), 10, 5, 0.1),  # refilled to burst, no more
        (GateState(tokens=1.0, tokens_at=NOW + 5), 10, 1, 0.1),  # the clock stepped back
    ],
)
def test_a_rate_limited_claim_takes_the_tokens_there_are_and_says_when_more_come(
    state: GateState, want: int, grant: int, wait: float | None
) -> None:
    admission = admit(LIMITED, state, NOW, want, paused=False)
    assert admission.grant == grant
    taken = list(range(grant))
    after, waited = claimed(LIMITED, state, NOW, admission, taken, NOW + 10)
    if wait is None:
        assert waited is None
    else:
        assert waited == pytest.approx(wait)
    assert after.tokens == pytest.approx(tokens_now(RATE, state, NOW) - grant)
    assert after.tokens_at == NOW


def test_a_claim_that_finds_fewer_due_than_it_may_take_leaves_their_tokens_and_does_not_wait() -> (
    None
):
    admission = admit(LIMITED, GateState(), NOW, 10, paused=False)
    after, wait = claimed(LIMITED, GateState(), NOW, admission, [1, 2], NOW + 10)
    assert (after.tokens, wait) == (3.0, None)


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=200),
    wants=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=200),
    rate=st.sampled_from([RateLimit(50.0, 5.0), RateLimit(2.0, 1.0), RateLimit(1000.0, 100.0)]),
)
def test_no_window_of_time_gets_more_than_burst_plus_rate_times_its_length(
    gaps: list[float], wants: list[int], rate: RateLimit
) -> None:
    gate, state, now = Gate(rate_limit=rate), GateState(), NOW
    grants: list[tuple[float, int]] = []
    for gap, want in zip(gaps, wants, strict=False):
        now += gap
        admission = admit(gate, state, now, want, paused=False)
        state, _ = claimed(gate, state, now, admission, list(range(admission.grant)), now + 10)
        grants.append((now, admission.grant))
    for i, (start, _) in enumerate(grants):
        for end, _ in grants[i:]:
            sent = sum(n for t, n in grants if start <= t <= end)
            assert sent <= rate.burst + rate.rate * (end - start) + 1e-6


# -- the circuit --------------------------------------------------------------------------------


def test_consecutive_down_signals_open_the_circuit_at_the_threshold() -> None:
    state = GateState()
    for n in (1, 2):
        state, change = attempted(POLICY, state, NOW, n, REFUSED)
        assert (state.failures, state.open, change) == (n, False, None)
    state, change = attempted(POLICY, state, NOW, 3, REFUSED)
    assert state.open and state.opened_at == NOW
    assert state.probe_at == NOW + POLICY.probe_interval
    assert change is not None and change.event is CircuitEvent.OPENED
    assert change.reason == "3 consecutive failures, the last: cannot connect: Connection refused"


@pytest.mark.parametrize("answer", [result(400), result(500), result(200), result(429)])
def test_any_answer_that_is_not_a_down_signal_starts_the_count_again(
    answer: AttemptResult,
) -> None:
    state = GateState(failures=2)
    state, change = attempted(POLICY, state, NOW, 1, answer)
    assert (state.failures, state.open, change) == (0, False, None)
    state, _ = attempted(POLICY, state, NOW, 2, REFUSED)
    assert not state.open


def test_open_circuit_lets_one_probe_through_once_its_time_comes() -> None:
    assert admit(BREAKER, OPEN, NOW - 0.5, 10, paused=False) == Admission(0, wait=0.5)
    admission = admit(BREAKER, OPEN, NOW, 10, paused=False)
    assert admission == Admission(1, probe=True)
    state, wait = claimed(BREAKER, OPEN, NOW, admission, [42], NOW + 15)
    assert (state.probe_id, state.probe_until, wait) == (42, NOW + 15, 15)
    # One probe at a time, until its answer or its lease's end (its process died).
    assert admit(BREAKER, state, NOW + 1, 10, paused=False) == Admission(0, wait=14)
    assert admit(BREAKER, state, NOW + 16, 10, paused=False).probe


def test_a_probe_with_nothing_due_leaves_the_next_claim_free_to_probe() -> None:
    admission = admit(BREAKER, OPEN, NOW, 10, paused=False)
    state, wait = claimed(BREAKER, OPEN, NOW, admission, [], NOW + 15)
    assert (state, wait) == (OPEN, None)


def test_a_failed_probe_doubles_the_interval_up_to_its_cap() -> None:
    state = dataclasses.replace(OPEN, probe_id=7, probe_until=NOW + 15)
    intervals = []
    for n in range(4):
        state, change = attempted(POLICY, state, NOW + n, 7, REFUSED)
        assert change is None and state.open and state.probe_id is None
        intervals.append(state.probe_interval)
        assert state.probe_at == NOW + n + state.probe_interval
        state = dataclasses.replace(state, probe_id=7)
    assert intervals == [2.0, 4.0, 4.0, 4.0]


def test_a_late_failure_of_another_attempt_does_not_move_the_probe_schedule() -> None:
    probing = dataclasses.replace(OPEN, probe_id=7, probe_until=NOW + 15)
    state, change = attempted(POLICY, probing, NOW, 8, result(504))
    assert change is None
    assert state == dataclasses.replace(probing, failures=4)


@pytest.mark.parametrize(
    ("delivery", "answer", "reason"),
    [
        (7, result(200), "the probe got HTTP 200"),
        (7, result(404), "the probe got HTTP 404"),
        (8, result(200), "an attempt got HTTP 200"),
    ],
)
def test_an_answer_closes_an_open_circuit(delivery: int, answer: AttemptResult, reason: str) -> None:
    probing = dataclasses.replace(OPEN, probe_id=7, probe_until=NOW + 15, tokens=2.0)
    state, change = attempted(POLICY, probing, NOW, delivery, answer)
    assert change is not None and (change.event, change.reason) == (CircuitEvent.CLOSED, reason)
    assert state == GateState(tokens=2.0)


def test_reset_closes_the_circuit_and_keeps_the_bucket() -> None:
    assert reset(dataclasses.replace(OPEN, tokens=1.5, tokens_at=NOW)) == GateState(
        tokens=1.5, tokens_at=NOW
    )


@pytest.mark.parametrize("gate", [LIMITED, BREAKER, BOTH])
@pytest.mark.parametrize("state", [GateState(), OPEN])
def test_pause_wins_a_paused_destination_gets_nothing_not_even_a_probe(
    gate: Gate, state: GateState
) -> None:
    assert admit(gate, state, NOW + 100, 10, paused=True) == Admission(0)


def test_an_open_circuit_with_a_rate_limit_probes_only_with_a_token() -> None:
    empty = dataclasses.replace(OPEN, tokens=0.0, tokens_at=NOW)
    assert admit(BOTH, empty, NOW, 10, paused=False) == Admission(0, wait=pytest.approx(0.02))
    assert admit(BOTH, empty, NOW + 0.02, 10, paused=False).probe


def test_a_rate_limit_alone_ignores_a_circuit_left_open_by_a_removed_breaker() -> None:
    assert admit(LIMITED, OPEN, NOW, 3, paused=False) == Admission(3)


# -- what an attempt that failed while the circuit is open costs ----------------------------------

DEAD = Decision(DeliveryState.DEAD, reason="gave up after 3 attempts")
RETRY = Decision(DeliveryState.PENDING, next_attempt_at=NOW + 5)
DELIVERED = Decision(DeliveryState.DELIVERED)


@pytest.mark.parametrize(
    ("decision", "down", "is_open", "max_age", "recorded", "charged"),
    [
        # Closed circuit, or not a down-signal: as decided, charged.
        (DEAD, True, False, None, DEAD, True),
        (DEAD, False, True, None, DEAD, True),
        (DELIVERED, False, True, None, DELIVERED, True),
        # Down while open: held, never dead of attempts, not charged.
        (DEAD, True, True, None, Decision(DeliveryState.PENDING, next_attempt_at=NOW), False),
        (RETRY, True, True, None, RETRY, False),
        (DEAD, True, True, 3600.0, Decision(DeliveryState.PENDING, next_attempt_at=NOW), False),
        # ...but max_age still applies (the delivery was made 7200 s ago).
        (
            DEAD,
            True,
            True,
            60.0,
            Decision(DeliveryState.DEAD, reason="max_age 60s reached while the destination was down"),
            False,
        ),
    ],
)
def test_an_attempt_that_fails_while_the_destination_is_known_down_is_not_charged(
    decision: Decision,
    down: bool,
    is_open: bool,
    max_age: float | None,
    recorded: Decision,
    charged: bool,
) -> None:
    created = NOW - 7200 if max_age == 60.0 else NOW - 10
    assert held_by_circuit(decision, down, is_open, NOW, created, max_age) == (recorded, charged)


@pytest.mark.parametrize(
    ("created", "max_age", "now", "gone"),
    [(0.0, None, 1e9, False), (0.0, 60.0, 59.9, False), (0.0, 60.0, 60.0, True), (None, 1.0, 9.0, False)],
)
def test_expired_is_past_max_age(
    created: float | None, max_age: float | None, now: float, gone: bool
) -> None:
    assert expired(created, max_age, now) is gone


# -- configuration ------------------------------------------------------------------------------

BASE = '[[inbound]]\nname = "a"\npath = "/a"\n[[destination]]\nname = "crm"\nurl = "http://x"\n'


@pytest.mark.parametrize(
    ("extra", "limit", "breaker"),
    [
        ("", None, None),
        ("rate = 50\n", RateLimit(50.0, 5.0), None),
        ("rate = 0.5\n", RateLimit(0.5, 1.0), None),
        ("rate = 200\nburst = 7\n", RateLimit(200.0, 7.0), None),
        ("[destination.breaker]\n", None, BreakerPolicy()),
        (
            "rate = 5\n[destination.breaker]\nfailures = 4\nprobe_interval = 2\n"
            "max_probe_interval = 30\n",
            RateLimit(5.0, 1.0),
            BreakerPolicy(4, 2.0, 30.0),
        ),
    ],
)
def test_rate_burst_and_breaker_keys(
    extra: str, limit: RateLimit | None, breaker: BreakerPolicy | None
) -> None:
    (crm,) = parse_config(BASE + extra, {}).destinations
    assert (crm.rate_limit, crm.breaker) == (limit, breaker)
    assert (Gate.of(crm) is None) is (limit is None and breaker is None)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("rate = 0\n", "destination[0].rate: must be greater than 0"),
        ('rate = "fast"\n', "destination[0].rate: must be a number"),
        ("burst = 3\n", "destination[0].burst: needs rate (it is the rate limit's burst)"),
        ("rate = 5\nburst = 0\n", "destination[0].burst: must be greater than 0"),
        ("breaker = 3\n", "destination[0].breaker: must be a table ([destination.breaker])"),
        ("[destination.breaker]\nfailures = 0\n", "destination[0].breaker.failures: must be greater than 0"),
        ("[destination.breaker]\nfailure = 3\n", "destination[0].breaker.failure: unknown key (did you mean 'failures'?)"),
        (
            "[destination.breaker]\nprobe_interval = 10\nmax_probe_interval = 5\n",
            "destination[0].breaker.max_probe_interval: must be at least probe_interval",
        ),
    ],
)  # fmt: skip
def test_bad_rate_and_breaker_keys_are_named(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra, {})
    assert caught.value.problems == [f"{problem} (destination crm)"]
