"""Ingest: wrk against bare aiohttp, relay (one process, on SQLite and on PostgreSQL; every core;
two processes on one PostgreSQL database) and hookspool, reps interleaved.

Every server starts before the first rep and runs until the last, so a noisy neighbour on this
shared machine spreads over all of them (a b c a b c ...) instead of landing on one.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from typing import Any

import goals
import harness as h
import pg
import procs
import targets
import wrk

CEILING = "bare aiohttp (ceiling)"
RELAY = "relay"
RELAY_PG = "relay on PostgreSQL"
RELAY_AUTO = 'relay, workers = "auto"'
RELAY_PAIR = "two relays on PostgreSQL"
HOOKSPOOL = "hookspool"
RELAYS = (RELAY, RELAY_PG, RELAY_AUTO, RELAY_PAIR)

GOALS = {
    RELAY: [goals.Goal(CEILING, 0.5, label="ceiling")],
    RELAY_PG: [goals.Goal(RELAY, 0.8)],
    RELAY_AUTO: [goals.Goal(RELAY, 1.6), goals.Goal(CEILING, 1.0, strict=True, label="ceiling")],
}


@dataclass
class Subject:
    """One row: the servers behind it (two for the pair), where they run, why it is skipped."""

    name: str
    launches: list[targets.Launch] = field(default_factory=list)
    pinned: bool = True
    skipped: str | None = None
    databases: list[str] = field(default_factory=list)

    @property
    def placement(self) -> str:
        return h.PINNED if self.pinned else h.SHARED


def plan(args: argparse.Namespace) -> list[Subject]:
    """The rows, in table order, each with its launches or the reason it cannot run."""
    subjects = [Subject(CEILING, [targets.bare(uvloop=args.uvloop)])]
    relay_missing = h.relay_problem()
    pg_missing = pg.problem()
    for name in RELAYS:
        subject = Subject(name, pinned=name in (RELAY, RELAY_PG))
        subjects.append(subject)
        if relay_missing:
            subject.skipped = relay_missing
        elif name in (RELAY_PG, RELAY_PAIR) and pg_missing:
            subject.skipped = pg_missing
    if targets.hookspool_installed():
        subjects.append(Subject(HOOKSPOOL, [targets.hookspool(h.fresh_dir("hookspool"))]))
    else:
        subjects.append(Subject(HOOKSPOOL, skipped="hookspool is not installed; `pip install -r "
                                "bench/requirements.txt` installs it from PyPI"))
    return subjects


def _relay_launches(subject: Subject, stack: contextlib.ExitStack) -> None:
    """Fill in ``subject``'s relay launches, creating its database first (dropped after the
    relays stop: the stack unwinds in reverse)."""
    if subject.name == RELAY:
        subject.launches = [targets.relay(h.fresh_dir("relay-ingest"))]
    elif subject.name == RELAY_PG:
        url = stack.enter_context(pg.fresh_database("ingest"))
        subject.launches = [targets.relay(h.fresh_dir("relay-pg-ingest"), name=RELAY_PG,
                                          port=targets.RELAY_PG_PORT, storage_url=url)]
    elif subject.name == RELAY_AUTO:
        work = h.fresh_dir("relay-workers-ingest")
        launch = targets.relay(work, name=RELAY_AUTO, port=targets.RELAY_WORKERS_PORT,
                               workers="auto")
        assert launch.config is not None
        subject.skipped = targets.config_problem(launch.config, ("workers",))
        subject.launches = [launch]
    elif subject.name == RELAY_PAIR:
        url = stack.enter_context(pg.fresh_database("pair"))
        subject.launches = [
            targets.relay(h.fresh_dir(f"relay-pair-{i}"), name=f"{RELAY_PAIR} #{i + 1}",
                          port=port, storage_url=url)
            for i, port in enumerate(targets.RELAY_PAIR_PORTS)
        ]


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    h.check_ports(targets.BARE_PORT, targets.RELAY_PORT, targets.HOOKSPOOL_PORT,
                  targets.RELAY_PG_PORT, targets.RELAY_WORKERS_PORT, *targets.RELAY_PAIR_PORTS,
                  targets.SINK_PORT)
    notes: list[str] = []
    subjects = plan(args)
    runs: dict[str, list[wrk.WrkResult]] = {}
    with contextlib.ExitStack() as stack:
        for subject in subjects:
            if subject.skipped:
                continue
            try:
                if subject.name in RELAYS:
                    _relay_launches(subject, stack)
                    if subject.skipped:
                        h.say(f"  {subject.name}: {subject.skipped}")
                        continue
                for launch in subject.launches:
                    stack.enter_context(h.start(launch, h.log_dir(launch),
                                                h.SERVER_CPU if subject.pinned else None))
                if not subject.launches:
                    raise RuntimeError("nothing to start")
            except (procs.NotReady, RuntimeError) as exc:
                subject.skipped = f"it did not start: {exc}"
                h.say(f"  {subject.name}: skipped ({exc})")
                continue
            if subject.name in RELAYS:
                _pause(subject, notes)
        measured = [s for s in subjects if not s.skipped]
        for rep in range(args.reps):
            for subject in measured:
                h.say(f"  ingest rep {rep + 1}/{args.reps}: {subject.name} ...")
                slug = "".join(c if c.isalnum() else "-" for c in subject.name)
                result = wrk.run_many(
                    [launch.hook_url for launch in subject.launches], h.BODY,
                    duration=args.duration, connections=args.connections,
                    cpu=h.LOAD_CPU if subject.pinned else None,
                    log=h.WORK / f"wrk-{slug}-{rep + 1}.log")
                h.say(f"    {result.requests_per_s:,.0f} req/s  p50 {result.p50_ms:.2f} ms  "
                      f"p99 {result.p99_ms:.2f} ms  non-2xx {result.non_2xx}")
                runs.setdefault(subject.name, []).append(result)
    rows = [_row(subject, runs.get(subject.name, [])) for subject in subjects]
    ceiling = rows[0].get("rps")
    relay_rps = next((r.get("rps") for r in rows if r["target"] == RELAY), None)
    for row in rows:
        if row.get("rps") is not None:
            row["ratio"] = row["rps"] / ceiling if ceiling else None
            if row["target"] in RELAYS and relay_rps:
                row["vs_relay"] = row["rps"] / relay_rps
    goals.annotate(rows, GOALS)
    notes += _notes(subjects)
    return {"meta": h.meta(args), "rows": rows, "notes": notes}


def _pause(subject: Subject, notes: list[str]) -> None:
    # Ingest is measured alone: with destinations paused relay stores every event and its
    # deliveries but sends nothing, so delivery work does not share the server's core.
    for launch in subject.launches:
        if problem := targets.relay_admin("pause", port=launch.port):
            notes.append(f"{subject.name}: pausing destinations failed ({problem}); its "
                         "delivery workers retried against an absent sink during the runs")


def _row(subject: Subject, results: list[wrk.WrkResult]) -> dict[str, Any]:
    if subject.skipped or not results:
        return {"target": subject.name, "placement": subject.placement,
                "skipped": subject.skipped or "no run finished"}
    return {
        "target": subject.name, "placement": subject.placement,
        "rps": h.median([r.requests_per_s for r in results]),
        "p50_ms": h.median([r.p50_ms for r in results]),
        "p99_ms": h.median([r.p99_ms for r in results]),
        "non_2xx": sum(r.non_2xx for r in results),
        "socket_errors": sum(r.socket_errors for r in results),
        "reps": [r.requests_per_s for r in results],
    }


def _notes(subjects: list[Subject]) -> list[str]:
    shown = {s.name for s in subjects if not s.skipped}
    notes = []
    if shown & set(RELAYS):
        notes.append("relay: destinations paused during the ingest runs (stores events and their "
                     "deliveries, sends nothing)")
    if shown & {RELAY_PG, RELAY_PAIR}:
        notes.append("PostgreSQL rows: a fresh database per row, created and dropped by the "
                     "bench; the PostgreSQL server is the machine's own service, not pinned, so "
                     "it also runs on core 1 beside wrk")
    if shown & {RELAY_AUTO, RELAY_PAIR}:
        notes.append("rows marked `server and load share cores 0-1` are not pinned: relay's "
                     "processes may use both cores, and wrk (one thread, same connections) runs "
                     "on the same two cores, so it takes CPU the servers could have used. The "
                     "pinned rows give the server a core to itself and wrk the other")
    if RELAY_PAIR in shown:
        notes.append(f"{RELAY_PAIR}: two `relay serve` processes on one database, each on its "
                     "own port; two wrk processes run at once, one per relay, each with half the "
                     "connections; req/s is their sum, p50 and p99 the worse of the two")
    if HOOKSPOOL in shown:
        notes.append("hookspool 0.2.0: its own threaded intake (`hookspool intake`, 64 threads, "
                     "one per connection), a form-body source plugin (`bench/peers/`), WAL with "
                     "synchronous=FULL, the same three filtered destinations as routes and tees; "
                     "only `hookspool intake` runs (its dispatcher is a separate process and is "
                     "not started), so like relay it stores and does not send")
    return notes
