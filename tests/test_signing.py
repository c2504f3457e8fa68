"""Tests for relay.signing: Standard Webhooks headers as relay sends and receivers check them."""

import base64
from collections.abc import Mapping

import pytest

from relay.protocols.standard_webhooks import (
    signing_key,
    standard_webhook_headers,
    verify_standard_webhook,
)

# The reference vector from the Standard Webhooks project's own Python library tests:
# standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py, test_sign_function.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"relay-outbound-key-0123456789abc").decode()
NOW = 1_764_000_000
BODY = b'{"type":"subscribe","email":"a@b.com"}'


def signed(secret: str = SECRET, msg_id: str = "evt_1", ts: int = NOW) -> dict[str, str]:
    return standard_webhook_headers(secret, msg_id, ts, BODY)


def test_spec_vector_signs_to_the_published_signature() -> None:
    headers = standard_webhook_headers(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SPEC_SIGNATURE,
    }
    assert verify_standard_webhook(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_round_trip_verifies() -> None:
    assert verify_standard_webhook(SECRET, signed(), BODY, now=NOW)


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ("whsec_" + base64.b64encode(b"\x00\xffkey").decode(), b"\x00\xffkey"),
        ("plain-secret", b"plain-secret"),
        ("whsec", b"whsec"),
        ("caf\u00e9", "caf\u00e9".encode()),
    ],
)
def test_signing_key_decodes_whsec_prefix_only(secret: str, key: bytes) -> None:
    assert signing_key(secret) == key


def test_whsec_secret_signs_with_the_decoded_key() -> None:
    raw = "relay-outbound-key-0123456789abc"
    assert signed(SECRET) == signed(raw)
    assert verify_standard_webhook(raw, signed(SECRET), BODY, now=NOW)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_abc"])
def test_whsec_secret_that_is_not_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        signed(secret)
    assert not verify_standard_webhook(secret, signed(), BODY, now=NOW)


def tampered(change: str) -> tuple[Mapping[str, str], bytes]:
    headers = signed()
    if change == "body":
        return headers, BODY.replace(b"a@b", b"a@c")
    if change == "id":
        return {**headers, "webhook-id": "evt_2"}, BODY
    if change == "timestamp":
        return {**headers, "webhook-timestamp": str(NOW + 1)}, BODY
    if change == "signature":
        version, _, sig = headers["webhook-signature"].partition(",")
        return {**headers, "webhook-signature": f"{version},{sig[:-2]}A="}, BODY
    if change == "version":
        return {
            **headers,
            "webhook-signature": headers["webhook-signature"].replace("v1", "v2"),
        }, BODY
    raise AssertionError(change)


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "signature", "version"])
def test_tampered_request_fails(change: str) -> None:
    headers, body = tampered(change)
    assert not verify_standard_webhook(SECRET, headers, body, now=NOW)


def test_other_secret_fails() -> None:
    assert not verify_standard_webhook("whsec_" + "A" * 44, signed(), BODY, now=NOW)


@pytest.mark.parametrize(
    ("now", "ok"),
    [(NOW + 300, True), (NOW - 300, True), (NOW + 301, False), (NOW - 301, False)],
)
def test_timestamp_tolerance(now: int, ok: bool) -> None:
    assert verify_standard_webhook(SECRET, signed(), BODY, now=now) is ok


def test_stale_timestamp_fails_with_custom_tolerance() -> None:
    assert not verify_standard_webhook(SECRET, signed(), BODY, now=NOW + 61, tolerance=60)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing: str) -> None:
    headers = {k: v for k, v in signed().items() if k != missing}
    assert not verify_standard_webhook(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("timestamp", ["", "soon", "-1", "1e9", str(10**40)])
def test_unreadable_timestamp_fails(timestamp: str) -> None:
    headers = {**signed(), "webhook-timestamp": timestamp}
    assert not verify_standard_webhook(SECRET, headers, BODY, now=NOW)


def test_header_names_are_case_insensitive() -> None:
    headers = {name.title(): value for name, value in signed().items()}
    assert verify_standard_webhook(SECRET, headers, BODY, now=NOW)


def test_any_one_of_several_signatures_is_enough() -> None:
    good = signed()["webhook-signature"]
    other = signed("whsec_" + "A" * 44)["webhook-signature"]
    for value in (f"{other} {good}", f"v2,xyz {good}", f"{good}  {other}"):
        headers = {**signed(), "webhook-signature": value}
        assert verify_standard_webhook(SECRET, headers, BODY, now=NOW)
