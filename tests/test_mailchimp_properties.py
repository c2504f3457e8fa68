"""Property tests: encoding round-trips, and the parsers never raise on arbitrary bytes."""

import json
import re
from typing import Any
from urllib.parse import quote_plus

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from relay.protocols.audience_summary import summarize_audience
from relay.protocols.mailchimp import (
    MAX_DEPTH,
    encode_audience,
    parse_audience,
    parse_form_json,
    parse_mandrill,
    rebatch_mandrill,
)

# Small budgets: the suite shares a 2-core machine, and these parsers have few branches.
QUICK = settings(max_examples=150, deadline=None)

INDEX = re.compile(r"0|[1-9][0-9]{0,5}")
# Brackets belong to the key syntax, and an all-index level is a list by design, so neither
# can appear in a key that is meant to survive the round trip.
keys = st.text(
    st.characters(codec="utf-8", exclude_characters="[]"), min_size=1, max_size=8
).filter(lambda key: INDEX.fullmatch(key) is None)
values = st.text(st.characters(codec="utf-8"), max_size=12)
nested = st.recursive(
    values,
    lambda children: (
        st.dictionaries(keys, children, min_size=1, max_size=4)
        | st.lists(st.dictionaries(keys, children, min_size=1, max_size=3), min_size=1, max_size=3)
    ),
    max_leaves=16,
)
documents = st.dictionaries(keys, nested, max_size=5)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(depth(child) for child in value.values())
    if isinstance(value, list):
        return 1 + max(depth(child) for child in value)
    return 0


@QUICK
@given(documents)
@example({"data": ""})  # found by CI: a flat `data` value is flagged, and that is right
def test_encode_then_parse_round_trips(fields: dict[str, Any]) -> None:
    assume(not fields or depth(fields) <= MAX_DEPTH)
    event = parse_audience(encode_audience(fields))
    assert event.fields == fields
    # A round-tripped document is well formed, so the only warnings left are about its values:
    # an odd type, an unparseable fired_at, or a `data` that is a plain value rather than a map.
    expected = ("unrecognised_type", "bad_fired")
    if "data" in fields and not isinstance(fields["data"], dict):
        expected += ("data_not_nested",)
    assert not [w for w in event.warnings if not w.startswith(expected)]


@QUICK
@given(st.dictionaries(keys, values, max_size=6), st.sampled_from(["subscribe", "upemail", "x"]))
def test_flat_audience_fields_survive_as_data(data: dict[str, str], type_: str) -> None:
    event = parse_audience(encode_audience({"type": type_, "data": data}))
    assert event.type == type_
    assert event.data == data


# Fragments that reach the interesting branches far more often than uniform random bytes.
TOKENS = [
    b"type=", b"subscribe", b"upemail", b"fired_at=", b"2020-01-01+00%3A00%3A00", b"data",
    b"[", b"]", b"%5B", b"%5D", b"[0]", b"[merges]", b"[email]", b"=", b"&", b"+", b"%",
    b"%FF", b"\xff", b"\xc3", b"%C3%A9", b"mandrill_events=", b"%22", b'"', b"\\", b"{", b"}",
    b",", b":", b"null", b"1", b"\n", b"\x00", b"%00",
]  # fmt: skip
hostile = st.binary(max_size=400) | st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
content_types = st.sampled_from(
    [None, "", "application/json", "application/x-www-form-urlencoded", "text/plain", "a/b+json;"]
) | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_parse_audience_never_raises(body: bytes) -> None:
    event = parse_audience(body)
    if event.type == "unknown" and event.fields.get("type") != "unknown":
        assert event.error is not None
    assert len(event.warnings) <= 32


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_parse_mandrill_never_raises(body: bytes) -> None:
    batch = parse_mandrill(body)
    assert batch.error is None or batch.events == ()


@settings(max_examples=300, deadline=None)
@given(hostile, content_types)
def test_parse_form_json_never_raises(body: bytes, content_type: str | None) -> None:
    parse_form_json(body, content_type)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@QUICK
@given(st.lists(json_values, max_size=6), st.sampled_from([None, 0, 2]), st.booleans())
def test_mandrill_raw_texts_survive_rebatching(
    elements: list[Any], indent: int | None, ascii_only: bool
) -> None:
    raws = [json.dumps(e, indent=indent, ensure_ascii=ascii_only).encode() for e in elements]
    batch = parse_mandrill(rebatch_mandrill(raws))
    assert batch.error is None
    assert [event.raw for event in batch.events] == raws
    assert [json.loads(event.raw) for event in batch.events] == elements


@QUICK
@given(st.lists(json_values, max_size=6), st.sampled_from([None, 1, 4]))
def test_mandrill_scanner_splits_any_array_layout(elements: list[Any], indent: int | None) -> None:
    text = json.dumps(elements, indent=indent, ensure_ascii=False).encode()
    batch = parse_mandrill(b"mandrill_events=" + quote_plus(text).encode())
    assert batch.error is None
    position = 0
    for event, element in zip(batch.events, elements, strict=True):
        position = text.index(event.raw, position) + len(event.raw)
        assert json.loads(event.raw) == element


# The summary that ingest computes on every request must agree with the full parser.
_summary_fields = st.dictionaries(
    st.sampled_from(
        ["id", "list_id", "email", "new_id", "new_email", "old_email", "reason", "x y"]
    ),
    st.text(max_size=12),
    max_size=6,
)
_audience_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["subscribe", "upemail", "cleaned", "sms_subscribe", "", "unknown"]
        ),
        "fired_at": st.sampled_from(["2009-03-26 21:35:57", "", "yesterday"]),
        "data": st.one_of(
            _summary_fields,
            st.builds(
                lambda d, m: {**d, "merges": m},
                _summary_fields,
                st.dictionaries(
                    st.sampled_from(["EMAIL", "FNAME"]), st.text(max_size=8), max_size=2
                ),
            ),
        ),
    }
)


def _summary(event: object) -> tuple[object, ...]:
    return tuple(
        getattr(event, f) for f in ("type", "fired_at", "list_id", "email", "dedup_key", "error")
    )


@settings(max_examples=300, deadline=None)
@given(
    _audience_like,
    st.lists(
        st.sampled_from(
            [
                "&data%5Bemail%5D=dup",
                "&data=flat",
                "&type%5Bx%5D=1",
                "&data%5Bmerges%5D%5BEMAIL%5D%5B0%5D=g",
                "&%FF=1",
                "&&",
                "&data%5bid%5d=lower",
            ]
        ),
        max_size=2,
    ),
)
def test_summary_agrees_with_full_parse_on_audience_bodies(
    fields: dict[str, object], tails: list[str]
) -> None:
    body = encode_audience(fields) + "".join(tails).encode()
    assert _summary(summarize_audience(body)) == _summary(parse_audience(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_summary_agrees_with_full_parse_on_arbitrary_bytes(body: bytes) -> None:
    assert _summary(summarize_audience(body)) == _summary(parse_audience(body))
