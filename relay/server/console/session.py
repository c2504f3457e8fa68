"""Console sessions and CSRF tokens (pure): signed cookies that never carry the admin token.

    key = session_key("the admin token")
    cookie = issue(key, "alice", now=time.time())
    read(key, cookie, now=time.time())   # -> Session(sid=..., operator="alice", ...)

A session is signed, not stored: every relay process that shares the admin token accepts it, so
a console works behind several processes (or machines) without a session table. The signing key
is derived from the token, so rotating the token ends every session at once; the cookie holds
only a random session id, the operator's name and an expiry, never the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson

SESSION_COOKIE = "relay_console"
LOGIN_COOKIE = "relay_console_login"
# A working day and then some: an operator on a night shift is not logged out mid-incident.
SESSION_SECONDS = 12 * 3600.0
MAX_OPERATOR = 64
# Bearer clients (scripts) have no cookie; their CSRF token is bound to this fixed id.
BEARER_SID = "bearer"


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    operator: str
    expires_at: float


def session_key(token: str) -> bytes:
    """The signing key: a one-way derivation of the admin token, so a cookie reveals nothing."""
    return hmac.new(token.encode("utf-8"), b"relay console session v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, purpose: bytes, data: bytes) -> bytes:
    return hmac.new(key, purpose + b"\0" + data, hashlib.sha256).digest()


def issue(key: bytes, operator: str, now: float, sid: str | None = None) -> str:
    """A session cookie value for ``operator``, valid for SESSION_SECONDS from ``now``."""
    payload = orjson.dumps(
        {"sid": sid or secrets.token_urlsafe(18), "op": operator, "exp": now + SESSION_SECONDS}
    )
    return f"{_b64(payload)}.{_b64(_sign(key, b'session', payload))}"


def read(key: bytes, cookie: str | None, now: float) -> Session | None:
    """The session a cookie value proves, or None when it is missing, forged or expired."""
    if not cookie or cookie.count(".") != 1:
        return None
    body, _, signature = cookie.partition(".")
    try:
        payload, given = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _sign(key, b"session", payload)):
        return None
    try:
        data = orjson.loads(payload)
        session = Session(str(data["sid"]), str(data["op"]), float(data["exp"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return session if session.expires_at > now else None


def csrf_token(key: bytes, sid: str) -> str:
    """The token every state-changing form of this session carries (synchronizer pattern)."""
    return _b64(_sign(key, b"csrf", sid.encode("utf-8")))


def csrf_valid(key: bytes, sid: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(
        (given or "").encode("utf-8"), csrf_token(key, sid).encode("ascii")
    )


def new_login_nonce() -> str:
    """A random value for the login form's own cookie, so the login POST needs a CSRF token too
    (a forged login would put an operator into an attacker's session)."""
    return secrets.token_urlsafe(18)


def login_sid(nonce: str) -> str:
    return "login:" + nonce


def operator_problem(name: str) -> str | None:
    """Why a name typed into the login form cannot label an operator's actions, or None."""
    if not name:
        return "enter your name: every action you take is recorded with it"
    if len(name) > MAX_OPERATOR:
        return f"a name of at most {MAX_OPERATOR} characters, please"
    if not name.isprintable():
        return "the name may not contain control characters"
    return None


def safe_next(target: str | None) -> str:
    """Where to go after login: a console page on this site, never another origin."""
    if (
        target
        and target.startswith("/console")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return "/console"
