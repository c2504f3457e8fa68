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


def new_id() -> str:
    """Return a ULID: 26 characters that sort by creation time, monotonic within this process.

    Event ids are generated before commit so that a batch can link events and deliveries without
    reading back row ids, and sorting by id gives receive order, which keeps cursors stable.
    """
    global _last_id_ms, _last_id_rand
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_id_ms:
            ms = _last_id_ms
            rand = _last_id_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_id_ms, _last_id_rand = ms, rand
    return encode_ulid((ms << 80) | (rand & ((1 << 80) - 1)))


def encode_ulid(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 characters, most significant first."""
    # 130 bits: 3 (and 2 zero bits), 12 pairs of 10 bits, 5. Pairs cost a quarter of single
    # characters, and ingest makes two ids per webhook.
    pairs = _CROCKFORD_PAIRS
    middle = "".join([pairs[(value >> shift) & 1023] for shift in range(115, 4, -10)])
    return _CROCKFORD[(value >> 125) & 31] + middle + _CROCKFORD[value & 31]
