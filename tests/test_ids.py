"""Event and request ids: ULIDs that sort as they were made."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import relay.ids as ids_module
from relay.ids import encode_ulid, new_id, new_ids

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _reference(value: int) -> str:
    # Five bits at a time, as the ULID spec writes it.
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_ulid_encoding_is_crockford_base32_of_the_128_bits(value: int) -> None:
    assert encode_ulid(value) == _reference(value)
    assert len(encode_ulid(value)) == 26


def test_ids_made_in_a_row_sort_in_the_order_they_were_made() -> None:
    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_together_and_one_by_one_sort_in_the_order_they_were_made() -> None:
    ids = [new_id()]
    for count in (1, 2, 1000, 0, 3, 40_000, 1):
        ids += new_ids(count) if count != 1 else [new_id()]
    assert len(ids) == 1 + 1 + 2 + 1000 + 3 + 40_000 + 1
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@settings(max_examples=200, deadline=None)
@given(
    tail=st.integers(min_value=0, max_value=(1 << 15) - 1),
    high=st.integers(min_value=0, max_value=(1 << 64) - 1),
    count=st.integers(min_value=1, max_value=70_000),
)
def test_ids_made_together_are_the_values_after_the_last_one_encoded_one_by_one(
    tail: int, high: int, count: int
) -> None:
    # A clock behind the last id made keeps the same millisecond and counts on from its random
    # part: runs that cross one or more carries of the last 15 bits are checked id by id.
    ms = 1 << 44
    saved = ids_module._last_id_ms, ids_module._last_id_rand
    ids_module._last_id_ms, ids_module._last_id_rand = ms, (high << 15) | tail
    try:
        ids = new_ids(count)
        last = ids_module._last_id_rand
    finally:
        # Ids made later in this process go on from where they were, not from the year 2527.
        ids_module._last_id_ms, ids_module._last_id_rand = saved
    assert ids == [encode_ulid((ms << 80) | ((high << 15) + tail + 1 + i)) for i in range(count)]
    assert last == (high << 15) + tail + count
