"""The store's pure rules that every backend shares."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.store.rules import email_key

ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(st.text() | st.text(alphabet="AaZz@.ÄäİıßẞΣ" + ASCII_UPPER))
def test_an_email_is_found_by_its_ascii_letters_lower_cased_and_nothing_else(email: str) -> None:
    # What SQLite's lower() does, and what the migrations filled old rows with: "Ä" stays "Ä".
    expected = "".join(c.lower() if c in ASCII_UPPER else c for c in email)
    assert email_key(email) == expected
    assert email_key(None) is None
