"""SIGKILL a real `relay serve` mid-stream, restart it, and account for every acknowledged request.

The promise under test: a 200 means committed. So after any number of kills, each request that
got a 200 is stored exactly once with its exact bytes, reaches every destination whose filters
match at least once after the restart, and no delivery is left in 'pending' or 'delivering'.
Kills land during ingest (fast downstream) and during delivery (slow downstream, so attempts
are in flight and their rows sit in 'delivering' with a lease when the process dies). Each test
runs on every storage backend.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import RelayBackend
from tests.support import (
    Load,
    RelayProcess,
    Sink,
    destination,
    free_port,
    sample,
    wait_until,
)

pytestmark = pytest.mark.slow

SUBSCRIBE = sample("mc_doc_subscribe.txt")
UNSUBSCRIBE = sample("mc_doc_unsubscribe.txt")
RETRY = {"max_attempts": 100, "initial_delay": 0.05, "max_delay": 0.3}


@dataclass
class CrashRig:
    relay: RelayProcess
    store: RelayBackend
    sink: Sink


@pytest.fixture
async def rig(tmp_path: Path, sink: Sink, relay_backend: RelayBackend) -> AsyncIterator[CrashRig]:
    port = free_port()
    # "crm" takes everything, "subs" only subscribes: both must get exactly what matches.
    dests = destination("crm", sink.url("/crm"), timeout=1.0, concurrency=8, retry=RETRY)
    dests += destination(
        "subs", sink.url("/subs"), timeout=1.0, concurrency=4, types=["subscribe"], retry=RETRY
    )
    cfg = tmp_path / "relay.toml"
    cfg.write_text(relay_backend.config(dests, port=port))
    relay = RelayProcess(cfg, port, tmp_path / "relay.log")
    yield CrashRig(relay, relay_backend, sink)
    relay.ensure_stopped()


async def _kill_during_load(rig: CrashRig, load: Load, kill_when: object) -> dict[str, int]:
    """Start relay, run ``load`` until ``kill_when()`` holds, SIGKILL; the states left behind."""
    await rig.relay.start()
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    await wait_until(kill_when, timeout=30, what="the moment to kill")  # type: ignore[arg-type]
    rig.relay.kill(signal.SIGKILL)
    await asyncio.to_thread(rig.relay.wait, 10)
    stop.set()
    await task
    return await rig.store.delivery_states()


async def _restart_and_account(rig: CrashRig, load: Load, kills: int, label: str) -> None:
    """Restart, wait for every delivery to finish, and check the promise for every 200."""
    await rig.relay.start()
    stored = Counter(await rig.store.stored_bodies())
    twice = [b for b, n in stored.items() if n > 1]
    assert not twice, f"{len(twice)} requests were stored more than once"
    missing = [b for b in load.acked if b not in stored]
    assert not missing, f"{len(missing)} acknowledged requests were not stored"

    async def finished() -> bool:
        return await rig.store.unfinished() == 0

    # Rows leased by the killed process become due again when their lease (1 s + 5 s) runs out.
    await wait_until(finished, timeout=30, what="every delivery to finish")
    states = await rig.store.delivery_states()
    assert set(states) == {"delivered"}, states
    to_crm = Counter(r.body for r in rig.sink.at("/crm"))
    to_subs = Counter(r.body for r in rig.sink.at("/subs"))
    not_delivered = [b for b in load.acked if b not in to_crm]
    assert not not_delivered, f"{len(not_delivered)} acknowledged requests never reached crm"
    acked_subscribes = [b for b in load.acked if b.startswith(b"type=subscribe")]
    assert all(b in to_subs for b in acked_subscribes)
    assert not any(b.startswith(b"type=unsubscribe") for b in to_subs), "filter ignored"
    # Every delivery finished means every stored event reached its destinations: the
    # unacknowledged requests that were committed anyway are delivered too.
    assert set(stored) <= set(to_crm)
    print(
        f"\n[{label}] kills={kills} sent={load.sent} acknowledged={len(load.acked)}"
        f" unanswered={load.unanswered} statuses={load.statuses}"
        f" stored={sum(stored.values())} (acknowledged and stored={len(load.acked)},"
        f" stored without a 200={sum(stored.values()) - len(load.acked)})"
        f" delivered_crm={len(set(to_crm))}/{len(stored)} (attempts received {sum(to_crm.values())},"
        f" duplicates {sum(to_crm.values()) - len(to_crm)})"
        f" delivered_subs={len(set(to_subs))} lost=0"
    )
    rig.relay.kill(signal.SIGTERM)
    assert await asyncio.to_thread(rig.relay.wait, 20) == 0


async def test_sigkill_during_ingest_loses_no_acknowledged_request(rig: CrashRig) -> None:
    load = Load(rig.relay.port, clients=6, bodies=(SUBSCRIBE, UNSUBSCRIBE))
    kills = 3
    for i in range(kills):
        # Kill after a different amount of traffic each time so the kill lands at other points
        # of the group-commit cycle.
        target = len(load.acked) + 60 + 45 * i
        await _kill_during_load(rig, load, lambda t=target: len(load.acked) >= t)
    await _restart_and_account(rig, load, kills, "ingest")


async def test_sigkill_during_delivery_redelivers_after_the_lease(rig: CrashRig) -> None:
    # A slow downstream keeps attempts in flight, so each kill leaves rows in 'delivering'.
    rig.sink.delay["/crm"] = 0.4
    rig.sink.delay["/subs"] = 0.4
    load = Load(rig.relay.port, clients=4, bodies=(SUBSCRIBE, UNSUBSCRIBE))
    kills = 3
    leased_at_kill = []
    for _ in range(kills):
        target = len(load.acked) + 30
        states = await _kill_during_load(
            rig, load, lambda t=target: len(load.acked) >= t and rig.sink.inflight >= 6
        )
        leased_at_kill.append(states.get("delivering", 0))
    assert all(n > 0 for n in leased_at_kill), leased_at_kill
    rig.sink.delay.clear()
    await _restart_and_account(rig, load, kills, f"delivery, leased at kill {leased_at_kill}")
