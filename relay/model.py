"""Domain values shared by every layer: requests, events, deliveries, attempts and their states."""

from __future__ import annotations

import enum
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


class DeliveryState(enum.StrEnum):
    """Where a delivery stands; only ``pending`` and ``delivering`` are picked up by workers.

    ``discarded``: an operator dropped it before it was sent (it is never attempted again).
    """

    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    DEAD = "dead"
    PAUSED = "paused"
    DISCARDED = "discarded"


class AttemptOutcome(enum.StrEnum):
    """How one delivery attempt ended, in the classes operators alert on."""

    SUCCESS = "2xx"
    REDIRECT = "3xx"
    CLIENT_ERROR = "4xx"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"


class InboundKind(enum.StrEnum):
    MAILCHIMP = "mailchimp"
    JOURNEY = "journey"
    MANDRILL = "mandrill"


UNKNOWN_TYPE = "unknown"


def process_owner() -> str:
    """A name for this process that no other process sharing a store has (for leases)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def iso_utc(ts: float | None) -> str | None:
    """Unix seconds as ISO-8601 UTC with milliseconds (``2026-11-02T10:00:00.123Z``)."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RawRequest:
    """One HTTP request as it reached an inbound URL (credentials masked, body untouched)."""

    id: str
    inbound: str
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str
    peer: str
    received_at: float


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event derived from a request, ready to be stored with one delivery per destination.

    It has no id yet: the store gives it one where the order of commits is decided, so ids sort
    in the order events became visible.
    """

    inbound: str
    source: str
    type: str
    received_at: float
    destinations: tuple[str, ...]
    list_id: str | None = None
    email: str | None = None
    fired_at: float | None = None
    parse_error: str | None = None
    dedup_key: str | None = None
    # The bytes sent downstream if not the request body (None): one element of a Mandrill batch.
    payload: bytes | None = None
    payload_content_type: str | None = None
    ordered: tuple[str, ...] = ()  # of ``destinations``, those with ordering = "subscriber"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the store made of one request: its events' ids, and which of them are duplicates."""

    event_ids: tuple[str, ...]
    # Duplicate event id -> the id of the original stored within the dedup window.
    duplicates: dict[str, str]


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to this worker, with everything needed to send it."""

    id: int
    event_id: str
    destination: str
    attempt: int
    replay: bool
    inbound: str
    source: str
    type: str
    received_at: float
    body: bytes
    content_type: str
    fired_at: float | None = None
    created_at: float | None = None  # when the delivery was made (a replay's is the replay's)
    claimed_at: float | None = None  # the store's clock when this attempt's lease began
    # Attempts that did not count against max_attempts (they failed while the destination's
    # circuit was open); ``attempt`` counts every attempt sent.
    held_attempts: int = 0
    probe: bool = False  # sent alone to find out whether a destination that was down is back
    order_key: int | None = None  # its subscriber queue (ordered destinations only)

    @property
    def charged_attempt(self) -> int:
        """This attempt's number as retry limits count it."""
        return self.attempt - self.held_attempts


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What happened when one attempt was sent."""

    outcome: AttemptOutcome
    started_at: float
    duration: float
    status: int | None = None
    error: str | None = None
    response_head: bytes = b""
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a delivery after an attempt: its next state and, if pending, when."""

    state: DeliveryState
    next_attempt_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    started_at: float
    duration: float
    outcome: str
    status: int | None
    error: str | None
    response_head: bytes


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    event_id: str
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    last_status: int | None
    last_error: str | None
    replay_id: int | None
    # Why a dead delivery was given up (attempts, age, a 4xx); last_error: its last attempt's.
    dead_reason: str | None = None
    # A dead delivery is resolved once its event reached the destination by another delivery,
    # or an operator said so; only unresolved ones are dead letters.
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolve_reason: str | None = None
    after_dead: int | None = None  # the dead delivery it waited behind (ordered destinations)
    attempt_log: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: str
    request_id: str
    inbound: str
    source: str
    type: str
    received_at: float
    fired_at: float | None
    list_id: str | None
    email: str | None
    parse_error: str | None
    dedup_key: str | None
    duplicate_of: str | None
    seq: int = 0  # its position in the commit order of events: what cursors page by


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One event with its raw request, the bytes it forwards, and every delivery and attempt."""

    event: EventRecord
    request: RawRequest
    payload: bytes
    payload_content_type: str
    deliveries: tuple[DeliveryRecord, ...]


# -- operator control: filters, pages, replays and retention (the admin API's values) ----------


class ReplayState(enum.StrEnum):
    """Where a replay stands. A running replay is a job: any process sharing the store runs it,
    and another one carries on if that process stops. ``cancelled``: an operator stopped it
    (it creates no more deliveries). ``interrupted`` is only found on replays recorded by
    releases that stopped them with the process."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which stored events an operator means; unset fields match everything.

    ``state`` (and ``destination``) select events with at least one delivery in that state (to
    that destination); ``since`` is inclusive and ``until`` exclusive, in Unix seconds.
    """

    inbound: str | None = None
    type: str | None = None
    source: str | None = None
    list_id: str | None = None
    email: str | None = None
    state: DeliveryState | None = None
    destination: str | None = None
    since: float | None = None
    until: float | None = None
    # Replays skip duplicates (Mailchimp's retries of an event): the original is replayed once.
    originals_only: bool = False


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events newest first; ``next_cursor`` is the position of the last one returned when more
    may follow (positions are the commit order of events)."""

    events: tuple[EventRecord, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class DeliveryListing:
    """A delivery with the event facts an operator needs to recognise it in a list."""

    delivery: DeliveryRecord
    inbound: str
    source: str
    type: str
    email: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: tuple[DeliveryListing, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class ReplayCandidate:
    """A stored event a replay may resend; the bytes only when routing needs to parse them."""

    event: EventRecord
    payload: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class NewReplay:
    requested_by: str
    filter: str  # JSON, as the operator sent it (normalised)
    destinations: tuple[str, ...]  # empty = "the destinations whose filters match today"
    total: int
    # What the job walks: the operator's filter with its end fixed at the start of the replay,
    # so events arriving meanwhile (live traffic) are not part of it.
    where: EventFilter = EventFilter()


@dataclass(frozen=True, slots=True)
class CreatedDelivery:
    id: int
    event_id: str
    destination: str
    state: DeliveryState


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    id: int
    requested_by: str
    requested_at: float
    filter: str
    destinations: tuple[str, ...]
    total: int | None
    matched: int
    created: int
    state: ReplayState
    finished_at: float | None
    # Its deliveries now: (destination, state, how many), for progress and outcome.
    counts: tuple[tuple[str, DeliveryState, int], ...] = ()
    where: EventFilter = EventFilter()
    cursor: int | None = None  # the position of the last event walked
    cancelled_by: str | None = None

    @property
    def per_destination(self) -> tuple[tuple[str, int], ...]:
        """Deliveries created per destination, whatever became of them."""
        totals: dict[str, int] = {}
        for destination, _, n in self.counts:
            totals[destination] = totals.get(destination, 0) + n
        return tuple(sorted(totals.items()))

    def in_state(self, *states: DeliveryState) -> int:
        return sum(n for _, state, n in self.counts if state in states)


@dataclass(frozen=True, slots=True)
class ReplayPage:
    replays: tuple[ReplayRecord, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which waiting deliveries an operator means (to discard them): unset fields match all.

    ``event`` selects by the delivery's event (type, email, received time...); ``states`` are
    the waiting states it may be in.
    """

    destination: str | None = None
    replay_id: int | None = None
    states: tuple[DeliveryState, ...] = (DeliveryState.PENDING, DeliveryState.PAUSED)
    event: EventFilter = EventFilter()


class AuditAction(enum.StrEnum):
    """What an operator did, as the audit trail records it."""

    PAUSE = "pause"
    RESUME = "resume"
    PRUNE = "prune"
    REPLAY = "replay"
    CANCEL = "cancel"
    DISCARD = "discard"
    RESOLVE = "resolve"
    RETRY = "retry"
    RESET = "reset"  # a destination's circuit closed by hand
    RELOAD = "reload"


@dataclass(frozen=True, slots=True)
class NewAudit:
    """One operator action: who, from where, what, on what, and its parameters and effect."""

    operator: str
    action: AuditAction
    target: str | None = None
    detail: str = "{}"  # JSON
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: float
    operator: str
    action: str
    target: str | None
    detail: str
    peer: str | None


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: tuple[AuditRecord, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted_events: int = 0
    deleted_requests: int = 0
