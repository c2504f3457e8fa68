"""Benchmark relay against a bare aiohttp ceiling and hookspool, and write docs/benchmarks/.

    .venv/bin/python bench/run.py              # full run: 3 reps of 8 s, 100,000-event backlog
    .venv/bin/python bench/run.py --quick      # smoke run: every section, small and short
    .venv/bin/python bench/run.py --only ingest

Servers run on core 0 and load generators on core 1 (taskset), as in the reference figures,
except the rows that measure relay on every core (they say so). A target that cannot start
(relay not built yet, a configuration key this commit does not know, hookspool or PostgreSQL
missing) is reported as not measured, with the reason, and the rest still runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import delivery
import duplicates
import harness as h
import ingest
import latency
import mandrill
import ordering
import procs
import report
import wrk

RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ingest": ingest.bench_ingest,
    "delivery": delivery.bench_delivery,
    "latency": latency.bench_latency,
    "duplicates": duplicates.bench_duplicates,
    "mandrill": mandrill.bench_mandrill,
    "ordering": ordering.bench_ordering,
}
# --quick: every section in a few minutes, for checking the harness, not for figures.
QUICK = {"reps": 1, "duration": 3.0, "events": 10_000, "posts": 10_000, "duplicates": 5_000,
         "batches": 5, "ordered": 10_000}
# Sections that drive wrk.
USES_WRK = ("ingest", "duplicates")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 rep of 3 s and small counts, every section")
    parser.add_argument("--only", choices=report.SECTIONS, action="append",
                        help="run this section (repeatable)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections, and requests in flight for the delivery tests")
    parser.add_argument("--events", type=int, default=100_000, help="backlog size for relay")
    parser.add_argument("--posts", type=int, default=20_000,
                        help="posts for the ClientSession ceiling")
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s for the latency test")
    parser.add_argument("--duplicates", type=int, default=100_000,
                        help="stored copies of one body for the duplicates section")
    parser.add_argument("--batches", type=int, default=50,
                        help="Mandrill batches of 1,000 events for the mandrill section")
    parser.add_argument("--ordered", type=int, default=100_000,
                        help="deliveries in the ordering section (over a tenth as many "
                        "subscribers)")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=h.HAVE_UVLOOP,
                        help="run the bare ceiling on uvloop (default: when installed, as relay"
                        " then runs on it)")
    parser.add_argument("--out", type=Path, default=h.OUT, help="where the report goes")
    args = parser.parse_args(argv)
    if args.quick:
        # Smaller figures for what was not given on the command line.
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = args.only or list(report.SECTIONS)
    if wrk.find_wrk() is None and set(sections) & set(USES_WRK):
        print(f"bench: {wrk.INSTALL_HINT}", file=sys.stderr)
        return 2
    if not procs.pinning_available():
        h.say("bench: taskset or a second core is missing; processes are not pinned")
    h.WORK.mkdir(exist_ok=True)
    for section in sections:
        h.say(f"bench: {section}")
        report.save(args.out, section, RUNNERS[section](args))
    path = report.render(args.out)
    h.say(f"bench: wrote {path.relative_to(h.ROOT) if path.is_relative_to(h.ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
