"""Delivery: one ClientSession's ceiling, then relay draining a backlog: on SQLite, on
PostgreSQL, and two relays on one PostgreSQL database (reps interleaved, a fresh store for each
drain)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from typing import Any

import goals
import harness as h
import pg
import procs
import targets

CEILING = "one ClientSession (ceiling)"
RELAY = "relay"
RELAY_PG = "relay on PostgreSQL"
RELAY_PAIR = "two relays on PostgreSQL"
GOALS = {
    RELAY: [goals.Goal(CEILING, 0.6, label="ceiling")],
    RELAY_PG: [goals.Goal(RELAY, 0.8)],
}
# Short, capped backoff: a delivery that fails for any reason must not sleep long in a drain.
RETRY = targets.Retry(max_attempts=1000, initial_delay=0.1, max_delay=1.0)


def ceiling_once(args: argparse.Namespace, rep: int) -> float:
    """One rep of the ClientSession ceiling: ``args.posts`` posts to a fresh sink, in req/s."""
    sink = targets.sink()
    with procs.running("sink", sink.cmd, h.fresh_dir(f"sink-d-{rep + 1}") / "sink.log",
                       cpu=h.LOAD_CPU, ready_url=sink.ready_url):
        h.say(f"  ClientSession ceiling rep {rep + 1}/{args.reps}: {args.posts:,} posts ...")
        # The client plays relay's part, so it gets relay's core; the sink has the other.
        result = h.run_loadgen("burst", "--url", f"{sink.hook_url}/crm", "--body",
                               str(h.BODY), "--count", str(args.posts),
                               "--concurrency", str(args.connections), cpu=h.SERVER_CPU,
                               timeout=600)
    h.say(f"    {result['rps']:,.0f} req/s, errors {result['errors']}")
    return float(result["rps"])


def ceiling_row(args: argparse.Namespace, rates: list[float]) -> dict[str, Any]:
    rps = h.median(rates)
    return {"target": CEILING, "events": None, "deliveries": args.posts, "rps": rps,
            "seconds": args.posts / rps if rps else 0, "reps": rates}


def drain_once(name: str, rep: int, *, events: int, expected: int, connections: int,
               ordering: str | None = None, paused: Sequence[str] = targets.DESTINATIONS,
               loadgen_args: Sequence[str] = ()) -> h.Drained:
    """Start a relay on a fresh store (``on PostgreSQL`` in ``name``: a fresh database; the
    pair: two unpinned relays on it), pause its destinations, and time the drain of ``events``
    (see ``harness.drain``)."""
    slug = "".join(c if c.isalnum() else "-" for c in name)
    ports = targets.RELAY_PAIR_PORTS if name == RELAY_PAIR else (targets.RELAY_PORT,)
    with contextlib.ExitStack() as stack:
        url = (stack.enter_context(pg.fresh_database("drain"))
               if "PostgreSQL" in name else None)
        launches = []
        for i, port in enumerate(ports):
            work = h.fresh_dir(f"drain-{slug}-{rep + 1}-{i}")
            launch = targets.relay(work, retry=RETRY, name=name, port=port, storage_url=url,
                                   ordering=ordering)
            stack.enter_context(h.start(launch, work, h.SERVER_CPU if len(ports) == 1 else None))
            if problem := targets.relay_admin("pause", tuple(paused), port=port):
                raise RuntimeError(problem)
            launches.append(launch)
        h.say(f"  {name} drain rep {rep + 1}: ingesting {events:,} events ...")
        done = h.drain(launches, events=events, expected=expected, paused=paused,
                       connections=connections, loadgen_args=loadgen_args)
    extra = done.received - expected
    h.say(f"    {expected:,} deliveries in {done.seconds:.1f} s: {done.rps:,.0f}/s"
          + (f" ({extra} redelivered)" if extra else ""))
    return done


def drain_row(name: str, results: list[h.Drained], events: int, expected: int,
              notes: list[str]) -> dict[str, Any]:
    extra = max(r.received for r in results) - expected
    if extra > 0:
        notes.append(f"{name}: the sink received up to {extra} requests beyond the expected "
                     "deliveries (redeliveries)")
    return {"target": name, "events": events, "deliveries": expected,
            "rps": h.median([r.rps for r in results]),
            "seconds": h.median([r.seconds for r in results]), "reps": [r.rps for r in results],
            "out_of_order": max(r.out_of_order for r in results)}


def bench_delivery(args: argparse.Namespace) -> dict[str, Any]:
    h.check_ports(targets.RELAY_PORT, *targets.RELAY_PAIR_PORTS, targets.SINK_PORT)
    notes: list[str] = []
    expected = args.events * targets.relay_matched_per_event()
    variants = [RELAY, RELAY_PG, RELAY_PAIR]
    results: dict[str, list[h.Drained]] = {name: [] for name in variants}
    skipped: dict[str, str] = {}
    if problem := h.relay_problem():
        skipped = dict.fromkeys(variants, problem)
    elif problem := pg.problem():
        skipped[RELAY_PG] = skipped[RELAY_PAIR] = problem
    ceiling_rates: list[float] = []
    for rep in range(args.reps):
        # The ceiling runs in every rep, before the drains: the machine's speed drifts within a
        # run, and each rep's drains are compared with a ceiling measured beside them.
        ceiling_rates.append(ceiling_once(args, rep))
        for name in variants:
            if name in skipped:
                continue
            try:
                results[name].append(drain_once(name, rep, events=args.events,
                                                 expected=expected,
                                                 connections=args.connections))
            except (procs.NotReady, RuntimeError) as exc:
                skipped[name] = f"it did not run: {exc}"
    rows = [ceiling_row(args, ceiling_rates)]
    rows[0]["placement"] = "client core 0, sink core 1"
    for name in variants:
        if name in skipped:
            rows.append({"target": name, "skipped": skipped[name]})
        else:
            rows.append(drain_row(name, results[name], args.events, expected, notes))
        rows[-1]["placement"] = h.SHARED if name == RELAY_PAIR else h.PINNED
    relay_rps = rows[1].get("rps")
    for row in rows:
        if row.get("rps") is not None:
            row["ratio"] = row["rps"] / rows[0]["rps"]
            if row["target"] in variants and relay_rps:
                row["vs_relay"] = row["rps"] / relay_rps
    goals.annotate(rows, GOALS)
    if RELAY_PG not in skipped:
        notes.append("PostgreSQL rows: a fresh database for each drain, created and dropped by "
                     "the bench; the PostgreSQL server is the machine's own service, not pinned")
    if RELAY_PAIR not in skipped:
        notes.append(f"{RELAY_PAIR}: two `relay serve` processes on one database, not pinned "
                     "(they share both cores with the sink, which stays on core 1); the backlog "
                     "is posted to the first, both are resumed, and both deliver it")
    return {"meta": h.meta(args, events=args.events), "rows": rows, "notes": notes}
