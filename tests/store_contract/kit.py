"""Building blocks for store tests: requests, events and attempt results, and the few steps
(ingest one event, claim, finish) that nearly every store test takes.

    event_id = await ingest_one(store, "crm", email="ann@example.com")
    (delivery,) = await store.claim("crm", 10, LEASE)
    assert await store.complete(delivery, ok(), DELIVERED)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relay.ids import new_id
from relay.model import (
    AttemptOutcome,
    AttemptResult,
    ClaimedDelivery,
    Decision,
    DeliveryState,
    EventFilter,
    EventRecord,
    NewEvent,
    RawRequest,
)
from relay.store import Signal, SignalKind, Store, StoreError
from relay.store.base import ANY
from tests.support import wait_until

FORM = "application/x-www-form-urlencoded"
BODY = b"type=subscribe&fired_at=2009-03-26+21%3A35%3A57&data%5Bemail%5D=ann%40example.com"
# Long enough that nothing claimed in a test comes back by itself while the test runs.
LEASE = 60.0
# Short enough to watch run out: tests poll for its end with a deadline, never sleep through it.
SHORT = 0.2

DELIVERED = Decision(DeliveryState.DELIVERED)
# Signals may travel through the database (PostgreSQL NOTIFY): a generous deadline, polled.
ARRIVAL = 5.0


def raw_request(
    body: bytes = BODY,
    *,
    inbound: str = "audience-user",
    content_type: str = FORM,
    headers: tuple[tuple[str, str], ...] = (("Content-Type", FORM), ("User-Agent", "MailChimp")),
    query: str = "secret=%2A%2A%2A",
    peer: str = "203.0.113.7",
) -> RawRequest:
    return RawRequest(
        id=new_id(),
        inbound=inbound,
        method="POST",
        path="/hooks/user",
        query=query,
        headers=headers,
        body=body,
        content_type=content_type,
        peer=peer,
        received_at=time.time(),
    )


def new_event(
    *destinations: str,
    inbound: str = "audience-user",
    source: str = "user",
    type: str = "subscribe",
    list_id: str | None = None,
    email: str | None = None,
    fired_at: float | None = None,
    parse_error: str | None = None,
    dedup_key: str | None = None,
    payload: bytes | None = None,
    payload_content_type: str | None = None,
    ordered: tuple[str, ...] = (),
) -> NewEvent:
    return NewEvent(
        inbound=inbound,
        source=source,
        type=type,
        received_at=time.time(),
        destinations=destinations,
        list_id=list_id,
        email=email,
        fired_at=fired_at,
        parse_error=parse_error,
        dedup_key=dedup_key,
        payload=payload,
        payload_content_type=payload_content_type,
        ordered=ordered,
    )


async def ingest_one(store: Store, *destinations: str, **event: object) -> str:
    """Store one request carrying one event; its id."""
    result = await store.ingest(
        raw_request(inbound=str(event.get("inbound", "audience-user"))),
        [new_event(*destinations, **event)],  # type: ignore[arg-type]
    )
    return result.event_ids[0]


def attempt(
    status: int | None = 200,
    *,
    outcome: AttemptOutcome | None = None,
    error: str | None = None,
    duration: float = 0.012,
    response_head: bytes = b"HTTP/1.1 200 OK\r\n",
    retry_after: float | None = None,
) -> AttemptResult:
    if outcome is None:
        outcome = AttemptOutcome.CONNECTION_ERROR
        if status is not None:
            outcome = AttemptOutcome(f"{status // 100}xx")
    return AttemptResult(
        outcome=outcome,
        started_at=time.time() - duration,
        duration=duration,
        status=status,
        error=error,
        response_head=response_head,
        retry_after=retry_after,
    )


def retry_at(when: float) -> Decision:
    return Decision(DeliveryState.PENDING, next_attempt_at=when)


async def claim_all(store: Store, destination: str, lease: float = LEASE) -> list[ClaimedDelivery]:
    """Everything due for ``destination`` now, in the order claims hand it out."""
    claimed: list[ClaimedDelivery] = []
    while batch := await store.claim(destination, 50, lease):
        claimed += batch
    return claimed


async def deliver_all(store: Store, destination: str) -> list[ClaimedDelivery]:
    """Claim and finish every due delivery of ``destination`` as delivered."""
    claimed = await claim_all(store, destination)
    for delivery in claimed:
        assert await store.complete(delivery, attempt(), DELIVERED)
    return claimed


async def all_events(store: Store, page: int = 1000) -> list[EventRecord]:
    """Every stored event, newest first, paged through the events cursor."""
    events: list[EventRecord] = []
    before: int | None = None
    while True:
        got = await store.list_events(EventFilter(), page, before)
        events += got.events
        if got.next_cursor is None:
            return events
        before = got.next_cursor


def ids(records: Sequence[EventRecord]) -> list[str]:
    return [r.id for r in records]


class Heard:
    """Every signal a store gives its subscribers, and whether what a DUE announced was visible
    in the store by the time it was heard (signals come after commit).

    Signals may arrive late and more than once (a NOTIFY echoed back to the store that sent
    it, after the store's own), so tests only rule out signals no commit could have caused. A
    store that may have missed notifications (its listening connection was just made) says
    so with a signal named ANY instead, which ``wait_for(..., or_any=True)`` accepts.
    """

    def __init__(self, store: Store, *, check_due: bool = True) -> None:
        self.store = store
        self.check_due = check_due
        self.signals: list[Signal] = []
        self.checks: list[asyncio.Task[tuple[Signal, bool]]] = []
        store.signals.subscribe(self.on_signal)

    def on_signal(self, signal: Signal) -> None:
        self.signals.append(signal)
        # ANY says "anything may have changed", not that something is due.
        if self.check_due and signal.kind is SignalKind.DUE and signal.name != ANY:
            self.checks.append(asyncio.get_running_loop().create_task(self._due_now(signal)))

    async def _due_now(self, signal: Signal) -> tuple[Signal, bool]:
        try:
            due = await self.store.due_in(signal.name)
        except StoreError:  # a late echo, heard as the test closes its store: nothing to check
            return signal, True
        return signal, due is not None and due <= 0

    def mark(self) -> int:
        """A place in what was heard, for ``wait_for(since=...)``."""
        return len(self.signals)

    async def wait_for(
        self, kind: SignalKind, name: str, *, since: int = 0, or_any: bool = False
    ) -> None:
        wanted = {Signal(kind, name), Signal(kind, ANY)} if or_any else {Signal(kind, name)}
        await wait_until(
            lambda: not wanted.isdisjoint(self.signals[since:]),
            timeout=ARRIVAL,
            what=f"{kind} {name}",
        )

    def names(self, kind: SignalKind) -> set[str]:
        return {s.name for s in self.signals if s.kind is kind}

    async def announced_too_early(self) -> list[Signal]:
        """The DUE signals heard before what they announced was visible (none, rightly)."""
        return [signal for signal, visible in await asyncio.gather(*self.checks) if not visible]
