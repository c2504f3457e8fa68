"""The storage interfaces every backend honours, whatever it runs on.

Two halves, one object per backend:

- ``DeliveryQueue``, the hot path: ingest a request with its events and deliveries, claim due
  deliveries with a lease, record attempts, say when work falls due, prove the store is writable.
- ``Archive``, operator control: lists, one event in full, replays as resumable jobs, pause and
  resume, pruning.

Rules that are not storage (which state a new delivery starts in, what a dead delivery keeps as
its error, when a repeated event counts as a duplicate) live in ``relay.store.rules`` and are
used by every backend; the store contract suite (tests/store_contract) runs every behaviour
against every backend.

Time: every time a store writes (leases, due times, dedup, replay and pause times) comes from the
store's own clock, which all processes sharing the store share: the database server's for
PostgreSQL, the machine's for SQLite (all its processes are on the one machine). ``now()`` reads
it, so workers compute backoff in that same clock.

Signals: a store tells its subscribers when deliveries fall due, a destination is paused or
resumed, or a replay job wants attention, including when another process sharing the store did
it (PostgreSQL LISTEN/NOTIFY). A lost signal costs at most ``POLL_INTERVAL``: every waiter also
re-checks on its own at least that often.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.model import (
    AttemptResult,
    AuditPage,
    ClaimedDelivery,
    CreatedDelivery,
    Decision,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    DeliveryState,
    EventDetail,
    EventFilter,
    EventPage,
    IngestResult,
    NewAudit,
    NewEvent,
    NewReplay,
    PruneResult,
    RawRequest,
    ReplayCandidate,
    ReplayPage,
    ReplayRecord,
    ReplayState,
)
from relay.store.gate import CircuitChange, Completion, Gate, GatedClaim, GateState
from relay.store.health import HealthReport

# The longest a waiter relies on signals alone: a notification lost with a dropped connection
# delays work by at most this much.
POLL_INTERVAL = 1.0


class SignalKind(enum.StrEnum):
    DUE = "due"  # deliveries of ``name`` became due now
    PAUSE = "pause"  # destination ``name`` was paused or resumed
    REPLAY = "replay"  # replay ``name`` (its id) was started, cancelled, or needs an owner
    CIRCUIT = "circuit"  # destination ``name``'s circuit opened, closed or was reset


# A signal's name when anything of its kind may have changed (signals were lost meanwhile).
ANY = "*"


@dataclass(frozen=True, slots=True)
class Signal:
    kind: SignalKind
    name: str


def parse_signals(payload: str) -> list[Signal]:
    """``kind:name[,name...]``, as processes send them to each other, as signals; anything else
    is ignored.

    >>> [(s.kind.value, s.name) for s in parse_signals("due:crm,dw")]
    [('due', 'crm'), ('due', 'dw')]
    >>> parse_signals("nonsense")
    []
    """
    kind, sep, names = payload.partition(":")
    if not sep or kind not in set(SignalKind):
        return []
    return [Signal(SignalKind(kind), name) for name in names.split(",") if name]


SignalListener = Callable[[Signal], None]
# Called after each committed transaction with its number of operations and its duration.
CommitObserver = Callable[[int, float], None]


class StoreError(Exception):
    """Storage could not do what was asked (disk full, locked, unreachable): nothing committed."""


class ReplayEndedError(StoreError):
    """The replay is no longer this owner's to feed: cancelled, finished, or taken over."""


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """Counts of unfinished deliveries and dead letters (unresolved dead deliveries) for one
    destination, for metrics and the admin API."""

    destination: str
    pending: int = 0
    delivering: int = 0
    paused: int = 0
    dead: int = 0
    oldest_pending_at: float | None = None


class Signals:
    """Fan-out of store signals to this process's subscribers."""

    def __init__(self) -> None:
        self._listeners: list[SignalListener] = []

    def subscribe(self, listener: SignalListener) -> None:
        self._listeners.append(listener)

    def emit(self, signal: Signal) -> None:
        for listener in self._listeners:
            listener(signal)

    def emit_due(self, destinations: frozenset[str] | set[str]) -> None:
        for name in destinations:
            self.emit(Signal(SignalKind.DUE, name))


class DeliveryQueue(abc.ABC):
    """The hot path: what ingest and delivery workers need, and nothing else."""

    signals: Signals
    on_commit: CommitObserver | None

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, bring the schema up to date, start listening for signals."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release connections."""

    @abc.abstractmethod
    async def now(self) -> float:
        """The store's clock, in Unix seconds: the one all processes sharing the store share."""

    @abc.abstractmethod
    async def ingest(self, request: RawRequest, events: Sequence[NewEvent]) -> IngestResult:
        """Store a request, its events and one delivery per destination, in one transaction.

        The store gives the events their ids and their place in the events cursor, in commit
        order. An event whose dedup key was stored within the dedup window is kept as a
        duplicate, without deliveries. Deliveries to a paused destination start paused.

        Returns only once committed durably; raises StoreError if not committed. Concurrent
        calls share transactions (group commit).
        """

    @abc.abstractmethod
    async def claim(self, destination: str, limit: int, lease: float) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries of ``destination`` for ``lease`` seconds, the
        earliest due first, and return them in that order.

        Nothing is claimed while the destination is paused, nor what waits in a subscriber
        queue (``relay.store.ordering``). A delivery whose event is no longer
        stored is marked dead instead of being returned. A delivering one whose lease ran out is
        due again (its worker died), and is claimed like a pending one.
        """

    @abc.abstractmethod
    async def complete(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision
    ) -> bool:
        """Record an attempt and move its delivery to the decided state, atomically.

        Only while the delivery still holds this attempt's lease: a worker that outlived its
        lease must not overwrite the attempt that took over. Returns whether it still held it
        (the attempt is recorded either way).
        """

    @abc.abstractmethod
    async def claim_gated(
        self, destination: str, limit: int, lease: float, gate: Gate
    ) -> GatedClaim:
        """``claim`` through a destination's rate limit and circuit breaker (``gate``).

        Takes only what the destination's shared token bucket holds, and while its circuit is
        open only one probe at a time (the oldest due delivery, marked ``probe``), all under a
        lock on the destination's gate, so every process sharing the store shares them. A
        claimed delivery past ``max_age`` is marked dead instead of being returned. ``wait``
        says when the gate lets more through if it is what kept the claim short.
        """

    @abc.abstractmethod
    async def complete_gated(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision, gate: Gate
    ) -> Completion:
        """``complete`` for a destination with a circuit breaker: the attempt also moves the
        circuit (in the same transaction), and an attempt that failed with a down-signal while
        the circuit is open is recorded as held (pending, not charged against max_attempts)
        instead of as decided. The Completion says what was recorded and any change of the
        circuit; the store signals CIRCUIT on a change, to every process."""

    @abc.abstractmethod
    async def due_in(self, destination: str) -> float | None:
        """Seconds until the earliest pending (or leased) delivery of ``destination`` is due
        (0 or less: due now); None when there is none, or while the destination is paused."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Prove storage is writable now, with room for new rows; raise StoreError otherwise."""

    def trouble(self) -> str | None:
        """Why storage is known not to take writes right now, without asking it; None if not
        known (``ping`` is what proves it writable)."""
        return None


class Archive(abc.ABC):
    """Operator control: reads for the admin API, replays, pause and resume, pruning.

    Every write is its own short transaction, so bulk work (a 100,000-event replay, a prune)
    never holds up ingest for long.
    """

    @abc.abstractmethod
    async def destination_stats(self) -> list[DestinationStats]:
        """Unfinished-delivery counts per destination, from indexes only."""

    @abc.abstractmethod
    async def destination_health(self, since: float, limit: int = 10_000) -> HealthReport:
        """Per destination, the attempts started at or after ``since`` by any process (at most
        the newest ``limit`` of them, all destinations together), how many got a 2xx, and the
        latest that did not; from an index on the attempts' start, so it stays cheap however
        many attempts are stored (``relay.store.health``)."""

    @abc.abstractmethod
    async def gate_states(self) -> dict[str, GateState]:
        """The rate-limit and circuit state of every destination that has one stored."""

    @abc.abstractmethod
    async def reset_circuit(self, name: str) -> CircuitChange | None:
        """Close a destination's circuit by hand and start its failure count again; the change
        when it was open, None when it was not. Signals CIRCUIT to every process."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventDetail | None:
        """One event with its raw request, deliveries and attempts; None if unknown."""

    @abc.abstractmethod
    async def list_events(
        self, where: EventFilter, limit: int, before: int | None = None
    ) -> EventPage:
        """Matching events newest first (by cursor position), below cursor ``before``.

        The cursor is the commit order of events: paging from the newest down sees every event
        stored before the first page exactly once, whichever process stored it.
        """

    @abc.abstractmethod
    async def count_events(self, where: EventFilter) -> int:
        """How many stored events match."""

    @abc.abstractmethod
    async def replay_candidates(
        self, where: EventFilter, after: int | None, limit: int, with_payload: bool
    ) -> list[ReplayCandidate]:
        """Matching events oldest first, above cursor ``after``; bytes only if asked."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        state: DeliveryState | None,
        destination: str | None,
        limit: int,
        before: int | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first (by id), below delivery id ``before``; ``dead`` means dead
        letters (dead and unresolved)."""

    # -- replays: jobs any process can run ----------------------------------------------------

    @abc.abstractmethod
    async def start_replay(
        self, replay: NewReplay, owner: str | None = None, lease: float = 0.0
    ) -> int:
        """Record a replay (state running) and return its id.

        With ``owner`` the replay starts held by it for ``lease`` seconds (one run inside a
        request); without, it waits for any process's job runner to claim it.
        """

    @abc.abstractmethod
    async def claim_replay(self, owner: str, lease: float) -> ReplayRecord | None:
        """Take a running replay that has no live owner, for ``lease`` seconds; None if none."""

    @abc.abstractmethod
    async def add_replay_deliveries(
        self,
        replay_id: int,
        pairs: Sequence[tuple[str, str]],
        matched: int,
        cursor: int | None = None,
        owner: str | None = None,
        ordered: frozenset[str] = frozenset(),
    ) -> list[CreatedDelivery]:
        """Create one new delivery per (event id, destination), due now, and count progress.

        One to an ``ordered`` destination joins the end of its subscriber's queue instead.
        ``cursor`` (the last event position walked) is saved in the same transaction, so a
        replay resumed by another process neither skips nor repeats events. With ``owner``, the
        write only happens while that owner holds the replay (else StoreError). Deliveries to a
        paused destination start paused; an event pruned meanwhile gets none.
        """

    @abc.abstractmethod
    async def renew_replay(self, replay_id: int, owner: str, lease: float) -> bool:
        """Extend the owner's lease; False when it lost the replay or the replay ended."""

    @abc.abstractmethod
    async def finish_replay(self, replay_id: int, state: ReplayState) -> None:
        """Mark a running replay done, failed or interrupted, and release it (a replay that
        was cancelled meanwhile stays cancelled)."""

    @abc.abstractmethod
    async def cancel_replay(self, replay_id: int, by: str) -> bool:
        """Stop a running replay: it creates no more deliveries (``add_replay_deliveries``
        with its owner fails from the commit on), and its owner is signalled. False when it was
        not running. The deliveries it made are left as they are (discarding is its own step).
        """

    @abc.abstractmethod
    async def replay_state(self, replay_id: int) -> ReplayState | None:
        """A replay's state alone (cheap: its owner asks often to notice a cancel)."""

    @abc.abstractmethod
    async def list_replays(self, limit: int, before: int | None = None) -> ReplayPage:
        """Replays newest first (by id), below replay id ``before``, without counts."""

    @abc.abstractmethod
    async def release_replay(self, replay_id: int, owner: str) -> None:
        """Give up a running replay (its process is stopping), so another process takes it
        over at once instead of when the lease runs out."""

    @abc.abstractmethod
    async def get_replay(self, replay_id: int) -> ReplayRecord | None:
        """One replay with its progress and deliveries created per destination."""

    @abc.abstractmethod
    async def replay_backlog(self, replay_id: int, destination: str) -> int:
        """Deliveries of this replay to ``destination`` still waiting or in flight."""

    # -- one delivery, and waiting ones in bulk -----------------------------------------------

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: int) -> DeliveryRecord | None:
        """One delivery (without its attempts); None if unknown."""

    @abc.abstractmethod
    async def retry_delivery(self, delivery_id: int) -> bool:
        """Make a pending delivery (waiting out its backoff) due now; False if not pending (or
        waiting in a subscriber queue)."""

    @abc.abstractmethod
    async def resolve_delivery(self, delivery_id: int, by: str, reason: str | None) -> bool:
        """Resolve a dead delivery by hand; False unless it was dead and unresolved."""

    @abc.abstractmethod
    async def count_waiting(self, where: DeliveryFilter) -> int:
        """How many deliveries ``discard(where)`` would take now (its dry run)."""

    @abc.abstractmethod
    async def discard(self, where: DeliveryFilter, batch: int = 500) -> dict[str, int]:
        """Mark matching waiting (pending or paused) deliveries discarded, in transactions of
        ``batch``; how many per destination. One claimed meanwhile is in flight and is left
        alone. Discarded deliveries are never attempted again."""

    # -- the audit trail ------------------------------------------------------------------------

    @abc.abstractmethod
    async def record_audit(self, entry: NewAudit) -> int:
        """Append an operator action to the audit trail, at the store's time; its id."""

    @abc.abstractmethod
    async def list_audit(
        self,
        limit: int,
        before: int | None = None,
        action: str | None = None,
        operator: str | None = None,
    ) -> AuditPage:
        """Audit entries newest first (by id), below entry id ``before``."""

    # -- pause and retention ------------------------------------------------------------------

    @abc.abstractmethod
    async def inbound_usage(self) -> dict[str, int]:
        """Bytes stored per inbound (bodies and headers, ``rules.stored_size``): what quotas
        compare; kept in the transactions that store and prune requests."""

    @abc.abstractmethod
    async def paused_destinations(self) -> frozenset[str]:
        """Names of destinations currently paused."""

    @abc.abstractmethod
    async def pause_destination(self, name: str) -> int:
        """Pause a destination: hold its pending deliveries as paused; how many were held."""

    @abc.abstractmethod
    async def resume_destination(self, name: str) -> int:
        """Resume a destination: its paused deliveries become due now; how many."""

    @abc.abstractmethod
    async def try_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the named lease (e.g. the retention job) for ``seconds`` unless another owner
        holds it unexpired; renewing one's own lease succeeds."""

    @abc.abstractmethod
    async def count_prunable(self, older_than: float) -> int:
        """How many events ``prune(older_than)`` would delete now (its dry run); deletes
        nothing."""

    @abc.abstractmethod
    async def prune(self, older_than: float, batch: int = 500) -> PruneResult:
        """Delete events received more than ``older_than`` seconds ago whose deliveries are all
        finished, in transactions of ``batch`` events.

        An event with a pending, delivering or paused delivery is never deleted. A request goes
        once none of its events is left.
        """


class Store(DeliveryQueue, Archive):
    """One backend: SQLite (embedded) or PostgreSQL (any number of processes and machines)."""

    def __init__(self) -> None:
        self.signals = Signals()
        self.on_commit = None
