"""What the console's pages show, built from stored records (pure, no I/O).

Each function turns records the store (or the metrics registry) already gives into the rows a
template prints; templates then only loop and escape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from prometheus_client import Counter

from relay.model import AuditAction, DeliveryListing, DeliveryRecord, DeliveryState, ReplayRecord

# A body larger than this is shown cut short (the download link gives the exact bytes): a
# 10 MB webhook would otherwise make a page the browser struggles to lay out.
BODY_SHOWN = 256 * 1024
UNFINISHED = frozenset({DeliveryState.PENDING, DeliveryState.DELIVERING, DeliveryState.PAUSED})


@dataclass(frozen=True, slots=True)
class BodyView:
    text: str
    size: int
    utf8: bool
    truncated: bool


def body_view(body: bytes, limit: int = BODY_SHOWN) -> BodyView:
    """A body as text: exact when it is UTF-8; otherwise with each odd byte shown as ``\\xNN``."""
    shown = body[:limit]
    truncated = len(body) > limit
    try:
        return BodyView(shown.decode("utf-8"), len(body), True, truncated)
    except UnicodeDecodeError as exc:
        # The cut may split a character: then the text before it is still exact.
        if truncated and exc.start >= len(shown) - 3:
            try:
                return BodyView(shown[: exc.start].decode("utf-8"), len(body), True, True)
            except UnicodeDecodeError:
                pass
    return BodyView(shown.decode("utf-8", "backslashreplace"), len(body), False, truncated)


def pretty_json(data: Any) -> str:
    """Nested data as indented JSON text (shown in <pre>, escaped like every other value)."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def delivery_problem(d: DeliveryRecord) -> str:
    """What a delivery's last attempt got, in one line ("HTTP 500: upstream down", "cannot
    connect: ..."); why it was given up when no attempt got anything (its event was pruned)."""
    if d.last_error:
        return d.last_error
    if d.last_status is not None and not 200 <= d.last_status < 300:
        return f"HTTP {d.last_status}"
    return d.dead_reason or ""


# Query parameters that carry an action's notice: not part of a page's own address.
NOTICE_KEYS = frozenset({"done", "n", "name", "delivery", "new"})


def here(path: str, query: Mapping[str, str]) -> str:
    """A page's address without the notice of the action that led to it: where an action's
    form returns to."""
    kept = [(k, v) for k, v in query.items() if k not in NOTICE_KEYS]
    return f"{path}?{urlencode(kept)}" if kept else path


def with_notice(target: str, **values: str | int) -> str:
    """``target`` (a console address) with an action's notice parameters added."""
    return target + ("&" if "?" in target else "?") + urlencode(values)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Every delivery of one event to one destination, oldest first: the original, then replays."""

    destination: str
    deliveries: tuple[DeliveryRecord, ...]


def timelines(deliveries: Iterable[DeliveryRecord]) -> list[Timeline]:
    by_name: dict[str, list[DeliveryRecord]] = {}
    for d in sorted(deliveries, key=lambda d: d.id):
        by_name.setdefault(d.destination, []).append(d)
    return [Timeline(name, tuple(ds)) for name, ds in by_name.items()]


def any_unfinished(deliveries: Iterable[DeliveryRecord]) -> bool:
    return any(d.state in UNFINISHED for d in deliveries)


@dataclass(slots=True)
class DeadGroup:
    """Dead letters of one destination that died of the same error."""

    destination: str
    error: str
    count: int = 0
    latest_at: float = 0.0
    event_ids: list[str] = field(default_factory=list)


SAMPLE_EVENTS = 5


def dead_groups(listings: Sequence[DeliveryListing]) -> list[tuple[str, list[DeadGroup]]]:
    """Dead deliveries grouped by destination (by name), then by error (the largest first)."""
    groups: dict[tuple[str, str], DeadGroup] = {}
    for item in listings:
        d = item.delivery
        error = delivery_problem(d) or "no error recorded"
        group = groups.setdefault((d.destination, error), DeadGroup(d.destination, error))
        group.count += 1
        group.latest_at = max(group.latest_at, d.updated_at)
        if len(group.event_ids) < SAMPLE_EVENTS and d.event_id not in group.event_ids:
            group.event_ids.append(d.event_id)
    by_destination: dict[str, list[DeadGroup]] = {}
    for g in sorted(groups.values(), key=lambda g: (g.destination, -g.count, g.error)):
        by_destination.setdefault(g.destination, []).append(g)
    return list(by_destination.items())


def counter_totals(counter: Counter) -> dict[tuple[str, ...], float]:
    """A labelled counter's values since this process started, by label values."""
    totals: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = tuple(sample.labels.values())
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def replay_outcome(r: ReplayRecord) -> list[tuple[str, dict[str, int]]]:
    """What became of a replay's deliveries, per destination: created, delivered, dead,
    waiting (pending, delivering or paused) and discarded."""
    rows: dict[str, dict[str, int]] = {}
    for destination, state, n in r.counts:
        row = rows.setdefault(destination, dict.fromkeys(OUTCOME_COLUMNS, 0))
        row["created"] += n
        column = "waiting" if state in UNFINISHED else state.value
        if column in row:
            row[column] += n
    return sorted(rows.items())


OUTCOME_COLUMNS = ("created", "delivered", "dead", "waiting", "discarded")


def audit_target(action: str, target: str | None) -> str | None:
    """Where an audit entry's target is shown in the console, if anywhere."""
    if target is None:
        return None
    if action in (AuditAction.REPLAY, AuditAction.CANCEL) and target.isdigit():
        return f"/console/replays/{target}"
    if action in (AuditAction.RESOLVE, AuditAction.RETRY) and target.isdigit():
        return f"/console/deliveries/{target}"
    if action in (AuditAction.PAUSE, AuditAction.RESUME, AuditAction.RESET, AuditAction.DISCARD):
        return f"/console#destination-{target}"
    return None


def audit_detail(detail: str) -> list[tuple[str, str]]:
    """An audit entry's parameters and effect as (name, value) pairs, each value one line."""
    try:
        data = orjson.loads(detail)
    except orjson.JSONDecodeError:
        return [("detail", detail)]
    if not isinstance(data, dict):
        return [("detail", detail)]
    return [
        (str(k), v if isinstance(v, str) else orjson.dumps(v).decode())
        for k, v in data.items()
        if v not in (None, [], {})
    ]


def age_text(seconds: float | None) -> str:
    """A duration as an operator reads it at a glance: ``45 s``, ``12 min``, ``3 h 5 min``."""
    if seconds is None:
        return "\N{EN DASH}"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
