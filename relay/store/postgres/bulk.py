"""PostgreSQL's side of ``relay copy-store``: a database read in one snapshot or written in batches.

One connection, with none of the serving timeouts: a copy holds its read snapshot for as long as
it runs and may wait for locks. A batch is one INSERT of arrays (``unnest``), its checkpoint and
the move of the target's sequences past the copied keys, in one transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

from relay.config import StorageConfig, redact_url
from relay.store.base import StoreError
from relay.store.bulk import (
    HOLDS_HISTORY,
    META_PREFIX,
    TABLES,
    BulkStore,
    Key,
    Kind,
    Row,
    Table,
    column_list,
    row_bytes,
    update_all,
)
from relay.store.postgres.connect import (
    STORE_ERRORS,
    clean_text,
    connect_kwargs,
    store_error,
)
from relay.store.postgres.migrate import latest_version, schema_version

# What each inbound's requests take, as the ingest transaction counts it (rules.stored_size).
RECOUNT_USAGE = (
    "INSERT INTO inbound_usage (inbound, bytes) SELECT inbound,"
    " sum(octet_length(body) + octet_length(headers)) FROM requests GROUP BY inbound"
)

_ARRAY = {
    Kind.TEXT: "text[]",
    Kind.BYTES: "bytea[]",
    Kind.FLOAT: "float8[]",
    Kind.INT: "int8[]",
    Kind.BOOL: "bool[]",
}
# Keys PostgreSQL generates for the rows relay makes: identity columns (which take a copied value
# only with OVERRIDING SYSTEM VALUE) and the events position sequence.
_IDENTITY = {"replays", "deliveries", "attempts", "audit"}
_SEQUENCE = {
    "events": "'events_seq'::regclass",
    **{name: f"pg_get_serial_sequence('{name}', 'id')::regclass" for name in _IDENTITY},
}
_PUT_META = (
    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[])"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _insert(table: Table, conflict: str) -> str:
    arrays = ", ".join(f"${i}::{_ARRAY[kind]}" for i, kind in enumerate(table.kinds, 1))
    overriding = " OVERRIDING SYSTEM VALUE" if table.name in _IDENTITY else ""
    return (
        f"INSERT INTO {table.name} ({column_list(table)}){overriding}"
        f" SELECT * FROM unnest({arrays}) {conflict}"
    )


def _arrays(table: Table, rows: Sequence[Row]) -> list[list[Any]]:
    # PostgreSQL refuses NUL in text, which SQLite may hold (a webhook's %00): as relay's own
    # writes do, it becomes U+FFFD.
    columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)]
    for i, kind in enumerate(table.kinds):
        if kind is Kind.TEXT:
            columns[i] = [clean_text(value) for value in columns[i]]
    return columns


class PostgresBulk(BulkStore):
    enforces_references = True

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self._conn: asyncpg.Connection | None = None
        self._snapshot: Any = None

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except STORE_ERRORS as exc:
            raise StoreError(
                f"PostgreSQL database {redact_url(self.config.url)}: {store_error(exc)}"
            ) from None

    async def open(self, *, source: bool) -> None:
        kwargs = connect_kwargs(self.config, "copy-store")
        kwargs["command_timeout"] = None
        kwargs["server_settings"] = {
            **kwargs["server_settings"],
            "statement_timeout": "0",
            "lock_timeout": "0",
            "idle_in_transaction_session_timeout": "0",
        }
        try:
            self._conn = await asyncpg.connect(**kwargs)
            if source:
                # One snapshot for the whole run: counts and rows agree even if a relay that was
                # not stopped goes on writing.
                self._snapshot = self._conn.transaction(isolation="repeatable_read", readonly=True)
                await self._snapshot.start()
        except STORE_ERRORS as exc:
            await self.close()
            where = redact_url(self.config.url)
            reason = store_error(exc)
            raise StoreError(f"cannot open PostgreSQL database {where}: {reason}") from None

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*STORE_ERRORS):
                await self._conn.close(timeout=5.0)
            self._conn = None

    async def schema_version(self) -> int:
        async with self._errors():
            return await schema_version(self.conn)

    def latest_version(self) -> int:
        return latest_version()

    async def count(self, table: Table, *, copyable: bool) -> int:
        async with self._errors():
            return int(await self.conn.fetchval(f"SELECT count(*) FROM {table.name}"))

    async def delivery_states(self) -> dict[str, int]:
        sql = "SELECT state, count(*) FROM deliveries GROUP BY state"
        async with self._errors():
            return {str(r[0]): int(r[1]) for r in await self.conn.fetch(sql)}

    async def export_rows(
        self, table: Table, after: Key | None, limit: int, max_bytes: int
    ) -> list[Row]:
        # PostgreSQL enforces references: every row is copyable, no condition needed.
        where = f' WHERE "{table.key}" > $2' if after is not None else ""
        columns = column_list(table)
        sql = f'SELECT {columns} FROM {table.name}{where} ORDER BY "{table.key}" LIMIT $1'
        args = (limit, after) if after is not None else (limit,)
        rows: list[Row] = []
        size = 0
        async with self._errors():
            # A cursor, so a batch of large bodies stops at max_bytes without fetching the rest.
            async for record in self.conn.cursor(sql, *args, prefetch=min(limit, 256)):
                rows.append(tuple(record))
                size += row_bytes(rows[-1])
                if size >= max_bytes:
                    break
        return rows

    async def all_rows(self, table: Table) -> list[Row]:
        sql = f'SELECT {column_list(table)} FROM {table.name} ORDER BY "{table.key}"'
        async with self._errors():
            return [tuple(record) for record in await self.conn.fetch(sql)]

    async def import_rows(self, table: Table, rows: Sequence[Row], meta: Mapping[str, str]) -> int:
        async with self._errors(), self.conn.transaction():
            status = await self.conn.execute(
                _insert(table, "ON CONFLICT DO NOTHING"), *_arrays(table, rows)
            )
            if table.name in _SEQUENCE and rows:
                # Never backwards: a target's sequence already past the copied keys stays.
                top = max(row[table.key_index] for row in rows)
                await self.conn.execute(
                    f"SELECT setval(s, greatest($1, coalesce(pg_sequence_last_value(s), 0)))"
                    f" FROM (SELECT {_SEQUENCE[table.name]} AS s) q",
                    top,
                )
            await self.conn.execute(_PUT_META, list(meta), list(meta.values()))
        return int(status.rsplit(" ", 1)[1])

    async def replace_rows(self, table: Table, rows: Sequence[Row]) -> None:
        if not rows:
            return
        updates = update_all(table)
        sql = _insert(table, f'ON CONFLICT ("{table.key}") DO UPDATE SET {updates}')
        async with self._errors(), self.conn.transaction():
            await self.conn.execute(sql, *_arrays(table, rows))

    async def recount_usage(self) -> None:
        async with self._errors(), self.conn.transaction():
            await self.conn.execute("DELETE FROM inbound_usage")
            await self.conn.execute(RECOUNT_USAGE)

    async def holds_history(self) -> bool:
        async with self._errors():
            return bool(await self.conn.fetchval(HOLDS_HISTORY))

    async def clear(self) -> None:
        names = ", ".join([*(table.name for table in TABLES), "inbound_usage"])
        async with self._errors(), self.conn.transaction():
            await self.conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
            await self.conn.execute(
                "DELETE FROM meta WHERE left(key, length($1)) = $1", META_PREFIX
            )

    async def read_meta(self, prefix: str) -> dict[str, str]:
        sql = "SELECT key, value FROM meta WHERE left(key, length($1)) = $1"
        async with self._errors():
            return {str(r[0]): str(r[1]) for r in await self.conn.fetch(sql, prefix)}

    async def write_meta(self, items: Mapping[str, str]) -> None:
        async with self._errors(), self.conn.transaction():
            await self.conn.execute(_PUT_META, list(items), list(items.values()))

    async def heartbeat_age(self) -> float | None:
        # relay serve writes one per process when /readyz proves the store writable.
        sql = "SELECT relay_now() - max(value::float8) FROM meta WHERE left(key, 10) = 'heartbeat:'"
        async with self._errors():
            age = await self.conn.fetchval(sql)
        return float(age) if age is not None else None
