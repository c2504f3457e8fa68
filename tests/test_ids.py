"""Event and request ids: ULIDs that sort as they were made."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ids import encode_ulid, new_id

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
