"""Replays as operators ask for them: dry runs, small replays done inside the request, larger
ones handed to the background jobs (``relay.server.replays``), single events, cancelling.

Every replay makes new deliveries and a ``replays`` row; none rewrites the history of old
deliveries. Each one carried out is on the audit trail.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import orjson

from relay.config import Settings
from relay.model import (
    AuditAction,
    CreatedDelivery,
    EventFilter,
    NewReplay,
    ReplayCandidate,
    ReplayRecord,
    ReplayState,
)
from relay.obs.metrics import Metrics
from relay.pipeline.routing import targets
from relay.server.audit import Actor, Auditor
from relay.server.replays import LEASE, ReplayJobs
from relay.store import Store, StoreError
from relay.store.base import ReplayEndedError
from relay.store.rules import UNFINISHED

log = logging.getLogger("relay.control")


class UnknownDestinationError(Exception):
    """A destination named by the operator is not in the configuration."""


class NotFoundError(Exception):
    """The event, delivery or replay named by the operator is not stored."""


class ConflictError(Exception):
    """What the operator asked cannot be done in the state the thing is in now (409)."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    where: EventFilter
    destinations: tuple[str, ...]  # empty = the destinations whose filters match today
    requested_by: str
    filter_json: str
    dry_run: bool = False
    peer: str | None = None


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
class CancelOutcome:
    replay: ReplayRecord
    # Deliveries it made that have not been sent yet: they go out unless discarded
    # (``discard`` with its replay id).
    waiting: int


class ReplayControl:
    """Starts, runs inline, and cancels replays; ``jobs`` runs the background ones."""

    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, owner: str, auditor: Auditor
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.auditor = auditor
        self.jobs = ReplayJobs(settings, store, metrics, owner)

    def check_destinations(self, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            if self.settings.destination(name) is None:
                raise UnknownDestinationError(f"unknown destination: {name}")

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
        inline = total <= self.jobs.inline_limit
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
        await self.auditor.record(
            Actor(request.requested_by, request.peer), AuditAction.REPLAY, str(replay_id),
            filter=orjson.loads(request.filter_json), destinations=list(request.destinations),
            matched=total,
        )  # fmt: skip
        if not inline:
            return ReplayOutcome(replay_id, ReplayState.RUNNING, total, None, None, False)
        created: list[CreatedDelivery] = []
        matched = 0

        async def insert(batch: list[ReplayCandidate], pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += len(batch)
            created.extend(
                await self.jobs.create(
                    replay_id, pairs, len(batch), batch[-1].event.seq, self.owner
                )
            )

        try:
            await self.jobs.walk(where, request.destinations, insert)
        except ReplayEndedError:
            # Cancelled while it ran: what it made so far stands, nothing more is made.
            return _finished(replay_id, matched, created, ReplayState.CANCELLED)
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
        actor: Actor,
        *,
        dry_run: bool = False,
        retry_of: int | None = None,
    ) -> ReplayOutcome | None:
        """Send one stored event again (or, dry, say where); None when no such event is stored.

        ``retry_of``: a dead delivery retried by hand, which this replay of its event to its
        destination stands for (recorded as the replay's filter).
        """
        self.check_destinations(destinations)
        detail = await self.store.get_event(event_id)
        if detail is None:
            return None
        candidate = ReplayCandidate(detail.event, detail.payload, detail.payload_content_type)
        names = destinations or targets(self.settings, candidate)
        if dry_run:
            per = dict.fromkeys(names, 1)
            return ReplayOutcome(None, ReplayState.DONE, 1, len(per), per, True)
        spec = {"id": event_id} if retry_of is None else {"retry_of": retry_of}
        replay_id = await self.store.start_replay(
            NewReplay(actor.name, orjson.dumps(spec).decode(), destinations, 1),
            owner=self.owner,
            lease=LEASE,
        )
        self.metrics.replays.inc()
        try:
            created = await self.jobs.create(
                replay_id, [(event_id, n) for n in names], 1, detail.event.seq, self.owner
            )
        except BaseException:
            await self._give_up(replay_id)
            raise
        await self.store.finish_replay(replay_id, ReplayState.DONE)
        log.info(
            "replay=%d requested_by=%s event=%s to=%s",
            replay_id,
            actor.name,
            event_id,
            ",".join(names) or "-",
        )
        if retry_of is None:
            await self.auditor.record(
                actor, AuditAction.REPLAY, str(replay_id), event=event_id,
                destinations=list(names),
            )  # fmt: skip
        return _finished(replay_id, 1, created)

    async def _dry_run(self, where: EventFilter, destinations: tuple[str, ...]) -> ReplayOutcome:
        per: dict[str, int] = {}
        matched = 0

        async def count(batch: list[ReplayCandidate], pairs: list[tuple[str, str]]) -> None:
            nonlocal matched
            matched += len(batch)
            for _, name in pairs:
                per[name] = per.get(name, 0) + 1

        await self.jobs.walk(where, destinations, count)
        return ReplayOutcome(None, ReplayState.DONE, matched, sum(per.values()), per, True)

    async def cancel(self, replay_id: int, actor: Actor) -> CancelOutcome:
        """Stop a running replay: no delivery is made for it from now on, by any process.

        The deliveries it already made stay: sent ones are history, and waiting ones go out
        unless an operator discards them too (``discard`` by replay id): cancelling stops the
        job, discarding drops work, and each is its own, audited, decision.
        """
        if not await self.store.cancel_replay(replay_id, actor.name):
            record = await self.store.get_replay(replay_id)
            if record is None:
                raise NotFoundError(f"unknown replay: {replay_id}")
            raise ConflictError(f"replay {replay_id} is {record.state.value}, not running")
        record = await self.store.get_replay(replay_id)
        assert record is not None  # replays are never deleted
        waiting = record.in_state(*UNFINISHED)
        log.warning(
            "replay=%d cancelled by %s after %d of %s events; %d of its deliveries still wait",
            replay_id,
            actor.name,
            record.matched,
            record.total if record.total is not None else "?",
            waiting,
        )
        await self.auditor.record(
            actor, AuditAction.CANCEL, str(replay_id), matched=record.matched,
            created=record.created, waiting=waiting,
        )  # fmt: skip
        return CancelOutcome(record, waiting)


def _finished(
    replay_id: int,
    matched: int,
    created: list[CreatedDelivery],
    state: ReplayState = ReplayState.DONE,
) -> ReplayOutcome:
    per: dict[str, int] = {}
    for c in created:
        per[c.destination] = per.get(c.destination, 0) + 1
    return ReplayOutcome(replay_id, state, matched, len(created), per, False, tuple(created))
