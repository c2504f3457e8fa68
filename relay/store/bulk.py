"""A store seen as plain tables of rows, for copying one store into another (``relay copy-store``).

Both backends keep the same tables with the same meanings. They are listed here once, with the
columns the schemas share and the kind of value each holds, so that a row read from one backend
is written to the other as it is: the same ids, the same event positions, the same bytes. Each
backend implements ``BulkStore`` (``relay.store.sqlite.bulk``, ``relay.store.postgres.bulk``);
``relay.store.copy`` drives a copy through it and never sees SQL.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from relay.config import StorageConfig

Row = tuple[Any, ...]
Key = str | int


class Kind(enum.StrEnum):
    TEXT = "text"
    BYTES = "bytes"
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


@dataclass(frozen=True, slots=True)
class Table:
    """One table as copy-store moves it."""

    name: str
    columns: tuple[tuple[str, Kind], ...]
    key: str  # unique and indexed in both schemas: rows are copied in its order
    # History grows and is copied in key order, in batches, resumably. The other tables are small
    # state (pause flags, leases) copied whole at the end, the source's rows replacing the
    # target's rows with the same key.
    history: bool = True
    # The target generates this key for rows it makes itself (an identity column, the events
    # position sequence): after a copy it must generate keys above the copied ones.
    generated: bool = False
    # Rows are copyable only when the rows they reference are (SQLite does not enforce its
    # REFERENCES clauses; PostgreSQL refuses such a row). SQL on the table aliased ``t``.
    references: str | None = None
    left_out: str = ""  # why a row that is not copyable is left out, for the operator

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(kind for _, kind in self.columns)

    @property
    def key_index(self) -> int:
        return self.names.index(self.key)


T, B, F, I, BOOL = Kind.TEXT, Kind.BYTES, Kind.FLOAT, Kind.INT, Kind.BOOL  # noqa: E741

_EVENT_COPYABLE = "EXISTS (SELECT 1 FROM requests r WHERE r.id = {e}.request_id)"
_DELIVERY_COPYABLE = (
    "EXISTS (SELECT 1 FROM events e WHERE e.id = {d}.event_id AND "
    + _EVENT_COPYABLE.format(e="e")
    + ") AND ({d}.replay_id IS NULL OR EXISTS (SELECT 1 FROM replays p WHERE p.id = {d}.replay_id))"
)

# In the order they are copied: a referenced table before the tables referencing it.
TABLES: tuple[Table, ...] = (
    Table(
        "requests",
        (("id", T), ("inbound", T), ("method", T), ("path", T), ("query", T), ("headers", T),
         ("body", B), ("content_type", T), ("peer", T), ("received_at", F)),
        key="id",
    ),
    Table(
        "events",
        (("id", T), ("seq", I), ("request_id", T), ("inbound", T), ("source", T), ("type", T),
         ("received_at", F), ("fired_at", F), ("list_id", T), ("email", T), ("parse_error", T),
         ("dedup_key", T), ("duplicate_of", T), ("payload", B), ("payload_content_type", T),
         ("email_key", T)),
        key="seq",
        generated=True,
        references=_EVENT_COPYABLE.format(e="t"),
        left_out="their request is not in the source",
    ),
    Table("dedup", (("key", T), ("event_id", T), ("first_seen", F)), key="key"),
    Table(
        "replays",
        (("id", I), ("requested_by", T), ("requested_at", F), ("filter", T),
         ("destinations", T), ("total", I), ("matched", I), ("created", I), ("state", T),
         ("finished_at", F), ("spec", T), ("cursor", I), ("owner", T), ("lease_until", F),
         ("cancelled_by", T)),
        key="id",
        generated=True,
    ),
    Table(
        "deliveries",
        (("id", I), ("event_id", T), ("destination", T), ("state", T), ("attempts", I),
         ("next_attempt_at", F), ("created_at", F), ("updated_at", F), ("delivered_at", F),
         ("last_status", I), ("last_error", T), ("replay_id", I), ("held_attempts", I),
         ("dead_reason", T), ("resolved_at", F), ("resolved_by", T), ("resolve_reason", T),
         ("order_key", I), ("after_dead", I)),
        key="id",
        generated=True,
        references=_DELIVERY_COPYABLE.format(d="t"),
        left_out="their event (pruned) or replay is not in the source",
    ),
    Table(
        "attempts",
        (("id", I), ("delivery_id", I), ("number", I), ("started_at", F), ("duration", F),
         ("outcome", T), ("status", I), ("error", T), ("response_head", B)),
        key="id",
        generated=True,
        references="EXISTS (SELECT 1 FROM deliveries d WHERE d.id = t.delivery_id AND "
        + _DELIVERY_COPYABLE.format(d="d")
        + ")",
        left_out="their delivery is left out",
    ),
    # Operator actions: history like the rest, never pruned.
    Table(
        "audit",
        (("id", I), ("at", F), ("operator", T), ("action", T), ("target", T), ("detail", T),
         ("peer", T)),
        key="id",
        generated=True,
    ),
    Table(
        "destination_state",
        (("name", T), ("paused", BOOL), ("updated_at", F)),
        key="name",
        history=False,
    ),
    Table("leases", (("name", T), ("owner", T), ("until", F)), key="name", history=False),
    # Rate limits and circuits: a circuit open in the source stays open (and its probes keep
    # their schedule) in the copy.
    Table(
        "destination_gates",
        (("name", T), ("tokens", F), ("tokens_at", F), ("failures", I), ("opened_at", F),
         ("open_reason", T), ("probe_interval", F), ("probe_at", F), ("probe_id", I),
         ("probe_until", F), ("updated_at", F)),
        key="name",
        history=False,
    ),
)  # fmt: skip
HISTORY = tuple(table for table in TABLES if table.history)
STATE = tuple(table for table in TABLES if not table.history)

# The meta table is the store's own bookkeeping (heartbeats), not copied; copy-store keeps its
# marker and its checkpoints there, in the target.
META_PREFIX = "copy-store"


def column_list(table: Table) -> str:
    """The table's columns for a SELECT or INSERT (quoted: ``cursor`` and ``until`` are words
    SQL knows)."""
    return ", ".join(f'"{name}"' for name in table.names)


def update_all(table: Table) -> str:
    """``SET`` assignments taking every column from the row that conflicted (an upsert)."""
    return ", ".join(f'"{name}" = excluded."{name}"' for name in table.names)


# Whether a store holds any history: one statement both backends run as it is.
HOLDS_HISTORY = "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {t.name})" for t in HISTORY)


def normalize(value: Any, kind: Kind) -> Any:
    """A value as every backend takes it: SQLite may hand back another type than declared."""
    if value is None:
        return None
    if kind is Kind.TEXT:
        return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    if kind is Kind.BYTES:
        return value.encode() if isinstance(value, str) else bytes(value)
    if kind is Kind.FLOAT:
        return float(value)
    if kind is Kind.INT:
        return int(value)
    return bool(value)


def normalize_row(table: Table, row: Sequence[Any]) -> Row:
    return tuple(normalize(value, kind) for value, kind in zip(row, table.kinds, strict=True))


def row_bytes(row: Row) -> int:
    """Roughly how much memory a row's values take, to bound a batch of large bodies."""
    return sum(len(value) for value in row if isinstance(value, str | bytes)) + 8 * len(row)


def store_location(url: str) -> str:
    """Which store a URL names, without credentials: two URLs naming one store give one location.

    >>> store_location("postgresql://relay:pw@db.internal/relay")
    'postgresql://db.internal:5432/relay'
    """
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    database = parts.path.strip("/") or query.get("dbname", [""])[0]
    return f"postgresql://{host}:{port}/{database}"


class BulkStore(abc.ABC):
    """One store's tables, read in bulk (a source) or written in bulk (a target).

    A source reads everything in one snapshot, so the counts it reports are those of the rows it
    hands out even if something writes to it meanwhile. A target writes each batch in one
    transaction together with a checkpoint row in its meta table.
    """

    # Whether the backend refuses rows whose referenced rows are missing (so it has none).
    enforces_references: bool = False

    def __init__(self, config: StorageConfig) -> None:
        self.config = config

    @abc.abstractmethod
    async def open(self, *, source: bool) -> None:
        """Connect; a source begins its read snapshot. StoreError when it cannot."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The schema version of the store (0: relay never used it)."""

    @abc.abstractmethod
    def latest_version(self) -> int:
        """The schema version this relay's migrations build for this backend."""

    @abc.abstractmethod
    async def count(self, table: Table, *, copyable: bool) -> int:
        """Rows in ``table``; with ``copyable``, only those whose referenced rows exist."""

    @abc.abstractmethod
    async def delivery_states(self) -> dict[str, int]:
        """Copyable deliveries per state."""

    @abc.abstractmethod
    async def export_rows(
        self, table: Table, after: Key | None, limit: int, max_bytes: int
    ) -> list[Row]:
        """Copyable rows with a key above ``after``, in key order: at most ``limit``, and no
        more once ``max_bytes`` are reached (at least one)."""

    @abc.abstractmethod
    async def all_rows(self, table: Table) -> list[Row]:
        """Every row of a small state table."""

    @abc.abstractmethod
    async def import_rows(self, table: Table, rows: Sequence[Row], meta: Mapping[str, str]) -> int:
        """Insert rows that are not there yet (by key) and write ``meta`` in one transaction;
        how many were inserted. Generated keys are moved past the inserted ones."""

    @abc.abstractmethod
    async def replace_rows(self, table: Table, rows: Sequence[Row]) -> None:
        """Insert rows, or overwrite the rows with their keys, in one transaction."""

    @abc.abstractmethod
    async def recount_usage(self) -> None:
        """Count again what each inbound's requests take (its quota's usage), from the requests
        the store holds: after a copy, that is exactly what was copied."""

    @abc.abstractmethod
    async def holds_history(self) -> bool:
        """Whether any history table has a row."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Delete every copied table's rows and copy-store's own meta rows."""

    @abc.abstractmethod
    async def read_meta(self, prefix: str) -> dict[str, str]: ...

    @abc.abstractmethod
    async def write_meta(self, items: Mapping[str, str]) -> None: ...

    @abc.abstractmethod
    async def heartbeat_age(self) -> float | None:
        """Seconds since a relay last proved this store writable (/readyz), if one ever did."""


def open_bulk(config: StorageConfig) -> BulkStore:
    """The bulk view of the store ``config`` names (not yet open)."""
    if config.backend == "postgresql":
        from relay.store.postgres.bulk import PostgresBulk

        return PostgresBulk(config)
    from relay.store.sqlite.bulk import SqliteBulk

    return SqliteBulk(config)
