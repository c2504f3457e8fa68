"""Create or upgrade a store's schema and nothing else: ``relay migrate``, whatever the backend.

report = await migrate_store(settings.storage)
print(report.summary())
# storage postgresql://relay:***@db/relay: schema at version 1, 1 migration applied
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import StorageConfig, redact_url


@dataclass(frozen=True, slots=True)
class MigrationReport:
    url: str  # the store's URL, its password masked
    version: int  # the schema version the store is at now
    applied: int  # migrations applied by this run

    def summary(self) -> str:
        plural = "" if self.applied == 1 else "s"
        return (
            f"storage {self.url}: schema at version {self.version},"
            f" {self.applied} migration{plural} applied"
        )


async def migrate_store(config: StorageConfig) -> MigrationReport:
    """Bring the schema of the store ``config`` names up to date; StoreError when it cannot.

    Safe while relay processes run on the store: PostgreSQL migrations take an advisory lock,
    SQLite's take the write lock; a schema newer than this relay knows is refused.
    """
    if config.backend == "postgresql":
        from relay.store.postgres.migrate import migrate_database
    else:
        from relay.store.sqlite.migrate import migrate_database
    applied, version = await migrate_database(config)
    return MigrationReport(url=redact_url(config.url), version=version, applied=applied)
