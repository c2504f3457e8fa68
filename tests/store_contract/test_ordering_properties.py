"""Ordered delivery under random interleavings of events, failures, replays, pauses and
restarts: no delivery of a subscriber is ever sent while an earlier one of that subscriber is
unfinished, nothing is left stuck, and each subscriber's deliveries reach the sink in the order
relay received their events. Also two stores (two processes) claiming one queue at once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.model import ClaimedDelivery, Decision, DeliveryState, NewReplay
from relay.store import Store
from tests.store_contract.backends import Backend
from tests.store_contract.kit import DELIVERED, attempt, new_event, raw_request

T = TypeVar("T")
DEAD = Decision(DeliveryState.DEAD, reason="gave up")
SUBSCRIBERS = 3  # and None: events without an email
_names = itertools.count()

steps = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), st.sampled_from([0, 1, 2, None]), st.integers(1, 3)),
        st.tuples(st.just("claim"), st.integers(1, 5)),
        st.tuples(st.sampled_from(["succeed", "fail", "die"]), st.integers(0, 20)),
        st.tuples(st.just("replay"), st.integers(0, 20)),
        st.tuples(st.sampled_from(["restart", "pause", "resume"])),
    ),
    min_size=1,
    max_size=30,
)


@dataclass
class Model:
    """What the test knows: each subscriber's deliveries in the order relay received them."""

    destination: str
    queues: dict[int | None, list[int]] = field(default_factory=dict)
    subscriber_of: dict[int, int | None] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    events: list[tuple[str, int | None]] = field(default_factory=list)
    in_flight: list[ClaimedDelivery] = field(default_factory=list)
    sink: dict[int | None, list[int]] = field(default_factory=dict)

    def add(self, delivery_id: int, subscriber: int | None) -> None:
        self.queues.setdefault(subscriber, []).append(delivery_id)
        self.subscriber_of[delivery_id] = subscriber

    def check_claim(self, delivery: ClaimedDelivery) -> None:
        subscriber = self.subscriber_of[delivery.id]
        if subscriber is None:
            return
        queue = self.queues[subscriber]
        earlier = queue[: queue.index(delivery.id)]
        unfinished = [d for d in earlier if d not in self.finished]
        assert not unfinished, f"{delivery.id} sent before {unfinished} of its subscriber"


class Run:
    """Store calls made from hypothesis's thread on the test's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Backend, store: Store) -> None:
        self.loop, self.backend, self.store = loop, backend, store

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def play(self, plan: list[tuple[Any, ...]]) -> None:
        model = Model(f"ordered-{next(_names)}")
        for step in plan:
            getattr(self, step[0])(model, *step[1:])
        self.drain(model)

    def ingest(self, model: Model, subscriber: int | None, n: int) -> None:
        email = None if subscriber is None else f"s{subscriber}@example.com"
        made = self(
            self.store.ingest(
                raw_request(),
                [
                    new_event(model.destination, email=email, ordered=(model.destination,))
                    for _ in range(n)
                ],
            )
        )
        for event_id in made.event_ids:
            detail = self(self.store.get_event(event_id))
            assert detail is not None
            model.add(detail.deliveries[0].id, subscriber)
            model.events.append((event_id, subscriber))

    def claim(self, model: Model, n: int) -> None:
        # Leases of no length: anything in flight may be claimed again, as after a lost lease.
        for delivery in self(self.store.claim(model.destination, n, 0.0)):
            model.check_claim(delivery)
            model.in_flight.append(delivery)

    def _finish(self, model: Model, pick: int, decision: Decision) -> None:
        if not model.in_flight:
            return
        delivery = model.in_flight.pop(pick % len(model.in_flight))
        if self(self.store.complete(delivery, attempt(), decision)):
            if decision.state is not DeliveryState.PENDING:
                model.finished.add(delivery.id)
            if decision.state is DeliveryState.DELIVERED:
                model.sink.setdefault(model.subscriber_of[delivery.id], []).append(delivery.id)

    def succeed(self, model: Model, pick: int) -> None:
        self._finish(model, pick, DELIVERED)

    def fail(self, model: Model, pick: int) -> None:
        self._finish(model, pick, Decision(DeliveryState.PENDING, next_attempt_at=time.time()))

    def die(self, model: Model, pick: int) -> None:
        self._finish(model, pick, DEAD)

    def replay(self, model: Model, pick: int) -> None:
        if not model.events:
            return
        event_id, subscriber = model.events[pick % len(model.events)]
        replay_id = self(self.store.start_replay(NewReplay("test", "{}", (model.destination,), 1)))
        (made,) = self(
            self.store.add_replay_deliveries(
                replay_id, [(event_id, model.destination)], 1,
                ordered=frozenset({model.destination}),
            )
        )  # fmt: skip
        model.add(made.id, subscriber)

    def restart(self, model: Model) -> None:
        # What was in flight is lost with the process; its leases (of no length) have run out.
        model.in_flight.clear()
        self(self.backend.close(self.store))
        self.store = self(self.backend.open())

    def pause(self, model: Model) -> None:
        self(self.store.pause_destination(model.destination))

    def resume(self, model: Model) -> None:
        self(self.store.resume_destination(model.destination))

    def drain(self, model: Model) -> None:
        self.resume(model)
        for _ in range(1000):
            if not model.in_flight:
                self.claim(model, 50)
                if not model.in_flight:
                    break
            self.succeed(model, 0)
        everything = {d for queue in model.queues.values() for d in queue}
        assert everything == model.finished, f"stuck: {sorted(everything - model.finished)}"
        for subscriber, sent in model.sink.items():
            if subscriber is not None:
                received = [d for d in model.queues[subscriber] if d in sent]
                assert sent == received, f"subscriber {subscriber}: {sent} != {received}"


async def test_each_subscribers_deliveries_reach_the_sink_in_receive_order(
    backend: Backend,
) -> None:
    run = Run(asyncio.get_running_loop(), backend, await backend.open())

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(plan=steps)
    def play(plan: list[tuple[Any, ...]]) -> None:
        run.play(plan)

    # hypothesis drives the store from a thread while it runs on this loop.
    await asyncio.to_thread(play)


async def test_two_processes_never_send_one_subscriber_at_once(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    destination = "crm"
    in_flight: dict[int, ClaimedDelivery] = {}
    sent: list[str] = []
    expected: list[str] = []

    async def ingest(store: Store, n: int) -> None:
        for _ in range(n):
            made = await store.ingest(
                raw_request(),
                [new_event(destination, email="ann@example.com", ordered=(destination,))],
            )
            expected.extend(made.event_ids)

    async def worker(store: Store) -> None:
        idle = 0
        while idle < 50:
            claimed = await store.claim(destination, 5, 60.0)
            if not claimed:
                idle += 1
                await asyncio.sleep(0.01)
                continue
            idle = 0
            for delivery in claimed:
                assert not in_flight, f"{delivery.id} claimed while {list(in_flight)} in flight"
                in_flight[delivery.id] = delivery
                await asyncio.sleep(0)
                del in_flight[delivery.id]
                sent.append(delivery.event_id)
                assert await store.complete(delivery, attempt(), DELIVERED)

    # Ingest through both stores in turn (the order is what they committed), while both claim.
    await asyncio.gather(ingest(a, 20), worker(a), worker(b))
    await ingest(b, 20)
    await asyncio.gather(worker(a), worker(b))
    assert sent == expected
