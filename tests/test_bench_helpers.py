"""The benchmark harness's pure pieces: what it reads from wrk and relay, the bodies it builds,
and how it judges a goal. Nothing here runs a benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bench/ is a folder of scripts that import each other by plain name, as `python bench/run.py`
# runs them; the path is taken back right after, so no other test sees these names.
sys.path.insert(0, str(ROOT / "bench"))

import goals  # noqa: E402
import loadgen  # noqa: E402
import mandrill_batch  # noqa: E402
import run  # noqa: E402
import tables  # noqa: E402
import targets  # noqa: E402
import wrk  # noqa: E402
from servers import sink  # noqa: E402

sys.path.remove(str(ROOT / "bench"))

from relay.protocols.mandrill import parse_mandrill, verify_mandrill_signature  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "mailchimp"

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:28080/hooks/mailchimp/audience-user?secret=s
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.02ms    3.11ms  48.00ms   80.00%
  Latency Distribution
     50%   13.40ms
     75%   15.00ms
     90%   17.00ms
     99%   1.20s
  13212 requests in 3.00s, 1.80MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   4404.12
Transfer/sec:    614.20KB
"""


def test_wrk_report_is_read_with_units() -> None:
    result = wrk.parse(WRK_OUTPUT)
    assert result.requests_per_s == pytest.approx(4404.12)
    assert result.p50_ms == pytest.approx(13.4)
    assert result.p99_ms == pytest.approx(1200.0)
    assert (result.requests, result.non_2xx, result.socket_errors) == (13212, 7, 5)


def test_wrk_output_without_percentiles_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot read wrk output"):
        wrk.parse("Requests/sec: 10\n")


def test_parallel_wrk_runs_add_rates_and_keep_the_worse_latency() -> None:
    a = wrk.WrkResult(1000.0, 2.0, 10.0, 3000, 1, 0)
    b = wrk.WrkResult(1500.0, 3.0, 8.0, 4500, 0, 2)
    assert wrk.combine([a, b]) == wrk.WrkResult(2500.0, 3.0, 10.0, 7500, 1, 2)


def test_each_wrk_process_numbers_its_ids_from_its_own_block() -> None:
    firsts = [wrk.next_first_id() for _ in range(5)]
    assert len(set(firsts)) == 5
    assert all(f % 10_000_000 == 0 for f in firsts)


@pytest.mark.parametrize(
    ("output", "found"),
    [
        ("server.workers: unknown key\n", "server.workers: unknown key"),
        ("destination[0].ordering: unknown key (did you mean 'rate'?)\n",
         "destination[0].ordering: unknown key (did you mean 'rate'?)"),
        ("server.workers: must be a positive integer or \"auto\"\n",
         "server.workers: must be a positive integer or \"auto\""),
        ("destination[0].url: not an http(s) URL\n", None),
        ("server.max_workers: unknown key\n", None),
        ("", None),
    ],
)
def test_check_config_output_names_the_key_a_row_needs(output: str, found: str | None) -> None:
    assert targets.unknown_key(output, ("workers", "ordering")) == found


def test_relay_config_writes_optional_keys_only_when_asked() -> None:
    plain = targets.relay_config("sqlite:///x.db", retry=targets.Retry())
    assert "workers" not in plain and "ordering" not in plain
    auto = targets.relay_config("sqlite:///x.db", retry=targets.Retry(), workers="auto")
    assert 'workers = "auto"' in auto
    unordered = targets.relay_config("sqlite:///x.db", retry=targets.Retry(), ordering="none")
    assert "ordering" not in unordered and f'name = "{targets.ORDERED}"' in unordered
    ordered = targets.relay_config("sqlite:///x.db", retry=targets.Retry(), ordering="subscriber")
    assert 'ordering = "subscriber"' in ordered and 'name = "crm"' not in ordered


def test_load_bodies_vary_the_id_and_the_subscriber() -> None:
    body = (ROOT / "bench" / "body_subscribe.txt").read_bytes()
    fields = dict(parse_qsl(loadgen.variant(body, 10_123, same=False, subscribers=1000).decode()))
    assert fields["data[id]"] == "0000010123"
    assert fields["data[email]"] == fields["data[merges][EMAIL]"] == "subscriber000123@example.com"
    assert fields["type"] == "subscribe" and fields["data[list_id]"] == "a6b5da1054"
    assert loadgen.variant(body, 5, same=True, subscribers=1000) == body


@pytest.mark.parametrize("vector", json.loads((FIXTURES / "signature_vectors.json").read_text())["mandrill"])
def test_mandrill_signature_matches_the_fixture_vectors(vector: dict[str, str]) -> None:
    body = (FIXTURES / vector["body_file"]).read_bytes()
    assert mandrill_batch.signature(vector["key"], vector["url"], body) == vector["expected"]


def test_a_built_mandrill_batch_parses_to_distinct_events_and_verifies() -> None:
    body = mandrill_batch.form_body(mandrill_batch.batch(40, 1000))
    parsed = parse_mandrill(body)
    assert parsed.error is None and len(parsed.events) == 40
    sample_types = {e.type for e in parse_mandrill((FIXTURES / "samples" / "mandrill_all_event_types.txt").read_bytes()).events}
    assert {e.type for e in parsed.events} == sample_types
    assert len({e.dedup_key for e in parsed.events}) == 40 and None not in {e.dedup_key for e in parsed.events}
    url = "http://127.0.0.1:1/hooks/mandrill?secret=s"
    assert verify_mandrill_signature("k", url, body, mandrill_batch.signature("k", url, body))


def test_goals_compare_rows_of_the_same_run() -> None:
    rows = [
        {"target": "ceiling", "rps": 10_000.0},
        {"target": "relay", "rps": 4000.0},
        {"target": "relay, workers", "rps": 6400.0},
        {"target": "relay on PostgreSQL", "skipped": "not available at this commit"},
    ]
    goals.annotate(rows, {
        "relay, workers": [goals.Goal("relay", 1.6), goals.Goal("ceiling", 1.0, strict=True)],
        "relay on PostgreSQL": [goals.Goal("relay", 0.8)],
    })
    assert goals.render(rows[2]) == "≥ 1.6x relay: 1.60x, met; > 1x ceiling: 0.64x, NOT met"
    assert goals.render(rows[3]) == "≥ 0.8x relay: not measured"
    assert goals.render(rows[1]) == "-"


def test_a_row_not_available_stays_in_its_table() -> None:
    rows = [{"target": "relay", "rps": 5.0},
            {"target": "ordered", "skipped": "not available at this commit (relay check-config: x)"},
            {"target": "pg", "skipped": "PostgreSQL is not reachable"}]
    lines = tables.table(rows, [("req/s:", lambda r: tables.num(r["rps"])), ("goal", goals.render)])
    assert lines[:3] == ["| target | req/s | goal |", "|---|---:|---|", "| relay | 5 | - |"]
    assert lines[3:] == ["| ordered | not available at this commit | - |", "| pg | not measured | - |"]


def test_the_sink_counts_a_subscriber_event_delivered_after_a_later_one() -> None:
    body = (ROOT / "bench" / "body_subscribe.txt").read_bytes()
    tally = sink.Tally()
    # Request n is subscriber n % 1000's; 1005 twice is a redelivery, not a reordering.
    for n in (5, 1005, 6, 1006, 1005, 2005, 7, 1):
        tally.record("/ordered", "1", loadgen.variant(body, n, same=False, subscribers=1000))
    assert tally.snapshot()["out_of_order"] == 0
    # Subscriber 6's first event after its second: out of order; subscriber 1's second: fine.
    for n in (6, 1001):
        tally.record("/ordered", "1", loadgen.variant(body, n, same=False, subscribers=1000))
    assert tally.snapshot()["out_of_order"] == 1


def test_sink_reads_a_form_field_only_where_it_starts() -> None:
    assert sink.field(b"a=1&data%5Bid%5D=42&b=2", sink.ID_FIELD) == b"42"
    assert sink.field(b"data%5Bid%5D=7", sink.ID_FIELD) == b"7"
    assert sink.field(b"xdata%5Bid%5D=7", sink.ID_FIELD) is None


def test_quick_shrinks_only_what_the_command_line_left_at_its_default() -> None:
    args = run.parse_args(["--quick", "--duplicates", "30000", "--only", "mandrill"])
    assert (args.reps, args.duration, args.events, args.batches) == (1, 3.0, 10_000, 5)
    assert args.duplicates == 30_000 and args.only == ["mandrill"]
    full = run.parse_args([])
    assert (full.reps, full.duplicates, full.ordered, full.only) == (3, 100_000, 100_000, None)
