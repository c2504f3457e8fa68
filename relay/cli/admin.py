"""The operator commands: ``relay events``, ``replay``, ``deliveries``, ``destinations``, ``prune``.

Each talks to a running relay's admin API through AdminClient; failures print one line on stderr
and exit 1 (2 for a usage problem), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import os
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from relay.cli import output as out
from relay.cli.client import AdminClient, AdminError
from relay.config.checks import parse_listen

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "RELAY_ADMIN_TOKEN"
# A replay matching more events than this asks first (or needs --yes).
CONFIRM_ABOVE = 100
POLL_INTERVAL = 0.5

Command = Callable[[AdminClient, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line cannot work as given; exit 2 with this line."""


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.config:
        # Only the listen address is needed: no ${VAR} expansion, so secrets need not be set.
        try:
            raw = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read {args.config}: {exc}") from None
        server = raw.get("server", {})
        if not isinstance(server, dict):
            raise UsageError(f"{args.config}: server must be a table")
        listen = str(server.get("listen", "127.0.0.1:8080"))
        parsed = parse_listen(listen)
        if parsed is None:
            raise UsageError(f"{args.config}: server.listen must be host:port, not {listen!r}")
        host, port = parsed
        if host in ("0.0.0.0", "::"):  # listening everywhere: talk to it on this machine
            host = "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return DEFAULT_URL


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"token file {args.token_file} is not UTF-8 text") from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"no admin token: set {TOKEN_ENV} or pass --token-file")
    return token


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command: build the client, run it, turn failures into one line."""

    def main(args: argparse.Namespace) -> int:
        try:
            url, token = _url(args), _token(args)
        except UsageError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_USAGE

        async def go() -> int:
            async with AdminClient(url, token, _operator(args)) as client:
                return await command(client, args)

        try:
            return asyncio.run(go())
        except AdminError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except UsageError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("relay: interrupted", file=sys.stderr)
            return EXIT_FAILURE

    return main


def _emit(args: argparse.Namespace, answer: Any, text: str) -> None:
    print(out.as_json(answer) if args.json else text)


_FILTERS = ("inbound", "type", "source", "list", "email", "state", "destination", "since", "until")


def _filter(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in _FILTERS if getattr(args, k) is not None}


async def events_list(client: AdminClient, args: argparse.Namespace) -> int:
    params = _filter(args)
    params["limit"] = str(args.limit)
    if args.cursor:
        params["cursor"] = args.cursor
    _, answer = await client.get("/admin/events", params)
    _emit(args, answer, out.events_table(answer))
    return EXIT_OK


async def events_show(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get(f"/admin/events/{_segment(args.id)}")
    if args.body:
        sys.stdout.buffer.write(base64.b64decode(answer["request"]["body_b64"]))
        sys.stdout.flush()
        return EXIT_OK
    _emit(args, answer, out.event_detail(answer))
    return EXIT_OK


async def replay(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.to:
        body["destinations"] = args.to
    where = _filter(args)
    if args.id:
        if where:
            raise UsageError("give an event ID or filters, not both")
        path = f"/admin/events/{_segment(args.id)}/replay"
        if args.dry_run:
            _, preview = await client.post(path, {**body, "dry_run": True})
            _emit(args, preview, out.replay_summary(preview))
            return EXIT_OK
        _, answer = await client.post(path, body)
        lines = [f"replay {answer['replay_id']}: event {args.id}"]
        lines += [f"  delivery {d['id']} -> {d['destination']} ({d['state']})"
                  for d in answer["deliveries"]]  # fmt: skip
        if not answer["deliveries"]:
            lines.append("  no destination matches this event today; name one with --to")
        _emit(args, answer, "\n".join(lines))
        return EXIT_OK
    if not where:
        raise UsageError("give an event ID or at least one filter (--type, --since, --state, ...)")
    body["filter"] = where
    _, preview = await client.post("/admin/replay", {**body, "dry_run": True})
    if args.dry_run:
        _emit(args, preview, out.replay_summary(preview))
        return EXIT_OK
    if preview["matched"] > CONFIRM_ABOVE and not args.yes and not _confirm(preview):
        return EXIT_USAGE
    status, answer = await client.post("/admin/replay", body)
    if status == 202:
        answer = await _follow(client, answer["replay_id"], quiet=args.json)
    _emit(args, answer, out.replay_summary(answer))
    return EXIT_OK if answer["state"] == "done" else EXIT_FAILURE


def _confirm(preview: dict[str, Any]) -> bool:
    summary = (
        f"{preview['matched']} events, {preview['deliveries']} deliveries"
        f" ({out.per_destination(preview.get('per_destination'))})"
    )
    if not sys.stdin.isatty():
        print(
            f"relay: refusing to replay {summary} without --yes (stdin is not a terminal)",
            file=sys.stderr,
        )
        return False
    answer = input(f"Replay {summary}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("relay: replay cancelled", file=sys.stderr)
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
    _emit(args, answer, out.deliveries_table(answer))
    return EXIT_OK


async def destinations_list(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get("/admin/destinations")
    _emit(args, answer, out.destinations_table(answer))
    return EXIT_OK


async def destinations_pause(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/destinations/{_segment(args.name)}/pause")
    _emit(args, answer, f"{args.name}: paused ({answer['held']} pending deliveries held)")
    return EXIT_OK


async def destinations_resume(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/destinations/{_segment(args.name)}/resume")
    _emit(args, answer, f"{args.name}: resumed ({answer['released']} held deliveries due now)")
    return EXIT_OK


async def prune(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post("/admin/prune", {"older_than_days": args.older_than})
    text = (
        f"deleted {answer['deleted_events']} events and {answer['deleted_requests']} requests"
        f" older than {args.older_than:g} days"
    )
    _emit(args, answer, text)
    return EXIT_OK


def _common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url", help=f"the relay's address (default: from --config, else {DEFAULT_URL})"
    )
    group.add_argument(
        "--config", metavar="FILE", help="take the address from this config's [server] listen"
    )
    group.add_argument(
        "--token-file", metavar="FILE", help=f"read the admin token here instead of ${TOKEN_ENV}"
    )
    group.add_argument("--operator", help="who asks, recorded with replays (default: cli:$USER)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument("--inbound", help="inbound name")
    group.add_argument("--type", help="event type, e.g. unsubscribe")
    group.add_argument("--source", help="source tag, e.g. user")
    group.add_argument("--list", help="audience (list) id")
    group.add_argument("--email", help="email address")
    group.add_argument(
        "--state",
        help="has a delivery in this state (pending, delivering, delivered, dead, paused)",
    )
    group.add_argument("--destination", help="has a delivery to this destination (in --state)")
    group.add_argument(
        "--since",
        help="received at or after: ISO-8601 (2026-11-01, 2026-11-01T12:00Z) or Unix seconds",
    )
    group.add_argument("--until", help="received before: same formats as --since")


def add_admin_commands(sub: Any) -> None:
    """Add the operator commands to the top-level subparsers of ``relay``."""
    events = sub.add_parser("events", help="find stored events and see what happened to them")
    events_sub = events.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    listing = events_sub.add_parser("list", help="list events, newest first")
    _filters(listing)
    listing.add_argument(
        "--limit", type=int, default=50, help="at most this many (1-1000; default 50)"
    )
    listing.add_argument("--cursor", help="continue from the next_cursor of the previous page")
    _common(listing)
    listing.set_defaults(func=run(events_list))
    show = events_sub.add_parser(
        "show", help="one event: its request, parsed body, deliveries, attempts"
    )
    show.add_argument("id", metavar="ID", help="event id")
    show.add_argument("--body", action="store_true", help="write the raw request body to stdout")
    _common(show)
    show.set_defaults(func=run(events_show))

    rp = sub.add_parser(
        "replay",
        help="send stored events again, as new deliveries",
        description="Replay one event (relay replay ID) or every event matching filters. Without"
        " --to, each event goes to the destinations whose filters match it today. Replays"
        f" matching more than {CONFIRM_ABOVE} events ask first; --yes skips the question.",
    )
    rp.add_argument("id", metavar="ID", nargs="?", help="event id (instead of filters)")
    _filters(rp)
    rp.add_argument(
        "--to", action="append", metavar="NAME", help="destination to send to (repeatable)"
    )
    rp.add_argument("--dry-run", action="store_true", help="only count what would be replayed")
    rp.add_argument("--yes", action="store_true", help="do not ask before a large replay")
    _common(rp)
    rp.set_defaults(func=run(replay))

    deliveries = sub.add_parser("deliveries", help="list deliveries, e.g. dead letters")
    deliveries_sub = deliveries.add_subparsers(
        dest="deliveries_command", metavar="ACTION", required=True
    )
    dl = deliveries_sub.add_parser("list", help="deliveries newest first")
    dl.add_argument("--state", help="pending, delivering, delivered, dead or paused")
    dl.add_argument("--destination", help="destination name")
    dl.add_argument("--limit", type=int, default=50, help="at most this many (1-1000; default 50)")
    dl.add_argument("--cursor", help="continue after this delivery id")
    _common(dl)
    dl.set_defaults(func=run(deliveries_list))

    dest = sub.add_parser("destinations", help="list, pause and resume destinations")
    dest_sub = dest.add_subparsers(dest="destinations_command", metavar="ACTION", required=True)
    dest_list = dest_sub.add_parser("list", help="each destination with its state and counts")
    _common(dest_list)
    dest_list.set_defaults(func=run(destinations_list))
    for action, func, text in (
        (
            "pause",
            destinations_pause,
            "hold a destination's deliveries (no attempts) until resumed",
        ),
        ("resume", destinations_resume, "send a paused destination's held deliveries"),
    ):
        p = dest_sub.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME", help="destination name")
        _common(p)
        p.set_defaults(func=run(func))

    pr = sub.add_parser("prune", help="delete old events whose deliveries are all finished")
    pr.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days")
    _common(pr)
    pr.set_defaults(func=run(prune))


def _segment(value: str) -> str:
    """One URL path segment: an id or name with "/" or ".." must not reach another route."""
    if value in ("", ".", ".."):
        raise UsageError(f"not a valid id or name: {value!r}")
    return quote(value, safe="")
