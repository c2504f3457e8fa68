"""How relay connects to PostgreSQL, and which failures mean "storage unavailable" (503)."""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.config import StorageConfig, redact_url
from relay.store.base import StoreError

# Per-session settings, sent at connect: they outrank whatever the database or role says.
# - synchronous_commit on: never a 2xx before the commit is durable.
# - idle_in_transaction_session_timeout, tcp_keepalives_*, client_connection_check_interval: a
#   relay that vanished mid-transaction (partitioned, frozen) must not hold the events-order lock
#   or row locks for long; the server notices and frees them.
# - lock_timeout and statement_timeout: a stuck lock or statement fails the request (503) instead
#   of hanging it.
SERVER_SETTINGS = {
    "synchronous_commit": "on",
    "idle_in_transaction_session_timeout": "15000",
    "lock_timeout": "5000",
    "statement_timeout": "30000",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "client_connection_check_interval": "5000",
}

# The server is down, restarting, unreachable, or dropped the connection: retry later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's own state machine, confused by a connection that died mid-operation.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# Everything that means "not done, answer 503": connection trouble and any server error.
STORE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


def connect_kwargs(config: StorageConfig, role: str) -> dict[str, Any]:
    """Keyword arguments for asyncpg.connect / create_pool, for one kind of connection."""
    settings = config.postgresql
    kwargs: dict[str, Any] = {
        "dsn": config.url,
        "timeout": settings.connect_timeout,
        "command_timeout": settings.command_timeout,
        "server_settings": {
            **SERVER_SETTINGS,
            "application_name": f"relay/{role}/{socket.gethostname()}/{os.getpid()}"[:63],
        },
    }
    if settings.password is not None:
        kwargs["password"] = settings.password
    return kwargs


def store_error(exc: BaseException) -> StoreError:
    """A one-line reason for an asyncpg failure, with no password in it."""
    if isinstance(exc, TimeoutError):
        return StoreError("PostgreSQL did not answer in time")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreError(redact_url(text))


def lock_key(name: str) -> int:
    """A stable advisory-lock key for one of relay's cluster-wide sections."""
    return zlib.crc32(f"relay:{name}".encode())


def clean_text(value: str | None) -> str | None:
    """Text PostgreSQL can store: it refuses NUL characters, which webhooks may carry (%00)."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for unnest($1::type[], ...)."""
    return [[row[i] for row in rows] for i in range(width)] if rows else [[] for _ in range(width)]
