"""The parts that let several worker processes of one relay work together, tested in one
process: on one SQLite file, signals cross between workers and their writers take turns
instead of starving each other; their log lines reach the supervisor's output whole.

Each Store here stands for one worker process (a Store opens its own connections, writer thread
and sockets, as a process would).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config import StorageConfig
from relay.config.schema import SqliteSettings
from relay.model import NewReplay
from relay.server.supervisor import pass_lines_on
from relay.store import SignalKind, Store, StoreError, create_store
from relay.store.siblings import Siblings
from tests.store_contract.kit import Heard, ingest_one, new_event, raw_request

WORKERS = 2


async def open_workers(
    tmp_path: Path, siblings: bool = True, busy_timeout: float = 5.0, only: int | None = None
) -> list[Store]:
    """Open the stores of workers 0..WORKERS-1 (or only worker ``only``) on one file."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    config = StorageConfig(
        url=f"sqlite:///{tmp_path / 'relay.db'}", sqlite=SqliteSettings(busy_timeout=busy_timeout)
    )
    stores = []
    for i in range(WORKERS) if only is None else [only]:
        store = create_store(config, siblings=Siblings(run_dir, i, WORKERS) if siblings else None)
        await store.open()
        stores.append(store)
    return stores


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Store]]:
    stores = await open_workers(tmp_path)
    yield stores
    for store in stores:
        await store.close()


async def test_signals_raised_in_one_worker_reach_the_others(workers: list[Store]) -> None:
    a, b = workers
    heard = Heard(b)
    since = heard.mark()
    await ingest_one(a, "crm")
    await heard.wait_for(SignalKind.DUE, "crm", since=since)
    await a.pause_destination("crm")
    await heard.wait_for(SignalKind.PAUSE, "crm", since=since)
    replay_id = await a.start_replay(
        NewReplay(requested_by="admin", filter="{}", destinations=("crm",), total=1)
    )
    await heard.wait_for(SignalKind.REPLAY, str(replay_id), since=since)
    # What b heard was committed before it heard it.
    assert await heard.announced_too_early() == []


async def test_a_restarted_worker_hears_its_siblings_again(tmp_path: Path) -> None:
    a, b = await open_workers(tmp_path)
    try:
        await b.close()
        await ingest_one(a, "lost")  # said while b is down: dropped, not an error
        (b,) = await open_workers(tmp_path, only=1)
        heard = Heard(b)
        await ingest_one(a, "crm")
        await heard.wait_for(SignalKind.DUE, "crm")
    finally:
        await a.close()
        await b.close()


async def hammer(store: Store, tag: str, n: int, done: list[str]) -> int:
    """Ingest ``n`` requests one after another, noting each that commits; how many failed."""
    failed = 0
    for i in range(n):
        try:
            await store.ingest(raw_request(), [new_event("crm", email=f"{tag}{i}@x.org")])
        except StoreError:
            failed += 1
        else:
            done.append(tag[:2])
    return failed


async def test_workers_writing_flat_out_take_turns_and_all_commit(tmp_path: Path) -> None:
    # Each worker's group commit runs back to back. With SQLite's busy handler alone the one
    # that sleeps waits out a short busy timeout while the other keeps taking the lock.
    stores = await open_workers(tmp_path, busy_timeout=0.05)
    done: list[str] = []
    try:
        failures = await asyncio.gather(
            *(hammer(s, f"w{w}c{c}-", 60, done) for w, s in enumerate(stores) for c in range(8))
        )
    finally:
        for store in stores:
            await store.close()
    assert sum(failures) == 0
    # Neither waited for the other to be done: they took turns.
    first_half = Counter(done[: len(done) // 2])
    assert min(first_half["w0"], first_half["w1"]) > len(done) // 8, first_half


async def test_worker_output_is_passed_on_in_writes_of_whole_lines() -> None:
    # A SOCK_SEQPACKET socket keeps each write apart, so each can be looked at alone.
    into, out = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stream = asyncio.StreamReader()
    for chunk in (b"one\ntw", b"o\nthr", b"ee", b"\nfour\n", b"five"):
        stream.feed_data(chunk)
    stream.feed_eof()
    with into, out:
        await pass_lines_on(stream, into.fileno())
        into.shutdown(socket.SHUT_WR)
        writes = list(iter(lambda: out.recv(1 << 16), b""))
    assert all(w.endswith(b"\n") for w in writes), writes
    assert b"".join(writes) == b"one\ntwo\nthree\nfour\nfive\n"
