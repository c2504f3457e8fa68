"""The one storage interface that ingest, delivery and the admin API use, whatever the backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.model import (
    AttemptResult,
    ClaimedDelivery,
    Decision,
    EventDetail,
    NewEvent,
    RawRequest,
)

# Called after a commit that made deliveries due now, with the names of their destinations.
DueListener = Callable[[frozenset[str]], None]
# Called after each committed transaction with its number of operations and its duration.
CommitObserver = Callable[[int, float], None]


class StoreError(Exception):
    """Storage could not do what was asked (disk full, locked, I/O error): nothing was committed."""


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """Counts of unfinished deliveries for one destination, for metrics and the admin API."""

    destination: str
    pending: int = 0
    delivering: int = 0
    paused: int = 0
    dead: int = 0
    oldest_pending_at: float | None = None


class Store(abc.ABC):
    """Every storage operation relay needs. Backends: SQLite (embedded), PostgreSQL (scale out)."""

    def __init__(self) -> None:
        self._listeners: list[DueListener] = []
        self.on_commit: CommitObserver | None = None

    def add_due_listener(self, listener: DueListener) -> None:
        """Register a wake-up for delivery workers, so new work starts without polling."""
        self._listeners.append(listener)

    def _notify_due(self, destinations: frozenset[str]) -> None:
        if destinations:
            for listener in self._listeners:
                listener(destinations)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release connections."""

    @abc.abstractmethod
    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> dict[str, str]:
        """Store a request, its events and one delivery per destination in one transaction.

        An event whose dedup key was already stored within the dedup window is stored as a
        duplicate, without deliveries; the result maps such event ids to the original's id.

        Returns only once committed (durably, per the configured synchronous level); raises
        StoreError if not committed. Concurrent calls share transactions (group commit).
        """

    @abc.abstractmethod
    async def claim(
        self, destination: str, limit: int, now: float, lease_until: float
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries of ``destination`` until ``lease_until``."""

    @abc.abstractmethod
    async def complete(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision
    ) -> None:
        """Record an attempt and move its delivery to the decided state, atomically."""

    @abc.abstractmethod
    async def next_due(self, destination: str) -> float | None:
        """When the earliest pending (or leased) delivery of ``destination`` becomes due."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Prove storage is writable now; raise StoreError otherwise."""

    @abc.abstractmethod
    async def destination_stats(self) -> list[DestinationStats]:
        """Unfinished-delivery counts per destination, from indexes only."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventDetail | None:
        """One event with its raw request, deliveries and attempts; None if unknown."""
