"""Ordered delivery per subscriber: the rules every backend keeps (destination ordering =
"subscriber").

The deliveries of one subscriber (``rules.order_key``: list id and email) to an ordered destination
form a queue, in the order they were stored (delivery ids: given in commit order by SQLite's one
writer, and under the queue's lock on PostgreSQL). Only a queue's head, its earliest unfinished
delivery, is ever due; the others wait, pending (or paused) with no due time, outside the index
that claims read, so claims are as cheap as for any destination and never take two deliveries
of one subscriber. When a head is finished (delivered, dead, discarded), or deliveries join a
queue, the backend *releases* the queue in the same transaction: its head becomes due now if it
was waiting. A head released after a dead one records which (``after_dead``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from relay.model import ClaimedDelivery, DeliveryState, NewEvent
from relay.store.rules import initial_state, order_key

# A subscriber queue: (destination, order key).
Queue = tuple[str, int]

FINISHED = frozenset({DeliveryState.DELIVERED, DeliveryState.DEAD, DeliveryState.DISCARDED})


@dataclass
class Releases:
    """The queues a transaction must release before it commits, and which of them lost their
    head to a dead delivery."""

    queues: set[Queue] = field(default_factory=set)
    after_dead: dict[Queue, int] = field(default_factory=dict)

    def joined(self, destination: str, key: int | None) -> None:
        """A delivery was added to a queue (waiting; it heads it if it is alone)."""
        if key is not None:
            self.queues.add((destination, key))

    def finished(
        self, destination: str, key: int | None, delivery_id: int, state: DeliveryState | str
    ) -> None:
        """A delivery moved to ``state``: its queue needs a new head if that state ends it."""
        if key is None or DeliveryState(state) not in FINISHED:
            return
        self.queues.add((destination, key))
        if state == DeliveryState.DEAD:
            self.after_dead[(destination, key)] = delivery_id

    def claimed_finished(self, deliveries: Iterable[ClaimedDelivery], state: DeliveryState) -> None:
        for d in deliveries:
            self.finished(d.destination, d.order_key, d.id, state)

    def sorted(self) -> list[Queue]:
        """The queues in one order, the order PostgreSQL locks them in (no deadlocks)."""
        return sorted(self.queues)


def delivery_key(event: NewEvent, destination: str) -> int | None:
    """The queue of ``event``'s delivery to ``destination``; None when it is not held in one."""
    if destination not in event.ordered:
        return None
    return order_key(event.list_id, event.email)


def new_deliveries(
    event: NewEvent, paused: Collection[str], due: set[str], releases: Releases
) -> Iterator[tuple[str, DeliveryState, int | None]]:
    """The deliveries a new event (not a duplicate) gets, as (destination, state, queue key):
    ``due`` gains the destinations given one due now, ``releases`` the queues joined (a
    delivery in a queue waits, with no due time, until its queue is released)."""
    for name in event.destinations:
        state = initial_state(name, paused)
        if state is DeliveryState.PENDING:
            due.add(name)
        key = delivery_key(event, name)
        releases.joined(name, key)
        yield name, state, key


def keys_for(
    pairs: Sequence[tuple[str, str]],
    ordered: frozenset[str],
    facts: dict[str, tuple[str | None, str | None]],
) -> list[int | None]:
    """The queue key of each (event id, destination) a replay adds, from its event's list id
    and email (``facts``); None for a destination that is not ordered."""
    keys: list[int | None] = []
    for event_id, name in pairs:
        list_id, email = facts.get(event_id, (None, None))
        keys.append(order_key(list_id, email) if name in ordered else None)
    return keys
