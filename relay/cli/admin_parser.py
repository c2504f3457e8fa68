"""The operator commands' arguments, added to ``relay``'s parser by ``add_admin_commands``."""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli.admin import (
    CONFIRM_ABOVE,
    deliveries_list,
    destinations_list,
    destinations_pause,
    destinations_reset,
    destinations_resume,
    events_list,
    events_show,
    prune,
    replay,
)
from relay.cli.connect import DEFAULT_URL, TOKEN_ENV, run
from relay.cli.control_parser import add_audit, add_delivery_actions, add_replays


def _common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        help=f"the relay's address, with its scheme (default: from --config, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="take the address from this config ([admin] listen if set, else [server] listen)",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"read the admin token here instead of ${TOKEN_ENV}: a file holding the token, or"
        f" an environment file with a {TOKEN_ENV}= line (e.g. /etc/relay/relay.env)",
    )
    group.add_argument(
        "--operator",
        help="who asks, recorded in the audit trail and with replays (default: cli:$USER)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _filters(parser: argparse.ArgumentParser, delivery_keys: bool = True) -> None:
    group = parser.add_argument_group("filters (of the event)")
    group.add_argument("--inbound", help="inbound name")
    group.add_argument(
        "--type", help="event type, or a glob as destination filters take: unsubscribe, 'unsub*'"
    )
    group.add_argument("--source", help="source tag, e.g. user")
    group.add_argument("--list", help="audience (list) id")
    group.add_argument("--email", help="email address, whatever its case")
    if delivery_keys:
        group.add_argument(
            "--state",
            help="has a delivery in this state (pending, delivering, delivered, dead, paused,"
            " discarded); dead: a dead letter, not resolved",
        )
        group.add_argument(
            "--destination", help="has a delivery to this destination (in --state)"
        )
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

    deliveries = sub.add_parser(
        "deliveries", help="list deliveries (e.g. dead letters), retry, resolve, discard"
    )
    deliveries_sub = deliveries.add_subparsers(
        dest="deliveries_command", metavar="ACTION", required=True
    )
    dl = deliveries_sub.add_parser(
        "list",
        help="deliveries newest first, with the status and error of their last attempt",
    )
    dl.add_argument(
        "--state",
        help="pending, delivering, delivered, dead (dead letters: not resolved), paused or"
        " discarded",
    )
    dl.add_argument("--destination", help="destination name")
    dl.add_argument("--limit", type=int, default=50, help="at most this many (1-1000; default 50)")
    dl.add_argument("--cursor", help="continue after this delivery id")
    _common(dl)
    dl.set_defaults(func=run(deliveries_list))
    add_delivery_actions(deliveries_sub, _common, _filters)
    add_replays(sub, _common)
    add_audit(sub, _common)

    dest = sub.add_parser(
        "destinations", help="list, pause and resume destinations; close a circuit by hand"
    )
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
        (
            "reset",
            destinations_reset,
            "close a destination's open circuit by hand: its waiting deliveries go out again",
        ),
    ):
        p = dest_sub.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME", help="destination name")
        _common(p)
        p.set_defaults(func=run(func))

    pr = sub.add_parser(
        "prune",
        help="delete old events whose deliveries are all finished",
        description="Delete events received more than DAYS days ago whose deliveries have all"
        " finished (delivered or dead), with their deliveries, attempts and requests. Asks"
        " first on a terminal; when stdin is not a terminal it refuses unless --yes is given.",
    )
    pr.add_argument(
        "--older-than",
        type=float,
        required=True,
        metavar="DAYS",
        help="age in days (0 needs --force)",
    )
    pr.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    pr.add_argument("--yes", action="store_true", help="do not ask before deleting")
    pr.add_argument(
        "--force", action="store_true", help="allow --older-than 0 (every finished event)"
    )
    _common(pr)
    pr.set_defaults(func=run(prune))
