"""Run wrk against one URL and read its figures.

wrk is a closed-loop generator: 64 connections each send the next request as soon as the last
one is answered, so req/s is the server's saturation throughput. ``--latency`` adds the
percentile table that p50 and p99 are read from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).with_name("post.lua")
INSTALL_HINT = "wrk is not installed: run `apt-get update && apt-get install -y wrk` (Debian)"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def find_wrk() -> str | None:
    return shutil.which("wrk")


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse(output: str) -> WrkResult:
    """Read wrk 4's text report (with ``--latency``)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    pcts = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                                  output, re.M)}
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     output)
    if not rps or "50" not in pcts or "99" not in pcts or not total:
        raise ValueError(f"cannot read wrk output:\n{output}")
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=pcts["50"],
        p99_ms=pcts["99"],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def run(url: str, body_file: Path, *, duration: float, connections: int,
        cpu: int | None, log: Path) -> WrkResult:
    """One wrk run with one thread; its full output is kept in ``log``."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError(INSTALL_HINT)
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", "10s", "-s", str(LUA), url, "--", str(body_file)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    log.write_text(" ".join(cmd) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    return parse(done.stdout)
