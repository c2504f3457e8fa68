"""The Markdown of each section of ``docs/benchmarks/README.md``, from its JSON.

A row that was not measured stays in its table, with the reason below it: "not available at
this commit" when relay does not yet know the configuration the row needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import goals

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]  # header (with its alignment), cell


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def meta_line(meta: dict[str, Any]) -> str:
    mode = "quick smoke run" if meta.get("quick") else "full run"
    pin = ("server on core 0, load on core 1 unless a row says otherwise" if meta.get("pinned")
           else "not pinned")
    return (f"_Measured {meta['date']} at commit `{meta['commit']}` on {meta['nproc']} cores "
            f"({meta['cpu']}), Python {meta['python']}, aiohttp {meta['aiohttp']}; {mode}: "
            f"{meta['reps']} rep(s) of {meta['duration']:g} s; {pin}; "
            f"load average before: {meta['loadavg']}._")


def table(rows: Sequence[Row], columns: Sequence[Column]) -> list[str]:
    """A Markdown table; the first column is the target, a skipped row says why in brief."""
    heads = ["target", *(title.rstrip(":") for title, _ in columns)]
    align = ["---", *("---:" if title.endswith(":") else "---" for title, _ in columns)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        if row.get("skipped"):
            brief = ("not available at this commit"
                     if str(row["skipped"]).startswith("not available") else "not measured")
            cells = [brief, *["-"] * (len(columns) - 1)]
        else:
            cells = [cell(row) for _, cell in columns]
        lines.append("| " + " | ".join([row["target"], *cells]) + " |")
    return lines


def section(title: str, intro: str, data: dict[str, Any], columns: Sequence[Column]) -> list[str]:
    rows = data["rows"]
    skipped = [f"- **{r['target']}**: {r['skipped']}" for r in rows if r.get("skipped")]
    notes = [f"- {n}" for n in data.get("notes", [])]
    return [f"## {title}", "", intro, "", meta_line(data["meta"]), "",
            *table(rows, columns), "", *skipped, *([""] if skipped else []), *notes, ""]


PLACE: Column = ("where it ran", lambda r: r.get("placement", "-"))
GOAL: Column = ("goal (same run)", goals.render)
# What wrk measures, in the ingest and duplicates tables.
WRK: list[Column] = [
    ("req/s:", lambda r: num(r["rps"])), ("p50 ms:", lambda r: num(r["p50_ms"], 2)),
    ("p99 ms:", lambda r: num(r["p99_ms"], 2)),
]
NON_2XX: Column = ("non-2xx:", lambda r: str(r["non_2xx"]))


def ingest_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    intro = (f"wrk, 1 thread, {m['connections']} connections, POSTing the {m['body_bytes']}-byte "
             "Mailchimp `subscribe` form body (`bench/body_subscribe.txt`, each request its own "
             "`data[id]`) to one inbound URL. req/s, p50 and p99 are the medians over the reps; "
             "the ratio is to the bare aiohttp server's req/s, `vs relay` to relay's one-process "
             "SQLite row, both in the same invocation.")
    return section("Ingest", intro, data, [
        PLACE, *WRK, ("ratio to ceiling:", lambda r: times(r.get("ratio"))),
        ("vs relay:", lambda r: times(r.get("vs_relay"))), GOAL, NON_2XX,
        ("socket errors:", lambda r: str(r["socket_errors"])),
    ])


def delivery_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    intro = ("The ceiling is one `aiohttp.ClientSession` posting the same body to the counting "
             f"sink (`bench/servers/sink.py`, other core) with {m['connections']} requests in "
             "flight. relay drains a backlog: its destinations are paused, N events are "
             "ingested, then the sink is started and the destinations resumed; the clock runs "
             "from the resume to the sink's last expected request. Every `subscribe` from the "
             "user inbound matches two destinations (crm, analytics), so N events make 2N "
             "deliveries. `vs relay` is the ratio to relay's SQLite drain.")
    return section("Delivery throughput", intro, data, [
        PLACE, ("events:", lambda r: num(r.get("events"))),
        ("deliveries:", lambda r: num(r["deliveries"])),
        ("deliveries/s:", lambda r: num(r["rps"])), ("seconds:", lambda r: num(r["seconds"], 1)),
        ("ratio to ceiling:", lambda r: times(r.get("ratio"))),
        ("vs relay:", lambda r: times(r.get("vs_relay"))), GOAL,
    ])


def latency_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    intro = ("An open-loop generator (`bench/loadgen.py rate`, core 1 with the sink) sends "
             f"{m['rate']:g} req/s and writes its send time into each body "
             "(`data[merges][TS]`); the sink subtracts it on arrival. `direct to sink` is the "
             "same generator aimed at the sink: the floor that the network stack and aiohttp "
             "alone cost. ack is the time until the 200.")
    return section("End-to-end latency at a steady rate", intro, data, [
        PLACE, ("sent:", lambda r: num(r["sent"])), ("delivered:", lambda r: num(r["delivered"])),
        ("ack p50 ms:", lambda r: num(r["ack_p50_ms"], 2)),
        ("ack p99 ms:", lambda r: num(r["ack_p99_ms"], 2)),
        ("delivered p50 ms:", lambda r: num(r["p50_ms"], 2)),
        ("delivered p99 ms:", lambda r: num(r["p99_ms"], 2)),
    ])


def duplicates_md(data: dict[str, Any]) -> list[str]:
    intro = ("Ingest as in the first table (wrk, one relay on core 0, wrk on core 1), on three "
             "relays: a fresh store taking new events (the normal path); a store holding "
             f"{data['meta']['duplicates']:,} distinct events taking new ones; and a store "
             f"holding {data['meta']['duplicates']:,} duplicates of one body taking that body "
             "again. The ratio is to the normal path's req/s.")
    return section("Duplicates", intro, data, [
        *WRK, ("ratio to new events:", lambda r: times(r.get("ratio"))), GOAL, NON_2XX,
    ])


def mandrill_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    intro = (f"{m['batches']} Mandrill batches of {m['batch_size']:,} events each (about "
             f"{m.get('batch_bytes', 0) / 1e6:.1f} MB per POST), against SQLite inserting the "
             "same event rows in batches. events/s are medians over the reps.")
    return section("Mandrill batches", intro, data, [
        ("events:", lambda r: num(r["events"])),
        ("events/s:", lambda r: num(r["events_per_s"])),
        ("ratio to reference:", lambda r: times(r.get("ratio"))), GOAL,
    ])


def ordering_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    intro = (f"relay drains {m['events']:,} deliveries of `subscribe` events from "
             f"{m['subscribers']:,} subscribers (each address {m['events'] // m['subscribers']} "
             "times, in turn) to one destination, as in the delivery table (paused, ingested, "
             "resumed, timed to the sink's last request), once with `ordering = \"subscriber\"` "
             "on the destination and once without. `out of order` counts deliveries the sink "
             "received after a later event of the same subscriber (the most in any rep): "
             "relay received each subscriber's events in the order of their `data[id]`. One "
             "subscriber's events are a subscriber count apart in the backlog, so even the "
             "unordered drain seldom reorders them; the column is a check, not a contrast.")
    return section("Ordered delivery", intro, data, [
        ("deliveries:", lambda r: num(r["deliveries"])),
        ("deliveries/s:", lambda r: num(r["rps"])), ("seconds:", lambda r: num(r["seconds"], 1)),
        ("ratio to unordered:", lambda r: times(r.get("ratio"))), GOAL,
        ("out of order:", lambda r: num(r.get("out_of_order"))),
    ])


MARKDOWN: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "ingest": ingest_md, "delivery": delivery_md, "latency": latency_md,
    "duplicates": duplicates_md, "mandrill": mandrill_md, "ordering": ordering_md,
}
