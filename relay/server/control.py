"""Operator control behind the admin API: replays, pause and resume, and retention pruning.

Owns the background work this process does for every relay sharing the store: running replay
jobs (``relay.server.replays``) and the retention loop, started and stopped with the app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.config import DestinationConfig, Settings
from relay.model import (
    CreatedDelivery,
    EventFilter,
    NewReplay,
    PruneResult,
    ReplayCandidate,
    ReplayState,
    process_owner,
)
from relay.obs.metrics import Metrics
from relay.pipeline.routing import targets
from relay.server.replays import LEASE, ReplayJobs
from relay.store import DestinationStats, Store, StoreError
from relay.store.gate import GateState

log = logging.getLogger("relay.control")


class UnknownDestinationError(Exception):
    """A destination named by the operator is not in the configuration."""


class NoBreakerError(Exception):
    """A circuit was to be reset on a destination configured without a circuit breaker."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    where: EventFilter
    destinations: tuple[str, ...]  # empty = the destinations whose filters match today
    requested_by: str
    filter_json: str
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    replay_id: int | None
    state: ReplayState
    matched: int
    deliveries: int | None  # None while a background replay is still creating them
    per_destination: dict[str, int] | None
    dry_run: bool
    created: tuple[CreatedDelivery, ...] = ()


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
        self.replays = ReplayJobs(settings, store, metrics, self.owner)
        self._on_fatal = on_fatal
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        paused = await self.store.paused_destinations()
        for d in self.settings.destinations:
            self.metrics.paused.labels(d.name).set(1 if d.name in paused else 0)
        self._spawn(self.replays.run(), "relay-replays")
        if self.settings.retention.days is not None:
            self._spawn(self._retention_loop(), "relay-retention")

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
        for name in names:
            if self.settings.destination(name) is None:
                raise UnknownDestinationError(f"unknown destination: {name}")

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

    async def pause(self, name: str) -> int:
        self.check_destinations([name])
        held = await self.store.pause_destination(name)
        self.metrics.paused.labels(name).set(1)
        log.warning("destination=%s paused; %d pending deliveries held", name, held)
        return held

    async def resume(self, name: str) -> int:
        self.check_destinations([name])
        released = await self.store.resume_destination(name)
        self.metrics.paused.labels(name).set(0)
        log.warning("destination=%s resumed; %d held deliveries due now", name, released)
        return released

    async def reset_circuit(self, name: str, operator: str) -> bool:
        """Close a destination's circuit by hand; whether it was open."""
        self.check_destinations([name])
        config = self.settings.destination(name)
        if config is None or config.breaker is None:
            raise NoBreakerError(f"destination {name} has no [destination.breaker]")
        change = await self.store.reset_circuit(name)
        self.metrics.circuit_open.labels(name).set(0)
        if change is not None:
            log.warning("destination=%s circuit closed: %s (%s)", name, change.reason, operator)
        return change is not None

    # -- replays -----------------------------------------------------------------------------

    async def replay(self, request: ReplayRequest) -> ReplayOutcome:
        """Dry runs and small replays complete here; larger ones become background jobs."""
        self.check_destinations(request.destinations)
        # Events that arrive while a replay runs are live traffic, not part of it.
        # (A `until` of 0 is a time like any other, not "unset".)
        started = await self.store.now()
        asked = request.where.until
        until = min(asked if asked is not None else started, started)
        where = dataclasses.replace(request.where, until=until, originals_only=True)
        if request.dry_run:
            return await self._dry_run(where, request.destinations)
        total = await self.store.count_events(where)
        inline = total <= self.replays.inline_limit
        replay_id = await self.store.start_replay(
            NewReplay(
                request.requested_by, request.filter_json, request.destinations, total, where
            ),
            # An inline replay is this request's own: no other process may take it meanwhile.
            owner=self.owner if inline else None,
            lease=LEASE,
        )
        self.metrics.replays.inc()
        log.info(
            "replay=%d requested_by=%s matched=%d filter=%s to=%s",
            replay_id,
            request.requested_by,
            total,
            request.filter_json,
            ",".join(request.destinations) or "(routing)",
        )
        if not inline:
            return ReplayOutcome(replay_id, ReplayState.RUNNING, total, None, None, False)
        created: list[CreatedDelivery] = []
        matched = 0

        async def insert(batch: list[ReplayCandidate], pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += len(batch)
            created.extend(
                await self.replays.create(
                    replay_id, pairs, len(batch), batch[-1].event.seq, self.owner
                )
            )

        try:
            await self.replays.walk(where, request.destinations, insert)
        except BaseException:
            await self._give_up(replay_id)
            raise
        await self.store.finish_replay(replay_id, ReplayState.DONE)
        return _finished(replay_id, matched, created)

    async def _give_up(self, replay_id: int) -> None:
        # Handed to the background jobs, which go on from the last position saved.
        try:
            await self.store.release_replay(replay_id, self.owner)
        except StoreError as exc:
            log.warning("replay=%d left to its lease: %s", replay_id, exc)

    async def replay_event(
        self,
        event_id: str,
        destinations: tuple[str, ...],
        requested_by: str,
        *,
        dry_run: bool = False,
    ) -> ReplayOutcome | None:
        """Send one stored event again (or, dry, say where); None when no such event is stored."""
        self.check_destinations(destinations)
        detail = await self.store.get_event(event_id)
        if detail is None:
            return None
        candidate = ReplayCandidate(detail.event, detail.payload, detail.payload_content_type)
        names = destinations or targets(self.settings, candidate)
        if dry_run:
            per = dict.fromkeys(names, 1)
            return ReplayOutcome(None, ReplayState.DONE, 1, len(per), per, True)
        filter_json = orjson.dumps({"id": event_id}).decode()
        replay_id = await self.store.start_replay(
            NewReplay(requested_by, filter_json, destinations, 1),
            owner=self.owner,
            lease=LEASE,
        )
        self.metrics.replays.inc()
        try:
            created = await self.replays.create(
                replay_id, [(event_id, n) for n in names], 1, detail.event.seq, self.owner
            )
        except BaseException:
            await self._give_up(replay_id)
            raise
        await self.store.finish_replay(replay_id, ReplayState.DONE)
        log.info(
            "replay=%d requested_by=%s event=%s to=%s",
            replay_id,
            requested_by,
            event_id,
            ",".join(names) or "-",
        )
        return _finished(replay_id, 1, created)

    async def _dry_run(self, where: EventFilter, destinations: tuple[str, ...]) -> ReplayOutcome:
        per: dict[str, int] = {}
        matched = 0

        async def count(batch: list[ReplayCandidate], pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += len(batch)
            for _, name in pairs:
                per[name] = per.get(name, 0) + 1

        await self.replays.walk(where, destinations, count)
        return ReplayOutcome(None, ReplayState.DONE, matched, sum(per.values()), per, True)

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, older_than_days: float) -> PruneResult:
        result = await self.store.prune(older_than_days * 86400.0)
        if result.deleted_events or result.deleted_requests:
            log.info(
                "pruned events=%d requests=%d older than %g days",
                result.deleted_events,
                result.deleted_requests,
                older_than_days,
            )
        return result

    async def _retention_loop(self) -> None:
        days = self.settings.retention.days
        interval = self.settings.retention.interval
        assert days is not None
        while True:
            try:
                # One process prunes at a time; if it stops, another takes over within two
                # intervals.
                if await self.store.try_lease("retention", self.owner, 2 * interval):
                    await self.prune(days)
            except StoreError as exc:
                log.warning("retention prune failed, retrying next interval: %s", exc)
            await asyncio.sleep(interval)


def _gate(config: DestinationConfig | None, stored: GateState | None) -> GateState | None:
    """A destination's stored gate as operators see it: None unless it has a rate limit or a
    breaker; a full bucket and a closed circuit until the store has a row for it."""
    if config is None or (config.rate_limit is None and config.breaker is None):
        return None
    return stored or GateState()


def _finished(replay_id: int, matched: int, created: list[CreatedDelivery]) -> ReplayOutcome:
    per: dict[str, int] = {}
    for c in created:
        per[c.destination] = per.get(c.destination, 0) + 1
    return ReplayOutcome(
        replay_id, ReplayState.DONE, matched, len(created), per, False, tuple(created)
    )
