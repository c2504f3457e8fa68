"""Ordering: draining a backlog to a destination with ``ordering = "subscriber"`` against the
same drain unordered (issue 15)."""

from __future__ import annotations

import argparse
from typing import Any

import delivery
import goals
import harness as h
import procs
import targets

UNORDERED = "unordered"
ORDERED = 'ordering = "subscriber"'
GOALS = {ORDERED: [goals.Goal(UNORDERED, 0.5)]}


def bench_ordering(args: argparse.Namespace) -> dict[str, Any]:
    h.check_ports(targets.RELAY_PORT, targets.SINK_PORT)
    count, subscribers = args.ordered, max(1, args.ordered // 10)
    variants = {UNORDERED: "none", ORDERED: "subscriber"}
    skipped: dict[str, str] = {}
    if problem := h.relay_problem():
        skipped = dict.fromkeys(variants, problem)
    else:
        probe = targets.relay(h.fresh_dir("ordering-probe"), ordering="subscriber")
        assert probe.config is not None
        if problem := targets.config_problem(probe.config, ("ordering",)):
            skipped[ORDERED] = problem
    results: dict[str, list[h.Drained]] = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, ordering in variants.items():
            if name in skipped:
                continue
            try:
                results[name].append(delivery.drain_once(
                    name, rep, events=count, expected=count, connections=args.connections,
                    ordering=ordering, paused=(targets.ORDERED,),
                    loadgen_args=("--subscribers", str(subscribers))))
            except (procs.NotReady, RuntimeError) as exc:
                skipped[name] = f"it did not run: {exc}"
    notes: list[str] = []
    rows = []
    for name in variants:
        if name in skipped:
            rows.append({"target": name, "skipped": skipped[name]})
        else:
            row = delivery.drain_row(name, results[name], count, count, notes)
            row["subscribers"] = subscribers
            rows.append(row)
    for row in rows:
        base = rows[0].get("rps")
        if row.get("rps") is not None and base:
            row["ratio"] = row["rps"] / base
    goals.annotate(rows, GOALS)
    ordered = rows[1]
    if not ordered.get("skipped") and ordered.get("out_of_order"):
        notes.append(f"{ORDERED}: {ordered['out_of_order']} deliveries arrived out of order")
    return {"meta": h.meta(args, events=count, subscribers=subscribers), "rows": rows,
            "notes": notes}
