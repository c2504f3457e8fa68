"""Parse Mailchimp audience and Customer Journey webhook bodies, and check Mailchimp's signatures.

Everything here is sans-IO: bytes in, values out, and no exception for bad input.

    >>> event = parse_audience(b"type=subscribe&fired_at=2014-11-04+09%3A42%3A31&data%5Bid%5D=e7")
    >>> event.type, event.dedup_key
    ('subscribe', 'subscribe|e7|2014-11-04 09:42:31')

Mandrill (Transactional) batches live in `relay.mandrill`; their names are re-exported here so
callers have one module for everything Mailchimp sends.
"""

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from relay.protocols.mandrill import (
    MandrillBatch,
    MandrillEvent,
    MandrillForm,
    mandrill_form,
    mandrill_signature,
    parse_mandrill,
    rebatch_mandrill,
    verify_mandrill_signature,
)

__all__ = [
    "AUDIENCE_TYPES",
    "MAX_DEPTH",
    "AudienceEvent",
    "MandrillBatch",
    "MandrillEvent",
    "MandrillForm",
    "encode_audience",
    "mailchimp_signature",
    "mandrill_form",
    "mandrill_signature",
    "parse_audience",
    "parse_form_json",
    "parse_mandrill",
    "rebatch_mandrill",
    "verify_mailchimp_signature",
    "verify_mandrill_signature",
]

AUDIENCE_TYPES = frozenset(
    {
        "subscribe",
        "unsubscribe",
        "profile",
        "upemail",
        "cleaned",
        "campaign",
        "sms_subscribe",
        "sms_unsubscribe",
        "upsms",
        "sms_campaign",
    }
)
# No public sample of the SMS types exists; Mailchimp's own plugins read the address from merges.
SMS_TYPES = frozenset({"sms_subscribe", "sms_unsubscribe", "upsms", "sms_campaign"})

# Mailchimp nests five levels at most (data[merges][GROUPINGS][0][groups]); deeper is broken.
MAX_DEPTH = 8
# One warning per duplicate field would let a hostile body grow the warnings without bound.
_MAX_WARNINGS = 32
_MAX_KEY_IN_WARNING = 80

_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]+\])*)")
_SEGMENT_RE = re.compile(r"\[([^\[\]]+)\]")
# Only canonical, modest indexes make a list: "01" or "9999999" stay dictionary keys.
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,5}")
_FIRED_AT_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")


@dataclass(frozen=True, slots=True)
class AudienceEvent:
    """One audience webhook (subscribe, unsubscribe, profile, ...) as Mailchimp described it."""

    type: str
    fired_at: datetime | None
    list_id: str | None
    email: str | None
    old_email: str | None
    data: dict[str, Any]
    fields: dict[str, Any]
    dedup_key: str | None
    error: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class _Warnings:
    items: list[str] = field(default_factory=list)

    def add(self, warning: str) -> None:
        if warning in self.items:
            return
        if len(self.items) < _MAX_WARNINGS:
            self.items.append(warning)
        elif self.items[-1] != "too_many_warnings":
            self.items[-1] = "too_many_warnings"


def parse_audience(body: bytes) -> AudienceEvent:
    """Parse an audience webhook body; never raises, and says in `error` when it is not one.

    Duplicate fields: the last value wins and a `duplicate_field:<key>` warning is recorded.
    """
    warnings = _Warnings()
    fields = _nest(_decode_form(body, warnings), warnings)
    raw_data = fields.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if raw_data is not None and not isinstance(raw_data, dict):
        warnings.add("data_not_nested")

    raw_type = fields.get("type")
    type_ = raw_type if isinstance(raw_type, str) and raw_type else "unknown"
    error = None
    if not body.strip():
        error = "empty body"
    elif type_ == "unknown" and raw_type != "unknown":
        error = "no type field: not a Mailchimp audience body"
    elif type_ not in AUDIENCE_TYPES and type_ != "unknown":
        warnings.add(f"unrecognised_type:{type_[:_MAX_KEY_IN_WARNING]}")

    raw_fired_at = _text(fields, "fired_at")
    fired_at = parse_fired_at(raw_fired_at)
    if raw_fired_at is not None and fired_at is None:
        warnings.add("bad_fired_at")

    old_email = None
    if type_ == "upemail":
        email = _text(data, "new_email")
        old_email = _text(data, "old_email")
    else:
        email = _text(data, "email")
        merges = data.get("merges")
        if email is None and type_ in SMS_TYPES and isinstance(merges, dict):
            email = _text(merges, "EMAIL")

    return AudienceEvent(
        type=type_,
        fired_at=fired_at,
        list_id=_text(data, "list_id"),
        email=email,
        old_email=old_email,
        data=data,
        fields=fields,
        dedup_key=dedup_key(type_, data, email, raw_fired_at),
        error=error,
        warnings=tuple(warnings.items),
    )


def encode_audience(fields: Mapping[str, Any]) -> bytes:
    """Encode nested fields as Mailchimp does: bracket keys, brackets percent-encoded, + for space.

    Lists become `[0]`, `[1]`, ...; None becomes an empty value. The inverse of `parse_audience`'s
    `fields` for anything without empty containers or bracket characters in keys.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        _flatten(str(key), value, pairs)
    return urlencode(pairs).encode("ascii")


def parse_form_json(body: bytes, content_type: str | None) -> tuple[Any, str | None]:
    """Parse a Customer Journey body, JSON or form, into (data, error); never raises.

    JSON is used when the content type says so or the body starts like JSON; anything else is read
    as a (nested) form. `error` is None on a clean parse; otherwise data is None or a best effort.
    """
    if not body.strip():
        return None, "empty body"
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    declared_json = media_type == "application/json" or media_type.endswith("+json")
    if declared_json or body.lstrip()[:1] in (b"{", b"["):
        try:
            return orjson.loads(body), None
        except orjson.JSONDecodeError as exc:
            if declared_json:
                return None, f"invalid JSON: {str(exc)[:120]}"
            # It only looked like JSON; the marketer may have chosen form data after all.
    warnings = _Warnings()
    fields = _nest(_decode_form(body, warnings), warnings)
    return fields, ("invalid UTF-8 (replaced)" if "invalid_utf8" in warnings.items else None)


def mailchimp_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Return the `X-Mailchimp-Signature` value for a body: `t=<ts>,v1=<hex HMAC-SHA256>`."""
    return f"t={timestamp},v1={_mailchimp_digest(secret, str(timestamp), body)}"


def verify_mailchimp_signature(
    secret: str, body: bytes, header: str | None, now: float, tolerance: float = 300.0
) -> str | None:
    """Check an `X-Mailchimp-Signature` header; None when valid, else a short reason.

    Several `v1=` values are accepted (secret rotation); any one matching is enough.
    """
    if header is None or not header.strip():
        return "missing signature"
    timestamps: list[str] = []
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamps.append(value.strip())
        elif name == "v1":
            candidates.append(value.strip())
    if len(timestamps) != 1 or not _TIMESTAMP_RE.fullmatch(timestamps[0]) or not candidates:
        return "malformed signature"
    # Both directions: a far-future t is as replayable as an old one once it comes due.
    if abs(now - int(timestamps[0])) > tolerance:
        return "timestamp outside tolerance"
    # Mailchimp signs the timestamp text it sent, so sign that exact text rather than int() of it.
    expected = _mailchimp_digest(secret, timestamps[0], body).encode("ascii")
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.lower().encode("utf-8", "replace"))
    return None if matched else "signature mismatch"


def _mailchimp_digest(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _decode_form(body: bytes, warnings: _Warnings) -> list[tuple[str, str]]:
    # Mailchimp sends no charset; it is UTF-8 in practice. Bad bytes are replaced, not fatal:
    # the raw body is stored anyway, and a readable event is worth more than none.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
        warnings.add("invalid_utf8")
    try:
        return parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        warnings.add("invalid_utf8")
        return parse_qsl(text, keep_blank_values=True, errors="replace")


def _split_key(key: str) -> tuple[list[str], bool]:
    match = _KEY_RE.fullmatch(key)
    if match is None:
        # Unbalanced or empty brackets: PHP would mangle the name; keeping it literal loses nothing.
        return [key], False
    path = [match.group(1), *_SEGMENT_RE.findall(match.group(2))]
    if len(path) <= MAX_DEPTH:
        return path, False
    # Fold the surplus back into the deepest allowed key, so the value survives (PHP drops it).
    tail = "".join(f"[{segment}]" for segment in path[MAX_DEPTH:])
    return [*path[: MAX_DEPTH - 1], path[MAX_DEPTH - 1] + tail], True


def _nest(pairs: list[tuple[str, str]], warnings: _Warnings) -> dict[str, Any]:
    root: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        shown = key[:_MAX_KEY_IN_WARNING]
        if key in seen:
            warnings.add(f"duplicate_field:{shown}")
        seen.add(key)
        path, too_deep = _split_key(key)
        if too_deep:
            warnings.add("nesting_too_deep")
        node = root
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    warnings.add(f"conflicting_field:{shown}")
                child = node[part] = {}
            node = child
        if isinstance(node.get(path[-1]), dict):
            warnings.add(f"conflicting_field:{shown}")
        # Last value wins, for plain duplicates and for a value replacing a group alike.
        node[path[-1]] = value
    return {key: _listify(value) for key, value in root.items()}


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(child) for key, child in value.items()}
    if converted and all(_INDEX_RE.fullmatch(key) for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, child in value.items():
            _flatten(f"{prefix}[{key}]", child, out)
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            _flatten(f"{prefix}[{index}]", child, out)
    elif value is None:
        out.append((prefix, ""))
    else:
        out.append((prefix, value if isinstance(value, str) else str(value)))


def _text(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) and value else None


# Webhooks fired in the same second share their fired_at: a burst parses each value once.
@lru_cache(maxsize=256)
def parse_fired_at(text: str | None) -> datetime | None:
    match = _FIRED_AT_RE.fullmatch(text) if text is not None else None
    if match is None:
        return None
    try:
        # No zone is stated; Mailchimp's servers and every known consumer read it as UTC.
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def dedup_key(
    type_: str, data: Mapping[str, Any], email: str | None, fired_at: str | None
) -> str | None:
    # Mailchimp retries a slow delivery with the same body, so these fields repeat exactly.
    if type_ == "unknown" or fired_at is None:
        return None
    if type_ == "upemail":
        identity = _text(data, "new_id") or _text(data, "new_email")
    else:
        # `cleaned` carries no id; the address is the next most specific thing it has.
        identity = _text(data, "id") or email
    return None if identity is None else f"{type_}|{identity}|{fired_at}"
