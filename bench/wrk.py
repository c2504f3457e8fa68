"""Run wrk against one URL and read its figures.

wrk is a closed-loop generator: 64 connections each send the next request as soon as the last
one is answered, so req/s is the server's saturation throughput. ``--latency`` adds the
percentile table that p50 and p99 are read from.
"""

from __future__ import annotations

import random
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


# Every wrk process of one invocation numbers its data[id]s from its own block of 10 million
# (more than any run sends), so no run repeats another's ids against a store that keeps them;
# the random base keeps invocations apart.
_ID_BLOCK = 10_000_000
_next_first = random.randrange(1000) * _ID_BLOCK


def next_first_id() -> int:
    global _next_first
    first = _next_first
    _next_first = (_next_first + _ID_BLOCK) % 10_000_000_000
    return first


def combine(results: list[WrkResult]) -> WrkResult:
    """Several wrk processes that ran at once, as one: their rates and counts add up; the
    latencies are the worst of them (wrk reports percentiles, which cannot be merged exactly)."""
    return WrkResult(
        requests_per_s=sum(r.requests_per_s for r in results),
        p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )


def run(url: str, body_file: Path, *, duration: float, connections: int,
        cpu: int | None, log: Path, same_body: bool = False, scattered: bool = False) -> WrkResult:
    """One wrk run with one thread; its full output is kept in ``log``. Each request gets its
    own ``data[id]`` unless ``same_body`` (the duplicate path: the body byte for byte);
    ``scattered`` sends the ids, and addresses made from them, in no order (post.lua)."""
    return run_many([url], body_file, duration=duration, connections=connections, cpu=cpu,
                    log=log, same_body=same_body, scattered=scattered)


def run_many(urls: list[str], body_file: Path, *, duration: float, connections: int,
             cpu: int | None, log: Path, same_body: bool = False,
             scattered: bool = False) -> WrkResult:
    """One wrk process per URL, all at once, ``connections`` shared out among them."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError(INSTALL_HINT)
    started = []
    for i, url in enumerate(urls):
        share = connections // len(urls) + (1 if i < connections % len(urls) else 0)
        cmd = [wrk, "-t1", f"-c{share}", f"-d{max(1, round(duration))}s", "--latency",
               "--timeout", "10s", "-s", str(LUA), url, "--", str(body_file)]
        cmd.append("same" if same_body else str(next_first_id()))
        if scattered and not same_body:
            cmd.append("scattered")
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append((cmd, proc))
    outputs = []
    texts = []
    for cmd, proc in started:
        try:
            out, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        texts.append(" ".join(cmd) + "\n" + out + err)
        if proc.returncode != 0:
            log.write_text("\n".join(texts))
            raise RuntimeError(f"wrk exited {proc.returncode}: {err.strip()}")
        outputs.append(out)
    log.write_text("\n".join(texts))
    return combine([parse(out) for out in outputs])
