"""Real PostgreSQL for tests: a database of its own per test, dropped afterwards.

The server is the one on ``RELAY_TEST_POSTGRES_URL`` (default: this machine's, trust auth). In
CI (``CI`` set) or with ``RELAY_REQUIRE_POSTGRES=1`` an unreachable server fails the test;
elsewhere it skips with the reason, never silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from relay.config import redact_url

ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(admin_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        reason = (
            f"PostgreSQL at {redact_url(admin_url)} unreachable ({exc}); start it (.ci/run does)"
            " or set RELAY_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI") or os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


async def create_database(admin_url: str = ADMIN_URL) -> str:
    """A new empty database; its URL."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name, admin_url)


async def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (trust auth ignores it; output must not show it)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{password}@{host}"))
