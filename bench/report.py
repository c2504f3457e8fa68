"""Turn result files into ``docs/benchmarks/README.md`` and its charts.

Each section (ingest, delivery, latency) is kept as its own JSON file with the commit, date and
machine it was measured on, so ``--only`` reruns one section without losing the others and each
table still says where its numbers came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECTIONS = ("ingest", "delivery", "latency")


def save(out: Path, section: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{section}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for section in SECTIONS:
        path = out / f"{section}.json"
        if path.exists():
            found[section] = json.loads(path.read_text())
    return found


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _meta_line(meta: dict[str, Any]) -> str:
    mode = "quick smoke run" if meta.get("quick") else "full run"
    pin = "server on core 0, load on core 1" if meta.get("pinned") else "not pinned"
    return (f"_Measured {meta['date']} at commit `{meta['commit']}` on {meta['nproc']} cores "
            f"({meta['cpu']}), Python {meta['python']}, aiohttp {meta['aiohttp']}; {mode}: "
            f"{meta['reps']} rep(s) of {meta['duration']:g} s; {pin}; "
            f"load average before: {meta['loadavg']}._")


def _skipped(rows: list[dict[str, Any]]) -> list[str]:
    return [f"- **{r['target']}**: not measured. {r['skipped']}" for r in rows if r.get("skipped")]


def ingest_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    lines = [
        "## Ingest",
        "",
        f"wrk, 1 thread, {m['connections']} connections, POSTing the {m['body_bytes']}-byte "
        "Mailchimp `subscribe` form body (`bench/body_subscribe.txt`) to one inbound URL. "
        "req/s, p50 and p99 are the medians over the reps; the ratio is to the bare aiohttp "
        "server's req/s in the same invocation.",
        "",
        _meta_line(m),
        "",
        "| target | req/s | p50 ms | p99 ms | ratio to ceiling | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        if r.get("skipped"):
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        lines.append(f"| {r['target']} | {_num(r['rps'])} | {_num(r['p50_ms'], 2)} | "
                     f"{_num(r['p99_ms'], 2)} | {ratio} | {r['non_2xx']} | {r['socket_errors']} |")
    lines += ["", *_skipped(data["rows"]), "", *[f"- {n}" for n in data.get("notes", [])], ""]
    return lines


def delivery_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    lines = [
        "## Delivery throughput",
        "",
        "The ceiling is one `aiohttp.ClientSession` posting the same body to the counting sink "
        f"(`bench/servers/sink.py`, other core) with {m['connections']} requests in flight. "
        "relay drains a backlog: its destinations are paused, N events are ingested, then the "
        "sink is started and the destinations resumed; the clock runs from the resume to the "
        "sink's last expected request. Every `subscribe` from the user inbound matches two "
        "destinations (crm, analytics), so N events make 2N deliveries.",
        "",
        _meta_line(m),
        "",
        "| target | events | deliveries | deliveries/s | seconds | ratio to ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        if r.get("skipped"):
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        lines.append(f"| {r['target']} | {_num(r.get('events'))} | {_num(r['deliveries'])} | "
                     f"{_num(r['rps'])} | {_num(r['seconds'], 1)} | {ratio} |")
    lines += ["", *_skipped(data["rows"]), "", *[f"- {n}" for n in data.get("notes", [])], ""]
    return lines


def latency_md(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    lines = [
        "## End-to-end latency at a steady rate",
        "",
        f"An open-loop generator (`bench/loadgen.py rate`, other core) sends {m['rate']:g} "
        "req/s and writes its send time into each body (`data[merges][TS]`); the sink subtracts "
        "it on arrival. `direct to sink` is the same generator aimed at the sink: the floor "
        "that the network stack and aiohttp alone cost. ack is the time until the 200.",
        "",
        _meta_line(m),
        "",
        "| target | sent | delivered | ack p50 ms | ack p99 ms | delivered p50 ms | "
        "delivered p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        if r.get("skipped"):
            continue
        lines.append(f"| {r['target']} | {_num(r['sent'])} | {_num(r['delivered'])} | "
                     f"{_num(r['ack_p50_ms'], 2)} | {_num(r['ack_p99_ms'], 2)} | "
                     f"{_num(r['p50_ms'], 2)} | {_num(r['p99_ms'], 2)} |")
    lines += ["", *_skipped(data["rows"]), "", *[f"- {n}" for n in data.get("notes", [])], ""]
    return lines


def chart(path: Path, title: str, unit: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not r.get("skipped")]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(7, 0.7 * len(shown) + 1.4), dpi=110)
    names = [r["target"] for r in shown][::-1]
    values = [r["rps"] for r in shown][::-1]
    bars = ax.barh(names, values, color=["#9aa5b1" if "ceiling" in n else "#2f6fb0"
                                         for n in names])
    for bar, r in zip(bars, shown[::-1], strict=True):
        label = f" {r['rps']:,.0f}"
        if r.get("ratio") is not None and "ceiling" not in r["target"]:
            label += f"  ({r['ratio']:.0%} of ceiling)"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center",
                fontsize=9)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(values) * 1.45)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(out: Path) -> Path:
    """Rewrite README.md and the charts from whatever section files exist."""
    found = load(out)
    lines = [
        "# relay benchmarks",
        "",
        "Produced by `make bench` (`bench/run.py`); do not edit by hand. See `bench/README.md` "
        "for what each figure measures and how to run it.",
        "",
    ]
    if "ingest" in found:
        lines += ingest_md(found["ingest"])
        lines += ["![ingest throughput](ingest.png)", ""]
        chart(out / "ingest.png", "Ingest: req/s, median of reps", "requests/s",
              found["ingest"]["rows"])
    if "delivery" in found:
        lines += delivery_md(found["delivery"])
        lines += ["![delivery throughput](delivery.png)", ""]
        chart(out / "delivery.png", "Delivery: requests/s reaching the sink", "requests/s",
              found["delivery"]["rows"])
    if "latency" in found:
        lines += latency_md(found["latency"])
    path = out / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
