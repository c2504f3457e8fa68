"""Replays as jobs: walk the stored events a filter matches and make new deliveries for them.

A replay is a row in the store with its filter, its destinations and how far it got. Small ones
complete inside the operator's request; larger ones are taken by whichever relay process sharing
the store claims them first, fed to each destination only as fast as it drains (so live events
are never queued behind a replay), and carried on by another process if this one stops: each
batch of deliveries commits together with the position it reached, and only while this process
still holds the replay's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from relay.config import Settings
from relay.model import CreatedDelivery, EventFilter, ReplayCandidate, ReplayRecord, ReplayState
from relay.obs.metrics import Metrics
from relay.pipeline.routing import needs_payload, targets
from relay.store import Store, StoreError
from relay.store.base import ANY, POLL_INTERVAL, ReplayEndedError, Signal, SignalKind

log = logging.getLogger("relay.control")

# Events read per store round trip while walking a filter (one short read each).
WALK_BATCH = 500
# A replay matching at most this many events completes inside the request; larger ones run in
# the background and are answered 202 at once with the replay id to follow.
INLINE_LIMIT = 500
# A background replay inserts deliveries for about this many events per transaction...
FEED = 100
# ...and only while fewer than max(FEED, WINDOW_PER_SLOT * concurrency) of its deliveries to that
# destination still wait: a live event arriving meanwhile is behind at most that many.
WINDOW_PER_SLOT = 10
ROOM_POLL = 0.05
# How long a process holds a replay without renewing; another process takes it over after.
LEASE = 30.0
# Replays one process runs at once (others wait for a free slot, or for another process).
MAX_RUNNING = 4
# A running replay's owner looks at its state at least this often, so a cancel made by any
# process (whose signal may not reach this one) stops it within a second.
CANCEL_CHECK = 0.5

# Called per walked batch with its events and the (event id, destination) pairs they route to.
Batch = Callable[[list[ReplayCandidate], list[tuple[str, str]]], Awaitable[None]]


class ReplayJobs:
    """Walks and feeds replays; runs the background ones this process claims."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, owner: str) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.inline_limit = INLINE_LIMIT
        self.walk_batch = WALK_BATCH
        self.feed = FEED
        self._running: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # Running replays a signal says may have been cancelled: checked at once.
        self._check_now: set[int] = set()
        store.signals.subscribe(self._on_signal)

    def _on_signal(self, signal: Signal) -> None:
        if signal.kind is SignalKind.REPLAY:
            self._wake.set()
            if signal.name == ANY:
                self._check_now.update(self._running)
            elif signal.name.isdigit() and int(signal.name) in self._running:
                self._check_now.add(int(signal.name))

    # -- walking -----------------------------------------------------------------------------

    async def walk(
        self,
        where: EventFilter,
        destinations: tuple[str, ...],
        each: Batch,
        after: int | None = None,
    ) -> None:
        """Stream matching events oldest first, from position ``after``, a batch at a time."""
        with_payload = not destinations and needs_payload(self.settings.destinations)
        while True:
            batch = await self.store.replay_candidates(where, after, self.walk_batch, with_payload)
            if not batch:
                return
            pairs = [
                (c.event.id, name)
                for c in batch
                for name in (destinations or targets(self.settings, c))
            ]
            await each(batch, pairs)
            if len(batch) < self.walk_batch:
                return
            after = batch[-1].event.seq

    async def create(
        self,
        replay_id: int,
        pairs: Sequence[tuple[str, str]],
        events: int,
        cursor: int | None = None,
        owner: str | None = None,
    ) -> list[CreatedDelivery]:
        # A replay to an ordered destination queues behind what each subscriber already has.
        ordered = frozenset(d.name for d in self.settings.destinations if d.ordered)
        created = await self.store.add_replay_deliveries(
            replay_id, pairs, events, cursor, owner, ordered=ordered
        )
        for c in created:
            self.metrics.replayed.labels(c.destination).inc()
        return created

    # -- background jobs ---------------------------------------------------------------------

    async def run(self) -> None:
        """Claim replays that have no live owner and run them, until cancelled."""
        try:
            while True:
                self._wake.clear()
                if len(self._running) < MAX_RUNNING:
                    try:
                        record = await self.store.claim_replay(self.owner, LEASE)
                    except StoreError as exc:
                        log.warning("could not look for replays to run: %s", exc)
                        record = None
                    if record is not None:
                        self._start(record)
                        continue
                # A lease that ran out (its process died) is noticed by polling; new and
                # released replays signal.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL * 5):
                        await self._wake.wait()
        finally:
            await self._stop_running()

    def _start(self, record: ReplayRecord) -> None:
        task = asyncio.create_task(self._run_one(record), name=f"relay-replay-{record.id}")
        self._running[record.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(record.id, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _stop_running(self) -> None:
        tasks = dict(self._running)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for replay_id in tasks:
            # Handed back at once, so another process (or this one after a restart) goes on
            # from where this one stopped instead of waiting for the lease to run out.
            with contextlib.suppress(StoreError):
                await self.store.release_replay(replay_id, self.owner)

    async def _run_one(self, record: ReplayRecord) -> None:
        if record.cursor is not None:
            log.info("replay=%d resumed after event position %d", record.id, record.cursor)
        renewed = checked = time.monotonic()

        async def keep_lease() -> None:
            nonlocal renewed, checked
            now = time.monotonic()
            if record.id in self._check_now or now - checked > CANCEL_CHECK:
                self._check_now.discard(record.id)
                checked = now
                if await self.store.replay_state(record.id) is not ReplayState.RUNNING:
                    raise _LostReplayError
            if now - renewed > LEASE / 3:
                if not await self.store.renew_replay(record.id, self.owner, LEASE):
                    raise _LostReplayError
                renewed = time.monotonic()

        async def feed(batch: list[ReplayCandidate], pairs: list[tuple[str, str]]) -> None:
            for chunk, chunk_pairs in _chunks(batch, pairs, self.feed):
                await self._wait_for_room(record.id, {n for _, n in chunk_pairs}, keep_lease)
                await keep_lease()
                await self.create(
                    record.id, chunk_pairs, len(chunk), chunk[-1].event.seq, self.owner
                )

        state = ReplayState.FAILED
        try:
            await self.walk(record.where, record.destinations, feed, after=record.cursor)
            state = ReplayState.DONE
        except (_LostReplayError, ReplayEndedError):
            # Cancelled (any process may), or taken over by another process.
            now = await self._state_or_none(record.id)
            log.warning("replay=%d is %s; this process stops feeding it", record.id,
                        now.value if now is not None else "no longer this process's")  # fmt: skip
            return
        except StoreError as exc:
            # Storage trouble is not the replay's fault: hand it back, and whichever process
            # claims it next (this one included) goes on from the last position saved.
            log.warning("replay=%d paused by a storage error, to be resumed: %s", record.id, exc)
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(StoreError):
                await self.store.release_replay(record.id, self.owner)
            return
        except Exception:
            log.exception("replay=%d failed", record.id)
        try:
            await self.store.finish_replay(record.id, state)
        except StoreError as exc:
            # Still leased: when the lease runs out, a process finds it has nothing left to do.
            log.warning("replay=%d could not be marked %s: %s", record.id, state.value, exc)
            return
        log.info("replay=%d %s", record.id, state.value)

    async def _state_or_none(self, replay_id: int) -> ReplayState | None:
        try:
            return await self.store.replay_state(replay_id)
        except StoreError:
            return None

    def window(self, destination: str) -> int:
        config = self.settings.destination(destination)
        concurrency = config.concurrency if config is not None else 1
        return max(self.feed, WINDOW_PER_SLOT * concurrency)

    async def _wait_for_room(
        self, replay_id: int, destinations: set[str], keep_lease: Callable[[], Awaitable[None]]
    ) -> None:
        # Polled: attempts finishing do not signal anything, and a few reads a second are cheap.
        for name in sorted(destinations):
            while await self.store.replay_backlog(replay_id, name) >= self.window(name):
                await keep_lease()
                await asyncio.sleep(ROOM_POLL)


class _LostReplayError(Exception):
    """This process no longer holds the replay's lease."""


def _chunks(
    batch: list[ReplayCandidate], pairs: list[tuple[str, str]], size: int
) -> list[tuple[list[ReplayCandidate], list[tuple[str, str]]]]:
    """Split a walked batch into runs of whole events with about ``size`` deliveries each.

    Whole events, so that the position saved with each run never falls inside an event: a replay
    resumed from it makes each event's deliveries exactly once.
    """
    by_event: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        by_event.setdefault(pair[0], []).append(pair)
    out: list[tuple[list[ReplayCandidate], list[tuple[str, str]]]] = []
    events: list[ReplayCandidate] = []
    chunk: list[tuple[str, str]] = []
    for candidate in batch:
        events.append(candidate)
        chunk += by_event.get(candidate.event.id, [])
        if len(chunk) >= size:
            out.append((events, chunk))
            events, chunk = [], []
    if events:
        out.append((events, chunk))
    return out
