"""Duplicates: relay taking the same body again with many copies of it stored (a Mailchimp
retry storm, or anyone holding the URL's secret), against new events on a fresh store and on a
store of the same size."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import goals
import harness as h
import targets
import wrk

NEW = "relay, new events"
NEW_STORED = "relay, new events, {n} stored"
SAME = "relay, the same body, {n} duplicates of it stored"


def bench_duplicates(args: argparse.Namespace) -> dict[str, Any]:
    # The ingest section's relay ports, free again while this section runs.
    ports = (targets.RELAY_PORT, targets.RELAY_PG_PORT, targets.RELAY_WORKERS_PORT)
    h.check_ports(*ports)
    n = f"{args.duplicates:,}"
    names = [NEW, NEW_STORED.format(n=n), SAME.format(n=n)]
    goal_map = {names[2]: [goals.Goal(NEW, 0.9, label="new events")]}
    rows: list[dict[str, Any]] = []
    if problem := h.relay_problem():
        rows = [{"target": name, "skipped": problem} for name in names]
        return {"meta": h.meta(args, duplicates=args.duplicates), "rows": rows, "notes": []}
    runs: dict[str, list[wrk.WrkResult]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        launches = []
        for i, (name, port) in enumerate(zip(names, ports, strict=True)):
            work = h.fresh_dir(f"duplicates-{i}")
            launch = targets.relay(work, name=name, port=port)
            stack.enter_context(h.start(launch, work, h.SERVER_CPU))
            if problem := targets.relay_admin("pause", port=port):
                raise RuntimeError(problem)
            launches.append(launch)
        for launch, how in ((launches[1], ["--first", str(wrk.next_first_id())]),
                            (launches[2], ["--same"])):
            h.say(f"  duplicates: storing {n} events for {launch.name!r} ...")
            loaded = h.run_loadgen("burst", "--url", launch.hook_url, "--body", str(h.BODY),
                                   "--count", str(args.duplicates), "--concurrency",
                                   str(args.connections), *how, timeout=3600)
            if loaded["ok"] != args.duplicates:
                raise RuntimeError(f"{launch.name} accepted {loaded['ok']} of "
                                   f"{args.duplicates}: {loaded['errors']}")
            h.say(f"    {loaded['rps']:,.0f} req/s while storing them")
        for rep in range(args.reps):
            for launch in launches:
                h.say(f"  duplicates rep {rep + 1}/{args.reps}: {launch.name} ...")
                result = wrk.run(launch.hook_url, h.BODY, duration=args.duration,
                                 connections=args.connections, cpu=h.LOAD_CPU,
                                 log=h.WORK / f"wrk-duplicates-{launch.port}-{rep + 1}.log",
                                 same_body=launch.name == names[2])
                h.say(f"    {result.requests_per_s:,.0f} req/s  p99 {result.p99_ms:.2f} ms")
                runs[launch.name].append(result)
    for name in names:
        rs = runs[name]
        rows.append({"target": name, "placement": h.PINNED,
                     "rps": h.median([r.requests_per_s for r in rs]),
                     "p50_ms": h.median([r.p50_ms for r in rs]),
                     "p99_ms": h.median([r.p99_ms for r in rs]),
                     "non_2xx": sum(r.non_2xx for r in rs),
                     "socket_errors": sum(r.socket_errors for r in rs),
                     "reps": [r.requests_per_s for r in rs]})
    for row in rows:
        row["ratio"] = row["rps"] / rows[0]["rps"] if rows[0]["rps"] else None
    goals.annotate(rows, goal_map)
    notes = [
        "three relays on fresh SQLite stores, destinations paused, started together and "
        "measured in turn (reps interleaved); the stored events were posted through relay "
        "itself (one ClientSession, 64 in flight) before the first rep",
        f"{names[2]}: every request is `bench/body_subscribe.txt` byte for byte, so relay "
        "stores it and finds it a duplicate (nothing to deliver); the copies made during the "
        "reps add to the stored ones",
    ]
    return {"meta": h.meta(args, duplicates=args.duplicates), "rows": rows, "notes": notes}
