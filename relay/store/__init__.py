"""Storage backends behind one interface; ``create_store`` picks one by URL scheme."""

from __future__ import annotations

from relay.config import StorageConfig
from relay.store.base import DestinationStats, Signal, SignalKind, Store, StoreError
from relay.store.health import DestinationHealth, FailedAttempt, HealthReport
from relay.store.siblings import Siblings

__all__ = [
    "DestinationHealth",
    "DestinationStats",
    "FailedAttempt",
    "HealthReport",
    "Signal",
    "SignalKind",
    "Store",
    "StoreError",
    "create_store",
]


def create_store(
    config: StorageConfig, dedup_window: float = 86400.0, siblings: Siblings | None = None
) -> Store:
    """Build (not yet open) the backend named by ``config.url``; ``siblings`` when this is one of
    a supervisor's worker processes (PostgreSQL needs nothing more: it signals them itself)."""
    if config.url.startswith("sqlite:///"):
        from relay.store.sqlite.store import SqliteStore

        return SqliteStore(config, dedup_window, siblings)
    if config.backend == "postgresql":
        from relay.store.postgres.store import PostgresStore

        return PostgresStore(config, dedup_window)
    raise StoreError(f"storage backend not available for {config.url.split(':', 1)[0]}")
