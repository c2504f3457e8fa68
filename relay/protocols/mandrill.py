"""Split Mandrill (Mailchimp Transactional) webhook batches into events, and check their signatures.

Sans-IO like `relay.protocols.mailchimp`, which re-exports these names. `rebatch_mandrill`
builds the body a downstream receives for the events routed to it.

    >>> batch = parse_mandrill(b"mandrill_events=%5B%7B%22event%22%3A%22send%22%7D%5D")
    >>> [(event.type, event.raw) for event in batch.events]
    [('send', b'{"event":"send"}')]
"""

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.protocols.form_codec import form_fields, quote_plus_bytes

__all__ = [
    "MandrillBatch",
    "MandrillEvent",
    "MandrillForm",
    "mandrill_form",
    "mandrill_signature",
    "parse_mandrill",
    "rebatch_mandrill",
    "verify_mandrill_signature",
]

# A body's decoded form fields, in order (`mandrill_form`): decoded once per request, they
# serve both the signature check and the parser.
MandrillForm = list[tuple[str, str]]

_FIELD = b"mandrill_events"
# quote_plus of "},{", between two elements of a compact array.
_SEAM = b"%7D%2C%7B"
_WHITESPACE = b" \t\r\n"
_LEADING_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURAL = re.compile(rb'[\[\]{},"]')
# Unrolled so that a long string costs one linear pass and never backtracks.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TEXT_WHITESPACE = re.compile(r"[ \t\r\n]*")
# Only its C scanner's end positions are used: the values are orjson's.
_SCANNER = json.JSONDecoder()
# The bytes quote_plus writes as they are (space as "+"); it writes any other as 3 characters.
_AS_IS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~ "
# The characters quote_plus writes: its as-is bytes (space as "+") and upper-case escapes.
_QUOTE_PLUS_CHARS = _AS_IS.replace(b" ", b"+%")
_LOWER_HEX = b"abcdef"


@dataclass(frozen=True, slots=True)
class MandrillEvent:
    """One element of a Mandrill batch, with its JSON text kept byte for byte."""

    type: str
    raw: bytes
    data: dict[str, Any]
    fired_at: datetime | None
    email: str | None
    message_id: str | None
    dedup_key: str | None
    # rebatch_mandrill([raw]), when it could be cut from the posted body itself (else None).
    rebatched: bytes | None = None


@dataclass(frozen=True, slots=True)
class MandrillBatch:
    """The events of one Mandrill POST; `error` says why there are none if the body is unusable."""

    events: tuple[MandrillEvent, ...]
    error: str | None = None


def parse_mandrill(body: bytes, form: MandrillForm | None = None) -> MandrillBatch:
    """Parse a Mandrill webhook body (`mandrill_events=<JSON array>`); never raises.

    `mandrill_events=[]`, Mailchimp's validation POST, is an empty batch without error. When
    `error` is set, `events` is empty: the batch is kept whole or not at all.
    """
    fields = mandrill_form(body) if form is None else form
    values = [value for key, value in fields if key == "mandrill_events"]
    if not values:
        return MandrillBatch((), "no mandrill_events field")
    try:
        # The last field wins, as in PHP's $_POST, which is what Mandrill's own examples read.
        text = values[-1].encode("utf-8")
    except UnicodeEncodeError:
        return MandrillBatch((), "mandrill_events is not valid UTF-8")
    split = _compact_objects(text)
    if split is not None:
        raws, items = split
    else:
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError:
            return MandrillBatch((), "mandrill_events is not valid JSON")
        if not isinstance(items, list):
            return MandrillBatch((), "mandrill_events is not a JSON array")
        found = _elements(text)
        if found is None:
            spans = _element_spans(text)
            found = None if spans is None else [text[start:end] for start, end in spans]
        if found is None or len(found) != len(items):
            return MandrillBatch((), "could not split mandrill_events into elements")
        raws = found
    rebatched = _rebatched(body, len(values), text, raws, compact=split is not None)
    events = tuple(
        _event(raw, item, one) for raw, item, one in zip(raws, items, rebatched, strict=True)
    )
    return MandrillBatch(events)


def _rebatched(
    body: bytes, fields: int, text: bytes, raws: list[bytes], compact: bool
) -> list[bytes | None]:
    """Each element's rebatch_mandrill([raw]), cut from the body, when the posted value is
    exactly what quote_plus makes of ``text`` (Python's and PHP's form encoders); else Nones.

    quote_plus works byte by byte, so an element's encoding is the run of the posted value
    that starts 2 characters further per escaped byte before it: one C count per element
    instead of encoding a thousand elements again. When ``raws`` were cut at every "},{" of
    ``text`` (`_compact_objects`), the value is cut at every "%7D%2C%7B" instead: quote_plus
    writes "%" only to start an escape, so those are exactly its encodings of the "},{"s.
    """
    posted = [v for k, _, v in (p.partition(b"=") for p in body.split(b"&")) if k == _FIELD]
    if len(posted) != fields or not _is_quote_plus_of(posted[-1], text):
        return [None] * len(raws)
    if compact:
        # text is "[{" + pieces joined by "},{" + "}]", so the value is "%5B%7B" + ... + "%7D%5D".
        return [b"mandrill_events=%5B%7B" + p + b"%7D%5D" for p in posted[-1][6:-6].split(_SEAM)]
    value, plain, escaped = posted[-1], 0, 0
    cuts: list[bytes | None] = []
    for raw in raws:
        start = text.find(raw, plain)
        escaped += len(text[plain:start].translate(None, _AS_IS))
        begin = start + 2 * escaped
        escaped += len(raw.translate(None, _AS_IS))
        plain = start + len(raw)
        cuts.append(b"mandrill_events=%5B" + value[begin : plain + 2 * escaped] + b"%5D")
    return cuts


def _is_quote_plus_of(value: bytes, text: bytes) -> bool:
    """Whether ``value``, which decodes to ``text``, is exactly ``quote_plus(text)``: counted in
    C (a regular expression over a 700 KB batch took 20 ms, half of parsing it).

    Decoding maps each token of ``value`` to one byte of ``text``: a letter, digit or ``_.~-``
    to itself, "+" to a space, a valid escape (3 characters) to any byte, and a "%" that starts
    no valid escape to "%". With only those characters in ``value``, one "%" per byte quote_plus
    escapes means no valid escape stands for a byte written as it is; the length quote_plus
    gives then leaves no room for an invalid "%"; and as many of a-f as in ``text`` means
    every escape's hex digits are upper-case, as quote_plus writes them.
    """
    escapes = len(text.translate(None, _AS_IS))
    return (
        not value.translate(None, _QUOTE_PLUS_CHARS)
        and value.count(b"%") == escapes
        and len(value) == len(text) + 2 * escapes
        and len(value) - len(value.translate(None, _LOWER_HEX))
        == len(text) - len(text.translate(None, _LOWER_HEX))
    )


def rebatch_mandrill(raws: Sequence[bytes]) -> bytes:
    """Build the form body a downstream gets for part of a batch, each element's text unchanged."""
    return b"mandrill_events=" + quote_plus_bytes(b"[" + b",".join(raws) + b"]")


def mandrill_signature(key: str, url: str, body: bytes, form: MandrillForm | None = None) -> str:
    """Return the `X-Mandrill-Signature` for a body posted to `url` (exactly as configured).

    base64(HMAC-SHA1(key, url + every field's name and decoded value, sorted by name)).
    """
    # A repeated name keeps its last value, as PHP's $_POST (the reference implementation) does.
    fields = dict(mandrill_form(body) if form is None else form)
    signed = url + "".join(name + fields[name] for name in sorted(fields))
    digest = hmac.new(
        key.encode("utf-8", "surrogateescape"),
        signed.encode("utf-8", "surrogateescape"),
        hashlib.sha1,
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_mandrill_signature(
    key: str,
    url: str,
    body: bytes,
    header: str | None,
    form: MandrillForm | None = None,
) -> bool:
    """Check an `X-Mandrill-Signature` header in constant time; a missing header fails.
    ``form``: the body's `mandrill_form`, when the caller has it already."""
    if not header:
        return False
    expected = mandrill_signature(key, url, body, form).encode("ascii")
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


def mandrill_form(body: bytes) -> MandrillForm:
    """A Mandrill body's form fields, decoded (the whole batch: milliseconds for a large one).
    Ingest decodes them once and hands them to both the signature check and the parser."""
    # surrogateescape keeps every byte, even invalid UTF-8, so a signature is computed over
    # exactly the bytes Mandrill signed.
    text = body.decode("utf-8", errors="surrogateescape")
    return form_fields(text)


def _compact_objects(text: bytes) -> tuple[list[bytes], list[Any]] | None:
    """Each element's text and value when the array is objects written without whitespace
    between them (what Mandrill sends), else None.

    The text is cut at every "},{" and each piece parsed on its own: a cut inside a string or a
    nested value leaves a piece that is not valid JSON, so pieces that all parse are the
    elements. That is one orjson parse instead of orjson's and then json's scanner's.
    """
    if not (text.startswith(b"[{") and text.endswith(b"}]")):
        return None
    pieces = text[2:-2].split(b"},{")
    raws = [b"{" + piece + b"}" for piece in pieces]
    try:
        items = [orjson.loads(raw) for raw in raws]
    except orjson.JSONDecodeError:
        return None
    return raws, items


def _elements(text: bytes) -> list[bytes] | None:
    """Each top-level element's text, cut where json's C scanner ends each value; None when it
    cannot say (`_element_spans` then walks the text in Python, 20x slower).

    Only called on text orjson has accepted, which is valid UTF-8: a slice of the decoded text
    encodes back to exactly its bytes.
    """
    chars = text.decode("utf-8")
    ascii_only = chars.isascii()
    position = _skip_text_whitespace(chars, 0)
    if not chars.startswith("[", position):
        return None
    position = _skip_text_whitespace(chars, position + 1)
    raws: list[bytes] = []
    if chars.startswith("]", position):
        return raws
    while True:
        try:
            _, end = _SCANNER.raw_decode(chars, position)
        except (ValueError, RecursionError):
            return None
        raws.append(text[position:end] if ascii_only else chars[position:end].encode("utf-8"))
        position = _skip_text_whitespace(chars, end)
        if chars.startswith("]", position):
            return raws
        if not chars.startswith(",", position):
            return None
        position = _skip_text_whitespace(chars, position + 1)


def _element_spans(text: bytes) -> list[tuple[int, int]] | None:
    """Find each top-level element of a JSON array as a (start, end) byte range.

    Only called on text orjson has accepted, so it tracks nesting and strings and nothing more.
    """
    position = _skip_whitespace(text, 0)
    if not text.startswith(b"[", position):
        return None
    position += 1
    start = position
    depth = 0
    spans: list[tuple[int, int]] = []
    while (match := _STRUCTURAL.search(text, position)) is not None:
        token, at = match.group(), match.start()
        if token == b'"':
            string = _JSON_STRING.match(text, at)
            if string is None:
                return None
            position = string.end()
            continue
        position = at + 1
        if token in (b"[", b"{"):
            depth += 1
        elif depth > 0:
            if token in (b"]", b"}"):
                depth -= 1
        elif token in (b",", b"]"):
            element_start = _skip_whitespace(text, start)
            element_end = at
            while element_end > element_start and text[element_end - 1] in _WHITESPACE:
                element_end -= 1
            if element_end > element_start:
                spans.append((element_start, element_end))
            if token == b"]":
                return spans
            start = position
        else:
            return None
    return None


def _skip_text_whitespace(chars: str, position: int) -> int:
    match = _TEXT_WHITESPACE.match(chars, position)
    return position if match is None else match.end()


def _skip_whitespace(text: bytes, position: int) -> int:
    match = _LEADING_WHITESPACE.match(text, position)
    return position if match is None else match.end()


def _event(raw: bytes, item: Any, rebatched: bytes | None = None) -> MandrillEvent:
    data: dict[str, Any] = item if isinstance(item, dict) else {}
    event, sync_type, action = data.get("event"), data.get("type"), data.get("action")
    if isinstance(event, str) and event:
        type_ = event
    elif isinstance(sync_type, str) and sync_type and isinstance(action, str) and action:
        # Sync events (deny/allow list changes) carry type and action instead of event.
        type_ = f"{sync_type}.{action}"
    else:
        type_ = "unknown"
    email = _nested_text(data, "msg") or _nested_text(data, "reject") or _nested_text(data, "entry")
    raw_id = data.get("_id")
    message_id = raw_id if isinstance(raw_id, str) and raw_id else None
    ts = data.get("ts")
    ts_text = str(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
    return MandrillEvent(
        type=type_,
        raw=raw,
        data=data,
        fired_at=_from_unix(ts),
        email=email,
        message_id=message_id,
        dedup_key=_dedup_key(type_, message_id, email, ts_text),
        rebatched=rebatched,
    )


def _nested_text(data: Mapping[str, Any], key: str) -> str | None:
    inner = data.get(key)
    value = inner.get("email") if isinstance(inner, dict) else None
    return value if isinstance(value, str) and value else None


def _from_unix(ts: Any) -> datetime | None:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _dedup_key(
    type_: str, message_id: str | None, email: str | None, ts_text: str | None
) -> str | None:
    # A retried batch repeats its events unchanged. Sync events have no _id; the address they
    # change is what identifies them.
    if type_ == "unknown" or ts_text is None:
        return None
    if message_id is not None:
        return f"{message_id}:{type_}:{ts_text}"
    if email is not None:
        return f"{type_}:{email}:{ts_text}"
    return None
