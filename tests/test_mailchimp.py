"""Table-driven tests for relay.mailchimp and relay.mandrill against Mailchimp's own samples."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus

import pytest

from relay.protocols.mailchimp import (
    AUDIENCE_TYPES,
    MandrillBatch,
    encode_audience,
    mailchimp_signature,
    mandrill_signature,
    parse_audience,
    parse_form_json,
    parse_mandrill,
    rebatch_mandrill,
    verify_mailchimp_signature,
    verify_mandrill_signature,
)

# Mailchimp's sample bodies and signature vectors, kept in the repository byte for byte.
MAILCHIMP = Path(__file__).resolve().parent / "fixtures" / "mailchimp"
SAMPLES = MAILCHIMP / "samples"
VECTORS = json.loads((MAILCHIMP / "signature_vectors.json").read_text())
AUDIENCE_SAMPLES = sorted(p.stem for p in SAMPLES.glob("mc_*.txt") if ".meta" not in p.name)


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.txt").read_bytes()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


# --- audience samples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "type_", "list_id", "email", "old_email", "fired_at", "dedup_key"),
    [
        ("mc_doc_subscribe", "subscribe", "a6b5da1054", "api@mailchimp.com", None,
         "2009-03-26 21:35:57", "subscribe|8a25ff1d98|2009-03-26 21:35:57"),
        ("mc_doc_unsubscribe", "unsubscribe", "a6b5da1054", "api+unsub@mailchimp.com", None,
         "2009-03-26 21:40:57", "unsubscribe|8a25ff1d98|2009-03-26 21:40:57"),
        ("mc_doc_profile", "profile", "a6b5da1054", "api@mailchimp.com", None,
         "2009-03-26 21:31:21", "profile|8a25ff1d98|2009-03-26 21:31:21"),
        ("mc_doc_upemail", "upemail", "a6b5da1054", "api+new@mailchimp.com",
         "api+old@mailchimp.com", "2009-03-26 22:15:09", "upemail|51da8c3259|2009-03-26 22:15:09"),
        ("mc_doc_cleaned", "cleaned", "a6b5da1054", "api+cleaned@mailchimp.com", None,
         "2009-03-26 22:01:00", "cleaned|api+cleaned@mailchimp.com|2009-03-26 22:01:00"),
        ("mc_doc_campaign", "campaign", "a6b5da1054", None, None,
         "2009-03-26 21:31:21", "campaign|5aa2102003|2009-03-26 21:31:21"),
        ("mc_subscribe_snowplow_2014", "subscribe", "f1243a3b12", "agentsmith@snowplowtest.com",
         None, "2014-11-04 09:42:31", "subscribe|e7c77d3852|2014-11-04 09:42:31"),
        ("mc_unsubscribe_snowplow_2014", "unsubscribe", "f1243a3b12",
         "josh@snowplowanalytics.com", None, "2014-10-22 13:10:40",
         "unsubscribe|94826aa750|2014-10-22 13:10:40"),
        ("mc_unsubscribe_campaign_2020", "unsubscribe", "zzzzzzzzzz", "myuser@mydomain.com", None,
         "2020-06-23 19:59:36", "unsubscribe|zz000z00z0|2020-06-23 19:59:36"),
        ("mc_upemail_dancedeets_2017", "upemail", "93ab23d636", "mlambert+test@gmail.com",
         "mlambert@gmail.com", "2017-04-23 08:08:31", "upemail|50696b797a|2017-04-23 08:08:31"),
    ],
)  # fmt: skip
def test_audience_sample_parses_to_expected_fields(
    name: str,
    type_: str,
    list_id: str,
    email: str | None,
    old_email: str | None,
    fired_at: str,
    dedup_key: str,
) -> None:
    event = parse_audience(sample(name))
    assert event.type == type_
    assert event.list_id == list_id
    assert event.email == email
    assert event.old_email == old_email
    assert event.fired_at == utc(fired_at)
    assert event.fired_at.tzinfo is UTC
    assert event.dedup_key == dedup_key
    assert event.error is None
    assert event.warnings == ()
    assert event.fields["type"] == type_
    assert event.fields["fired_at"] == fired_at
    assert event.fields["data"] is event.data


def test_every_audience_sample_is_in_the_table() -> None:
    assert len(AUDIENCE_SAMPLES) == 10


@pytest.mark.parametrize(
    ("name", "path", "expected"),
    [
        ("mc_doc_subscribe", ("merges", "FNAME"), "Mailchimp"),
        ("mc_doc_subscribe", ("merges", "EMAIL"), "api@mailchimp.com"),
        ("mc_doc_subscribe", ("merges", "INTERESTS"), "Group1,Group2"),
        ("mc_doc_subscribe", ("ip_signup",), "10.20.10.30"),
        ("mc_doc_unsubscribe", ("action",), "unsub"),
        ("mc_doc_unsubscribe", ("reason",), "manual"),
        ("mc_doc_unsubscribe", ("campaign_id",), "cb398d21d2"),
        ("mc_doc_profile", ("merges", "LNAME"), "API"),
        ("mc_doc_cleaned", ("reason",), "hard"),
        ("mc_doc_cleaned", ("campaign_id",), "4fjk2ma9xd"),
        ("mc_doc_campaign", ("subject",), "Test Campaign Subject"),
        ("mc_doc_campaign", ("status",), "sent"),
        ("mc_doc_campaign", ("reason",), ""),
        ("mc_subscribe_snowplow_2014", ("web_id",), "210833825"),
        ("mc_subscribe_snowplow_2014", ("merges", "LNAME"), "Smith"),
        ("mc_unsubscribe_campaign_2020", ("merges", "FNAME"), "john"),
        ("mc_unsubscribe_campaign_2020", ("merges", "ADDRESS"), ""),
        ("mc_unsubscribe_campaign_2020", ("merges", "PHONE"), ""),
        ("mc_upemail_dancedeets_2017", ("new_email",), "mlambert+test@gmail.com"),
        ("mc_upemail_dancedeets_2017", ("old_email",), "mlambert@gmail.com"),
    ],
)
def test_audience_sample_nested_values(name: str, path: tuple[str, ...], expected: str) -> None:
    value: Any = parse_audience(sample(name)).data
    for key in path:
        value = value[key]
    assert value == expected


@pytest.mark.parametrize("name", ["mc_doc_upemail", "mc_upemail_dancedeets_2017", "mc_doc_cleaned"])
def test_events_without_merges_have_no_merges_key(name: str) -> None:
    assert "merges" not in parse_audience(sample(name)).data


@pytest.mark.parametrize("name", AUDIENCE_SAMPLES)
def test_encode_audience_reproduces_sample_bytes(name: str) -> None:
    body = sample(name)
    assert encode_audience(parse_audience(body).fields) == body


# --- audience edge cases ----------------------------------------------------------------------

GROUPINGS_BODY = encode_audience(
    {
        "type": "profile",
        "fired_at": "2024-01-02 03:04:05",
        "data": {
            "id": "abc",
            "merges": {
                "INTERESTS": "Dogs, Cats",
                "GROUPINGS": [
                    {"id": "1", "unique_id": "u1", "name": "Pets", "groups": "Dogs, Cats"},
                    {"id": "2", "unique_id": "u2", "name": "Topics", "groups": ""},
                ],
            },
        },
    }
)


def test_groupings_become_a_list_of_objects_and_interests_stay_a_string() -> None:
    assert b"data%5Bmerges%5D%5BGROUPINGS%5D%5B0%5D%5Bgroups%5D=Dogs%2C+Cats" in GROUPINGS_BODY
    merges = parse_audience(GROUPINGS_BODY).data["merges"]
    assert merges["INTERESTS"] == "Dogs, Cats"
    assert merges["GROUPINGS"] == [
        {"id": "1", "unique_id": "u1", "name": "Pets", "groups": "Dogs, Cats"},
        {"id": "2", "unique_id": "u2", "name": "Topics", "groups": ""},
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"g[1][n]=b&g[0][n]=a", [{"n": "a"}, {"n": "b"}]),
        (b"g[10][n]=c&g[2][n]=b&g[0][n]=a", [{"n": "a"}, {"n": "b"}, {"n": "c"}]),
        (b"g[0]=x&g[1]=y", ["x", "y"]),
        (b"g[01][n]=a", {"01": {"n": "a"}}),
        (b"g[0][n]=a&g[name]=b", {"0": {"n": "a"}, "name": "b"}),
        (b"g[9999999]=a", {"9999999": "a"}),
    ],
)
def test_numeric_index_levels(body: bytes, expected: Any) -> None:
    assert parse_audience(b"type=profile&" + body).fields["g"] == expected


def test_duplicate_field_last_value_wins_with_warning() -> None:
    body = b"type=subscribe&data%5Bemail%5D=first%40x.com&data[email]=second%40x.com"
    event = parse_audience(body)
    assert event.email == "second@x.com"
    assert event.warnings == ("duplicate_field:data[email]",)


@pytest.mark.parametrize(
    ("body", "expected_merges"),
    [
        (b"data[merges]=flat&data[merges][FNAME]=Ann", {"FNAME": "Ann"}),
        (b"data[merges][FNAME]=Ann&data[merges]=flat", "flat"),
    ],
)
def test_value_and_group_under_one_name_last_wins(body: bytes, expected_merges: Any) -> None:
    event = parse_audience(b"type=profile&" + body)
    assert event.data["merges"] == expected_merges
    assert any(w.startswith("conflicting_field:") for w in event.warnings)


@pytest.mark.parametrize(
    ("body", "email"),
    [
        (b"type=subscribe&data[email]=caf\xff%40x.com", "caf\ufffd@x.com"),
        (b"type=subscribe&data[email]=caf%FF%40x.com", "caf\ufffd@x.com"),
        (b"type=subscribe&data[email]=caf%C3%A9%40x.com", "caf\u00e9@x.com"),
    ],
)
def test_invalid_utf8_is_replaced_and_flagged(body: bytes, email: str) -> None:
    event = parse_audience(body)
    assert event.email == email
    assert event.type == "subscribe"
    assert ("invalid_utf8" in event.warnings) == ("\ufffd" in email)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty body"),
        (b"  \r\n", "empty body"),
        (b"fired_at=2020-01-01+00%3A00%3A00&data[id]=1", "no type field"),
        (b"type=&data[id]=1", "no type field"),
        (b"type[x]=subscribe", "no type field"),
        (b"mandrill_events=%5B%5D", "no type field"),
        (b"\x00\xff\xfe", "no type field"),
    ],
)
def test_body_without_type_is_unknown_with_error(body: bytes, error: str) -> None:
    event = parse_audience(body)
    assert event.type == "unknown"
    assert event.error is not None
    assert event.error.startswith(error)
    assert event.dedup_key is None


def test_unrecognised_type_is_kept_and_warned() -> None:
    event = parse_audience(b"type=future_thing&fired_at=2020-01-01+00%3A00%3A00&data[id]=7")
    assert event.type == "future_thing"
    assert event.error is None
    assert event.warnings == ("unrecognised_type:future_thing",)
    assert event.dedup_key == "future_thing|7|2020-01-01 00:00:00"


@pytest.mark.parametrize("type_", sorted(AUDIENCE_TYPES))
def test_every_documented_type_is_recognised(type_: str) -> None:
    event = parse_audience(f"type={type_}&data[list_id]=L1".encode())
    assert (event.type, event.list_id, event.error, event.warnings) == (type_, "L1", None, ())


@pytest.mark.parametrize("type_", ["sms_subscribe", "sms_unsubscribe", "upsms", "sms_campaign"])
def test_sms_types_take_email_from_merges(type_: str) -> None:
    base = f"type={type_}&data[sms_phone_number]=%2B15551234&data[merges][EMAIL]=m%40x.com"
    assert parse_audience(base.encode()).email == "m@x.com"
    assert parse_audience(f"{base}&data[email]=d%40x.com".encode()).email == "d@x.com"


def test_merges_email_is_not_used_for_non_sms_types() -> None:
    assert parse_audience(b"type=subscribe&data[merges][EMAIL]=m%40x.com").email is None


@pytest.mark.parametrize(
    ("body", "dedup_key"),
    [
        (b"type=upemail&fired_at=2020-01-01+00%3A00%3A00&data[new_email]=n%40x.com",
         "upemail|n@x.com|2020-01-01 00:00:00"),
        (b"type=upemail&fired_at=2020-01-01+00%3A00%3A00&data[new_id]=N1&data[new_email]=n%40x",
         "upemail|N1|2020-01-01 00:00:00"),
        (b"type=upemail&fired_at=2020-01-01+00%3A00%3A00&data[id]=ignored", None),
        (b"type=subscribe&data[id]=1", None),
        (b"type=subscribe&fired_at=2020-01-01+00%3A00%3A00", None),
        (b"type=subscribe&fired_at=2020-01-01+00%3A00%3A00&data[id]=", None),
        (b"type=subscribe&fired_at=yesterday&data[id]=1", "subscribe|1|yesterday"),
    ],
)  # fmt: skip
def test_dedup_key_rules(body: bytes, dedup_key: str | None) -> None:
    assert parse_audience(body).dedup_key == dedup_key


@pytest.mark.parametrize(
    "fired_at", ["yesterday", "2009-02-30+10%3A00%3A00", "2009-03-26T21%3A35%3A57", "2009-03-26"]
)
def test_unreadable_fired_at_is_none_and_warned(fired_at: str) -> None:
    event = parse_audience(f"type=subscribe&fired_at={fired_at}".encode())
    assert event.fired_at is None
    assert "bad_fired_at" in event.warnings


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("data[email", {"data[email": "v"}),
        ("data]email[", {"data]email[": "v"}),
        ("data[]", {"data[]": "v"}),
        ("data[a][]", {"data[a][]": "v"}),
        ("[email]", {"[email]": "v"}),
        ("data[a[b]]", {"data[a[b]]": "v"}),
        ("", {"": "v"}),
    ],
)
def test_keys_with_unbalanced_or_empty_brackets_are_literal(key: str, expected: Any) -> None:
    fields = parse_audience(b"type=x&" + quote_plus(key).encode() + b"=v").fields
    assert fields == {"type": "x", **expected}


def test_absurd_nesting_is_capped_and_flagged_without_losing_the_value() -> None:
    key = "data" + "".join(f"[k{i}]" for i in range(1, 20))
    event = parse_audience(b"type=profile&" + quote_plus(key).encode() + b"=deep")
    assert "nesting_too_deep" in event.warnings
    node: Any = event.data
    for i in range(1, 7):
        node = node[f"k{i}"]
    assert node == {"k7" + "".join(f"[k{i}]" for i in range(8, 20)): "deep"}


def test_extra_and_missing_fields_are_tolerated() -> None:
    event = parse_audience(b"type=subscribe&surprise=1&data[new_thing][x]=y&novalue&&=")
    assert (event.type, event.error, event.email, event.list_id) == ("subscribe", None, None, None)
    assert event.fields["surprise"] == "1"
    assert event.fields["novalue"] == ""
    assert event.data == {"new_thing": {"x": "y"}}


def test_data_sent_as_plain_value_is_flagged() -> None:
    event = parse_audience(b"type=subscribe&data=oops")
    assert event.data == {}
    assert event.warnings == ("data_not_nested",)


def test_warnings_are_bounded() -> None:
    body = b"type=x&" + b"&".join(b"k%d=1&k%d=2" % (i, i) for i in range(200))
    warnings = parse_audience(body).warnings
    assert len(warnings) == 32
    assert warnings[-1] == "too_many_warnings"


# --- Customer Journey bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "data", "error"),
    [
        (b'{"email": "*|EMAIL|*"}', "application/json", {"email": "*|EMAIL|*"}, None),
        (b'{"a": 1}', "application/json; charset=utf-8", {"a": 1}, None),
        (b'  {"a": [1, 2]}', None, {"a": [1, 2]}, None),
        (b"[1, 2]", "application/vnd.example+json", [1, 2], None),
        (b'{"a": 1}', "text/plain", {"a": 1}, None),
        (b"email=a%40b.com&merges[FNAME]=Ann", "application/x-www-form-urlencoded",
         {"email": "a@b.com", "merges": {"FNAME": "Ann"}}, None),
        (b"email=a%40b.com", None, {"email": "a@b.com"}, None),
        (b"{not json", "text/plain", {"{not json": ""}, None),
        (b"{not json", "application/json", None, "invalid JSON"),
        (b"\xff\xfe", "application/json", None, "invalid JSON"),
        (b"name=caf%FF", None, {"name": "caf\ufffd"}, "invalid UTF-8 (replaced)"),
        (b"", "application/json", None, "empty body"),
        (b" \n", None, None, "empty body"),
    ],
)  # fmt: skip
def test_parse_form_json(
    body: bytes, content_type: str | None, data: Any, error: str | None
) -> None:
    got_data, got_error = parse_form_json(body, content_type)
    assert got_data == data
    if error is None:
        assert got_error is None
    else:
        assert got_error is not None
        assert got_error.startswith(error)


# --- Mandrill ---------------------------------------------------------------------------------

ALL_TYPES = [
    "send", "deferral", "hard_bounce", "soft_bounce", "open", "click", "spam", "unsub", "reject",
    "blacklist.add", "blacklist.change", "blacklist.remove", "whitelist.add", "whitelist.remove",
]  # fmt: skip


def decoded_events(name: str) -> bytes:
    return parse_qs(sample(name).decode())["mandrill_events"][0].encode()


def test_mandrill_all_event_types_gives_one_event_per_element() -> None:
    batch = parse_mandrill(sample("mandrill_all_event_types"))
    assert batch.error is None
    assert [event.type for event in batch.events] == ALL_TYPES
    for event in batch.events:
        assert event.email == "example.webhook@mandrillapp.com"
        assert event.fired_at == datetime(2015, 1, 3, 16, 43, 27, tzinfo=UTC)
    assert batch.events[0].message_id == "fa239ebedd0a4831a3eefa59e880d8b2"
    assert batch.events[0].dedup_key == "fa239ebedd0a4831a3eefa59e880d8b2:send:1420303407"
    assert batch.events[9].message_id is None
    assert batch.events[9].dedup_key == ("blacklist.add:example.webhook@mandrillapp.com:1420303407")


@pytest.mark.parametrize("name", ["mandrill_all_event_types", "mandrill_sync_blacklist_add"])
def test_mandrill_raw_texts_are_exact_slices_of_the_decoded_array(name: str) -> None:
    decoded = decoded_events(name)
    assert decoded == (SAMPLES / f"{name}.mandrill_events.json").read_bytes()
    expected = json.loads(decoded)
    events = parse_mandrill(sample(name)).events
    assert len(events) == len(expected)
    position = decoded.index(b"[") + 1
    for event, element in zip(events, expected, strict=True):
        start = decoded.index(event.raw, position)
        assert decoded[position:start].strip(b" \n") in (b"", b",")
        assert decoded[start : start + len(event.raw)] == event.raw
        assert json.loads(event.raw) == element == event.data
        position = start + len(event.raw)
    assert decoded[position:].strip(b" \n") == b"]"


def test_mandrill_sync_sample_is_blacklist_add() -> None:
    (event,) = parse_mandrill(sample("mandrill_sync_blacklist_add")).events
    assert event.type == "blacklist.add"
    assert event.email == "blacklist@mandrilldotnet.org"
    assert event.message_id is None
    assert event.fired_at == datetime(2017, 1, 1, 16, 56, 20, tzinfo=UTC)
    assert event.dedup_key == "blacklist.add:blacklist@mandrilldotnet.org:1483289780"


def test_mandrill_validation_post_is_an_empty_batch() -> None:
    batch = parse_mandrill(sample("mandrill_validation_post"))
    assert (batch.events, batch.error) == ((), None)


@pytest.mark.parametrize(
    "name", ["mandrill_all_event_types", "mandrill_sync_blacklist_add", "mandrill_validation_post"]
)
def test_rebatch_round_trips_raw_texts(name: str) -> None:
    raws = [event.raw for event in parse_mandrill(sample(name)).events]
    for subset in (raws, raws[::2], raws[1:2]):
        batch = parse_mandrill(rebatch_mandrill(subset))
        assert batch.error is None
        assert [event.raw for event in batch.events] == subset


def test_rebatch_body_is_a_single_percent_encoded_field() -> None:
    body = rebatch_mandrill([b'{"event":"send","msg":{"subject":"a b/c"}}', b"{}"])
    assert body == (
        b"mandrill_events=%5B%7B%22event%22%3A%22send%22%2C%22msg%22%3A%7B%22subject%22%3A"
        b"%22a+b%2Fc%22%7D%7D%2C%7B%7D%5D"
    )


@pytest.mark.parametrize(
    ("array", "raws"),
    [
        ('[{"a": "x,]}"}, {"b": "\\"],"}]', ['{"a": "x,]}"}', '{"b": "\\"],"}']),
        ('[{"a": "\\\\"},{"b":[1,[2,{"c":"]"}]]}]', ['{"a": "\\\\"}', '{"b":[1,[2,{"c":"]"}]]}']),
        ('\n[\n\t{ "a" : 1 }\r\n ,\n{}\n]\n', ['{ "a" : 1 }', "{}"]),
        ('[{"s": "Grüße ✓ \\u00e9"}]', ['{"s": "Grüße ✓ \\u00e9"}']),
        ('[1, "x", null, [], true]', ["1", '"x"', "null", "[]", "true"]),
        ("[ ]", []),
    ],
)
def test_mandrill_scanner_honours_strings_escapes_and_nesting(array: str, raws: list[str]) -> None:
    batch = parse_mandrill(b"mandrill_events=" + quote_plus(array).encode())
    assert batch.error is None
    assert [event.raw for event in batch.events] == [raw.encode() for raw in raws]


def test_mandrill_elements_that_are_not_objects_are_unknown_events() -> None:
    events = parse_mandrill(b"mandrill_events=" + quote_plus('[1, {"x": 2}]').encode()).events
    assert [(e.type, e.data, e.dedup_key) for e in events] == [
        ("unknown", {}, None),
        ("unknown", {"x": 2}, None),
    ]


@pytest.mark.parametrize(
    ("event", "fired_at", "dedup_key"),
    [
        ({"event": "open", "_id": "m1", "ts": 1.5},
         datetime.fromtimestamp(1.5, UTC), "m1:open:1.5"),
        ({"event": "open", "_id": "m1"}, None, None),
        ({"event": "open", "_id": "m1", "ts": "1"}, None, None),
        ({"event": "open", "_id": "m1", "ts": True}, None, None),
        ({"event": "open", "_id": "m1", "ts": 10**13}, None, "m1:open:10000000000000"),
        ({"event": "inbound", "msg": {"email": "in@x.com"}, "ts": 5},
         datetime.fromtimestamp(5, UTC), "inbound:in@x.com:5"),
        ({"type": "whitelist", "action": "add", "ts": 5}, datetime.fromtimestamp(5, UTC), None),
        ({"type": "whitelist", "ts": 5}, datetime.fromtimestamp(5, UTC), None),
    ],
)  # fmt: skip
def test_mandrill_event_time_and_dedup_key(
    event: dict[str, Any], fired_at: datetime | None, dedup_key: str | None
) -> None:
    (parsed,) = parse_mandrill(rebatch_mandrill([json.dumps(event).encode()])).events
    assert (parsed.fired_at, parsed.dedup_key) == (fired_at, dedup_key)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "no mandrill_events field"),
        (b"type=subscribe", "no mandrill_events field"),
        (b"mandrill_events=", "mandrill_events is not valid JSON"),
        (b"mandrill_events=%5B", "mandrill_events is not valid JSON"),
        (b"mandrill_events=%5B1%2C%5D", "mandrill_events is not valid JSON"),
        (b"mandrill_events=%7B%7D", "mandrill_events is not a JSON array"),
        (b"mandrill_events=%5B%22%FF%22%5D", "mandrill_events is not valid UTF-8"),
        (b'mandrill_events=["\xff"]', "mandrill_events is not valid UTF-8"),
    ],
)
def test_unusable_mandrill_bodies_give_an_error_and_no_events(body: bytes, error: str) -> None:
    assert parse_mandrill(body) == MandrillBatch((), error)


def test_repeated_mandrill_events_field_last_wins() -> None:
    batch = parse_mandrill(b"mandrill_events=%5B%5D&mandrill_events=%5B%7B%7D%5D")
    assert [event.raw for event in batch.events] == [b"{}"]


# --- signatures -------------------------------------------------------------------------------

MANDRILL_VECTORS = VECTORS["mandrill"]
MAILCHIMP_VECTORS = VECTORS["mailchimp_marketing"]


@pytest.mark.parametrize("vector", MANDRILL_VECTORS, ids=lambda v: f"{v['key']}-{v['url']}")
def test_mandrill_signature_vectors(vector: dict[str, str]) -> None:
    body = (MAILCHIMP / vector["body_file"]).read_bytes()
    key, url, expected = vector["key"], vector["url"], vector["expected"]
    assert mandrill_signature(key, url, body) == expected
    assert verify_mandrill_signature(key, url, body, expected)
    for index in (0, len(body) // 2, len(body) - 1):
        assert not verify_mandrill_signature(key, url, flip(body, index), expected)
    assert not verify_mandrill_signature(key[:-1] + chr(ord(key[-1]) + 1), url, body, expected)
    assert not verify_mandrill_signature(key, url + "/", body, expected)
    assert not verify_mandrill_signature(key, url.replace("relay", "relaz"), body, expected)
    assert not verify_mandrill_signature(key, url, body, expected[:-2] + "A=")


@pytest.mark.parametrize("header", [None, "", "not base64 ✓", "AvSOk/i+MIgNFvL9iJI0sAAm0Tw"])
def test_mandrill_signature_rejects_missing_or_garbled_header(header: str | None) -> None:
    body = sample("mandrill_all_event_types")
    url = "https://relay.example.com/hooks/mandrill"
    assert not verify_mandrill_signature("k3yForRelayTests", url, body, header)


def test_mandrill_signature_sorts_fields_and_uses_decoded_values() -> None:
    body = b"b=2+%26&a=1"
    assert mandrill_signature("k", "https://x/", body) == mandrill_signature(
        "k", "https://x/", b"a=1&b=2%20%26"
    )
    assert mandrill_signature("k", "https://x/", body) != mandrill_signature(
        "k", "https://x/", b"a=1&b=2"
    )


@pytest.mark.parametrize("vector", MAILCHIMP_VECTORS, ids=lambda v: v["secret"])
def test_mailchimp_signature_vector(vector: dict[str, Any]) -> None:
    body = (MAILCHIMP / vector["body_file"]).read_bytes()
    secret, ts, header = vector["secret"], vector["timestamp"], vector["expected"]
    assert mailchimp_signature(secret, ts, body) == header
    assert verify_mailchimp_signature(secret, body, header, now=ts) is None
    for index in (0, len(body) // 2, len(body) - 1):
        assert verify_mailchimp_signature(secret, flip(body, index), header, now=ts) == (
            "signature mismatch"
        )
    assert verify_mailchimp_signature(secret + "x", body, header, now=ts) == "signature mismatch"


TS = 1764000000
SECRET = "whsec_relay_example"
BODY = b"type=subscribe&data%5Bid%5D=1"
GOOD = mailchimp_signature(SECRET, TS, BODY)
GOOD_HEX = GOOD.split("v1=")[1]


@pytest.mark.parametrize(
    ("header", "now", "reason"),
    [
        (GOOD, TS + 300, None),
        (GOOD, TS - 300, None),
        (GOOD.replace(",", " , "), TS, None),
        (f"t={TS},v1={GOOD_HEX.upper()}", TS, None),
        (f"t={TS},v1={'0' * 64},v1={GOOD_HEX}", TS, None),
        (f"v0=zz,t={TS},v1={GOOD_HEX}", TS, None),
        (None, TS, "missing signature"),
        ("", TS, "missing signature"),
        ("   ", TS, "missing signature"),
        ("garbage", TS, "malformed signature"),
        (f"t={TS}", TS, "malformed signature"),
        (f"v1={GOOD_HEX}", TS, "malformed signature"),
        (f"t=abc,v1={GOOD_HEX}", TS, "malformed signature"),
        (f"t=-{TS},v1={GOOD_HEX}", TS, "malformed signature"),
        (f"t={TS},t={TS},v1={GOOD_HEX}", TS, "malformed signature"),
        (f"t={'9' * 40},v1={GOOD_HEX}", TS, "malformed signature"),
        (GOOD, TS + 301, "timestamp outside tolerance"),
        (GOOD, TS - 301, "timestamp outside tolerance"),
        (f"t={TS + 1},v1={GOOD_HEX}", TS, "signature mismatch"),
        (f"t={TS},v1={GOOD_HEX[:-1]}", TS, "signature mismatch"),
        (f"t={TS},v1=✓", TS, "signature mismatch"),
    ],
)
def test_verify_mailchimp_signature(header: str | None, now: float, reason: str | None) -> None:
    assert verify_mailchimp_signature(SECRET, BODY, header, now=now) == reason


def test_mailchimp_signature_tolerance_is_configurable() -> None:
    assert verify_mailchimp_signature(SECRET, BODY, GOOD, now=TS + 60, tolerance=30) == (
        "timestamp outside tolerance"
    )
