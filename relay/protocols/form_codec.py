"""Form encoding (``application/x-www-form-urlencoded``) at C speed, for bodies of megabytes.

A Mandrill batch is one form field holding a percent-encoded JSON array: a thousand events are
~800 KB with ~120,000 escapes. urllib's ``parse_qsl`` and ``quote_plus`` walk escapes and bytes
in Python (~0.3 s a batch, each); these give the same results with the byte work done in C.

    >>> form_fields("mandrill_events=%5B%7B%22a%22%3A+1%7D%5D&x")
    [('mandrill_events', '[{"a": 1}]'), ('x', '')]
    >>> quote_plus_bytes(b'[{"a": 1}]')
    b'%5B%7B%22a%22%3A+1%7D%5D'
"""

from __future__ import annotations

import binascii
import codecs
import string
from urllib.parse import unquote

__all__ = ["form_fields", "quote_plus_bytes"]

_ALWAYS_SAFE = frozenset(string.ascii_letters + string.digits + "_.-~")
# Byte -> its quote_plus bytes; codecs.charmap_encode applies it to a Latin-1 view of the bytes
# in C (twice as fast as str.translate with the same table, which has no fast path for it).
_QUOTE = {
    b: chr(b).encode() if chr(b) in _ALWAYS_SAFE else b"+" if b == 0x20 else b"%%%02X" % b
    for b in range(256)
}


def form_fields(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, errors="surrogateescape")``, decoded in C."""
    fields = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            fields.append((unquote_plus(name), unquote_plus(value)))
    return fields


def unquote_plus(text: str) -> str:
    """``unquote_plus(text, errors="surrogateescape")``; the common case decoded by binascii.

    Percent escapes are quoted-printable's "=XX" with another sign: in text with no "=" of its
    own, no line break (quoted-printable's soft breaks) and no malformed escape, a2b_qp decodes
    exactly the bytes unquote would, and as ASCII text maps to the same bytes either way.
    A malformed escape is found afterwards, in C: a2b_qp turns each good one into one byte and
    keeps a malformed one (or drops a final "="), so the text is 2 shorter per escape only when
    every one was good. (A regular expression looking for them took 4 ms on a 700 KB body.)
    """
    text = text.replace("+", " ")
    escapes = text.count("%")
    if not escapes:
        return text
    if text.isascii() and "=" not in text and "\n" not in text and "\r" not in text:
        decoded = binascii.a2b_qp(text.replace("%", "=").encode("ascii"))
        if len(decoded) == len(text) - 2 * escapes:
            return decoded.decode("utf-8", "surrogateescape")
    return unquote(text, errors="surrogateescape")


def quote_plus_bytes(data: bytes) -> bytes:
    """``quote_plus(data).encode("ascii")``: letters, digits and ``_.-~`` kept, space as ``+``."""
    return codecs.charmap_encode(data.decode("latin-1"), "strict", _QUOTE)[0]
