"""PostgreSQL side of rate limits and circuit breakers: a gate's row, locked (``FOR UPDATE``) in
the transaction that claims or completes its destination's deliveries, so that every process
sharing the database takes from one bucket and moves one circuit. The rules are
``relay.store.gate``'s; the SQL is in queries.sql."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from relay.model import ClaimedDelivery
from relay.store.gate import (
    EXPIRY_ROUNDS,
    Attempted,
    Completion,
    Gate,
    GatedClaim,
    admit,
    breaker_destinations,
    claimed,
    row_of,
    settle,
    state_of,
)
from relay.store.postgres import ordering
from relay.store.rules import expired, expired_reason
from relay.store.sqlfile import load_queries

Q = load_queries("relay.store.postgres")

Claim = Callable[[asyncpg.Connection, int], Awaitable[list[ClaimedDelivery]]]


async def claim_gated(
    conn: asyncpg.Connection, name: str, want: int, lease: float, gate: Gate, claim: Claim
) -> GatedClaim:
    """Claim through the gate, inside the caller's transaction on ``conn``."""
    row = await conn.fetchrow(Q["lock_gate"], name)
    if row is None:
        await conn.execute(Q["ensure_gate"], name)
        row = await conn.fetchrow(Q["lock_gate"], name)
        assert row is not None
    state, now, paused = state_of(row), float(row[9]), bool(row[10])
    admission = admit(gate, state, now, want, paused)
    taken: list[ClaimedDelivery] = []
    aged_out = 0
    if admission.grant:
        taken, aged_out = await _live(conn, admission.grant, gate, now, claim)
    new, wait = claimed(gate, state, now, admission, [d.id for d in taken], now + lease)
    if new != state:
        await conn.execute(Q["save_gate"], name, *row_of(new))
    if admission.probe and taken:
        taken[0] = dataclasses.replace(taken[0], probe=True)
    if aged_out and len(taken) < admission.grant:
        wait = 0.0  # more may have aged out: claim again at once
    return GatedClaim(taken, wait)


async def _live(
    conn: asyncpg.Connection, grant: int, gate: Gate, now: float, claim: Claim
) -> tuple[list[ClaimedDelivery], int]:
    """Up to ``grant`` claimed deliveries not past max_age; those past it are marked dead."""
    live: list[ClaimedDelivery] = []
    aged_out = 0
    for _ in range(EXPIRY_ROUNDS):
        got = await claim(conn, grant - len(live))
        stale = [d.id for d in got if expired(d.created_at, gate.max_age, now)]
        live += [d for d in got if not expired(d.created_at, gate.max_age, now)]
        if stale:
            assert gate.max_age is not None
            dead = await conn.fetch(Q["expire_claimed"], stale, expired_reason(gate.max_age))
            # The next of a subscriber's deliveries may go (and be claimed in the next round).
            await ordering.finished(conn, dead, "dead")
            aged_out += len(stale)
        if not stale or len(live) >= grant:
            break
    return live, aged_out


async def complete_gated(
    conn: asyncpg.Connection, entries: Sequence[Attempted]
) -> dict[int, Completion]:
    """``gate.settle`` on the circuits of these attempts' destinations, locked in the writer's
    transaction."""
    names = breaker_destinations(entries)
    if not names:
        return {}
    rows = await conn.fetch(Q["lock_gates"], names)
    states = {str(r[0]): state_of(r[1:]) for r in rows}
    now = float(rows[0][10]) if rows else float(await conn.fetchval(Q["now"]))
    out = settle(states, entries, now)
    await conn.executemany(Q["save_gate"], [(n, *row_of(s)) for n, s in states.items()])
    return out


async def hold_attempts(conn: asyncpg.Connection, held: Sequence[ClaimedDelivery]) -> None:
    """Record that these attempts were not charged (only while they still hold their lease)."""
    if held:
        await conn.execute(Q["hold_attempts"], [d.id for d in held], [d.attempt for d in held])
