"""A counting sink: the destination every benchmark delivers to.

It answers every POST with 200, counts them, notes when the first and the latest arrived, and,
when the body carries the load generator's send time (``data[merges][TS]``, nanoseconds since
the epoch), the send-to-delivered latency. The harness reads ``GET /_stats`` and clears the
figures with ``POST /_reset``; paths under ``/_`` are never counted.

    python bench/servers/sink.py --port 18090
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter

from aiohttp import web

# The form-encoded key the load generator appends; relay forwards bodies byte for byte.
TS_FIELD = b"data%5Bmerges%5D%5BTS%5D="
EMAIL_FIELD = b"data%5Bemail%5D="
ID_FIELD = b"data%5Bid%5D="


def field(body: bytes, name: bytes) -> bytes | None:
    """The raw value of form field ``name`` (given with its ``=``), or None."""
    at = body.find(name)
    if at < 0 or (at > 0 and body[at - 1 : at] != b"&"):
        return None
    start = at + len(name)
    end = body.find(b"&", start)
    return body[start:] if end < 0 else body[start:end]


def percentile(sorted_values: list[int], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


class Tally:
    """What the sink has seen since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.by_path: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.latencies_ns: list[int] = []
        # The load generator sends each subscriber's events in the order of their data[id]s;
        # one arriving after a later one of the same subscriber was delivered is out of order.
        self.last_id: dict[bytes, bytes] = {}
        self.out_of_order = 0

    def record(self, path: str, attempt: str, body: bytes) -> None:
        now = time.time_ns()
        if not self.count:
            self.first_ns = now
        self.last_ns = now
        self.count += 1
        self.by_path[path] += 1
        if attempt:
            self.attempts[attempt] += 1
        raw = field(body, TS_FIELD)
        if raw is not None and raw.isdigit():
            self.latencies_ns.append(now - int(raw))
        email, event_id = field(body, EMAIL_FIELD), field(body, ID_FIELD)
        if email is not None and event_id is not None:
            last = self.last_id.get(email)
            if last is not None and event_id < last:
                self.out_of_order += 1
            else:
                self.last_id[email] = event_id

    def snapshot(self) -> dict[str, object]:
        lat = sorted(self.latencies_ns)
        return {
            "count": self.count,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "by_path": dict(self.by_path),
            "attempts": dict(self.attempts),
            "latency_n": len(lat),
            "latency_p50_ms": percentile(lat, 50) / 1e6,
            "latency_p99_ms": percentile(lat, 99) / 1e6,
            "latency_max_ms": (lat[-1] / 1e6) if lat else 0.0,
            "out_of_order": self.out_of_order,
        }


def build_app(tally: Tally) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        tally.record(request.path, request.headers.get("X-Relay-Attempt", ""), body)
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(tally.snapshot())

    async def reset(_: web.Request) -> web.Response:
        tally.reset()
        return web.json_response({"count": 0})

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/readyz", ready)
    app.router.add_post("/{tail:.*}", receive)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(Tally()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"sink: listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
