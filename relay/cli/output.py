"""How the operator commands print admin API answers: aligned tables, or JSON with ``--json``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson


def as_json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


# Control characters (C0 but tab and newline, DEL, C1) as visible escapes: a webhook or a
# destination's response may carry terminal escape sequences, and a terminal must not run them.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    # One row per line, whatever an error message or an email address contains.
    return printable(text.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def more_hint(answer: dict[str, Any]) -> str | None:
    """How to get the next page, for standard error (standard output stays the table)."""
    cursor = answer.get("next_cursor")
    return f"more: add --cursor {cursor}" if cursor else None


def events_table(answer: dict[str, Any]) -> str:
    rows = [
        (e["id"], e["received_at"], e["inbound"], e["type"], e["source"], e["email"], e["list_id"])
        for e in answer["events"]
    ]
    if not rows:
        return "no matching events"
    headers = ("ID", "RECEIVED", "INBOUND", "TYPE", "SOURCE", "EMAIL", "LIST")
    return table(headers, rows)


def event_detail(event: dict[str, Any]) -> str:
    """Everything ``--json`` has but the body: the event, its request, deliveries, attempts."""
    request = event["request"]
    lines = [
        f"event      {event['id']}",
        f"received   {event['received_at']}  from {request['peer'] or '-'}",
        f"inbound    {event['inbound']} ({event.get('kind') or 'inbound no longer configured'})",
        f"type       {_cell(event['type'])}   source {event['source']}",
        f"email      {_cell(event['email'])}   list {_cell(event['list_id'])}",
        f"fired_at   {_cell(event['fired_at'])}",
    ]
    if event.get("parse_error"):
        lines.append(f"parse err  {_cell(event['parse_error'])}")
    if event.get("duplicate_of"):
        lines.append(f"duplicate  of {event['duplicate_of']}")
    query = f"?{request['query']}" if request["query"] else ""
    lines += [
        f"request    {request['method']} {_cell(request['path'] + query)}"
        f"  ({_cell(request['content_type'])})",
        "",
        "request headers:",
        *(f"  {_cell(name)}: {_cell(value)}" for name, value in request["headers"]),
        "",
        "parsed:",
        printable(as_json(event.get("parsed"))),
        "",
    ]
    deliveries = event["deliveries"]
    if not deliveries:
        lines.append("no deliveries")
        return "\n".join(lines)
    rows = [
        (d["id"], d["destination"], state_cell(d), d["attempts"], d["last_status"],
         d["replay_id"], d["next_attempt_at"] if d["state"] == "pending" else None,
         d["last_error"])
        for d in deliveries
    ]  # fmt: skip
    headers = ("DELIVERY", "DESTINATION", "STATE", "TRIES", "STATUS", "REPLAY", "NEXT", "ERROR")
    lines += ["deliveries:", table(headers, rows)]
    for d in deliveries:
        if d.get("dead_reason"):
            lines.append(f"  delivery {d['id']} gave up: {_cell(d['dead_reason'])}")
        if d.get("after_dead"):
            lines.append(
                f"  delivery {d['id']} went after a dead predecessor: delivery {d['after_dead']}"
                " (same subscriber, ordered destination)"
            )
        if d.get("resolved_at"):
            why = f": {_cell(d['resolve_reason'])}" if d.get("resolve_reason") else ""
            lines.append(
                f"  delivery {d['id']} resolved {d['resolved_at']} by {_cell(d['resolved_by'])}"
                f"{why}"
            )
    for d in deliveries:
        if d["attempts_log"]:
            lines += ["", f"attempts of delivery {d['id']} ({d['destination']}):"]
            lines += _attempts(d["attempts_log"])
    return "\n".join(lines)


def _attempts(attempts: list[dict[str, Any]]) -> list[str]:
    rows = [
        (a["number"], a["started_at"], a["outcome"], a["status"],
         f"{a['duration'] * 1000:.0f}ms", a["error"])
        for a in attempts
    ]  # fmt: skip
    headers = ("ATTEMPT", "STARTED", "OUTCOME", "STATUS", "DURATION", "ERROR")
    lines = [table(headers, rows)]
    for a in attempts:
        head = a["response_head"]
        if head:
            # The first bytes of the answer, as received: often the reason a destination said no.
            lines.append(f"  response to attempt {a['number']}:")
            lines += [f"    {printable(line)}" for line in head.splitlines()]
    return lines


def deliveries_table(answer: dict[str, Any]) -> str:
    """Deliveries with what their last attempt got: a dead letter's status and error say why."""
    rows = [
        (d["id"], d["event_id"], d["destination"], state_cell(d), d["type"], d["attempts"],
         d["updated_at"], d["last_status"], d["last_error"])
        for d in answer["deliveries"]
    ]  # fmt: skip
    if not rows:
        return "no matching deliveries"
    headers = ("ID", "EVENT", "DESTINATION", "STATE", "TYPE", "TRIES", "UPDATED", "STATUS",
               "ERROR")  # fmt: skip
    return table(headers, rows)


def state_cell(delivery: dict[str, Any]) -> str:
    """A delivery's state; a dead one resolved since (its event got there) says so."""
    state = str(delivery["state"])
    return f"{state} (resolved)" if delivery.get("resolved_at") else state


def destinations_table(answer: dict[str, Any]) -> str:
    rows = []
    for d in answer["destinations"]:
        counts = d["counts"]
        rows.append(
            (d["name"], "paused" if d["paused"] else "active", _circuit(d.get("circuit")),
             _rate(d.get("rate")), counts["pending"], counts["delivering"], counts["paused"],
             counts["dead"], d["url"] if d["configured"] else "(not configured)")
        )  # fmt: skip
    headers = (
        "NAME", "STATE", "CIRCUIT", "RATE", "PENDING", "DELIVERING", "PAUSED", "DEAD", "URL",
    )  # fmt: skip
    return table(headers, rows)


def _circuit(circuit: dict[str, Any] | None) -> str:
    if circuit is None:
        return "-"
    if circuit["state"] == "open":
        return f"open since {circuit['opened_at']}"
    failures = circuit["failures"]
    return f"closed ({failures}/{circuit['threshold']} failures)" if failures else "closed"


def _rate(rate: dict[str, Any] | None) -> str:
    return "-" if rate is None else f"{rate['per_second']:g}/s"


def per_destination(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def replay_summary(answer: dict[str, Any]) -> str:
    if answer.get("dry_run"):
        return (
            f"dry run: {answer['matched']} events match; would create {answer['deliveries']}"
            f" deliveries ({per_destination(answer.get('per_destination'))})"
        )
    created = answer.get("deliveries", answer.get("created"))
    return (
        f"replay {answer['replay_id']} {answer['state']}: {answer['matched']} events,"
        f" {created} deliveries ({per_destination(answer.get('per_destination'))})"
    )


def progress(replay: dict[str, Any], width: int = 30) -> str:
    total = replay.get("total") or 0
    done = replay["matched"]
    share = done / total if total else 1.0
    bar = "#" * int(share * width)
    return (
        f"replay {replay['id']} [{bar.ljust(width)}] {done}/{total} events,"
        f" {replay['created']} deliveries"
    )


def prune_preview(answer: dict[str, Any]) -> str:
    return (
        f"dry run: {answer['matched']} events received before {answer['cutoff']} (older than"
        f" {answer['older_than_days']:g} days) would be deleted, with their deliveries and"
        " attempts; events with a delivery still pending, delivering or paused are kept"
    )


def replays_table(answer: dict[str, Any]) -> str:
    rows = [
        (r["id"], r["state"], r["requested_by"], r["requested_at"],
         f"{r['matched']}/{r['total'] if r['total'] is not None else '?'}", r["created"],
         as_json_line(r["filter"]))
        for r in answer["replays"]
    ]  # fmt: skip
    if not rows:
        return "no replays"
    return table(("ID", "STATE", "BY", "REQUESTED", "EVENTS", "DELIVERIES", "FILTER"), rows)


def replay_detail(r: dict[str, Any]) -> str:
    """A replay's progress (events walked, deliveries made) and outcome (what became of them)."""
    ended = f"  {r['state']} {r['finished_at']}" if r.get("finished_at") else ""
    by = f" by {r['cancelled_by']}" if r.get("cancelled_by") else ""
    lines = [
        f"replay     {r['id']}  {r['state']}{by}",
        f"requested  {r['requested_at']} by {_cell(r['requested_by'])}{ended}",
        f"filter     {printable(as_json_line(r['filter']))}",
        f"to         {', '.join(r['destinations']) or '(the destinations whose filters match)'}",
        f"progress   {r['matched']} of {r['total'] if r['total'] is not None else '?'} events,"
        f" {r['created']} deliveries created",
        f"outcome    {r['delivered']} delivered, {r['dead']} dead, {r['pending']} pending,"
        f" {r['discarded']} discarded",
    ]
    per = r.get("outcome_per_destination") or {}
    if per:
        states = ("delivered", "dead", "pending", "delivering", "paused", "discarded")
        rows = [(name, *(counts.get(s, 0) for s in states)) for name, counts in sorted(per.items())]
        lines += ["", table(("DESTINATION", *(s.upper() for s in states)), rows)]
    return "\n".join(lines)


def audit_table(answer: dict[str, Any]) -> str:
    rows = [
        (a["id"], a["at"], a["operator"], a["action"], a["target"], a["peer"],
         as_json_line(a["detail"]))
        for a in answer["entries"]
    ]  # fmt: skip
    if not rows:
        return "no audit entries"
    return table(("ID", "AT", "OPERATOR", "ACTION", "TARGET", "FROM", "DETAIL"), rows)


def as_json_line(data: Any) -> str:
    return orjson.dumps(data).decode()
