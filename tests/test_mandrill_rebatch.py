"""Each Mandrill event's one-event batch, cut from the posted body, is what re-encoding gives."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, unquote_to_bytes

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocols.mandrill import _is_quote_plus_of, parse_mandrill, rebatch_mandrill

# Texts that look like the "},{" between two elements, inside a string or a nested value.
SEAMS = st.sampled_from(["},{", '"},{"', "}},{{", "] },{ ["])
ELEMENTS = st.lists(
    st.dictionaries(
        st.sampled_from(["event", "_id", "msg", "ts", "x"]),
        st.one_of(
            st.text(max_size=12),
            SEAMS,
            st.integers(),
            st.lists(st.text(max_size=4), max_size=3),
            st.dictionaries(SEAMS, SEAMS, max_size=2),
        ),
        max_size=4,
    ),
    max_size=5,
)
# Python's default separators, and Mandrill's own (PHP's json_encode writes no whitespace).
SEPARATORS = st.sampled_from([None, (",", ":")])
ENCODERS = {
    "quote_plus": lambda text: quote_plus(text),
    "quote": lambda text: quote(text, safe=""),  # space as %20: not quote_plus's own text
    "lower": lambda text: quote_plus(text).lower(),  # lower-case escapes, odd letters
}


@settings(max_examples=200, deadline=None)
@given(
    ELEMENTS,
    st.sampled_from([None, 2]),
    SEPARATORS,
    st.booleans(),
    st.sampled_from(sorted(ENCODERS)),
)
def test_cut_batches_equal_rebatching_and_quote_plus_bodies_are_always_cut(
    elements: list[Any],
    indent: int | None,
    separators: tuple[str, str] | None,
    ascii_only: bool,
    encoder: str,
) -> None:
    text = json.dumps(
        elements, indent=indent, separators=separators, ensure_ascii=ascii_only
    ).encode()
    body = b"other=1&mandrill_events=" + ENCODERS[encoder](text).encode("ascii")
    batch = parse_mandrill(body)
    if batch.error is not None:  # "lower" can spoil the JSON's own letters
        assert encoder == "lower"
        return
    # Each element's value and, on one line, its text as posted: whichever way it was cut.
    posted = json.loads(unquote_plus(ENCODERS[encoder](text)))
    assert [e.data for e in batch.events] == [e if isinstance(e, dict) else {} for e in posted]
    if indent is None:
        assert [e.raw for e in batch.events] == [
            json.dumps(e, separators=separators, ensure_ascii=ascii_only).encode() for e in posted
        ]
    for event in batch.events:
        assert event.rebatched in (None, rebatch_mandrill([event.raw]))
        if encoder == "quote_plus":
            assert event.rebatched is not None


# Tokens a form encoder may write for one byte, quote_plus's own among them: a byte as it is
# (where quote_plus escapes it), an escape of a byte it writes as it is, lower-case hex, "%20"
# for a space, and a "%" that starts no escape.
TOKENS = st.one_of(
    st.binary(min_size=1, max_size=1).map(lambda b: quote_plus(b).encode()),
    st.sampled_from([b"A", b"a", b"f", b"%41", b"%61", b"%2f", b"%2F", b"%20", b"+", b"%", b"%2",
                     b"%zz", b"%25", b"-", b"~", b"%7E", b"%3a", b"%C3%A9", b"%c3%a9"]),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(TOKENS, max_size=12))
def test_quote_plus_check_says_exactly_whether_a_value_is_quote_plus_of_what_it_decodes_to(
    tokens: list[bytes],
) -> None:
    value = b"".join(tokens)
    text = unquote_to_bytes(value.replace(b"+", b" "))
    assert _is_quote_plus_of(value, text) == (value == quote_plus(text).encode())
