"""``relay migrate --config FILE``: the schema of the configured store brought up to date, and only that."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg

from relay.store.postgres.migrate import latest_version as postgres_version
from relay.store.sqlite.migrate import latest_version as sqlite_version
from tests.pg import pg_url, with_password
from tests.support import config_text, free_port

__all__ = ["pg_url"]  # the fixture, imported for the tests below

PASSWORD = "s3cr3t-in-the-url"


def migrate(tmp_path: Path, storage_url: str) -> subprocess.CompletedProcess[str]:
    db = tmp_path / "unused.db"
    config = tmp_path / "relay.toml"
    text = config_text(db).replace(f'url = "sqlite:///{db}"', f'url = "{storage_url}"')
    config.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "relay", "migrate", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_new_sqlite_file_is_created_at_the_latest_schema_and_then_left_alone(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/data/relay.db"
    first = migrate(tmp_path, url)
    assert (first.returncode, first.stderr) == (0, "")
    latest = sqlite_version()
    assert (
        first.stdout == f"storage {url}: schema at version {latest}, {latest} migrations applied\n"
    )
    again = migrate(tmp_path, url)
    assert again.stdout == f"storage {url}: schema at version {latest}, 0 migrations applied\n"
    with sqlite3.connect(tmp_path / "data" / "relay.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_a_postgresql_database_is_migrated_once_and_its_password_never_printed(
    tmp_path: Path, pg_url: str
) -> None:
    url = with_password(pg_url, PASSWORD)
    masked = url.replace(PASSWORD, "***")

    first = migrate(tmp_path, url)
    again = migrate(tmp_path, url)

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    latest = postgres_version()
    applied = f"{latest} migration{'' if latest == 1 else 's'} applied"
    assert first.stdout == f"storage {masked}: schema at version {latest}, {applied}\n"
    assert again.stdout == f"storage {masked}: schema at version {latest}, 0 migrations applied\n"
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM relay_migrations") == latest
        assert await conn.fetchval("SELECT to_regclass('deliveries')::text") == "deliveries"
    finally:
        await conn.close()


def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = migrate(tmp_path, f"postgresql://relay:{PASSWORD}@127.0.0.1:{port}/relay")
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"relay migrate: cannot open PostgreSQL database postgresql://relay:***@127.0.0.1:{port}/relay:"
    )
    assert PASSWORD not in line


async def test_a_schema_newer_than_this_relay_is_refused(tmp_path: Path, pg_url: str) -> None:
    url = pg_url
    assert migrate(tmp_path, url).returncode == 0
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO relay_migrations (version) VALUES (999)")
    finally:
        await conn.close()
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as sqlite:
        sqlite.execute("PRAGMA user_version = 999")
    sqlite.close()

    for store, known in ((url, postgres_version()), (f"sqlite:///{db}", sqlite_version())):
        done = migrate(tmp_path, store)
        assert done.returncode == 1
        assert done.stderr.endswith(
            f"the database schema is at version 999, newer than this relay knows ({known}):"
            " upgrade relay\n"
        ), done.stderr


def test_a_config_error_is_exit_2(tmp_path: Path) -> None:
    done = migrate(tmp_path, "mysql://db/relay")
    assert done.returncode == 2
    assert done.stderr.startswith("storage.url: must be sqlite:///PATH")
