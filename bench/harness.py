"""What every benchmark section shares: where files go, the machine and commit a figure was
measured at, starting targets, driving the load generator and reading the sink.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import procs
import targets

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
BODY = BENCH / "body_subscribe.txt"
OUT = ROOT / "docs" / "benchmarks"
SERVER_CPU = 0
LOAD_CPU = 1
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
# Where a row's processes ran, as the tables say it.
PINNED = "server core 0, load core 1"
SHARED = "server and load share cores 0-1"


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


def log_dir(launch: targets.Launch) -> Path:
    """Where a target's server log goes: beside its config, or a folder named after it."""
    if launch.config is not None:
        return launch.config.parent
    path = WORK / "".join(c if c.isalnum() else "-" for c in launch.name.split()[0])
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_ports(*ports: int) -> None:
    busy = [p for p in ports if not procs.port_free(p)]
    if busy:
        raise SystemExit(f"bench: ports {busy} are already in use on 127.0.0.1; stop what "
                         "listens there or set BENCH_PORT_BASE (default 28000) to move them")


@contextlib.contextmanager
def start(launch: targets.Launch, work: Path, cpu: int | None) -> Iterator[procs.Child]:
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


@dataclass(frozen=True)
class Drained:
    rps: float
    seconds: float
    received: int
    out_of_order: int  # deliveries the sink saw before a later event of the same subscriber


def drain(launches: Sequence[targets.Launch], *, events: int, expected: int,
          paused: Sequence[str], connections: int, loadgen_args: Sequence[str] = ()) -> Drained:
    """One drain of a backlog: ``launches`` (relays sharing one store) must be running with
    ``paused`` destinations paused; ``events`` are posted to the first, then the sink is
    started and the destinations resumed through each, and the clock runs from the resume to
    the sink's ``expected``-th request."""
    sink = targets.sink()
    launch = launches[0]
    loaded = run_loadgen("burst", "--url", launch.hook_url, "--body", str(BODY),
                         "--count", str(events), "--concurrency", str(connections),
                         *loadgen_args, timeout=1800)
    if loaded["ok"] != events:
        raise RuntimeError(f"{launch.name} accepted {loaded['ok']} of {events} events: "
                           f"{loaded['errors']}")
    assert launch.config is not None
    with procs.running("sink", sink.cmd, launch.config.parent / "sink.log", cpu=LOAD_CPU,
                       ready_url=sink.ready_url):
        t0 = time.time_ns()
        for each in launches:
            if problem := targets.relay_admin("resume", tuple(paused), port=each.port):
                raise RuntimeError(problem)
        stats = wait_sink(expected, deadline_s=max(120.0, expected / 200))
    if stats["count"] < expected:
        raise RuntimeError(f"the sink got {stats['count']} of {expected} deliveries "
                           "before the deadline")
    seconds = (stats["last_ns"] - t0) / 1e9
    return Drained(expected / seconds, seconds, stats["count"], stats["out_of_order"])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
