"""The one storage interface that ingest, delivery and the admin API use, whatever the backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.model import (
    AttemptResult,
    ClaimedDelivery,
    CreatedDelivery,
    Decision,
    DeliveryPage,
    DeliveryState,
    EventDetail,
    EventFilter,
    EventPage,
    IngestResult,
    NewEvent,
    NewReplay,
    PruneResult,
    RawRequest,
    ReplayCandidate,
    ReplayRecord,
    ReplayState,
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
    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> IngestResult:
        """Store a request, its events and one delivery per destination in one transaction.

        The store gives the events their ids, in commit order. An event whose dedup key was
        already stored within the dedup window is stored as a duplicate, without deliveries; the
        result maps such event ids to the original's id.

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
        """When the earliest pending (or leased) delivery of ``destination`` becomes due; None
        when there is none, or while the destination is paused (resume wakes its worker)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Prove storage is writable now; raise StoreError otherwise."""

    @abc.abstractmethod
    async def destination_stats(self) -> list[DestinationStats]:
        """Unfinished-delivery counts per destination, from indexes only."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventDetail | None:
        """One event with its raw request, deliveries and attempts; None if unknown."""

    # -- operator control (admin API): listing, replays, pause, retention ---------------------
    # Reads may run on a separate connection; every write is its own short transaction so that
    # bulk work (a 100,000-event replay, a prune) never holds the writer for long.

    @abc.abstractmethod
    async def list_events(
        self, where: EventFilter, limit: int, before: str | None = None
    ) -> EventPage:
        """Matching events newest first, starting below event id ``before``."""

    @abc.abstractmethod
    async def count_events(self, where: EventFilter) -> int:
        """How many stored events match."""

    @abc.abstractmethod
    async def replay_candidates(
        self, where: EventFilter, after: str | None, limit: int, with_payload: bool
    ) -> list[ReplayCandidate]:
        """Matching events oldest first, above event id ``after``; bytes only if asked."""

    @abc.abstractmethod
    async def start_replay(self, replay: NewReplay, now: float) -> int:
        """Record a replay request (state running) and return its id."""

    @abc.abstractmethod
    async def add_replay_deliveries(
        self, replay_id: int, pairs: Sequence[tuple[str, str]], matched: int, now: float
    ) -> list[CreatedDelivery]:
        """Create one new delivery per (event id, destination), due now, and count progress.

        Deliveries for a paused destination are created paused. Wakes the workers after commit.
        """

    @abc.abstractmethod
    async def finish_replay(self, replay_id: int, state: ReplayState, now: float) -> None:
        """Mark a replay done (or failed or interrupted)."""

    @abc.abstractmethod
    async def interrupt_running_replays(self, now: float) -> int:
        """Mark replays left running by a stopped process as interrupted; how many."""

    @abc.abstractmethod
    async def get_replay(self, replay_id: int) -> ReplayRecord | None:
        """One replay with its progress and deliveries created per destination."""

    @abc.abstractmethod
    async def replay_backlog(self, replay_id: int, destination: str) -> int:
        """Deliveries of this replay to ``destination`` still waiting or in flight."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        state: DeliveryState | None,
        destination: str | None,
        limit: int,
        before: int | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first (by id), below delivery id ``before``."""

    @abc.abstractmethod
    async def paused_destinations(self) -> frozenset[str]:
        """Names of destinations currently paused."""

    @abc.abstractmethod
    async def pause_destination(self, name: str, now: float) -> int:
        """Pause a destination: hold its pending deliveries as paused; how many were held."""

    @abc.abstractmethod
    async def resume_destination(self, name: str, now: float) -> int:
        """Resume a destination: its paused deliveries become due now; how many."""

    @abc.abstractmethod
    async def prune(self, cutoff: float, batch: int = 500) -> PruneResult:
        """Delete events received before ``cutoff`` whose deliveries are all finished.

        Works in transactions of ``batch`` events; an event with a pending, delivering or paused
        delivery is never deleted. A request goes once none of its events is left.
        """
