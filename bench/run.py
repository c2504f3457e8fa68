"""Benchmark relay against a bare aiohttp ceiling and hookspool, and write docs/benchmarks/.

    .venv/bin/python bench/run.py              # full run: 3 reps of 8 s, 100,000-event backlog
    .venv/bin/python bench/run.py --quick      # smoke run: 1 rep of 3 s, 10,000 events
    .venv/bin/python bench/run.py --only ingest

Servers run on core 0 and load generators on core 1 (taskset), as in the reference figures.
A target that cannot start (relay not built yet, hookspool not installed) is reported as not
measured, with the reason, and the rest still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import procs
import report
import targets
import wrk

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
BODY = BENCH / "body_subscribe.txt"
OUT = ROOT / "docs" / "benchmarks"
SERVER_CPU = 0
LOAD_CPU = 1
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


# ---- context ------------------------------------------------------------------------------------

def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks")
    return f"{commit}-dirty" if dirty else commit


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def meta(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {
        "commit": git_commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "aiohttp": metadata.version("aiohttp"),
        "quick": args.quick,
        "reps": args.reps,
        "duration": args.duration,
        "connections": args.connections,
        "pinned": procs.pinning_available(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "body_bytes": len(BODY.read_bytes()),
        **extra,
    }


def say(text: str) -> None:
    print(text, flush=True)


def fresh_dir(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def check_ports(*ports: int) -> None:
    busy = [p for p in ports if not procs.port_free(p)]
    if busy:
        raise SystemExit(f"bench: ports {busy} are already in use on 127.0.0.1; stop what "
                         "listens there or set BENCH_PORT_BASE (default 28000) to move them")


@contextlib.contextmanager
def start(launch: targets.Launch, work: Path, cpu: int) -> Iterator[procs.Child]:
    env = {**os.environ, **launch.env}
    for step in launch.setup:
        done = subprocess.run(step, env=env, capture_output=True, text=True, check=False,
                              timeout=120)
        if done.returncode != 0:
            raise procs.NotReady(f"{' '.join(step[-1:])} failed: {done.stderr.strip()[-300:]}")
    with procs.running(launch.name, launch.cmd, work / "server.log", cpu=cpu,
                       ready_url=launch.ready_url, env=launch.env) as child:
        yield child


def run_loadgen(*args: str, timeout: float, cpu: int = LOAD_CPU) -> dict[str, Any]:
    # The ceilings run on the event loop relay runs on (uvloop when installed, as it is with
    # relay's dependencies), so the ratio compares like with like.
    extra = ["--uvloop"] if HAVE_UVLOOP else []
    cmd = procs.pinned([sys.executable, str(BENCH / "loadgen.py"), *args, *extra], cpu)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def sink_stats() -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{targets.base_url(targets.SINK_PORT)}/_stats", timeout=10) as r:
        stats: dict[str, Any] = json.loads(r.read())
    return stats


def sink_reset() -> None:
    import urllib.request

    req = urllib.request.Request(f"{targets.base_url(targets.SINK_PORT)}/_reset", data=b"",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


def wait_sink(count: int, deadline_s: float) -> dict[str, Any]:
    """Poll the sink until it has ``count`` requests or the deadline passes."""
    end = time.monotonic() + deadline_s
    stats = sink_stats()
    while stats["count"] < count and time.monotonic() < end:
        time.sleep(0.2)
        stats = sink_stats()
    return stats


def relay_problem() -> str | None:
    if sys.modules.get("relay") is None and not _importable("relay"):
        return ("relay is not installed in this Python "
                f"({sys.executable}); `make bench` installs it into .venv")
    return None


def _importable(name: str) -> bool:
    import importlib.util

    with contextlib.suppress(ModuleNotFoundError):
        return importlib.util.find_spec(name) is not None
    return False


# ---- (a)-(c) ingest -----------------------------------------------------------------------------

def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    check_ports(targets.BARE_PORT, targets.RELAY_PORT, targets.HOOKSPOOL_PORT, targets.SINK_PORT)
    notes: list[str] = []
    launches: list[tuple[targets.Launch, Path]] = [
        (targets.bare(uvloop=args.uvloop), fresh_dir("bare")),
    ]
    skipped: dict[str, str] = {}
    if problem := relay_problem():
        skipped["relay"] = problem
    else:
        launches.append((targets.relay(fresh_dir("relay-ingest")), WORK / "relay-ingest"))
    if targets.hookspool_installed():
        launches.append((targets.hookspool(fresh_dir("hookspool")), WORK / "hookspool"))
    else:
        skipped["hookspool"] = ("hookspool is not installed; `pip install -r "
                                "bench/requirements.txt` installs it from PyPI")
    runs: dict[str, list[wrk.WrkResult]] = {}
    with contextlib.ExitStack() as stack:
        started: list[targets.Launch] = []
        for launch, work in launches:
            try:
                stack.enter_context(start(launch, work, SERVER_CPU))
            except procs.NotReady as exc:
                skipped[launch.name] = f"it did not start: {exc}"
                say(f"  {launch.name}: skipped ({exc})")
                continue
            if launch.name == "relay":
                # Ingest is measured alone: with destinations paused relay stores every event
                # and its deliveries but sends nothing, so delivery work does not share core 0.
                problem = targets.relay_admin("pause")
                notes.append("relay: destinations paused during the ingest runs (stores events "
                             "and their deliveries, sends nothing)" if problem is None else
                             f"relay: pausing destinations failed ({problem}); its delivery "
                             "workers retried against an absent sink during the runs")
            started.append(launch)
        # Reps interleave the targets (a b c a b c ...) so a noisy neighbour on this shared
        # machine spreads over all of them instead of landing on one.
        for rep in range(args.reps):
            for launch in started:
                say(f"  ingest rep {rep + 1}/{args.reps}: {launch.name} ...")
                log = WORK / f"wrk-{launch.name.split()[0]}-{rep + 1}.log"
                result = wrk.run(launch.hook_url, BODY, duration=args.duration,
                                 connections=args.connections, cpu=LOAD_CPU, log=log)
                say(f"    {result.requests_per_s:,.0f} req/s  p50 {result.p50_ms:.2f} ms  "
                    f"p99 {result.p99_ms:.2f} ms  non-2xx {result.non_2xx}")
                runs.setdefault(launch.name, []).append(result)
    rows: list[dict[str, Any]] = []
    ceiling = None
    for launch, _ in launches:
        if launch.name in skipped:
            rows.append({"target": launch.name, "skipped": skipped[launch.name]})
            continue
        rs = runs[launch.name]
        rps = statistics.median(r.requests_per_s for r in rs)
        if ceiling is None:
            ceiling = rps
        rows.append({
            "target": launch.name, "rps": rps,
            "p50_ms": statistics.median(r.p50_ms for r in rs),
            "p99_ms": statistics.median(r.p99_ms for r in rs),
            "ratio": rps / ceiling if ceiling else None,
            "non_2xx": sum(r.non_2xx for r in rs),
            "socket_errors": sum(r.socket_errors for r in rs),
            "reps": [r.requests_per_s for r in rs],
        })
    for name in ("relay", "hookspool"):
        if name in skipped and not any(r["target"] == name for r in rows):
            rows.append({"target": name, "skipped": skipped[name]})
    if any(r["target"] == "hookspool" and not r.get("skipped") for r in rows):
        notes.append("hookspool 0.2.0: its own threaded intake (`hookspool intake`, 64 threads, "
                     "one per connection), a form-body source plugin (`bench/peers/`), WAL with "
                     "synchronous=FULL, the same three filtered destinations as routes and tees; "
                     "only `hookspool intake` runs (its dispatcher is a separate process and is "
                     "not started), so like relay it stores and does not send")
    return {"meta": meta(args), "rows": rows, "notes": notes}


# ---- (d)-(e) delivery ---------------------------------------------------------------------------

def bench_delivery(args: argparse.Namespace) -> dict[str, Any]:
    check_ports(targets.RELAY_PORT, targets.SINK_PORT)
    sink = targets.sink()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    # (d) the raw ceiling
    rates = []
    with procs.running("sink", sink.cmd, fresh_dir("sink-d") / "sink.log", cpu=LOAD_CPU,
                       ready_url=sink.ready_url):
        for rep in range(args.reps):
            sink_reset()
            say(f"  ClientSession ceiling rep {rep + 1}/{args.reps}: {args.posts:,} posts ...")
            # The client plays relay's part, so it gets relay's core; the sink has the other.
            result = run_loadgen("burst", "--url", f"{sink.hook_url}/crm", "--body", str(BODY),
                                 "--count", str(args.posts),
                                 "--concurrency", str(args.connections), cpu=SERVER_CPU,
                                 timeout=600)
            say(f"    {result['rps']:,.0f} req/s, errors {result['errors']}")
            rates.append(result["rps"])
    ceiling = statistics.median(rates)
    rows.append({"target": "one ClientSession (ceiling)", "events": None,
                 "deliveries": args.posts, "rps": ceiling,
                 "seconds": args.posts / ceiling if ceiling else 0, "ratio": 1.0,
                 "reps": rates})
    # (e) relay draining a backlog
    if problem := relay_problem():
        rows.append({"target": "relay", "skipped": problem})
    else:
        try:
            rows.append(relay_drain(args, ceiling, notes))
        except (procs.NotReady, RuntimeError) as exc:
            rows.append({"target": "relay", "skipped": f"it did not run: {exc}"})
    return {"meta": meta(args, events=args.events), "rows": rows, "notes": notes}


def relay_drain(args: argparse.Namespace, ceiling: float, notes: list[str]) -> dict[str, Any]:
    sink = targets.sink()
    results = []
    expected = args.events * targets.relay_matched_per_event()
    # Short, capped backoff: if pausing is not available, deliveries fail against the absent
    # sink while the backlog builds, and must not sleep long once the sink is up.
    retry = targets.Retry(max_attempts=1000, initial_delay=0.1, max_delay=1.0)
    for rep in range(args.reps):
        work = fresh_dir(f"relay-drain-{rep + 1}")
        launch = targets.relay(work, retry=retry)
        with start(launch, work, SERVER_CPU):
            paused = targets.relay_admin("pause") is None
            say(f"  relay drain rep {rep + 1}/{args.reps}: ingesting {args.events:,} events "
                f"({'destinations paused' if paused else 'sink absent'}) ...")
            loaded = run_loadgen("burst", "--url", launch.hook_url, "--body", str(BODY),
                                 "--count", str(args.events),
                                 "--concurrency", str(args.connections), timeout=1800)
            if loaded["ok"] != args.events:
                raise RuntimeError(f"relay accepted {loaded['ok']} of {args.events} events: "
                                   f"{loaded['errors']}")
            with procs.running("sink", sink.cmd, work / "sink.log", cpu=LOAD_CPU,
                               ready_url=sink.ready_url):
                t0 = time.time_ns()
                if paused and (problem := targets.relay_admin("resume")):
                    raise RuntimeError(problem)
                stats = wait_sink(expected, deadline_s=max(120.0, expected / 200))
            if stats["count"] < expected:
                raise RuntimeError(f"the sink got {stats['count']} of {expected} deliveries "
                                   "before the deadline")
            seconds = (stats["last_ns"] - t0) / 1e9
            rps = expected / seconds
            say(f"    {expected:,} deliveries in {seconds:.1f} s: {rps:,.0f}/s "
                f"(sink saw {stats['count']:,}; attempts {stats['attempts']})")
            results.append((rps, seconds, stats["count"]))
    if not paused:
        notes.append("relay: pausing destinations failed, so the backlog was built with the sink "
                     "absent (retry delays 0.1-1 s); the clock starts when the sink starts")
    rps = statistics.median(r[0] for r in results)
    extra = max(r[2] for r in results) - expected
    if extra > 0:
        notes.append(f"relay: the sink received up to {extra} requests beyond the expected "
                     "deliveries (redeliveries)")
    return {"target": "relay", "events": args.events, "deliveries": expected, "rps": rps,
            "seconds": statistics.median(r[1] for r in results), "ratio": rps / ceiling,
            "reps": [r[0] for r in results]}


# ---- (f) latency --------------------------------------------------------------------------------

def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    check_ports(targets.RELAY_PORT, targets.SINK_PORT)
    sink = targets.sink()
    rows: list[dict[str, Any]] = []
    duration = max(args.duration, 3.0)
    per_event = {"direct to sink": 1, "relay": targets.relay_matched_per_event()}
    with procs.running("sink", sink.cmd, fresh_dir("latency") / "sink.log", cpu=LOAD_CPU,
                       ready_url=sink.ready_url):
        plans: list[tuple[str, str | None]] = [("direct to sink", f"{sink.hook_url}/direct")]
        problem = relay_problem()
        plans.append(("relay", problem))
        for name, url_or_problem in plans:
            if name == "relay":
                if url_or_problem is not None:
                    rows.append({"target": name, "skipped": url_or_problem})
                    continue
                work = fresh_dir("relay-latency")
                launch = targets.relay(work)
                try:
                    with start(launch, work, SERVER_CPU):
                        rows.append(latency_run(args, name, launch.hook_url, duration,
                                                per_event[name]))
                except procs.NotReady as exc:
                    rows.append({"target": name, "skipped": f"it did not start: {exc}"})
            else:
                assert url_or_problem is not None
                rows.append(latency_run(args, name, url_or_problem, duration, per_event[name]))
    return {"meta": meta(args, rate=args.rate, duration=duration), "rows": rows, "notes": []}


def latency_run(args: argparse.Namespace, name: str, url: str, duration: float,
                per_event: int) -> dict[str, Any]:
    sink_reset()
    say(f"  latency: {name} at {args.rate:g} req/s for {duration:g} s ...")
    sent = run_loadgen("rate", "--url", url, "--body", str(BODY), "--rate", str(args.rate),
                       "--duration", str(duration), timeout=duration + 120)
    stats = wait_sink(sent["ok"] * per_event, deadline_s=60)
    say(f"    ack p50 {sent['ack_p50_ms']:.2f} ms p99 {sent['ack_p99_ms']:.2f} ms; delivered "
        f"{stats['latency_n']:,}: p50 {stats['latency_p50_ms']:.2f} ms "
        f"p99 {stats['latency_p99_ms']:.2f} ms")
    return {"target": name, "sent": sent["ok"], "delivered": stats["latency_n"],
            "ack_p50_ms": sent["ack_p50_ms"], "ack_p99_ms": sent["ack_p99_ms"],
            "p50_ms": stats["latency_p50_ms"], "p99_ms": stats["latency_p99_ms"],
            "errors": sent["errors"], "skipped_sends": sent["skipped"]}


# ---- entry --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 rep of 3 s, 10,000-event backlog")
    parser.add_argument("--only", choices=report.SECTIONS, help="run one section")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections, and requests in flight for the delivery tests")
    parser.add_argument("--events", type=int, default=100_000, help="backlog size for relay")
    parser.add_argument("--posts", type=int, default=20_000,
                        help="posts for the ClientSession ceiling")
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s for the latency test")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=HAVE_UVLOOP,
                        help="run the bare ceiling on uvloop (default: when installed, as relay"
                        " then runs on it)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration = 1, 3.0
        args.events, args.posts = 10_000, 10_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk.find_wrk() is None and args.only in (None, "ingest"):
        print(f"bench: {wrk.INSTALL_HINT}", file=sys.stderr)
        return 2
    if not procs.pinning_available():
        say("bench: taskset or a second core is missing; processes are not pinned")
    WORK.mkdir(exist_ok=True)
    sections = [args.only] if args.only else list(report.SECTIONS)
    runners = {"ingest": bench_ingest, "delivery": bench_delivery, "latency": bench_latency}
    for section in sections:
        say(f"bench: {section}")
        report.save(args.out, section, runners[section](args))
    path = report.render(args.out)
    say(f"bench: wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
