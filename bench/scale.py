"""Scale: does relay stay fast as its database grows, and small with a huge backlog?

    .venv/bin/python bench/scale.py --history 0 10000000 --backlog 1000000
    .venv/bin/python bench/scale.py --quick     # 0 and 20,000 events, a 20,000 backlog, 3 s, 1 rep


For each history size it writes that many finished events (request, event with its dedup key,
delivered delivery) straight into a fresh SQLite file with relay's own schema, then measures,
with relay pinned to core 0 and wrk to core 1: ingest req/s and p99, and the time of the claim
query on that database. The load's member ids and addresses come in no order (``post.lua
scattered``), as real members' do, so each new event's dedup key and address land at random
places in indexes that hold the whole history, not at their ends; the run fails if relay took
any of the load for a duplicate. Each size gets ``--reps`` runs, taken in turn with the others',
and its medians. With --backlog it writes that many *pending* deliveries for a destination that
refuses connections, starts relay on them and reports its resident memory after a while.
History bodies are 400 bytes (the ingest load uses the 1.6 KB body): the rows, indexes and
B-tree depths are what matter for query times, and 10 million 1.6 KB bodies would be 16 GB.
Issue 12's goals: ingest with 10M stored events within 10% of the empty store (``ratio to
empty`` >= 0.9, against the median of the first size-0 store), RSS < 200 MB with 1M pending.

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

import harness as h
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


def history_dedup_key(n: int) -> str:
    """The dedup key relay gives a ``subscribe`` (inbound, type, member id, fired_at, digest of
    the body), for history event ``n``. The ids are spread over the 10-digit range the live load
    draws from (``post.lua scattered``) but rise with ``n``, so the history is written in key
    order, fast, and the live keys land between stored ones all over the index."""
    member = n * (2**32 // 10_000_000)
    return f"audience-user:subscribe|{member:010d}|2024-01-01 00:00:00:{n:016x}"


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
        keys = [history_dedup_key(start + i) for i in range(n)]
        conn.executemany(
            "INSERT INTO events (id, request_id, inbound, source, type, received_at, list_id,"
            " email, email_key, seq, dedup_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(e, r, "audience-user", "user", "subscribe", t[i], "a6b5da1054",
              f"user{start + i}@example.com", f"user{start + i}@example.com", start + i + 1,
              keys[i])
             for i, (r, e) in enumerate(ids)],
        )  # fmt: skip
        # Every original's key, as relay keeps them for its dedup lookups.
        conn.executemany(
            "INSERT INTO dedup (key, event_id, first_seen) VALUES (?,?,?)",
            [(keys[i], e, t[i]) for i, (_, e) in enumerate(ids)],
        )
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


def load_stored(db: Path, history: int) -> tuple[int, int]:
    """Events stored after the ``history``, and how many of them relay took for duplicates."""
    conn = sqlite3.connect(db)
    try:
        stored, duplicates = conn.execute(
            "SELECT count(*), count(duplicate_of) FROM events WHERE seq > ?", (history,)
        ).fetchone()
    finally:
        conn.close()
    return int(stored), int(duplicates)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def ingest(db: Path, history: int, port: int, duration: float,
           earlier: list[wrk.WrkResult]) -> wrk.WrkResult:
    """One wrk run against relay on ``db``; fails if relay took any of it for a duplicate."""
    # The destination refuses connections: its deliveries retry in the background, as they
    # would during an outage, while wrk measures ingest.
    proc = start_relay(db, port, "http://127.0.0.1:9/")
    try:
        run = wrk.run(f"http://127.0.0.1:{port}/hooks/user?secret=s", BODY, duration=duration,
                      connections=64, cpu=1, log=db.with_suffix(f".wrk{len(earlier) + 1}.txt"),
                      scattered=True)
    finally:
        proc.terminate()
        proc.wait(60)
    stored, duplicates = load_stored(db, history)
    sent = sum(r.requests for r in [*earlier, run])
    if duplicates or stored < sent:
        raise SystemExit(f"scale: the load was to be {sent:,} new events; relay stored "
                         f"{stored:,}, {duplicates:,} of them as duplicates")
    return run


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
    parser.add_argument("--history", type=int, nargs="*", default=[0, 1_000_000],
                        help="stored events of each store, measured in turn; 0 is the reference")
    parser.add_argument("--backlog", type=int, default=0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=3, help="wrk runs per size, taken in turn")
    parser.add_argument("--samples", type=int, default=12, help="RSS samples, 5 s apart")
    parser.add_argument("--quick", action="store_true",
                        help="check the script: 0 and 20,000 events, a 20,000 backlog, 3 s runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="where scale.json goes (default docs/benchmarks, or bench/.work/scale"
                        " with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.history, args.backlog, args.duration, args.samples = [0, 20_000], 20_000, 3.0, 2
        args.reps = 1
    out = args.out or (WORK if args.quick else OUT)
    WORK.mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("BENCH_PORT_BASE", "28000")) + 85
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=BENCH).stdout.strip()  # fmt: skip
    history: list[dict[str, object]] = []
    results: dict[str, object] = {"history": history, "commit": commit, "quick": args.quick}
    stores = [WORK / f"history-{i}-{size}.db" for i, size in enumerate(args.history)]
    try:
        for size, db in zip(args.history, stores, strict=True):
            remove_db(db)
            took = generate(db, size, "delivered", "crm")
            # Written without fsync: flushed before measuring, or relay's own fsyncs queue
            # behind a gigabyte of the generator's writeback (p99s of ~800 ms at 1M events).
            os.sync()
            history.append({"events": size, "generate_s": round(took, 1),
                            "claim_ms": round(claim_ms(db), 3),
                            "db_mb": round(db.stat().st_size / 2**20)})  # fmt: skip
        # Reps go round the stores, so that each size meets the machine's slow and fast minutes.
        runs: list[list[wrk.WrkResult]] = [[] for _ in stores]
        for rep in range(args.reps):
            for size, db, done in zip(args.history, stores, runs, strict=True):
                done.append(ingest(db, size, port, args.duration, done))
                print(f"rep {rep + 1}: {size:,} events: {done[-1].requests_per_s:,.0f} req/s",
                      flush=True)
        empty = next((h.median([r.requests_per_s for r in done])
                      for size, done in zip(args.history, runs, strict=True) if size == 0), None)
        for row, done in zip(history, runs, strict=True):
            row.update(rps=h.median([r.requests_per_s for r in done]),
                       p50_ms=h.median([r.p50_ms for r in done]),
                       p99_ms=h.median([r.p99_ms for r in done]),
                       reps=[r.requests_per_s for r in done])
            # Against the invocation's first empty store, measured in the same rounds.
            row["ratio_to_empty"] = round(float(row["rps"]) / empty, 3) if empty else None
            print(json.dumps(row), flush=True)
    finally:
        for db in stores:
            remove_db(db)
    if args.backlog:
        db = WORK / "backlog.db"
        remove_db(db)
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
