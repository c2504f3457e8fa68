"""Checks of single config values (pure): each returns None when fine, else the reason.

parse_listen("127.0.0.1:8080")   # -> ("127.0.0.1", 8080); None when not host:port
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import urlsplit

# More processes than this is a typo, not a machine.
MAX_WORKERS = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 3986 path characters without "{" and "}", which aiohttp reads as route variables.
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


def kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def parse_listen(value: str) -> tuple[str, int] | None:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def listen_address(value: str) -> str | None:
    return None if parse_listen(value) else "must be host:port with a port from 1 to 65535"


_ANY_HOST = frozenset({"0.0.0.0", "::", ""})


def same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """True when two listen addresses would collide: one port, and one host or a wildcard."""
    return a[1] == b[1] and (a[0] == b[0] or a[0] in _ANY_HOST or b[0] in _ANY_HOST)


def worker_count(value: int | str) -> int | None:
    """``[server] workers`` as a number of processes: ``"auto"`` is one per core this process
    may run on (its CPU affinity, which containers and ``taskset`` narrow); None when invalid.

    >>> worker_count(3), worker_count("3"), worker_count(0)
    (3, None, None)
    """
    if value == "auto":
        return len(os.sched_getaffinity(0))
    if isinstance(value, int) and 1 <= value <= MAX_WORKERS:
        return value
    return None


def non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def name(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return "must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def path(value: str) -> str | None:
    if not value.startswith("/") or "?" in value or "#" in value:
        return "must be an absolute URL path without query, like /hooks/mailchimp"
    if not _PATH.fullmatch(value):
        return "may hold only URL path characters (letters, digits and -._~!$&'()*+,;=:@%/)"
    if value.startswith(("/admin", "/console", "/metrics", "/healthz", "/readyz")):
        return "collides with relay's own endpoints"
    return None


def relay_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("content-type", "content-length", "webhook-id", "webhook-timestamp",
                       "webhook-signature") or lowered.startswith("x-relay-")  # fmt: skip


def http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        return "not an http(s) URL"
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or port == 0 or not _HOST.fullmatch(host):
        return "not an http(s) URL"
    return None


# A DNS name, IPv4 address or bracketed IPv6 literal (urlsplit drops the brackets).
_HOST = re.compile(r"[A-Za-z0-9._~-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?")


def storage_url(value: str) -> str | None:
    if value == "sqlite:///:memory:":
        # Each of relay's connections would get its own empty database; nothing would persist.
        return "an in-memory database cannot be used: relay's connections would not share it"
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if value.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
        except ValueError:
            return "not a PostgreSQL URL (postgresql://user@host:5432/db)"
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            return "names no database (postgresql://user@host:5432/DBNAME)"
        return None
    return (
        "must be sqlite:///PATH (sqlite:////abs/path for an absolute path)"
        " or postgresql://user@host:5432/db"
    )
