"""Copy one store into another, resumably, and verify the copy: ``relay copy-store``.

    report = await copy_store(source_config, target_config, progress=progress)
    if not report.ok: ...   # report.mismatches says which counts differ

The target is migrated first. Each history table (requests, events, dedup, replays, deliveries,
attempts) is copied in key order, in batches; each batch is inserted in one target transaction
together with a checkpoint, the last key it copied, in the target's meta table. An interrupted
copy (Ctrl-C, kill -9, a lost connection) therefore continues after its last committed batch
when run again, neither duplicating nor skipping a row. The small state tables (pause flags,
leases) are copied whole at the end. Ids, event positions and delivery, attempt and replay
numbers are kept, and the target generates new ones above them.

A marker in the target's meta table names the source, so a target that holds other data, or an
interrupted copy of another store, is refused (``force`` empties it first).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from relay.config import StorageConfig, redact_url
from relay.model import iso_utc
from relay.store.bulk import (
    HISTORY,
    META_PREFIX,
    STATE,
    BulkStore,
    Key,
    Row,
    Table,
    normalize_row,
    open_bulk,
    store_location,
)
from relay.store.migrate import MigrationReport, migrate_store

BATCH_ROWS = 1000
# Request bodies may be up to max_body_bytes (10 MiB) each: a batch stops early at this size.
BATCH_BYTES = 32 * 1024 * 1024
# A relay that answered /readyz this recently on the source may still be running.
RECENT_HEARTBEAT = 60.0

MARKER = META_PREFIX
CHECKPOINT = f"{META_PREFIX}:after:"


class CopyError(Exception):
    """The copy cannot be done as asked; the message is one line for the operator."""


class CopyProgress(Protocol):
    def note(self, line: str) -> None:
        """A line of information (migration, resume, warnings)."""

    def update(self, table: str, done: int, total: int) -> None:
        """``done`` of ``total`` rows of ``table`` are in the target."""

    def finish(self, table: str, done: int, total: int) -> None:
        """``table`` is copied."""


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int  # rows the source holds that are copied (its copyable rows)
    target: int  # rows the target holds after the copy
    copied: int = 0  # rows this run inserted
    left_out: int = 0  # source rows not copied: the rows they reference are gone


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: str
    target: str
    migration: MigrationReport
    resumed: bool
    counts: tuple[TableCount, ...]
    mismatches: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def copied(self) -> int:
        return sum(count.copied for count in self.counts)


@dataclass(frozen=True, slots=True)
class Marker:
    """What the target's meta table says about the copy it holds."""

    source: str
    started_at: str
    finished_at: str | None = None

    def dump(self) -> str:
        return orjson.dumps(
            {"source": self.source, "started_at": self.started_at, "finished_at": self.finished_at}
        ).decode()

    @classmethod
    def load(cls, text: str) -> Marker | None:
        try:
            doc = orjson.loads(text)
            return cls(str(doc["source"]), str(doc["started_at"]), doc.get("finished_at"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None


class Start(enum.Enum):
    FRESH = "fresh"  # nothing of value in the target: start from the first row
    RESUME = "resume"  # an earlier run of this copy: continue after its checkpoints
    CLEAR = "clear"  # --force: empty the target, then start from the first row


def plan_start(source: str, marker: Marker | None, holds_history: bool, force: bool) -> Start:
    """How to treat the target: start afresh, resume this copy, empty it, or refuse (CopyError).

    A target is resumed only when its marker names this source; a target holding data that did
    not come from this copy is refused, since mixing two stores' numbered rows would attach one
    store's attempts to the other's deliveries.
    """
    if force:
        return Start.CLEAR if holds_history or marker is not None else Start.FRESH
    if marker is not None and marker.source == source:
        return Start.RESUME
    if not holds_history:
        return Start.FRESH
    if marker is not None:
        raise CopyError(
            f"the target holds a copy of {marker.source} (started {marker.started_at}), not of"
            f" {source}: copy into an empty database, or add --force to empty this one first"
        )
    raise CopyError(
        "the target already holds relay data that did not come from this copy: copy into an"
        " empty database, or add --force to delete that data first"
    )


def compare_counts(source: Mapping[str, int], target: Mapping[str, int]) -> list[str]:
    """One line per count that differs between source and target."""
    return [
        f"{name}: source {source.get(name, 0)}, target {target.get(name, 0)}"
        for name in sorted(source.keys() | target.keys())
        if source.get(name, 0) != target.get(name, 0)
    ]


def missing_rows(source: Sequence[Row], target: Sequence[Row], key_index: int) -> list[str]:
    """Keys of source rows the target lacks or holds differently (state tables)."""
    held = {row[key_index]: row for row in target}
    return [str(row[key_index]) for row in source if held.get(row[key_index]) != row]


def _checkpoint(text: str | None) -> Key | None:
    if text is None:
        return None
    value = orjson.loads(text)
    return value if isinstance(value, str | int) else None


class _Copy:
    def __init__(
        self,
        source: BulkStore,
        target: BulkStore,
        progress: CopyProgress,
        batch_rows: int,
        batch_bytes: int,
    ) -> None:
        self.source, self.target, self.progress = source, target, progress
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes

    async def check_source(self) -> None:
        version, known = await self.source.schema_version(), self.source.latest_version()
        if version == 0:
            raise CopyError("the source holds no relay store (no relay schema): is the URL right?")
        if version != known:
            hint = "upgrade relay" if version > known else "run relay migrate on it first"
            raise CopyError(
                f"the source's schema is at version {version}, this relay's at {known}: {hint}"
            )
        age = await self.source.heartbeat_age()
        if age is not None and age < RECENT_HEARTBEAT:
            self.progress.note(
                f"warning: a relay answered /readyz on the source {max(age, 0):.0f} s ago; if it"
                " still runs, stop it: what it writes during the copy is not copied"
            )

    async def copy_table(self, table: Table, total: int) -> tuple[int, int]:
        """Copy one history table from its checkpoint on: (rows now in target, rows inserted)."""
        meta = await self.target.read_meta(CHECKPOINT + table.name)
        after = _checkpoint(meta.get(CHECKPOINT + table.name))
        done = await self.target.count(table, copyable=False)
        inserted = 0
        self.progress.update(table.name, done, total)
        while True:
            rows = await self.source.export_rows(table, after, self.batch_rows, self.batch_bytes)
            if not rows:
                break
            rows = [normalize_row(table, row) for row in rows]
            after = rows[-1][table.key_index]
            if after is None:  # SQLite allows it; the copy could never move past such a row
                raise CopyError(f"{table.name}: the source has a row without {table.key}")
            checkpoint = {CHECKPOINT + table.name: orjson.dumps(after).decode()}
            added = await self.target.import_rows(table, rows, checkpoint)
            if added != len(rows):
                raise CopyError(
                    f"{table.name}: {len(rows) - added} of the rows up to {table.key} {after!r}"
                    " are already in the target, written there outside this copy: start over"
                    " with --force"
                )
            done += added
            inserted += added
            self.progress.update(table.name, done, total)
        self.progress.finish(table.name, done, total)
        return done, inserted

    async def verify(self, counts: list[TableCount]) -> list[str]:
        mismatches = compare_counts(
            {c.table: c.source for c in counts}, {c.table: c.target for c in counts}
        )
        states = compare_counts(
            await self.source.delivery_states(), await self.target.delivery_states()
        )
        mismatches += [f"deliveries in state {line}" for line in states]
        for table in STATE:
            source_rows = [normalize_row(table, r) for r in await self.source.all_rows(table)]
            target_rows = [normalize_row(table, r) for r in await self.target.all_rows(table)]
            missing = missing_rows(source_rows, target_rows, table.key_index)
            if missing:
                mismatches.append(f"{table.name}: differs for {', '.join(missing)}")
        return mismatches


async def copy_store(
    source_config: StorageConfig,
    target_config: StorageConfig,
    *,
    progress: CopyProgress,
    force: bool = False,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> CopyReport:
    """Copy every row of the source store into the target store, then compare their counts.

    Raises CopyError when the copy is refused or cannot go on, StoreError when a store fails
    (unreachable, disk full); in both cases every batch committed so far is kept and running
    the copy again continues from there.
    """
    started = time.monotonic()
    location = store_location(source_config.url)
    if location == store_location(target_config.url):
        raise CopyError("--from and --to name the same store")
    source, target = open_bulk(source_config), open_bulk(target_config)
    try:
        await source.open(source=True)
        copy = _Copy(source, target, progress, batch_rows, batch_bytes)
        await copy.check_source()
        migration = await migrate_store(target_config)
        progress.note(f"target {migration.summary().removeprefix('storage ')}")
        await target.open(source=False)
        marker = Marker.load((await target.read_meta(MARKER)).get(MARKER, ""))
        start = plan_start(location, marker, await target.holds_history(), force)
        if start is Start.CLEAR:
            progress.note("--force: deleting what the target holds")
            await target.clear()
        if start is Start.RESUME:
            assert marker is not None
            progress.note(f"resuming the copy started {marker.started_at}")
        else:
            marker = Marker(location, iso_utc(time.time()) or "")
            fresh = {CHECKPOINT + table.name: "null" for table in HISTORY}
            await target.write_meta({MARKER: marker.dump(), **fresh})
        counts = []
        for table in HISTORY:
            total = await source.count(table, copyable=True)
            left_out = 0
            if table.references and not source.enforces_references:
                left_out = await source.count(table, copyable=False) - total
                if left_out:
                    progress.note(f"{table.name}: {left_out} row(s) left out: {table.left_out}")
            done, inserted = await copy.copy_table(table, total)
            counts.append(TableCount(table.name, total, done, inserted, left_out))
        await target.recount_usage()
        for table in STATE:
            rows = [normalize_row(table, row) for row in await source.all_rows(table)]
            await target.replace_rows(table, rows)
            held = await target.count(table, copyable=False)
            progress.finish(table.name, held, held)
            counts.append(TableCount(table.name, len(rows), held, len(rows)))
        marker = Marker(marker.source, marker.started_at, iso_utc(time.time()))
        await target.write_meta({MARKER: marker.dump()})
        mismatches = await copy.verify(counts[: len(HISTORY)])
        return CopyReport(
            source=redact_url(source_config.url),
            target=redact_url(target_config.url),
            migration=migration,
            resumed=start is Start.RESUME,
            counts=tuple(counts),
            mismatches=tuple(mismatches),
            seconds=time.monotonic() - started,
        )
    finally:
        await target.close()
        await source.close()
