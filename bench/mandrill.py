"""Mandrill: batches of 1,000 events posted to relay, events stored per second, against
SQLite's batched insert rate of the same rows measured in the same run (issue 12)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import goals
import harness as h
import mandrill_batch
import procs
import targets

REFERENCE = "SQLite batched insert (reference)"
RELAY = "relay, Mandrill batches"
GOALS = {RELAY: [goals.Goal(REFERENCE, 0.5, key="events_per_s", label="reference")]}
BATCH = 1000
# Batches in flight at once: Mandrill sends a webhook's batches one after another, but a busy
# account has several webhooks, and relay parses one batch while it commits another.
CONCURRENCY = 4


def bench_mandrill(args: argparse.Namespace) -> dict[str, Any]:
    h.check_ports(targets.RELAY_PORT)
    meta = h.meta(args, batches=args.batches, batch_size=BATCH, concurrency=CONCURRENCY)
    if problem := h.relay_problem():
        rows = [{"target": name, "skipped": problem} for name in (REFERENCE, RELAY)]
        return {"meta": meta, "rows": rows, "notes": []}
    folder = h.fresh_dir("mandrill-batches")
    size = mandrill_batch.write_batches(folder, count=args.batches, size=BATCH,
                                        url=targets.mandrill_url(), key=targets.MANDRILL_KEY)
    meta["batch_bytes"] = size // max(1, args.batches)
    events = args.batches * BATCH
    reference: list[float] = []
    relay: list[float] = []
    for rep in range(args.reps):
        h.say(f"  mandrill rep {rep + 1}/{args.reps}: reference, {events:,} events ...")
        reference.append(reference_rate(rep, folder))
        h.say(f"    {reference[-1]:,.0f} events/s")
        h.say(f"  mandrill rep {rep + 1}/{args.reps}: relay, {args.batches} batches ...")
        relay.append(relay_rate(rep, folder, events))
        h.say(f"    {relay[-1]:,.0f} events/s")
    rows: list[dict[str, Any]] = [
        {"target": REFERENCE, "events": events, "events_per_s": h.median(reference),
         "reps": reference},
        {"target": RELAY, "events": events, "events_per_s": h.median(relay), "reps": relay},
    ]
    for row in rows:
        row["ratio"] = row["events_per_s"] / rows[0]["events_per_s"]
    goals.annotate(rows, GOALS)
    notes = [
        f"each batch is {BATCH:,} events built from the documented Mandrill example batch in "
        "`tests/fixtures/mailchimp` (every event type, sync events included), each element "
        "made unique, posted as `mandrill_events=<JSON array>` with a valid "
        "`X-Mandrill-Signature` (checked by relay); relay runs on core 0, destinations paused "
        f"(each event also gets one paused delivery row, analytics), the client on core 1 with "
        f"{CONCURRENCY} batches in flight; the clock runs from the first POST to the last 200",
        "reference: the same events parsed beforehand and inserted with one `executemany` and "
        "one commit per batch into relay's own `events` table (columns and indexes from relay's "
        "migrations), WAL, synchronous=FULL, on core 0; relay in addition stores the request, "
        "a delivery row per event and dedup keys",
    ]
    return {"meta": meta, "rows": rows, "notes": notes}


def reference_rate(rep: int, folder: Path) -> float:
    work = h.fresh_dir(f"mandrill-reference-{rep + 1}")
    db = work / "reference.db"
    # relay migrate builds the file, so the table is exactly relay's.
    launch = targets.relay(work, storage_url=f"sqlite:///{db.resolve()}")
    for step in launch.setup:
        procs.run_checked(step)
    cmd = procs.pinned([sys.executable, str(h.BENCH / "mandrill_batch.py"), "reference",
                        "--folder", str(folder), "--db", str(db)], h.SERVER_CPU)
    result = procs.run_json(cmd, timeout=1800)
    return float(result["rate"])  # type: ignore[arg-type]


def relay_rate(rep: int, folder: Path, events: int) -> float:
    work = h.fresh_dir(f"mandrill-relay-{rep + 1}")
    launch = targets.relay(work)
    with h.start(launch, work, h.SERVER_CPU):
        if problem := targets.relay_admin("pause"):
            raise RuntimeError(problem)
        sent = h.run_loadgen("files", "--url", targets.mandrill_url(), "--folder", str(folder),
                             "--concurrency", str(CONCURRENCY), timeout=1800)
    if sent["ok"] != sent["count"]:
        raise RuntimeError(f"relay accepted {sent['ok']} of {sent['count']} batches: "
                           f"{sent['errors']}")
    return events / float(sent["elapsed_s"])
