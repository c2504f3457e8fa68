"""Sign relay's outbound requests the Standard Webhooks way, and verify them as a receiver would.

See https://www.standardwebhooks.com: three headers, `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.

    >>> standard_webhook_headers("whsec_c2VjcmV0", "msg_1", 1700000000, b"{}")["webhook-id"]
    'msg_1'

relay signs what it forwards with its own key: Mailchimp's signatures expire after five minutes
and replays happen much later, so passing them on would prove nothing.
"""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping

__all__ = ["WHSEC_PREFIX", "signing_key", "standard_webhook_headers", "verify_standard_webhook"]

WHSEC_PREFIX = "whsec_"
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")


def signing_key(secret: str) -> bytes:
    """Return the HMAC key for a secret; raises ValueError for a `whsec_` secret that is not base64.

    `whsec_<base64>` is the Standard Webhooks convention (the key is the decoded bytes); any
    other secret is used as its UTF-8 bytes. Call it when loading config to fail early.
    """
    if secret.startswith(WHSEC_PREFIX):
        try:
            return base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError("a secret starting with whsec_ must continue in base64") from exc
    return secret.encode("utf-8")


def standard_webhook_headers(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one outbound request."""
    signature = _sign(signing_key(secret), msg_id, str(timestamp), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def verify_standard_webhook(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = 300.0
) -> bool:
    """Check a request the way a receiving service would; False for anything missing or wrong.

    Header names are matched case-insensitively; the signature header may hold several
    space-separated signatures (key rotation), and one valid `v1` is enough.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp", "").strip()
    signatures = lowered.get("webhook-signature")
    if not msg_id or not signatures or not _TIMESTAMP_RE.fullmatch(timestamp):
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    try:
        key = signing_key(secret)
    except ValueError:
        return False
    expected = _sign(key, msg_id, timestamp, body).encode("ascii")
    matched = False
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        if version == "v1":
            matched |= hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
    return matched


def _sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    message = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")
