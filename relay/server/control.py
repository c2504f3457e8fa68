"""Operator control behind the admin API: replays, pause and resume, and retention pruning.

Owns its background work (bulk replays, the retention loop): started and stopped with the app.
A bulk replay streams through the store in batches and feeds new deliveries to each destination
only as fast as that destination drains them, so live events are never queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from relay.config import Settings
from relay.model import (
    CreatedDelivery,
    EventFilter,
    NewReplay,
    PruneResult,
    ReplayCandidate,
    ReplayState,
)
from relay.obs.metrics import Metrics
from relay.pipeline.routing import needs_payload, targets
from relay.store import Store, StoreError

log = logging.getLogger("relay.control")

# Events read per store round trip while walking a filter (one short read each).
WALK_BATCH = 500
# A replay matching at most this many events completes inside the request; larger ones run in
# the background and are answered 202 at once with the replay id to follow.
INLINE_LIMIT = 500
# A background replay inserts this many deliveries per transaction...
FEED = 100
# ...and only while fewer than max(FEED, WINDOW_PER_SLOT * concurrency) of its deliveries to that
# destination still wait: a live event arriving meanwhile is behind at most that many.
WINDOW_PER_SLOT = 10
ROOM_POLL = 0.05


class UnknownDestinationError(Exception):
    """A destination named by the operator is not in the configuration."""


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


Batch = Callable[[int, list[tuple[str, str]]], Awaitable[None]]


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
        self.inline_limit = INLINE_LIMIT
        self.walk_batch = WALK_BATCH
        self.feed = FEED
        self._on_fatal = on_fatal
        self._replays: dict[int, asyncio.Task[None]] = {}
        self._retention: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        interrupted = await self.store.interrupt_running_replays(time.time())
        if interrupted:
            log.warning("%d replay(s) were interrupted by the last shutdown", interrupted)
        paused = await self.store.paused_destinations()
        for d in self.settings.destinations:
            self.metrics.paused.labels(d.name).set(1 if d.name in paused else 0)
        if self.settings.retention.days is not None:
            self._retention = asyncio.create_task(self._retention_loop(), name="relay-retention")
            self._retention.add_done_callback(self._side_task_done)

    async def stop(self) -> None:
        tasks = [t for t in (self._retention, *self._replays.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retention = None

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.critical("%s died: %r", task.get_name(), exc, exc_info=exc)
            self._on_fatal(exc)

    # -- destinations ------------------------------------------------------------------------

    def check_destinations(self, names: Sequence[str]) -> None:
        for name in names:
            if self.settings.destination(name) is None:
                raise UnknownDestinationError(f"unknown destination: {name}")

    async def pause(self, name: str) -> int:
        self.check_destinations([name])
        held = await self.store.pause_destination(name, time.time())
        self.metrics.paused.labels(name).set(1)
        log.warning("destination=%s paused; %d pending deliveries held", name, held)
        return held

    async def resume(self, name: str) -> int:
        self.check_destinations([name])
        released = await self.store.resume_destination(name, time.time())
        self.metrics.paused.labels(name).set(0)
        log.warning("destination=%s resumed; %d held deliveries due now", name, released)
        return released

    # -- replays -----------------------------------------------------------------------------

    async def replay(self, request: ReplayRequest) -> ReplayOutcome:
        """Dry runs and small replays complete here; larger ones continue in the background."""
        self.check_destinations(request.destinations)
        started = time.time()
        # Events that arrive while a replay runs are live traffic, not part of it.
        # (A `until` of 0 is a time like any other, not "unset".)
        asked = request.where.until
        until = min(asked if asked is not None else started, started)
        where = dataclasses.replace(request.where, until=until, originals_only=True)
        if request.dry_run:
            return await self._dry_run(where, request.destinations)
        total = await self.store.count_events(where)
        replay_id = await self.store.start_replay(
            NewReplay(request.requested_by, request.filter_json, request.destinations, total),
            started,
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
        if total > self.inline_limit:
            task = asyncio.create_task(
                self._run_background(replay_id, where, request.destinations),
                name=f"relay-replay-{replay_id}",
            )
            self._replays[replay_id] = task
            task.add_done_callback(lambda _: self._replays.pop(replay_id, None))
            return ReplayOutcome(replay_id, ReplayState.RUNNING, total, None, None, False)
        created: list[CreatedDelivery] = []
        matched = 0

        async def insert(events: int, pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += events
            created.extend(await self._create(replay_id, pairs, events))

        await self._walk(where, request.destinations, insert)
        await self.store.finish_replay(replay_id, ReplayState.DONE, time.time())
        return _finished(replay_id, matched, created)

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
            NewReplay(requested_by, filter_json, destinations, 1), time.time()
        )
        self.metrics.replays.inc()
        created = await self._create(replay_id, [(event_id, n) for n in names], 1)
        await self.store.finish_replay(replay_id, ReplayState.DONE, time.time())
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

        async def count(events: int, pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += events
            for _, name in pairs:
                per[name] = per.get(name, 0) + 1

        await self._walk(where, destinations, count)
        return ReplayOutcome(None, ReplayState.DONE, matched, sum(per.values()), per, True)

    async def _walk(self, where: EventFilter, destinations: tuple[str, ...], each: Batch) -> None:
        """Stream matching events oldest first, by id cursor, one batch in memory at a time."""
        with_payload = not destinations and needs_payload(self.settings.destinations)
        after: str | None = None
        while True:
            batch = await self.store.replay_candidates(where, after, self.walk_batch, with_payload)
            if not batch:
                return
            pairs = [
                (c.event.id, name)
                for c in batch
                for name in (destinations or targets(self.settings, c))
            ]
            await each(len(batch), pairs)
            if len(batch) < self.walk_batch:
                return
            after = batch[-1].event.id

    async def _create(
        self, replay_id: int, pairs: list[tuple[str, str]], events: int
    ) -> list[CreatedDelivery]:
        created = await self.store.add_replay_deliveries(replay_id, pairs, events, time.time())
        for c in created:
            self.metrics.replayed.labels(c.destination).inc()
        return created

    async def _run_background(
        self, replay_id: int, where: EventFilter, destinations: tuple[str, ...]
    ) -> None:
        async def feed(events: int, pairs: list[tuple[str, str]]) -> None:
            # Progress counts an event once its first delivery exists, so an interrupted
            # replay's `matched` says how far it really got.
            counted: set[str] = set()
            for start in range(0, len(pairs), self.feed):
                chunk = pairs[start : start + self.feed]
                await self._wait_for_room(replay_id, {name for _, name in chunk})
                fresh = {event_id for event_id, _ in chunk} - counted
                counted |= fresh
                await self._create(replay_id, chunk, len(fresh))
            if unrouted := events - len(counted):  # events no destination takes today
                await self._create(replay_id, [], unrouted)

        state = ReplayState.FAILED
        try:
            await self._walk(where, destinations, feed)
            state = ReplayState.DONE
        except asyncio.CancelledError:
            state = ReplayState.INTERRUPTED
            raise
        except StoreError as exc:
            log.error("replay=%d failed: %s", replay_id, exc)
        except Exception:
            log.exception("replay=%d failed", replay_id)
        finally:
            with contextlib.suppress(StoreError):
                await self.store.finish_replay(replay_id, state, time.time())
            log.info("replay=%d %s", replay_id, state.value)

    def window(self, destination: str) -> int:
        config = self.settings.destination(destination)
        concurrency = config.concurrency if config is not None else 1
        return max(self.feed, WINDOW_PER_SLOT * concurrency)

    async def _wait_for_room(self, replay_id: int, destinations: set[str]) -> None:
        # Polled: attempts finishing do not signal anything, and a few reads a second are cheap.
        for name in sorted(destinations):
            while True:
                if await self.store.replay_backlog(replay_id, name) < self.window(name):
                    break
                await asyncio.sleep(ROOM_POLL)

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, older_than_days: float) -> PruneResult:
        result = await self.store.prune(time.time() - older_than_days * 86400.0)
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
        assert days is not None
        while True:
            try:
                await self.prune(days)
            except StoreError as exc:
                log.warning("retention prune failed, retrying next interval: %s", exc)
            await asyncio.sleep(self.settings.retention.interval)


def _finished(replay_id: int, matched: int, created: list[CreatedDelivery]) -> ReplayOutcome:
    per: dict[str, int] = {}
    for c in created:
        per[c.destination] = per.get(c.destination, 0) + 1
    return ReplayOutcome(
        replay_id, ReplayState.DONE, matched, len(created), per, False, tuple(created)
    )
