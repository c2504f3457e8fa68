"""SQLite's side of ``relay copy-store``: a file read in one snapshot, or written in batches.

Calls are synchronous on the event loop's thread: a copy does one thing at a time, and a batch
that has begun then always ends in COMMIT or ROLLBACK before Ctrl-C is acted on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from relay.config import StorageConfig
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
from relay.store.sqlite.migrate import latest_version, schema_version

# What each inbound's requests take, as the ingest transaction counts it (rules.stored_size).
RECOUNT_USAGE = (
    "INSERT INTO inbound_usage (inbound, bytes) SELECT inbound,"
    " sum(length(body) + length(CAST(headers AS BLOB))) FROM requests GROUP BY inbound"
)


def _for_sqlite(table: Table, row: Row) -> Row:
    # SQLite has no boolean type: destination_state.paused is 0 or 1.
    return tuple(
        int(value) if kind is Kind.BOOL and value is not None else value
        for value, kind in zip(row, table.kinds, strict=True)
    )


class SqliteBulk(BulkStore):
    enforces_references = False

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self.path = self.config.url.removeprefix("sqlite:///")
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite database {self.path}: {exc}") from None

    async def open(self, *, source: bool) -> None:
        self._connect(source)

    def _connect(self, source: bool) -> None:
        if source and not Path(self.path).is_file():
            raise StoreError(f"no SQLite database at {self.path}")
        # A source is opened without the right to create: a mistyped path is an error, not a new
        # empty database that copies nothing.
        target = f"file:{quote(self.path)}?mode=rw" if source else self.path
        try:
            self._conn = sqlite3.connect(
                target, uri=source, isolation_level=None, timeout=self.config.sqlite.busy_timeout
            )
            self._conn.execute(f"PRAGMA synchronous={self.config.sqlite.synchronous}")
            if source:
                # One read transaction for the whole run: WAL keeps its snapshot while a relay
                # that was not stopped goes on writing, so counts and rows agree.
                self._conn.execute("BEGIN")
                self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    async def schema_version(self) -> int:
        with self._errors():
            return schema_version(self.conn)

    def latest_version(self) -> int:
        return latest_version()

    def _where(self, table: Table, copyable: bool) -> str:
        return f" WHERE {table.references}" if copyable and table.references else ""

    async def count(self, table: Table, *, copyable: bool) -> int:
        sql = f"SELECT count(*) FROM {table.name} t{self._where(table, copyable)}"
        with self._errors():
            return int(self.conn.execute(sql).fetchone()[0])

    async def delivery_states(self) -> dict[str, int]:
        (deliveries,) = (table for table in TABLES if table.name == "deliveries")
        where = self._where(deliveries, True)
        sql = f"SELECT state, count(*) FROM deliveries t{where} GROUP BY state"
        with self._errors():
            return {str(state): int(n) for state, n in self.conn.execute(sql)}

    async def export_rows(
        self, table: Table, after: Key | None, limit: int, max_bytes: int
    ) -> list[Row]:
        conditions = [f't."{table.key}" > ?'] if after is not None else []
        if table.references:
            conditions.append(table.references)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        columns = column_list(table)
        sql = f'SELECT {columns} FROM {table.name} t{where} ORDER BY t."{table.key}" LIMIT ?'
        params = (after, limit) if after is not None else (limit,)
        rows: list[Row] = []
        size = 0
        with self._errors():
            for row in self.conn.execute(sql, params):
                rows.append(tuple(row))
                size += row_bytes(rows[-1])
                if size >= max_bytes:
                    break
        return rows

    async def all_rows(self, table: Table) -> list[Row]:
        with self._errors():
            sql = f'SELECT {column_list(table)} FROM {table.name} ORDER BY "{table.key}"'
            return [tuple(row) for row in self.conn.execute(sql)]

    def _insert(self, table: Table, conflict: str) -> str:
        marks = ", ".join("?" * len(table.columns))
        return f"INSERT INTO {table.name} ({column_list(table)}) VALUES ({marks}) {conflict}"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _put_meta(self, conn: sqlite3.Connection, items: Mapping[str, str]) -> None:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(items.items()),
        )

    async def import_rows(self, table: Table, rows: Sequence[Row], meta: Mapping[str, str]) -> int:
        # SQLite gives a new row max(id) + 1 and the next event position max(seq) + 1: nothing
        # to move past the copied keys.
        with self._transaction() as conn:
            cursor = conn.executemany(
                self._insert(table, "ON CONFLICT DO NOTHING"), [_for_sqlite(table, r) for r in rows]
            )
            self._put_meta(conn, meta)
            return cursor.rowcount

    async def replace_rows(self, table: Table, rows: Sequence[Row]) -> None:
        updates = update_all(table)
        sql = self._insert(table, f'ON CONFLICT ("{table.key}") DO UPDATE SET {updates}')
        with self._transaction() as conn:
            conn.executemany(sql, [_for_sqlite(table, r) for r in rows])

    async def recount_usage(self) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM inbound_usage")
            conn.execute(RECOUNT_USAGE)

    async def holds_history(self) -> bool:
        with self._errors():
            return bool(self.conn.execute(HOLDS_HISTORY).fetchone()[0])

    async def clear(self) -> None:
        with self._transaction() as conn:
            for table in reversed(TABLES):
                conn.execute(f"DELETE FROM {table.name}")
            conn.execute("DELETE FROM inbound_usage")
            conn.execute(
                "DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(META_PREFIX), META_PREFIX)
            )

    async def read_meta(self, prefix: str) -> dict[str, str]:
        sql = "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?"
        with self._errors():
            return {str(k): str(v) for k, v in self.conn.execute(sql, (len(prefix), prefix))}

    async def write_meta(self, items: Mapping[str, str]) -> None:
        with self._transaction() as conn:
            self._put_meta(conn, items)

    async def heartbeat_age(self) -> float | None:
        # relay serve writes it when /readyz proves the store writable (key 'heartbeat').
        with self._errors():
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
        try:
            return time.time() - float(row[0]) if row else None
        except ValueError:
            return None
