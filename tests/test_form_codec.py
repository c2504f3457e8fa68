"""The C-speed form codec gives exactly what urllib gives, for any text and any bytes."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocols.form_codec import form_fields, quote_plus_bytes

QUICK = settings(max_examples=400, deadline=None)
# Pieces that decide how a form decodes: escapes good, bad and partial, multi-byte UTF-8 and
# invalid bytes escaped, quoted-printable's own "=" and line breaks, plus signs and separators.
PIECES = st.sampled_from(
    ["%", "%2", "%25", "%3D", "%0A", "%0a", "%C3%A9", "%c3%a9", "%FF", "%zz", "%%", "=", "&",
     "+", " ", "\n", "\r", "\t", "a", "Z", "0", "~", "_", "é", "\udcff", "%5B", "%22", "{", '"']
)  # fmt: skip
FORMS = st.one_of(st.lists(PIECES, max_size=16).map("".join), st.text(max_size=40))


@QUICK
@given(FORMS)
def test_form_fields_equal_parse_qsl(text: str) -> None:
    expected = parse_qsl(text, keep_blank_values=True, errors="surrogateescape")
    assert form_fields(text) == expected


@QUICK
@given(st.binary(max_size=64))
def test_quote_plus_bytes_equals_quote_plus(data: bytes) -> None:
    assert quote_plus_bytes(data) == quote_plus(data).encode("ascii")
