"""``relay migrate`` and ``relay copy-store``: commands that work on a store, not on a relay.

Argument parsing and output only; the work is in relay.store.migrate and relay.store.copy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.cli.progress import Progress
from relay.cli.store_lock import StoreLock, StoreLockError, acquire_store_lock
from relay.config import Settings, StorageConfig, redact_url
from relay.config.checks import storage_url
from relay.store import StoreError
from relay.store.bulk import store_location
from relay.store.copy import BATCH_ROWS, CopyError, CopyReport, copy_store
from relay.store.migrate import migrate_store

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C

LoadSettings = Callable[[str], Settings | None]

MIGRATE_HELP = """\
Create or upgrade the schema of the store the config names (storage.url), print one line and
exit. PostgreSQL deployments run it once before rolling out new relay processes (relay serve
also migrates on start; processes starting together take turns). Safe while relay runs.

Exit status: 0 when the schema is up to date; 1 with one line when the database cannot be
reached or its schema is newer than this relay; 2 for a config error.
"""

COPY_HELP = """\
Copy every request, event, delivery and attempt, and the replays, dedup entries, paused
destinations and leases that make the copy a working store, from one store to another: SQLite
to PostgreSQL when a deployment outgrows one machine (or back, or SQLite to SQLite).

Stop relay on the source first (at least stop sending it webhooks): what relay writes to the
source during the copy is not copied. A SQLite file a relay serve holds is refused, and none
can start on the source or the target while the copy runs. The source is only read.

The target is migrated first. It must be empty, or hold an interrupted copy of the same source:
after Ctrl-C, kill -9 or a lost connection, run the same command again and it continues after
the last batch it committed, without duplicating or skipping a row. Ids, event positions
(cursors) and delivery, attempt and replay numbers are kept; new ones continue above them.
At the end the counts of every table (and of deliveries per state) are compared.

Passwords: rather than in the URL (the command line is visible to other users of the
machine), put them in PGPASSWORD or ~/.pgpass. They are masked in everything printed.

Exit status: 0 when the copy is complete and verified; 1 when it is refused, fails, or the
counts differ; 2 for a bad URL; 130 when interrupted (run it again to continue).
"""

COPY_EXAMPLE = """\
example:
  relay copy-store --from sqlite:////var/lib/relay/relay.db \\
                   --to postgresql://relay@db.internal:5432/relay
"""


def add_storage_commands(sub: Any, load_settings: LoadSettings) -> None:
    """Register ``migrate`` and ``copy-store``; ``load_settings`` reads a config or reports it."""
    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the configured store's schema, then exit",
        description=MIGRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    migrate.set_defaults(func=lambda args: cmd_migrate(args, load_settings))

    copy = sub.add_parser(
        "copy-store",
        help="copy every request, event, delivery and attempt to another store (resumable)",
        description=COPY_HELP,
        epilog=COPY_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "--from", dest="source", required=True, metavar="URL",
        help="the store to copy: sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
    )  # fmt: skip
    copy.add_argument(
        "--to", dest="target", required=True, metavar="URL",
        help="the store to copy into (created or migrated first)",
    )  # fmt: skip
    copy.add_argument(
        "--force",
        action="store_true",
        help="if the target holds other data (or a copy of another store), DELETE it first",
    )
    copy.add_argument(
        "--batch-size", type=_positive, default=BATCH_ROWS, metavar="ROWS",
        help=f"rows per target transaction (default {BATCH_ROWS}; a batch also stops at 32 MiB)",
    )  # fmt: skip
    copy.set_defaults(func=cmd_copy_store)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}")
    return value


def _fail(command: str, message: str) -> None:
    print(f"relay {command}: {message}", file=sys.stderr)


def cmd_migrate(args: argparse.Namespace, load_settings: LoadSettings) -> int:
    settings = load_settings(args.config)
    if settings is None:
        return EXIT_USAGE
    try:
        report = asyncio.run(migrate_store(settings.storage))
    except StoreError as exc:
        _fail("migrate", str(exc))
        return EXIT_FAILURE
    print(report.summary())
    return EXIT_OK


def cmd_copy_store(args: argparse.Namespace) -> int:
    for option, url in (("--from", args.source), ("--to", args.target)):
        problem = storage_url(url)
        if problem is not None:
            _fail("copy-store", f"{option} {redact_url(url)}: {problem}")
            return EXIT_USAGE
    source, target = StorageConfig(url=args.source), StorageConfig(url=args.target)
    if store_location(source.url) == store_location(target.url):
        _fail("copy-store", "--from and --to name the same store")
        return EXIT_FAILURE
    locks: list[StoreLock] = []
    try:
        # The lock relay serve holds on a SQLite file: a relay running on the source or the
        # target is found for sure, and none can start on either while the copy runs.
        for role, storage in (("the source", source), ("the target", target)):
            if storage is source and not _sqlite_file_exists(storage):
                continue  # nothing to lock; the copy says the source is missing
            try:
                lock = acquire_store_lock(storage, environ={})
            except StoreLockError as exc:
                _fail("copy-store", f"cannot copy while a relay uses {role}: {exc}")
                return EXIT_FAILURE
            if lock is not None:
                locks.append(lock)
        return _copy(args, source, target)
    finally:
        for lock in locks:
            lock.release()


def _sqlite_file_exists(storage: StorageConfig) -> bool:
    return storage.backend != "sqlite" or Path(storage.url.removeprefix("sqlite:///")).is_file()


def _copy(args: argparse.Namespace, source: StorageConfig, target: StorageConfig) -> int:
    progress = Progress(sys.stdout, terminal=sys.stdout.isatty())
    progress.note(f"copying {redact_url(args.source)} to {redact_url(args.target)}")
    try:
        report = asyncio.run(
            copy_store(
                source,
                target,
                progress=progress,
                force=args.force,
                batch_rows=args.batch_size,
            )
        )
    except KeyboardInterrupt:
        progress.end_line()
        _fail("copy-store", "interrupted: run the same command again to continue where it stopped")
        return EXIT_INTERRUPTED
    except (CopyError, StoreError) as exc:
        progress.end_line()
        hint = "; what was copied is kept: run the same command again to continue"
        _fail("copy-store", f"{exc}{hint if progress.started else ''}")
        return EXIT_FAILURE
    return _report(report)


def _report(report: CopyReport) -> int:
    counts = ", ".join(f"{c.table} {c.target:,}" for c in report.counts)
    if not report.ok:
        for mismatch in report.mismatches:
            _fail("copy-store", f"counts differ after the copy: {mismatch}")
        _fail(
            "copy-store",
            "the target does not match the source: was relay running on either? Stop it, then"
            " run the same command again (or start over with --force)",
        )
        return EXIT_FAILURE
    print(f"verified: the target holds what the source holds ({counts})")
    print(
        f"copied {report.copied:,} rows in {report.seconds:.1f} s. Next: set storage.url to"
        f" {report.target} and start relay there"
    )
    return EXIT_OK
