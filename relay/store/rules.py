"""Domain rules every backend applies the same way (pure): kept here so no backend invents its own.

    initial_state("crm", paused=frozenset({"crm"}))   # -> DeliveryState.PAUSED
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from relay.model import AttemptResult, Decision, DeliveryState

# Why a delivery died without an attempt: its event was pruned after the delivery was made.
ORPHANED = "its event is no longer stored"
# Unfinished states: a delivery in one keeps its event from being pruned.
UNFINISHED = (DeliveryState.PENDING, DeliveryState.DELIVERING, DeliveryState.PAUSED)
# How much of a response's first bytes a delivery keeps in last_error (all of them are kept
# with the attempt): enough for "HTTP 500: upstream connect error" to say why, on one line.
ERROR_BODY_CHARS = 200

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def stored_size(body: bytes, headers_json: str) -> int:
    """What a request counts against its inbound's quota: its body and its headers as stored
    (the bulk of what it takes; the same sum the migrations backfill with)."""
    return len(body) + len(headers_json.encode("utf-8"))


def initial_state(destination: str, paused: Collection[str]) -> DeliveryState:
    """A new delivery waits as paused while its destination is paused, else it is due now."""
    return DeliveryState.PAUSED if destination in paused else DeliveryState.PENDING


def recorded_error(result: AttemptResult, decision: Decision) -> str | None:
    """What a delivery keeps as its last error after an attempt: what that attempt got.

    None once delivered. Not the reason it was given up ("gave up after 10 attempts" says
    nothing about the destination): that is ``dead_reason``.

    >>> from relay.model import AttemptOutcome as O
    >>> dead = Decision(DeliveryState.DEAD, reason="gave up after 3 attempts")
    >>> recorded_error(AttemptResult(O.SERVER_ERROR, 0.0, 0.1, 500,
    ...                              response_head=b"upstream\\r\\nconnect error"), dead)
    'HTTP 500: upstream connect error'
    >>> recorded_error(AttemptResult(O.CONNECTION_ERROR, 0.0, 0.1,
    ...                              error="cannot connect: Connection refused"), dead)
    'cannot connect: Connection refused'
    """
    if decision.state is DeliveryState.DELIVERED:
        return None
    return attempt_error(result.status, result.error, result.response_head) or decision.reason


def attempt_error(status: int | None, error: str | None, response_head: bytes) -> str | None:
    """What one attempt got, in one line: its error, else its status and the first bytes of the
    response; None when it got neither (nothing to say).

    >>> attempt_error(503, None, b"HTTP/1.1 503\\r\\nRetry-After: 5")
    'HTTP 503: HTTP/1.1 503 Retry-After: 5'
    >>> attempt_error(None, "timed out after 10s", b"")
    'timed out after 10s'
    """
    if error:
        return error
    if status is None:
        return None
    text = " ".join(response_head.decode("utf-8", "replace").split())
    if len(text) > ERROR_BODY_CHARS:
        text = text[:ERROR_BODY_CHARS] + "..."
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def dead_reason(decision: Decision) -> str | None:
    """Why a delivery was given up, kept beside its last error; None unless it is dead."""
    return decision.reason if decision.state is DeliveryState.DEAD else None


def resolver(delivery_id: int) -> str:
    """``resolved_by`` of the dead deliveries a delivered one resolves (its event arrived)."""
    return f"delivery {delivery_id}"


def email_key(email: str | None) -> str | None:
    """What an email is found by: ASCII letters lower-cased (``Ann@Example.COM`` is
    ``ann@example.com``). ASCII only, as SQLite's and the migrations' lower() are, so every
    backend and every row, old or new, agree."""
    if email is None:
        return None
    # str.lower() of ASCII text changes A-Z and nothing else, at a tenth of translate's cost.
    return email.lower() if email.isascii() else email.translate(_ASCII_LOWER)


def order_key(list_id: str | None, email: str | None) -> int | None:
    """The queue a subscriber's deliveries to an ordered destination wait in: the list id and
    the email (found as ``email_key`` finds it), hashed to a signed 64-bit integer; None without
    an email, and such an event is never held back. Two subscribers whose hashes collide share
    one queue: their order only gets stricter, it never breaks.

    >>> order_key("a6b5da1054", "Ann@Example.COM") == order_key("a6b5da1054", "ann@example.com")
    True
    >>> order_key("a6b5da1054", "ann@example.com") == order_key("other", "ann@example.com")
    False
    >>> order_key("a6b5da1054", None) is None
    True
    """
    key = email_key(email)
    if not key:
        return None
    text = f"{list_id or ''}\x00{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


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
