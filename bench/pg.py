"""Fresh PostgreSQL databases for the benchmark: created for one measurement, dropped after it.

The server is ``BENCH_POSTGRES_URL`` (default: this machine's, trust auth as user postgres). It
is the machine's own service: the harness neither starts it nor pins it to a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


async def _execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        import asyncpg  # noqa: F401
    except ModuleNotFoundError:
        return "asyncpg is not installed (it comes with relay's dependencies)"
    try:
        asyncio.run(_execute("SELECT 1"))
    except (OSError, Exception) as exc:  # asyncpg's errors share no base class with OSError
        host = urlsplit(ADMIN_URL).hostname
        return f"PostgreSQL at {host} is not reachable ({exc}); set BENCH_POSTGRES_URL"
    return None


@contextlib.contextmanager
def fresh_database(purpose: str) -> Iterator[str]:
    """A new, empty database for the block; dropped afterwards even if the block fails (every
    relay on it must have stopped by then; WITH (FORCE) ends any session left over)."""
    name = f"relay_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute(f'CREATE DATABASE "{name}"'))
    try:
        yield database_url(name)
    finally:
        asyncio.run(_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
