"""HTTP load from Python: the ClientSession ceiling, backlog preloading and open-loop latency.

Run as its own process (pinned by the harness), it prints one JSON line with its figures.

``burst`` posts COUNT requests with CONCURRENCY in flight over one ``aiohttp.ClientSession``,
the way relay's delivery workers send: this is the raw delivery ceiling when aimed at the
sink, and the quickest way to fill relay with a backlog when aimed at relay.

``rate`` is an open-loop generator: request i is sent at start + i/RATE whether or not
earlier ones have been answered (a closed loop would slow down with the server and hide
queueing). Each body gets ``data[merges][TS]=<send time in ns>`` appended, which relay
forwards untouched, so the sink can compute send-to-delivered latency.

``files`` posts prepared bodies (a Mandrill batch each) with their own headers (signatures).

    python bench/loadgen.py burst --url URL --body FILE --count 20000 --concurrency 64
    python bench/loadgen.py rate --url URL --body FILE --rate 1000 --duration 10
    python bench/loadgen.py files --url URL --folder DIR --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp

FORM = "application/x-www-form-urlencoded"
TS_FIELD = b"&data%5Bmerges%5D%5BTS%5D="


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


_ID_FIELD = re.compile(rb"data%5Bid%5D=[^&]*")
_EMAIL_FIELDS = re.compile(rb"(data%5Bemail%5D|data%5Bmerges%5D%5BEMAIL%5D)=[^&]*")


def with_id(body: bytes, n: int) -> bytes:
    """The body with its own ``data[id]``: relay delivers a repeated webhook only once (dedup),
    so every request of a benchmark must be a distinct event, as in a real audience import."""
    return _ID_FIELD.sub(b"data%%5Bid%%5D=%010d" % n, body, count=1)


def with_email(body: bytes, subscriber: int) -> bytes:
    """The body as subscriber number ``subscriber`` sends it (``data[email]`` and the EMAIL merge
    field): relay's ordering key is the list id and the address."""
    address = b"subscriber%06d%%40example.com" % subscriber
    return _EMAIL_FIELDS.sub(lambda m: m.group(1) + b"=" + address, body)


def variant(body: bytes, n: int, *, same: bool, subscribers: int) -> bytes:
    """Request number ``n``'s body: unchanged for ``same`` (the duplicate path), else with its
    own id, and spread over ``subscribers`` addresses in turn when that is not 0."""
    if same:
        return body
    out = with_id(body, n)
    return with_email(out, n % subscribers) if subscribers else out


async def closed_loop(url: str, requests: Iterator[tuple[bytes, Mapping[str, str]]], *,
                      count: int, concurrency: int, timeout_s: float) -> dict[str, object]:
    """POST every (body, headers) of ``requests``, ``concurrency`` at a time, each worker taking
    the next as soon as its last is answered; requests are taken in order."""
    ok = 0
    errors: dict[str, int] = {}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        # One iterator shared by every worker: next() never awaits, so no two take the same.
        for payload, headers in requests:
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        ok += 1
                    else:
                        errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"count": count, "ok": ok, "errors": errors, "elapsed_s": elapsed,
            "rps": ok / elapsed if elapsed else 0.0}


async def burst(url: str, body: bytes, count: int, concurrency: int, *, first: int = 0,
                same: bool = False, subscribers: int = 0) -> dict[str, object]:
    """Request i (counting up from 0) is ``variant(body, first + i)``: sent in order, so one
    subscriber's events reach relay in the order of their ids."""
    headers = {"Content-Type": FORM}
    requests = ((variant(body, first + i, same=same, subscribers=subscribers), headers)
                for i in range(count))
    result = await closed_loop(url, requests, count=count, concurrency=concurrency,
                               timeout_s=30)
    return {"mode": "burst", **result}


async def rate(url: str, body: bytes, per_second: float, duration: float,
               max_in_flight: int) -> dict[str, object]:
    total = int(per_second * duration)
    acks_ms: list[float] = []
    errors: dict[str, int] = {}
    skipped = 0
    in_flight = 0
    peak_in_flight = 0
    max_lag_ms = 0.0
    headers = {"Content-Type": FORM}

    async def send(session: aiohttp.ClientSession) -> None:
        nonlocal in_flight
        sent_ns = time.time_ns()
        payload = with_id(body, sent_ns % 10**10) + TS_FIELD + str(sent_ns).encode()
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    acks_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
        finally:
            in_flight -= 1

    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for i in range(total):
            due = start + i / per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag_ms = max(max_lag_ms, -delay * 1000)
            if in_flight >= max_in_flight:
                # The server is this far behind: counting the request as skipped keeps the
                # generator open-loop instead of silently turning it into a closed loop.
                skipped += 1
                continue
            in_flight += 1
            peak_in_flight = max(peak_in_flight, in_flight)
            task = asyncio.create_task(send(session))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_window = time.perf_counter() - start
        if tasks:
            await asyncio.gather(*tasks)
    acks_ms.sort()
    answered = len(acks_ms) + sum(errors.values())
    return {"mode": "rate", "target_rps": per_second, "planned": total, "ok": len(acks_ms),
            "errors": errors, "skipped": skipped, "send_window_s": send_window,
            "achieved_rps": answered / send_window if send_window else 0.0,
            "peak_in_flight": peak_in_flight, "max_lag_ms": max_lag_ms,
            "ack_p50_ms": percentile(acks_ms, 50), "ack_p99_ms": percentile(acks_ms, 99)}


async def files(url: str, folder: Path, concurrency: int) -> dict[str, object]:
    """POST every ``*.body`` in ``folder`` once, with the headers in its ``.headers`` (JSON)."""
    bodies = sorted(folder.glob("*.body"))
    requests = ((path.read_bytes(), json.loads(path.with_suffix(".headers").read_text()))
                for path in bodies)
    result = await closed_loop(url, requests, count=len(bodies), concurrency=concurrency,
                               timeout_s=120)
    return {"mode": "files", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst", help="post COUNT requests with CONCURRENCY in flight")
    b.add_argument("--count", type=int, default=20_000)
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--first", type=int, default=0, help="data[id] of the first request")
    b.add_argument("--same", action="store_true", help="post the body unchanged every time")
    b.add_argument("--subscribers", type=int, default=0,
                   help="spread the requests over this many addresses, in turn")
    r = sub.add_parser("rate", help="open-loop load at a fixed rate")
    r.add_argument("--rate", type=float, default=1000.0)
    r.add_argument("--duration", type=float, default=10.0)
    r.add_argument("--max-in-flight", type=int, default=512)
    f = sub.add_parser("files", help="post each prepared body in a folder once")
    f.add_argument("--folder", type=Path, required=True)
    f.add_argument("--concurrency", type=int, default=4)
    for p in (b, r, f):
        p.add_argument("--url", required=True)
        p.add_argument("--uvloop", action="store_true", help="run on uvloop (as relay does)")
    for p in (b, r):
        p.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    if args.mode == "files":
        result = runner(files(args.url, args.folder, args.concurrency))
    elif args.mode == "burst":
        result = runner(burst(args.url, args.body.read_bytes(), args.count, args.concurrency,
                              first=args.first, same=args.same, subscribers=args.subscribers))
    else:
        body = args.body.read_bytes()
        result = runner(rate(args.url, body, args.rate, args.duration, args.max_in_flight))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
