"""Bring a SQLite database's schema up to date: numbered scripts, ``PRAGMA user_version``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

from relay.config import StorageConfig
from relay.store.base import StoreError
from relay.store.sqlfile import migrations

log = logging.getLogger("relay.store")

PACKAGE = "relay.store.sqlite"


def latest_version() -> int:
    """The schema version this relay's migrations build."""
    scripts = migrations(PACKAGE)
    return scripts[-1][0] if scripts else 0


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations newer than the database's ``user_version``, each atomically; how many.

    A database migrated by a newer relay is refused: this one does not know what its schema holds.
    """
    current = schema_version(conn)
    known = latest_version()
    if current > known:
        raise StoreError(
            f"the database schema is at version {current}, newer than this relay knows ({known}):"
            " upgrade relay"
        )
    applied = 0
    for version, script in migrations(PACKAGE):
        if version <= current:
            continue
        log.info("applying schema migration %04d", version)
        # The version bump is inside the script's transaction: a crash leaves it unapplied.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        applied += 1
    return applied


def _migrate_file(config: StorageConfig, path: str) -> tuple[int, int]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(
        sqlite3.connect(path, isolation_level=None, timeout=config.sqlite.busy_timeout)
    ) as conn:
        # What relay serve sets too: WAL is a property of the file, kept once set.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={config.sqlite.synchronous}")
        applied = migrate(conn)
        return applied, schema_version(conn)


async def migrate_database(config: StorageConfig) -> tuple[int, int]:
    """Create or upgrade the database of ``config``: (migrations applied, schema version)."""
    path = config.url.removeprefix("sqlite:///")
    try:
        return await asyncio.to_thread(_migrate_file, config, path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open SQLite database {path}: {exc}") from None
