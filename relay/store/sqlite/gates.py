"""SQLite side of rate limits and circuit breakers: a gate's row, read and written inside the
writer's transaction (which holds the database's write lock, so no other process can move the
bucket or the circuit meanwhile). The rules are ``relay.store.gate``'s."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence

from relay.model import ClaimedDelivery, DeliveryState
from relay.store.gate import (
    EXPIRY_ROUNDS,
    STATE_COLUMNS,
    Attempted,
    Completion,
    Gate,
    GatedClaim,
    GateState,
    admit,
    breaker_destinations,
    claimed,
    row_of,
    settle,
    state_of,
)
from relay.store.ordering import Releases
from relay.store.rules import expired, expired_reason
from relay.store.sqlite import ordering

_READ = f"SELECT {STATE_COLUMNS} FROM destination_gates WHERE name = ?"
_WRITE = (
    f"INSERT OR REPLACE INTO destination_gates (name, {STATE_COLUMNS}, updated_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_PAUSED = "SELECT 1 FROM destination_state WHERE name = ? AND paused = 1"
# Claimed, but past max_age: dead without an attempt (the claim's count is taken back).
_EXPIRE = (
    "UPDATE deliveries SET state = 'dead', attempts = attempts - 1, next_attempt_at = NULL,"
    " updated_at = ?, last_error = ?, dead_reason = ? WHERE id = ?"
)
_HOLD_ATTEMPT = (
    "UPDATE deliveries SET held_attempts = held_attempts + 1 WHERE id = ? AND attempts = ?"
)

Claim = Callable[[int], list[ClaimedDelivery]]


def read(conn: sqlite3.Connection, name: str) -> GateState:
    return state_of(conn.execute(_READ, (name,)).fetchone())


def write(conn: sqlite3.Connection, name: str, state: GateState, now: float) -> None:
    conn.execute(_WRITE, (name, *row_of(state), now))


def claim_gated(
    conn: sqlite3.Connection,
    name: str,
    want: int,
    lease: float,
    gate: Gate,
    now: float,
    claim: Claim,
) -> GatedClaim:
    """Claim through the gate: only what the bucket and the circuit let through now."""
    state = read(conn, name)
    paused = conn.execute(_PAUSED, (name,)).fetchone() is not None
    admission = admit(gate, state, now, want, paused)
    taken, aged_out = _live(conn, admission.grant, gate, now, claim) if admission.grant else ([], 0)
    new, wait = claimed(gate, state, now, admission, [d.id for d in taken], now + lease)
    if new != state:
        write(conn, name, new, now)
    if admission.probe and taken:
        taken[0] = dataclasses.replace(taken[0], probe=True)
    if aged_out and len(taken) < admission.grant:
        wait = 0.0  # more may have aged out: claim again at once
    return GatedClaim(taken, wait)


def _live(
    conn: sqlite3.Connection, grant: int, gate: Gate, now: float, claim: Claim
) -> tuple[list[ClaimedDelivery], int]:
    """Up to ``grant`` claimed deliveries not past max_age; those past it are marked dead."""
    live: list[ClaimedDelivery] = []
    aged_out = 0
    for _ in range(EXPIRY_ROUNDS):
        got = claim(grant - len(live))
        stale = [d for d in got if expired(d.created_at, gate.max_age, now)]
        live += [d for d in got if not expired(d.created_at, gate.max_age, now)]
        if stale:
            assert gate.max_age is not None
            reason = expired_reason(gate.max_age)
            conn.executemany(_EXPIRE, [(now, reason, reason, d.id) for d in stale])
            aged_out += len(stale)
            # The next of a subscriber's deliveries may go (and be claimed in the next round).
            releases = Releases()
            releases.claimed_finished(stale, DeliveryState.DEAD)
            ordering.release(conn, releases, now)
        if not stale or len(live) >= grant:
            break
    return live, aged_out


def complete_gated(
    conn: sqlite3.Connection, entries: Sequence[Attempted], now: float
) -> dict[int, Completion]:
    """``gate.settle`` on the circuits of these attempts' destinations, read and written here."""
    names = breaker_destinations(entries)
    states = {name: read(conn, name) for name in names}
    out = settle(states, entries, now)
    for name, state in states.items():
        write(conn, name, state, now)
    return out


def hold_attempts(conn: sqlite3.Connection, held: Sequence[ClaimedDelivery]) -> None:
    """Record that these attempts were not charged (their deliveries still hold their lease)."""
    conn.executemany(_HOLD_ATTEMPT, [(d.id, d.attempt) for d in held])
