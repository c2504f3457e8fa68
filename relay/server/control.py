"""Operator control behind the admin API (and the console): pause and resume, replays and their
cancelling, retrying, resolving and discarding deliveries, retention pruning.

Each change is carried out against the store, logged, and put on the audit trail. Control also
owns the background work this process does for every relay sharing the store: running replay
jobs (``relay.server.replays``) and the retention loop, started and stopped with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.config import DestinationConfig, Settings
from relay.model import (
    AuditAction,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    PruneResult,
    process_owner,
)
from relay.obs.metrics import Metrics
from relay.server.audit import Actor, Auditor
from relay.server.replay_control import (
    CancelOutcome,
    ConflictError,
    NotFoundError,
    ReplayControl,
    ReplayOutcome,
    ReplayRequest,
    UnknownDestinationError,
)
from relay.store import DestinationStats, Store, StoreError
from relay.store.gate import GateState

log = logging.getLogger("relay.control")

__all__ = [
    "Actor",
    "CancelOutcome",
    "ConflictError",
    "Control",
    "DestinationStatus",
    "DiscardOutcome",
    "NoBreakerError",
    "NotFoundError",
    "ReplayOutcome",
    "ReplayRequest",
    "RetryOutcome",
    "UnknownDestinationError",
]


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """A pending delivery made due now (``delivery`` itself), or a dead one sent again as a new
    delivery (``replay``: the one-event replay that made it)."""

    delivery: DeliveryRecord
    due_now: bool
    replay: ReplayOutcome | None = None


@dataclass(frozen=True, slots=True)
class DiscardOutcome:
    matched: int
    per_destination: dict[str, int]
    dry_run: bool


class NoBreakerError(Exception):
    """A circuit was to be reset on a destination configured without a circuit breaker."""


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """One destination as operators see it: configured (or only still holding deliveries), paused
    or not, and its unfinished-delivery counts."""

    name: str
    config: DestinationConfig | None
    paused: bool
    stats: DestinationStats
    # Its rate limit and circuit as stored; None without a breaker and a rate limit.
    gate: GateState | None = None

    @property
    def circuit_open(self) -> bool:
        return bool(self.config and self.config.breaker and self.gate and self.gate.open)


class Control:
    """Carries out operator requests against the store; owns the background tasks they need."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.owner = process_owner()
        self.auditor = Auditor(store)
        self.replaying = ReplayControl(settings, store, metrics, self.owner, self.auditor)
        self.replays = self.replaying.jobs
        self._on_fatal = on_fatal
        self._tasks: list[asyncio.Task[None]] = []
        self._retention_changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.show_paused(self.settings.destinations)
        self._spawn(self.replays.run(), "relay-replays")
        self._spawn(self._retention_loop(), "relay-retention")

    async def show_paused(self, destinations: Sequence[Any]) -> None:
        paused = await self.store.paused_destinations()
        for d in destinations:
            self.metrics.paused.labels(d.name).set(1 if d.name in paused else 0)

    def apply(self, settings: Settings) -> None:
        """Use a reloaded configuration from now on (routing of replays, destinations)."""
        retention_changed = settings.retention != self.settings.retention
        self.settings = settings
        self.replaying.settings = settings
        self.replays.settings = settings
        if retention_changed:
            self._retention_changed.set()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._side_task_done)
        self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.critical("%s died: %r", task.get_name(), exc, exc_info=exc)
            self._on_fatal(exc)

    # -- destinations ------------------------------------------------------------------------

    def check_destinations(self, names: Sequence[str]) -> None:
        self.replaying.check_destinations(list(names))

    async def destinations(self) -> list[DestinationStatus]:
        """Configured destinations in config order, then removed ones that still have deliveries."""
        stats = {s.destination: s for s in await self.store.destination_stats()}
        paused = await self.store.paused_destinations()
        gated = any(d.rate_limit or d.breaker for d in self.settings.destinations)
        gates = await self.store.gate_states() if gated else {}
        configured = [d.name for d in self.settings.destinations]
        return [
            DestinationStatus(
                name,
                self.settings.destination(name),
                name in paused,
                stats.get(name) or DestinationStats(destination=name),
                _gate(self.settings.destination(name), gates.get(name)),
            )
            for name in configured + sorted(set(stats) - set(configured))
        ]

    async def pause(self, name: str, actor: Actor | None = None) -> int:
        actor = actor or Actor()
        self.check_destinations([name])
        held = await self.store.pause_destination(name)
        self.metrics.paused.labels(name).set(1)
        log.warning("destination=%s paused by %s; %d pending deliveries held", name, actor.name,
                    held)  # fmt: skip
        await self.auditor.record(actor, AuditAction.PAUSE, name, held=held)
        return held

    async def resume(self, name: str, actor: Actor | None = None) -> int:
        actor = actor or Actor()
        self.check_destinations([name])
        released = await self.store.resume_destination(name)
        self.metrics.paused.labels(name).set(0)
        log.warning("destination=%s resumed by %s; %d held deliveries due now", name,
                    actor.name, released)  # fmt: skip
        await self.auditor.record(actor, AuditAction.RESUME, name, released=released)
        return released

    async def reset_circuit(self, name: str, actor: Actor | None = None) -> bool:
        """Close a destination's circuit by hand; whether it was open."""
        actor = actor or Actor()
        self.check_destinations([name])
        config = self.settings.destination(name)
        if config is None or config.breaker is None:
            raise NoBreakerError(f"destination {name} has no [destination.breaker]")
        change = await self.store.reset_circuit(name)
        self.metrics.circuit_open.labels(name).set(0)
        if change is not None:
            log.warning("destination=%s circuit closed: %s (%s)", name, change.reason, actor.name)
        await self.auditor.record(actor, AuditAction.RESET, name, was_open=change is not None)
        return change is not None

    # -- replays -----------------------------------------------------------------------------

    async def replay(self, request: ReplayRequest) -> ReplayOutcome:
        return await self.replaying.replay(request)

    async def replay_event(
        self,
        event_id: str,
        destinations: tuple[str, ...],
        requested_by: str,
        *,
        dry_run: bool = False,
        peer: str | None = None,
    ) -> ReplayOutcome | None:
        return await self.replaying.replay_event(
            event_id, destinations, Actor(requested_by, peer), dry_run=dry_run
        )

    async def cancel_replay(self, replay_id: int, actor: Actor) -> CancelOutcome:
        return await self.replaying.cancel(replay_id, actor)

    # -- single deliveries, and waiting ones in bulk -------------------------------------------

    async def _delivery(self, delivery_id: int) -> DeliveryRecord:
        delivery = await self.store.get_delivery(delivery_id)
        if delivery is None:
            raise NotFoundError(f"unknown delivery: {delivery_id}")
        return delivery

    async def retry(self, delivery_id: int, actor: Actor) -> RetryOutcome:
        """Send a delivery now: a pending one waiting out its backoff becomes due now; a dead
        one is sent again as a new delivery of its event to its destination (a one-event replay:
        the dead one stays in the history, and is resolved once the new one is delivered)."""
        delivery = await self._delivery(delivery_id)
        if delivery.state is DeliveryState.PENDING and await self.store.retry_delivery(
            delivery_id
        ):
            log.info("delivery=%d retried now by %s", delivery_id, actor.name)
            await self.auditor.record(
                actor, AuditAction.RETRY, str(delivery_id), destination=delivery.destination,
                due_now=True,
            )  # fmt: skip
            return RetryOutcome(await self._delivery(delivery_id), due_now=True)
        delivery = await self._delivery(delivery_id)  # it may have moved on meanwhile
        if delivery.state is not DeliveryState.DEAD:
            raise ConflictError(_cannot_retry(delivery))
        if delivery.resolved_at is not None:
            raise ConflictError(
                f"delivery {delivery_id} is dead but resolved ({delivery.resolved_by}): its"
                " event got there; replay the event to send it again anyway"
            )
        if self.settings.destination(delivery.destination) is None:
            raise ConflictError(
                f"delivery {delivery_id} is to {delivery.destination}, which is no longer"
                " configured"
            )
        replay = await self.replaying.replay_event(
            delivery.event_id, (delivery.destination,), actor, retry_of=delivery_id
        )
        if replay is None:
            raise ConflictError(f"the event of delivery {delivery_id} is no longer stored")
        await self.auditor.record(
            actor, AuditAction.RETRY, str(delivery_id), destination=delivery.destination,
            due_now=False, replay=replay.replay_id, deliveries=[c.id for c in replay.created],
        )  # fmt: skip
        return RetryOutcome(delivery, due_now=False, replay=replay)

    async def resolve(self, delivery_id: int, actor: Actor, reason: str | None) -> DeliveryRecord:
        """Mark a dead delivery resolved by hand: no longer a dead letter (not counted, not
        replayed by "replay the dead letters"), kept in the history with who and why."""
        if not await self.store.resolve_delivery(delivery_id, actor.name, reason):
            delivery = await self._delivery(delivery_id)
            if delivery.state is not DeliveryState.DEAD:
                raise ConflictError(
                    f"delivery {delivery_id} is {delivery.state.value}: only dead deliveries"
                    " are resolved"
                )
            raise ConflictError(
                f"delivery {delivery_id} was already resolved by {delivery.resolved_by}"
            )
        log.info("delivery=%d resolved by %s: %s", delivery_id, actor.name, reason or "-")
        await self.auditor.record(actor, AuditAction.RESOLVE, str(delivery_id), reason=reason)
        return await self._delivery(delivery_id)

    async def discard(
        self, where: DeliveryFilter, actor: Actor, *, dry_run: bool, filter_json: str = "{}"
    ) -> DiscardOutcome:
        """Drop waiting (pending or paused) deliveries that match, e.g. the rest of a mistaken
        replay: they are never attempted. One in flight finishes its attempt."""
        if where.destination is not None:
            self.check_destinations([where.destination])
        if dry_run:
            return DiscardOutcome(await self.store.count_waiting(where), {}, True)
        per = await self.store.discard(where)
        total = sum(per.values())
        log.warning(
            "discarded %d deliveries (%s) by %s; filter=%s",
            total,
            ", ".join(f"{name} {n}" for name, n in sorted(per.items())) or "none",
            actor.name,
            filter_json,
        )
        await self.auditor.record(
            actor, AuditAction.DISCARD, where.destination, filter=orjson.loads(filter_json),
            discarded=per,
        )  # fmt: skip
        return DiscardOutcome(total, per, False)

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, older_than_days: float, actor: Actor | None = None) -> PruneResult:
        result = await self.store.prune(older_than_days * 86400.0)
        if result.deleted_events or result.deleted_requests:
            log.info(
                "pruned events=%d requests=%d older than %g days",
                result.deleted_events,
                result.deleted_requests,
                older_than_days,
            )
        if actor is not None:  # the retention loop's own prunes are routine, not actions
            await self.auditor.record(
                actor, AuditAction.PRUNE, None, older_than_days=older_than_days,
                deleted_events=result.deleted_events, deleted_requests=result.deleted_requests,
            )  # fmt: skip
        return result

    async def _retention_loop(self) -> None:
        while True:
            # Read at every round: a reloaded configuration changes them.
            days = self.settings.retention.days
            interval = self.settings.retention.interval
            try:
                # One process prunes at a time; if it stops, another takes over within two
                # intervals.
                if days is not None and await self.store.try_lease(
                    "retention", self.owner, 2 * interval
                ):
                    await self.prune(days)
            except StoreError as exc:
                log.warning("retention prune failed, retrying next interval: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._retention_changed.wait()
            self._retention_changed.clear()


def _gate(config: DestinationConfig | None, stored: GateState | None) -> GateState | None:
    """A destination's stored gate as operators see it: None unless it has a rate limit or a
    breaker; a full bucket and a closed circuit until the store has a row for it."""
    if config is None or (config.rate_limit is None and config.breaker is None):
        return None
    return stored or GateState()


def _cannot_retry(delivery: DeliveryRecord) -> str:
    state = delivery.state
    if state is DeliveryState.PENDING and delivery.next_attempt_at is None:
        return (
            f"delivery {delivery.id} waits behind an earlier delivery of the same subscriber"
            " (ordering = \"subscriber\"): it goes once that one is delivered or given up"
        )
    why = {
        DeliveryState.DELIVERING: "is being sent right now",
        DeliveryState.DELIVERED: "was delivered: replay its event to send it again",
        DeliveryState.PAUSED: "is held by its paused destination: resume the destination",
        DeliveryState.DISCARDED: "was discarded: replay its event to send it again",
    }.get(state, f"is {state.value}")
    return f"delivery {delivery.id} {why}"
