"""/metrics right after start: every known label combination exists at 0, no *_created series."""

from __future__ import annotations

import re
from pathlib import Path

from relay.obs.metrics import REQUEST_OUTCOMES
from tests.support import AUDIENCE_INBOUNDS, RelayFactory, Sink, config_text, destination

INGEST = Path(__file__).resolve().parents[1] / "relay" / "server" / "ingest.py"
NOT_ACCEPTED = (
    "validation",
    "rejected_auth",
    "too_large",
    "read_timeout",
    "unsupported",
    "store_error",
)


async def _scrape(start_relay: RelayFactory, tmp_path: Path, sink: Sink) -> str:
    dests = destination("crm", sink.url("/crm")) + destination("warehouse", sink.url("/wh"))
    relay = await start_relay(config_text(tmp_path / "relay.db", dests, AUDIENCE_INBOUNDS))
    assert relay.session is not None
    async with relay.session.get(relay.url("/metrics")) as response:
        assert response.status == 200
        return await response.text()


def _samples(exposition: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


async def test_every_known_series_exists_at_zero_right_after_start(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    samples = _samples(await _scrape(start_relay, tmp_path, sink))
    expected = []
    for inbound in ("audience-user", "audience-admin"):
        expected += [
            f'relay_requests_received_total{{inbound="{inbound}",outcome="{outcome}"}}'
            for outcome in NOT_ACCEPTED
        ]
        expected.append(f'relay_events_duplicate_total{{inbound="{inbound}"}}')
    for name in ("crm", "warehouse"):
        expected.append(f'relay_deliveries_dead_total{{destination="{name}"}}')
        expected.append(f'relay_replayed_deliveries_total{{destination="{name}"}}')
        expected.append(f'relay_destination_circuit_open{{destination="{name}"}}')
        expected.append(f'relay_circuit_probes_total{{destination="{name}"}}')
        expected.append(f'relay_delivery_attempts_held_total{{destination="{name}"}}')
    assert {key: samples.get(key) for key in expected} == dict.fromkeys(expected, 0.0)


async def test_no_created_series_and_the_deliveries_help_says_what_it_counts(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    exposition = await _scrape(start_relay, tmp_path, sink)
    assert [line for line in exposition.splitlines() if "_created" in line] == []
    (help_line,) = [line for line in exposition.splitlines() if "HELP relay_deliveries " in line]
    assert "unfinished" not in help_line and "dead" in help_line
    # Only the *_created samples go: the series they belonged to stay.
    assert 'relay_ingest_duration_seconds_count{inbound="audience-user"} 0.0' in exposition


def test_every_outcome_ingest_counts_is_created_at_start() -> None:
    # Ingest names its outcomes as literals; one missing from REQUEST_OUTCOMES would have no
    # series until its first request.
    source = INGEST.read_text(encoding="utf-8")
    used = set(re.findall(r'_reject\(\s*inbound,\s*"(\w+)"', source))
    used |= set(re.findall(r'requests\.labels\([^,()]+,\s*"(\w+)"\)', source))
    assert used >= {"accepted", "validation", "rejected_auth", "store_error"}
    assert used <= set(REQUEST_OUTCOMES)
