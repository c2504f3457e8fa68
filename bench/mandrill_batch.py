"""Mandrill batches for the benchmark, and SQLite's own insert rate for the same rows.

A batch is built from the documented example batch in tests/fixtures/mailchimp (every event
type Mandrill sends, sync events included), repeated to the size asked for, each element made
unique (``_id``, ``ts`` and the address) so relay stores every one rather than deduplicating
it. The body is the form Mandrill posts (``mandrill_events=<JSON array>``) and is signed with
``X-Mandrill-Signature`` as Mandrill signs it: base64 HMAC-SHA1 over the URL followed by each
form field's name and value, sorted by name.

``reference`` is the figure relay's Mandrill ingest is held against: the same events, parsed
beforehand, inserted with one ``executemany`` per batch and one commit into relay's own
``events`` table (columns and indexes as relay's migrations made them; ``relay migrate`` built
the file), WAL with ``synchronous=FULL``, as relay stores them.

    python bench/mandrill_batch.py reference --folder DIR --db FILE
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus

BENCH = Path(__file__).resolve().parent
SAMPLE = (BENCH.parent / "tests" / "fixtures" / "mailchimp" / "samples"
          / "mandrill_all_event_types.mandrill_events.json")
FORM = "application/x-www-form-urlencoded"


def sample_elements() -> list[dict[str, Any]]:
    elements: list[dict[str, Any]] = json.loads(SAMPLE.read_text())
    return elements


def unique_element(template: dict[str, Any], n: int) -> dict[str, Any]:
    """``template`` as element number ``n`` of the run: its own message id, time and address,
    wherever the template carries one (message events in ``msg``, sync events in ``reject`` or
    ``entry``)."""
    element = copy.deepcopy(template)
    address = f"recipient{n:07d}@example.com"
    if "_id" in element:
        element["_id"] = f"{n:032x}"
    if "ts" in element:
        element["ts"] = 1_700_000_000 + n
    for key in ("msg", "reject", "entry"):
        inner = element.get(key)
        if isinstance(inner, dict):
            if "email" in inner:
                inner["email"] = address
            if "_id" in inner:
                inner["_id"] = f"{n:032x}"
    return element


def batch(size: int, first: int, elements: list[dict[str, Any]] | None = None) -> list[Any]:
    """``size`` unique elements, numbered from ``first``, the sample's event types in turn."""
    templates = elements or sample_elements()
    return [unique_element(templates[i % len(templates)], first + i) for i in range(size)]


def form_body(events: list[Any]) -> bytes:
    text = json.dumps(events, separators=(",", ":"))
    return b"mandrill_events=" + quote_plus(text).encode("ascii")


def signature(key: str, url: str, body: bytes) -> str:
    """``X-Mandrill-Signature`` for ``body`` posted to ``url`` (as Mandrill is configured with
    it); a repeated field keeps its last value, as PHP's ``$_POST`` does."""
    fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    signed = url + "".join(name + fields[name] for name in sorted(fields))
    digest = hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def write_batches(folder: Path, *, count: int, size: int, url: str, key: str) -> int:
    """Write ``count`` signed batches (``NNNN.body`` and ``NNNN.headers``); their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = sample_elements()
    total = 0
    for i in range(count):
        body = form_body(batch(size, i * size, templates))
        headers = {"Content-Type": FORM, "X-Mandrill-Signature": signature(key, url, body)}
        (folder / f"{i:04d}.body").write_bytes(body)
        (folder / f"{i:04d}.headers").write_text(json.dumps(headers))
        total += len(body)
    return total


_INSERT = (
    "INSERT INTO events (id, request_id, inbound, source, type, received_at, fired_at, list_id,"
    " email, parse_error, dedup_key, duplicate_of, payload, payload_content_type, seq, email_key)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def reference(folder: Path, db: Path) -> dict[str, float]:
    """Insert the events of every batch in ``folder`` into ``db``'s events table, one
    transaction per batch; rows (each with the one-element body relay forwards for it) are
    built before the clock starts."""
    from relay.protocols.mandrill import parse_mandrill, rebatch_mandrill

    batches = []
    seq = 0
    for path in sorted(folder.glob("*.body")):
        request_id = uuid.uuid4().hex
        rows = []
        now = time.time()
        for event in parse_mandrill(path.read_bytes()).events:
            seq += 1
            fired = event.fired_at.timestamp() if event.fired_at else None
            email_key = event.email.lower() if event.email else None
            rows.append((uuid.uuid4().hex, request_id, "mandrill", "mandrill", event.type, now,
                         fired, None, event.email, None, event.dedup_key, None,
                         rebatch_mandrill([event.raw]), FORM, seq, email_key))
        batches.append(rows)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    started = time.perf_counter()
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    events = sum(len(rows) for rows in batches)
    return {"events": events, "batches": len(batches), "seconds": seconds,
            "rate": events / seconds if seconds else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("reference", help="SQLite's batched insert rate of the batches' events")
    r.add_argument("--folder", type=Path, required=True)
    r.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(reference(args.folder, args.db)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
