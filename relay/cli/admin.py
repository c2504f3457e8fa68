"""The operator commands: ``relay events``, ``replay``, ``deliveries``, ``destinations``, ``prune``.

Each talks to a running relay's admin API through AdminClient; failures print one line on stderr
and exit 1 (2 for a usage problem), never a traceback. Their arguments: ``admin_parser``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from typing import Any, TextIO
from urllib.parse import quote

from relay.cli import output as out
from relay.cli.client import AdminClient
from relay.cli.connect import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError

# A replay matching more events than this asks first (or needs --yes).
CONFIRM_ABOVE = 100
POLL_INTERVAL = 0.5


def emit(args: argparse.Namespace, answer: Any, text: str, hint: str | None = None) -> None:
    print(out.as_json(answer) if args.json else text)
    if hint and not args.json:
        # On standard error, as kubectl and gh do: `| wc -l` and `| cut` see only the table.
        print(hint, file=sys.stderr)


_FILTERS = ("inbound", "type", "source", "list", "email", "state", "destination", "since", "until")


def event_filter(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in _FILTERS if getattr(args, k) is not None}


async def events_list(client: AdminClient, args: argparse.Namespace) -> int:
    params = event_filter(args)
    params["limit"] = str(args.limit)
    if args.cursor:
        params["cursor"] = args.cursor
    _, answer = await client.get("/admin/events", params)
    emit(args, answer, out.events_table(answer), out.more_hint(answer))
    return EXIT_OK


async def events_show(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get(f"/admin/events/{path_segment(args.id)}")
    if args.body:
        sys.stdout.buffer.write(base64.b64decode(answer["request"]["body_b64"]))
        sys.stdout.flush()
        return EXIT_OK
    emit(args, answer, out.event_detail(answer))
    return EXIT_OK


async def replay(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.to:
        body["destinations"] = args.to
    where = event_filter(args)
    if args.id:
        if where:
            raise UsageError("give an event ID or filters, not both")
        path = f"/admin/events/{path_segment(args.id)}/replay"
        if args.dry_run:
            _, preview = await client.post(path, {**body, "dry_run": True})
            emit(args, preview, out.replay_summary(preview))
            return EXIT_OK
        _, answer = await client.post(path, body)
        lines = [f"replay {answer['replay_id']}: event {args.id}"]
        lines += [f"  delivery {d['id']} -> {d['destination']} ({d['state']})"
                  for d in answer["deliveries"]]  # fmt: skip
        if not answer["deliveries"]:
            lines.append("  no destination matches this event today; name one with --to")
        emit(args, answer, "\n".join(lines))
        return EXIT_OK
    if not where:
        raise UsageError("give an event ID or at least one filter (--type, --since, --state, ...)")
    body["filter"] = where
    _, preview = await client.post("/admin/replay", {**body, "dry_run": True})
    if args.dry_run:
        emit(args, preview, out.replay_summary(preview))
        return EXIT_OK
    if preview["matched"] > CONFIRM_ABOVE and not args.yes:
        summary = (
            f"{preview['matched']} events, {preview['deliveries']} deliveries"
            f" ({out.per_destination(preview.get('per_destination'))})"
        )
        if not confirm("replay", summary):
            return EXIT_USAGE
    status, answer = await client.post("/admin/replay", body)
    if status == 202:
        answer = await _follow(client, answer["replay_id"], quiet=args.json)
    emit(args, answer, out.replay_summary(answer))
    return EXIT_OK if answer["state"] == "done" else EXIT_FAILURE


def confirm(verb: str, what: str) -> bool:
    """Ask on a terminal before a big or irreversible step; refuse when nobody can answer."""
    if not sys.stdin.isatty():
        print(
            f"relay: refusing to {verb} {what} without --yes (stdin is not a terminal)",
            file=sys.stderr,
        )
        return False
    answer = input(f"{verb.capitalize()} {what}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print(f"relay: {verb} cancelled", file=sys.stderr)
        return False
    return True


async def _follow(client: AdminClient, replay_id: int, quiet: bool) -> dict[str, Any]:
    """Poll a background replay until it stops, drawing a progress line on a terminal."""
    stream: TextIO = sys.stderr
    live = stream.isatty() and not quiet
    while True:
        _, state = await client.get(f"/admin/replays/{replay_id}")
        if live:
            stream.write("\r" + out.progress(state))
            stream.flush()
        if state["state"] != "running":
            if live:
                stream.write("\n")
            result: dict[str, Any] = state
            return result
        await asyncio.sleep(POLL_INTERVAL)


async def deliveries_list(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    for key in ("state", "destination", "cursor"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    _, answer = await client.get("/admin/deliveries", params)
    emit(args, answer, out.deliveries_table(answer), out.more_hint(answer))
    return EXIT_OK


async def destinations_list(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get("/admin/destinations")
    emit(args, answer, out.destinations_table(answer))
    return EXIT_OK


async def destinations_pause(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/destinations/{path_segment(args.name)}/pause")
    emit(args, answer, f"{args.name}: paused ({answer['held']} pending deliveries held)")
    return EXIT_OK


async def destinations_resume(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/destinations/{path_segment(args.name)}/resume")
    emit(args, answer, f"{args.name}: resumed ({answer['released']} held deliveries due now)")
    return EXIT_OK


async def destinations_reset(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/destinations/{path_segment(args.name)}/reset")
    was = "was open" if answer["was_open"] else "was not open"
    emit(args, answer, f"{args.name}: circuit closed ({was}); its deliveries go out again")
    return EXIT_OK


async def prune(client: AdminClient, args: argparse.Namespace) -> int:
    days = args.older_than
    if days < 0:
        raise UsageError("--older-than: expected a number of days, 0 or more")
    if days == 0 and not args.force:
        raise UsageError(
            "--older-than 0 deletes every finished event up to now; add --force to mean it"
        )
    body = {"older_than_days": days}
    _, preview = await client.post("/admin/prune", {**body, "dry_run": True})
    if args.dry_run:
        emit(args, preview, out.prune_preview(preview))
        return EXIT_OK
    # Deleting is not undone: ask unless told not to, as a large replay does. Nothing to
    # delete needs no question (and keeps a scheduled prune with nothing to do quiet).
    if preview["matched"] and not args.yes:
        what = f"{preview['matched']} events received before {preview['cutoff']}"
        if not confirm("delete", what):
            return EXIT_USAGE
    _, answer = await client.post("/admin/prune", body)
    text = (
        f"deleted {answer['deleted_events']} events and {answer['deleted_requests']} requests"
        f" older than {days:g} days"
    )
    emit(args, answer, text)
    return EXIT_OK


def path_segment(value: str) -> str:
    """One URL path segment: an id or name with "/" or ".." must not reach another route."""
    if value in ("", ".", ".."):
        raise UsageError(f"not a valid id or name: {value!r}")
    return quote(value, safe="")
