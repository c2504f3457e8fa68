"""Latency at a steady rate: an open-loop generator, timed from send to the sink."""

from __future__ import annotations

import argparse
from typing import Any

import harness as h
import procs
import targets

RELAY_AUTO = 'relay, workers = "auto"'


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    h.check_ports(targets.RELAY_PORT, targets.RELAY_WORKERS_PORT, targets.SINK_PORT)
    sink = targets.sink()
    duration = max(args.duration, 3.0)
    per_event = targets.relay_matched_per_event()
    with procs.running("sink", sink.cmd, h.fresh_dir("latency") / "sink.log", cpu=h.LOAD_CPU,
                       ready_url=sink.ready_url):
        rows = [latency_run(args, "direct to sink", f"{sink.hook_url}/direct", duration, 1)]
        rows[0]["placement"] = "generator and sink core 1"
        for name, workers in (("relay", None), (RELAY_AUTO, "auto")):
            row: dict[str, Any] = {"target": name, "placement": (
                f"relay core{' 0' if workers is None else 's 0-1'}; generator and sink core 1")}
            rows.append(row)
            if problem := h.relay_problem():
                row["skipped"] = problem
                continue
            work = h.fresh_dir(f"latency-{'workers' if workers else 'relay'}")
            port = targets.RELAY_PORT if workers is None else targets.RELAY_WORKERS_PORT
            launch = targets.relay(work, name=name, port=port, workers=workers)
            assert launch.config is not None
            if workers and (problem := targets.config_problem(launch.config, ("workers",))):
                row["skipped"] = problem
                continue
            try:
                with h.start(launch, work, h.SERVER_CPU if workers is None else None):
                    row.update(latency_run(args, name, launch.hook_url, duration, per_event))
            except procs.NotReady as exc:
                row["skipped"] = f"it did not start: {exc}"
    notes = []
    if any(r["target"] == RELAY_AUTO and not r.get("skipped") for r in rows):
        notes.append(f"{RELAY_AUTO}: relay's processes are not pinned and share both cores with "
                     "the generator and the sink (which stay on core 1)")
    return {"meta": h.meta(args, rate=args.rate, duration=duration), "rows": rows,
            "notes": notes}


def latency_run(args: argparse.Namespace, name: str, url: str, duration: float,
                per_event: int) -> dict[str, Any]:
    h.sink_reset()
    h.say(f"  latency: {name} at {args.rate:g} req/s for {duration:g} s ...")
    sent = h.run_loadgen("rate", "--url", url, "--body", str(h.BODY), "--rate",
                         str(args.rate), "--duration", str(duration), timeout=duration + 120)
    stats = h.wait_sink(sent["ok"] * per_event, deadline_s=60)
    h.say(f"    ack p50 {sent['ack_p50_ms']:.2f} ms p99 {sent['ack_p99_ms']:.2f} ms; delivered "
          f"{stats['latency_n']:,}: p50 {stats['latency_p50_ms']:.2f} ms "
          f"p99 {stats['latency_p99_ms']:.2f} ms")
    return {"target": name, "sent": sent["ok"], "delivered": stats["latency_n"],
            "ack_p50_ms": sent["ack_p50_ms"], "ack_p99_ms": sent["ack_p99_ms"],
            "p50_ms": stats["latency_p50_ms"], "p99_ms": stats["latency_p99_ms"],
            "errors": sent["errors"], "skipped_sends": sent["skipped"]}
