"""Scale: does relay stay fast as its database grows, and small with a huge backlog?

    .venv/bin/python bench/scale.py --history 0 1000000 10000000 --backlog 1000000
    .venv/bin/python bench/scale.py --quick     # 0 and 20,000 events, a 20,000 backlog, 3 s


For each history size it writes that many finished events (request, event, delivered delivery,
attempt) straight into a fresh SQLite file with relay's own schema, then measures, with relay
pinned to core 0 and wrk to core 1: ingest req/s and p99, and the time of the claim query on
that database. With --backlog it writes that many *pending* deliveries for a destination that
refuses connections, starts relay on them and reports its resident memory after a while.
History bodies are 400 bytes (the ingest load uses the 1.6 KB body): the rows, indexes and
B-tree depths are what matter for query times, and 10 million 1.6 KB bodies would be 16 GB.
Issue 12's goals: ingest with 10M stored events within 10% of the empty store (``ratio to
empty`` >= 0.9, against the first size-0 run of the invocation), RSS < 200 MB with 1M pending.

The rows are written with relay's own migrations and column names; a migration that adds a NOT
NULL column without a default breaks ``generate`` here on purpose, so the history never drifts
from what relay would have written. ``--quick`` results go to bench/.work/scale/, not docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import procs
import wrk

from relay.ids import new_id
from relay.store.sqlite.migrate import migrate
from relay.store.sqlite.writer import _CLAIM

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work" / "scale"
BODY = BENCH / "body_subscribe.txt"
OUT = BENCH.parent / "docs" / "benchmarks"
HISTORY_BODY = b"type=subscribe&fired_at=2024-01-01+00%3A00%3A00&data%5Bid%5D=" + b"x" * 330


def generate(db: Path, events: int, state: str, destination: str) -> float:
    """Write ``events`` events with one delivery each in ``state``; returns seconds taken."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # generation only; relay reopens with its defaults
    migrate(conn)
    started = time.perf_counter()
    base = time.time() - 30 * 86400
    batch = 20_000
    for start in range(0, events, batch):
        n = min(batch, events - start)
        ids = [(new_id(), new_id()) for _ in range(n)]
        t = [base + (start + i) * 0.01 for i in range(n)]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type,"
            " peer, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(r, "audience-user", "POST", "/hooks/user", "secret=REDACTED", "[]", HISTORY_BODY,
              "application/x-www-form-urlencoded", "127.0.0.1", t[i])
             for i, (r, _) in enumerate(ids)],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO events (id, request_id, inbound, source, type, received_at, list_id,"
            " email, email_key, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(e, r, "audience-user", "user", "subscribe", t[i], "a6b5da1054",
              f"user{start + i}@example.com", f"user{start + i}@example.com", start + i + 1)
             for i, (r, e) in enumerate(ids)],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO deliveries (event_id, destination, state, attempts, next_attempt_at,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
            [(e, destination, state, 1 if state == "delivered" else 0, t[i], t[i], t[i])
             for i, (_, e) in enumerate(ids)],
        )  # fmt: skip
        # What relay counts against the inbound's quota (requests' bodies and headers).
        conn.execute(
            "INSERT INTO inbound_usage (inbound, bytes) VALUES ('audience-user', ?)"
            " ON CONFLICT (inbound) DO UPDATE SET bytes = bytes + excluded.bytes",
            (n * (len(HISTORY_BODY) + 2),),
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def claim_ms(db: Path, reps: int = 50) -> float:
    """Median time of relay's claim query (rolled back) with 1,000 due deliveries waiting."""
    conn = sqlite3.connect(db, isolation_level=None)
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,"
        " updated_at) VALUES ('x', 'probe', 'pending', ?, ?, ?)",
        [(now - i, now, now) for i in range(1000)],
    )
    times = []
    for _ in range(reps):
        conn.execute("SAVEPOINT s")
        t0 = time.perf_counter()
        # fetchall: execute() alone stops at the first row, and relay reads them all.
        claimed = conn.execute(_CLAIM, {"destination": "probe", "now": now, "lease": now + 20,
                                        "limit": 64}).fetchall()
        times.append((time.perf_counter() - t0) * 1000)
        assert len(claimed) == 64, claimed
        conn.execute("ROLLBACK TO s")
    conn.execute("ROLLBACK")
    conn.close()
    return statistics.median(times)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_relay(db: Path, port: int, destination_url: str) -> subprocess.Popen[bytes]:
    config = db.with_suffix(".toml")
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[storage]\nurl = "sqlite:///{db}"\n'
        '[[inbound]]\nname = "audience-user"\npath = "/hooks/user"\nkind = "mailchimp"\n'
        'secret = "s"\nsource = "user"\n'
        f'[[destination]]\nname = "crm"\nurl = "{destination_url}"\nconcurrency = 64\n'
        "[destination.retry]\nmax_attempts = 1000\ninitial_delay = 1.0\nmax_delay = 5.0\n"
    )
    log = db.with_suffix(".log").open("wb")
    cmd = procs.pinned([sys.executable, "-m", "relay", "serve", "--config", str(config)], 0)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while procs.http_status(f"http://127.0.0.1:{port}/readyz") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"relay did not become ready; see {db.with_suffix('.log')}")
        time.sleep(0.2)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="*", default=[0, 1_000_000])
    parser.add_argument("--backlog", type=int, default=0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--samples", type=int, default=12, help="RSS samples, 5 s apart")
    parser.add_argument("--quick", action="store_true",
                        help="check the script: 0 and 20,000 events, a 20,000 backlog, 3 s runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="where scale.json goes (default docs/benchmarks, or bench/.work/scale"
                        " with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.history, args.backlog, args.duration, args.samples = [0, 20_000], 20_000, 3.0, 2
    out = args.out or (WORK if args.quick else OUT)
    WORK.mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("BENCH_PORT_BASE", "28000")) + 85
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=BENCH).stdout.strip()  # fmt: skip
    history: list[dict[str, object]] = []
    results: dict[str, object] = {"history": history, "commit": commit, "quick": args.quick}
    for size in args.history:
        db = WORK / f"history-{size}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        took = generate(db, size, "delivered", "crm")
        claim = claim_ms(db)
        # The destination refuses connections: its deliveries retry in the background, as
        # they would during an outage, while wrk measures ingest.
        proc = start_relay(db, port, "http://127.0.0.1:9/")
        try:
            run = wrk.run(f"http://127.0.0.1:{port}/hooks/user?secret=s", BODY,
                          duration=args.duration, connections=64, cpu=1,
                          log=db.with_suffix(".wrk.txt"))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(60)
        row = {"events": size, "generate_s": round(took, 1), "claim_ms": round(claim, 3),
               "rps": run.requests_per_s, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
               "db_mb": round(db.stat().st_size / 2**20)}  # fmt: skip
        # Against the invocation's first empty store: the same machine, minutes apart.
        empty = next((float(r["rps"]) for r in history if r["events"] == 0),  # type: ignore[arg-type]
                     run.requests_per_s if size == 0 else None)
        row["ratio_to_empty"] = round(run.requests_per_s / empty, 3) if empty else None
        print(json.dumps(row), flush=True)
        history.append(row)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    if args.backlog:
        db = WORK / "backlog.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        generate(db, args.backlog, "pending", "crm")
        proc = start_relay(db, port, "http://127.0.0.1:9/")  # refuses connections
        samples = []
        try:
            for _ in range(args.samples):
                time.sleep(5)
                samples.append(round(rss_mb(proc.pid), 1))
        finally:
            proc.terminate()
            proc.wait(60)
        row = {"backlog": args.backlog, "rss_mb_every_5s": samples, "rss_mb_max": max(samples),
               "under_200_mb": max(samples) < 200}
        print(json.dumps(row), flush=True)
        results["backlog"] = row
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"scale: wrote {out / 'scale.json'}", flush=True)


if __name__ == "__main__":
    main()
