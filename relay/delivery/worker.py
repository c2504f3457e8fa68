"""Delivery workers: one loop per destination claims due deliveries, sends them, records attempts.

Each destination has its own loop and concurrency limit, so a destination that hangs or refuses
connections only ever occupies its own slots. Loops sleep until woken by a commit that made work
due, until the next retry falls due, or for at most IDLE_RECHECK seconds; they never spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from relay.config import DestinationConfig
from relay.delivery.sender import Sender
from relay.model import (
    AttemptOutcome,
    AttemptResult,
    ClaimedDelivery,
    Decision,
    DeliveryState,
    InboundKind,
)
from relay.obs.logs import HotLog
from relay.obs.metrics import Metrics
from relay.pipeline.backoff import decide
from relay.pipeline.outbound import build_request
from relay.store import Store, StoreError
from relay.store.base import ANY, POLL_INTERVAL, Signal, SignalKind
from relay.store.gate import CircuitChange, CircuitEvent, Gate

log = logging.getLogger("relay.delivery")
hot_log = HotLog("relay.delivery")

# Re-check the store at least this often: picks up leases that expired after a crash, and work
# whose signal was lost (another process's notification missed while reconnecting).
IDLE_RECHECK = POLL_INTERVAL
STORE_RETRY = 1.0
BLOCKED_RECHECK = 0.25


@dataclass(frozen=True, slots=True)
class StoreClock:
    """The store's clock (which all processes sharing it share), read without asking it.

    Backoff and age limits are computed in that clock. It is the store's time at the claim plus
    the time passed here since the claim was *asked for*: never behind the store's own clock, so
    a retry is never due early (at most later by the time the claim waited in the store).
    """

    at_claim: float
    asked: float  # time.monotonic() when the claim was sent

    @classmethod
    def from_claim(cls, delivery: ClaimedDelivery, asked: float) -> StoreClock:
        at_claim = delivery.claimed_at if delivery.claimed_at is not None else time.time()
        return cls(at_claim, asked)

    def now(self) -> float:
        return self.at_claim + (time.monotonic() - self.asked)


def lease_seconds(destination: DestinationConfig) -> float:
    """How long a claimed delivery stays ours: the attempt's timeout plus room to record it."""
    return destination.timeout + max(5.0, destination.timeout)


class DestinationWorker:
    """Claims and sends the deliveries of one destination, at most ``concurrency`` at a time."""

    def __init__(
        self,
        destination: DestinationConfig,
        store: Store,
        sender: Sender,
        metrics: Metrics,
        kinds: Mapping[str, InboundKind],
    ) -> None:
        self.destination = destination
        self.kinds = kinds
        self.store = store
        self.sender = sender
        self.metrics = metrics
        # labels() costs a few microseconds a call; this destination's series are looked up once.
        name = destination.name
        self._attempt_counters = {o: metrics.attempts.labels(name, o.value) for o in AttemptOutcome}
        self._attempt_duration = metrics.attempt_duration.labels(name)
        self._e2e_latency = metrics.e2e_latency.labels(name)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        # The rate limit and circuit breaker, when it has either (else claims pay nothing).
        self.gate = Gate.of(destination)
        # Until when (time.monotonic()) the gate holds work back: new work or a freed slot
        # would only be turned away by it, so they do not wake the loop before then.
        self._held_until = 0.0

    def wake(self) -> None:
        if time.monotonic() >= self._held_until:
            self._wake.set()

    def wake_now(self) -> None:
        """Wake even while the gate holds work back: its circuit opened, closed or was reset."""
        self._held_until = 0.0
        self._wake.set()

    def apply(self, destination: DestinationConfig, kinds: Mapping[str, InboundKind]) -> None:
        """A reloaded configuration: the next attempt uses it (URL, headers, timeout, retry
        policy, concurrency, rate limit, breaker); attempts in flight finish as they started."""
        self.destination = destination
        self.kinds = kinds
        self.gate = Gate.of(destination)
        self.wake_now()

    async def run(self) -> None:
        name = self.destination.name
        while not self._stopping:
            # Read at every round: a reloaded configuration changes them.
            limit = self.destination.concurrency
            lease = lease_seconds(self.destination)
            # Under a backlog, claiming for each slot as it frees costs a transaction per
            # delivery; waiting until a quarter of the slots are free claims them in one.
            batch = max(1, limit // 4)
            free = limit - len(self._inflight)
            timeout: float | None = None
            if free >= batch or (free > 0 and not self._inflight):
                try:
                    asked = time.monotonic()
                    claimed, held_for = await self._claim(free, lease)
                    for delivery in claimed:
                        self._spawn(delivery, StoreClock.from_claim(delivery, asked))
                    if len(claimed) < free and held_for is not None:
                        timeout = min(held_for, IDLE_RECHECK)
                        self._held_until = time.monotonic() + timeout
                    elif len(claimed) < free:
                        timeout = await self._idle_timeout()
                except StoreError as exc:
                    log.warning("destination=%s claim failed: %s", name, exc)
                    timeout = STORE_RETRY
            if timeout is None or timeout > 0:
                # asyncio.timeout, not wait_for: no task per wait, and a cancel is never lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            self._held_until = 0.0

    async def _claim(self, free: int, lease: float) -> tuple[list[ClaimedDelivery], float | None]:
        """Due deliveries, through the gate if there is one; and how long the gate holds the
        rest back, when it does."""
        if self.gate is None:
            return await self.store.claim(self.destination.name, free, lease), None
        gated = await self.store.claim_gated(self.destination.name, free, lease, self.gate)
        for delivery in gated.deliveries:
            if delivery.probe:
                self.metrics.probes.labels(self.destination.name).inc()
        return gated.deliveries, gated.wait

    async def _idle_timeout(self) -> float:
        due_in = await self.store.due_in(self.destination.name)
        if due_in is None:
            return IDLE_RECHECK
        if due_in <= 0:
            # Due but not claimed: held back (a database at its size cap) or leased by another
            # process. Look again soon, without a transaction every few milliseconds.
            return BLOCKED_RECHECK
        return min(IDLE_RECHECK, max(0.01, due_in))

    def _spawn(self, delivery: ClaimedDelivery, clock: StoreClock) -> None:
        task = asyncio.create_task(
            self._deliver(delivery, clock),
            name=f"relay-deliver-{self.destination.name}-{delivery.id}",
        )
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "destination=%s delivery task failed: %r",
                self.destination.name,
                exc,
                exc_info=exc,
            )
        self.wake()

    async def _deliver(self, delivery: ClaimedDelivery, clock: StoreClock) -> None:
        dest = self.destination
        body, headers = build_request(dest, delivery, self.kinds, time.time())
        result = await self.sender.send(dest.url, body, headers, dest.timeout)
        now = clock.now()
        decision = decide(dest.retry, delivery.charged_attempt, result, now, delivery.created_at)
        try:
            if self.gate is not None and self.gate.breaker is not None:
                done = await self.store.complete_gated(delivery, result, decision, self.gate)
                held, decision = done.held, done.decision
                if not done.charged:
                    self.metrics.attempts_held.labels(dest.name).inc()
                if done.change is not None:
                    self._circuit_changed(done.change)
            else:
                held = await self.store.complete(delivery, result, decision)
        except StoreError as exc:
            # Not recorded: the lease runs out and the delivery is attempted again. At least once.
            log.error(
                "event=%s destination=%s attempt=%d not recorded: %s",
                delivery.event_id,
                dest.name,
                delivery.attempt,
                exc,
            )
            return
        if not held:
            # The attempt outlived its lease and another one took the delivery over: that one
            # decides its state. This attempt is on record; its outcome counts, its state not.
            log.warning(
                "event=%s destination=%s attempt=%d finished after its lease ran out",
                delivery.event_id,
                dest.name,
                delivery.attempt,
            )
            decision = Decision(DeliveryState.DELIVERING)
        self._observe(delivery, result, decision, now)

    def _circuit_changed(self, change: CircuitChange) -> None:
        """The one log line of a circuit opening or closing: only the process whose attempt
        moved it writes it."""
        name = self.destination.name
        opened = change.event is CircuitEvent.OPENED
        self.metrics.circuit_open.labels(name).set(1 if opened else 0)
        if opened:
            assert self.destination.breaker is not None
            log.warning(
                "destination=%s circuit opened: %s; its deliveries wait, with one probe at a"
                " time (after %gs, the interval doubling up to %gs) until one gets an answer",
                name,
                change.reason,
                self.destination.breaker.probe_interval,
                self.destination.breaker.max_probe_interval,
            )
        else:
            log.warning("destination=%s circuit closed: %s", name, change.reason)

    def _observe(
        self, delivery: ClaimedDelivery, result: AttemptResult, decision: Decision, now: float
    ) -> None:
        name = self.destination.name
        self._attempt_counters[result.outcome].inc()
        self._attempt_duration.observe(result.duration)
        if decision.state is DeliveryState.DELIVERED:
            self._e2e_latency.observe(
                max(0.0, result.started_at + result.duration - delivery.received_at)
            )
        elif decision.state is DeliveryState.DEAD:
            self.metrics.dead.labels(name).inc()
        level = logging.INFO if result.outcome is AttemptOutcome.SUCCESS else logging.WARNING
        if not hot_log.logger.isEnabledFor(level):
            return
        if decision.state is DeliveryState.PENDING and decision.next_attempt_at is not None:
            then = f" retry_in={decision.next_attempt_at - now:.1f}s"
        else:
            then = f" reason={decision.reason!r}" if decision.reason else ""
        status = result.status if result.status is not None else "-"
        hot_log.log(
            level,
            f"delivery event={delivery.event_id} destination={name} attempt={delivery.attempt}"
            f" outcome={result.outcome.value} status={status}"
            f" duration_ms={result.duration * 1000:.1f} state={decision.state.value}{then}"
            f"{' replay=1' if delivery.replay else ''}{' probe=1' if delivery.probe else ''}"
            f"{f' error={result.error!r}' if result.error else ''}",
        )

    def request_stop(self) -> None:
        """Make ``run`` return once the claim it may be awaiting has come back."""
        self._stopping = True
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming, give in-flight attempts ``grace`` seconds, then cancel them.

        A cancelled attempt keeps its lease and is retried after it, so nothing is lost.
        """
        self.request_stop()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                log.warning("cancelling in-flight %s after %.0fs grace", task.get_name(), grace)
                task.cancel()
            if pending:
                await asyncio.wait(pending)


class Dispatcher:
    """Owns one worker task per destination; a worker that dies calls ``on_fatal``."""

    def __init__(
        self,
        destinations: Iterable[DestinationConfig],
        store: Store,
        sender: Sender,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
        kinds: Mapping[str, InboundKind],
    ) -> None:
        self._store, self._sender, self._metrics = store, sender, metrics
        self.workers = {
            d.name: DestinationWorker(d, store, sender, metrics, kinds) for d in destinations
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Workers of destinations removed by a reload, finishing their attempts in flight.
        self._retiring: set[asyncio.Task[None]] = set()
        self._started = False
        self._on_fatal = on_fatal
        store.signals.subscribe(self.on_signal)

    def apply(
        self,
        destinations: Iterable[DestinationConfig],
        kinds: Mapping[str, InboundKind],
        grace: float,
    ) -> None:
        """Take a reloaded configuration: start workers for added destinations, hand changed
        settings to running ones, and stop those of removed destinations once their attempts
        in flight are done (within ``grace``; their waiting deliveries stay stored, and go out
        if the destination comes back)."""
        wanted = {d.name: d for d in destinations}
        for name in [n for n in self.workers if n not in wanted]:
            worker, task = self.workers.pop(name), self._tasks.pop(name, None)
            retire = asyncio.create_task(
                _retire(worker, task, grace), name=f"relay-worker-{name}-retiring"
            )
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)
        for name, config in wanted.items():
            running = self.workers.get(name)
            if running is not None:
                running.apply(config, kinds)
                continue
            added = DestinationWorker(config, self._store, self._sender, self._metrics, kinds)
            self.workers[name] = added
            if self._started:
                self._start_one(name, added)

    def on_signal(self, signal: Signal) -> None:
        # A pause needs no wake-up: claims check it in the store. A resume comes as DUE.
        names = self.workers if signal.name == ANY else [signal.name]
        if signal.kind is SignalKind.DUE:
            self.wake(names)
        elif signal.kind is SignalKind.CIRCUIT:
            for name in names:
                if (worker := self.workers.get(name)) is not None:
                    worker.wake_now()

    def wake(self, destinations: Iterable[str]) -> None:
        for name in destinations:
            worker = self.workers.get(name)
            if worker is not None:
                worker.wake()

    def start(self) -> None:
        self._started = True
        for name, worker in self.workers.items():
            self._start_one(name, worker)

    def _start_one(self, name: str, worker: DestinationWorker) -> None:
        task = asyncio.create_task(worker.run(), name=f"relay-worker-{name}")
        task.add_done_callback(self._worker_done)
        self._tasks[name] = task

    @property
    def running(self) -> bool:
        return all(not t.done() for t in self._tasks.values())

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.critical("%s died: %r", task.get_name(), exc, exc_info=exc)
            self._on_fatal(exc)

    async def stop(self, grace: float) -> None:
        for worker in self.workers.values():
            worker.request_stop()
        # A loop cancelled while awaiting a claim would leave what the claim committed leased
        # and unsent until the lease ran out; let it come back, and its deliveries join the
        # in-flight attempts that the grace period covers.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._tasks:
            await asyncio.wait(self._tasks.values(), timeout=grace)
        left = max(0.0, deadline - loop.time())
        await asyncio.gather(*(w.stop(left) for w in self.workers.values()))
        for task in self._tasks.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._retiring, return_exceptions=True)
        self._tasks.clear()


async def _retire(
    worker: DestinationWorker, task: asyncio.Task[None] | None, grace: float
) -> None:
    """Stop a removed destination's worker: no new claims, attempts in flight finish."""
    await worker.stop(grace)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.info("destination=%s removed from the configuration: its worker stopped",
             worker.destination.name)  # fmt: skip
