"""Turn result files into ``docs/benchmarks/README.md`` and its charts.

Each section (ingest, delivery, latency, duplicates, mandrill, ordering) is kept as its own JSON
file with the commit, date and machine it was measured on, so ``--only`` reruns one section
without losing the others and each table still says where its numbers came from. The tables
themselves are written by ``tables``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tables

SECTIONS = ("ingest", "delivery", "latency", "duplicates", "mandrill", "ordering")
# Sections with a bar chart of their rows' req/s (or deliveries/s).
CHARTS = {
    "ingest": ("ingest.png", "Ingest: req/s, median of reps", "requests/s"),
    "delivery": ("delivery.png", "Delivery: requests/s reaching the sink", "requests/s"),
}


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
        "for what each figure measures and how to run it. Ratios and goals compare rows of one "
        "section, measured in the same run on the same machine.",
        "",
    ]
    for section in SECTIONS:
        if section not in found:
            continue
        lines += tables.MARKDOWN[section](found[section])
        if section in CHARTS:
            name, title, unit = CHARTS[section]
            lines += [f"![{section} throughput]({name})", ""]
            chart(out / name, title, unit, found[section]["rows"])
    path = out / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
