"""Bring a PostgreSQL database's schema up to date, safely when many processes start at once."""

from __future__ import annotations

import logging

import asyncpg

from relay.config import StorageConfig, redact_url
from relay.store.base import StoreError
from relay.store.postgres.connect import STORE_ERRORS, connect_kwargs, lock_key, store_error
from relay.store.sqlfile import migrations

log = logging.getLogger("relay.store")

PACKAGE = "relay.store.postgres"

_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS relay_migrations (version integer PRIMARY KEY,"
    " applied_at double precision NOT NULL DEFAULT extract(epoch FROM now()))"
)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply every numbered migration not applied yet, each in its own transaction; how many.

    Each transaction first takes a blocking advisory lock, so processes starting together take
    turns: the second finds the migration done and skips it (never "try the lock and go on", which
    would let a process use a half-migrated schema). The bookkeeping table is created under the
    lock too: CREATE TABLE IF NOT EXISTS is not safe against itself.
    """
    scripts = migrations(PACKAGE)
    applied = 0
    for version, script in scripts:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("migrate"))
            await conn.execute(_BOOKKEEPING)
            if await conn.fetchval("SELECT 1 FROM relay_migrations WHERE version = $1", version):
                continue
            log.info("applying PostgreSQL schema migration %04d", version)
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute(script)
            await conn.execute("INSERT INTO relay_migrations (version) VALUES ($1)", version)
            applied += 1
    newest = await conn.fetchval("SELECT max(version) FROM relay_migrations")
    known = scripts[-1][0] if scripts else 0
    if newest is not None and newest > known:
        # A newer relay migrated this database; this one does not know the schema it made.
        raise StoreError(
            f"the database schema is at version {newest}, newer than this relay knows ({known}):"
            " upgrade relay"
        )
    return applied


def latest_version() -> int:
    """The schema version this relay's migrations build."""
    scripts = migrations(PACKAGE)
    return scripts[-1][0] if scripts else 0


async def schema_version(conn: asyncpg.Connection) -> int:
    """The newest migration applied to the database; 0 for a database relay never used."""
    if await conn.fetchval("SELECT to_regclass('relay_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM relay_migrations"))


async def migrate_database(config: StorageConfig) -> tuple[int, int]:
    """Create or upgrade the database of ``config``: (migrations applied, schema version)."""
    kwargs = connect_kwargs(config, "migrate")
    # A migration may rewrite a large table: no client-side limit on how long a statement takes
    # (each migration lifts the server's statement_timeout for itself).
    kwargs["command_timeout"] = None
    where = redact_url(config.url)
    try:
        conn = await asyncpg.connect(**kwargs)
    except STORE_ERRORS as exc:
        raise StoreError(f"cannot open PostgreSQL database {where}: {store_error(exc)}") from None
    try:
        applied = await migrate(conn)
        return applied, await schema_version(conn)
    except STORE_ERRORS as exc:
        reason = store_error(exc)
        raise StoreError(f"cannot migrate PostgreSQL database {where}: {reason}") from None
    finally:
        await conn.close()
