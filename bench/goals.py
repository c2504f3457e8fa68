"""The issues' targets, as ratios between rows of one section measured in the same run.

A goal names the row it is measured against, so the verdict never compares figures from
different runs or machines. A row that was not measured (or whose reference was not) gets no
verdict, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    reference: str  # the target name of the row it is measured against
    minimum: float  # the ratio it must reach
    strict: bool = False  # above, not at least
    key: str = "rps"  # the figure compared (higher is better)
    label: str = ""  # how the reference is called in the table; default its name

    def describe(self) -> str:
        sign = ">" if self.strict else "≥"
        return f"{sign} {self.minimum:g}x {self.label or self.reference}"


def ratio(row: Mapping[str, Any], reference: Mapping[str, Any] | None, key: str) -> float | None:
    """``row[key] / reference[key]``, or None when either was not measured."""
    if reference is None or row.get("skipped") or reference.get("skipped"):
        return None
    value, base = row.get(key), reference.get(key)
    if value is None or not base:
        return None
    return float(value) / float(base)


def met(value: float, goal: Goal) -> bool:
    return value > goal.minimum if goal.strict else value >= goal.minimum


def verdicts(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
             goals: Sequence[Goal]) -> list[dict[str, Any]]:
    """One verdict per goal: what it asks, the ratio reached (None: not measured), met or not."""
    by_name = {r["target"]: r for r in rows}
    out = []
    for goal in goals:
        value = ratio(row, by_name.get(goal.reference), goal.key)
        out.append({"goal": goal.describe(), "ratio": value,
                    "met": None if value is None else met(value, goal)})
    return out


def annotate(rows: list[dict[str, Any]], goals: Mapping[str, Sequence[Goal]]) -> None:
    """Add ``verdicts`` to every row that has goals (in place)."""
    for row in rows:
        if row["target"] in goals:
            row["verdicts"] = verdicts(row, rows, goals[row["target"]])


def render(row: Mapping[str, Any]) -> str:
    """The verdicts as one table cell: ``≥ 0.8x relay: 0.91x, met``."""
    parts = []
    for v in row.get("verdicts", []):
        if v["ratio"] is None:
            parts.append(f"{v['goal']}: not measured")
        else:
            parts.append(f"{v['goal']}: {v['ratio']:.2f}x, {'met' if v['met'] else 'NOT met'}")
    return "; ".join(parts) or "-"
