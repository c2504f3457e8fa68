"""Event and request ids: ULIDs, 26 characters that sort in the order this process made them."""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_id_lock = threading.Lock()
_last_id_ms = 0
_last_id_rand = 0
_RAND_MASK = (1 << 80) - 1
_TAIL_MASK = (1 << 15) - 1


def new_id() -> str:
    """Return a ULID: 26 characters that sort by creation time, monotonic within this process.

    Event ids are generated before commit so that a batch can link events and deliveries without
    reading back row ids, and sorting by id gives receive order, which keeps cursors stable.
    """
    return encode_ulid(_reserve(1))


def new_ids(count: int) -> list[str]:
    """``count`` ids, each as ``new_id`` would make it after the one before: one clock read and
    at most one random draw for all of them (a Mandrill batch needs a thousand)."""
    if count <= 0:
        return []
    value = _reserve(count)
    if count == 1:  # one event per request: most webhooks
        return [encode_ulid(value)]
    ids: list[str] = []
    pairs, chars = _CROCKFORD_PAIRS, _CROCKFORD
    end = value + count
    while value < end:
        # Ids in a row share all but their last 3 characters (15 bits) until those carry over:
        # the shared head is encoded once per run, and each id costs two lookups.
        run_end = min(end, (value | _TAIL_MASK) + 1)
        head = encode_ulid(value)[:-3]
        ids += [head + pairs[(v >> 5) & 1023] + chars[v & 31] for v in range(value, run_end)]
        value = run_end
    return ids


def _reserve(count: int) -> int:
    """The 128-bit value of the first of ``count`` ids in a row (the millisecond, then a random
    part counted on from the last id's within the same millisecond)."""
    global _last_id_ms, _last_id_rand
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_id_ms:
            ms = _last_id_ms
            rand = _last_id_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_id_ms, _last_id_rand = ms, rand + count - 1
    return (ms << 80) | (rand & _RAND_MASK)


def encode_ulid(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 characters, most significant first."""
    # 130 bits: 3 (and 2 zero bits), 12 pairs of 10 bits, 5. Pairs cost a quarter of single
    # characters, and ingest makes two ids per webhook.
    pairs = _CROCKFORD_PAIRS
    middle = "".join([pairs[(value >> shift) & 1023] for shift in range(115, 4, -10)])
    return _CROCKFORD[(value >> 125) & 31] + middle + _CROCKFORD[value & 31]
