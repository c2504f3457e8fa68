"""Authentication decisions (pure): an inbound's URL secret, Basic and bearer credentials, and the
admin API's bearer token. Every comparison is constant-time, on UTF-8 bytes."""

from __future__ import annotations

import base64
import binascii
import hmac

from relay.config import InboundConfig

REDACTED = "REDACTED"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _credential(authorization: str | None) -> tuple[str, str]:
    """An Authorization header as (lower-cased scheme, value)."""
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower(), value.strip()


def admin_auth_problem(token: str | None, authorization: str | None) -> str | None:
    """Why a request may not use the admin API, or None when its bearer token is right."""
    scheme, given = _credential(authorization)
    if token and (scheme != "bearer" or not given):
        return "missing bearer token"
    return admin_token_problem(token, given)


def admin_token_problem(token: str | None, given: str) -> str | None:
    """Why ``given`` is not the admin token (the console's login form), or None when it is."""
    if not token:
        return "admin API disabled: no [admin] token configured"
    if not given or not _same(given, token):
        return "invalid admin token"
    return None


def check_credentials(
    inbound: InboundConfig, query_secret: str | None, authorization: str | None
) -> bool:
    """True when the request carries one accepted credential (or the inbound requires none).

    The URL secret is Mailchimp's own advice for audience webhooks; Basic and bearer auth are what
    a Customer Journey step can send, and are accepted as alternatives when configured.
    """
    required = inbound.secret or inbound.bearer_token or inbound.auth_username
    if not required:
        return True
    if inbound.secret and query_secret is not None and _same(query_secret, inbound.secret):
        return True
    if not authorization:
        return False
    scheme, value = _credential(authorization)
    if scheme == "bearer" and inbound.bearer_token:
        return _same(value, inbound.bearer_token)
    if scheme == "basic" and inbound.auth_username and inbound.auth_password:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both compared, always, so timing does not tell which half was wrong.
        ok_user = _same(user, inbound.auth_username)
        ok_password = _same(password, inbound.auth_password)
        return bool(sep) and ok_user and ok_password
    return False


def mask_query(query: str) -> str:
    """The query string as stored: the ``secret`` parameter's value replaced, the rest as sent."""
    if "secret=" not in query:
        return query
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={REDACTED}" if sep and name == "secret" else part)
    return "&".join(parts)


_SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def mask_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Headers as stored: credentials relay checked (or could leak) are replaced."""
    return tuple(
        (name, REDACTED if name.lower() in _SENSITIVE_HEADERS else value) for name, value in headers
    )
