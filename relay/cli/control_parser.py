"""Arguments of the commands over work in flight (``control_cmds``), added by ``admin_parser``."""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli.connect import run
from relay.cli.control_cmds import (
    audit_list,
    deliveries_discard,
    deliveries_resolve,
    deliveries_retry,
    replays_cancel,
    replays_list,
    replays_show,
)

Common = Any  # the admin parser's function adding --url, --token-file, --operator, --json


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=int, default=50, help="at most this many (1-1000; default 50)"
    )
    parser.add_argument("--cursor", help="continue from the next_cursor of the previous page")


def add_replays(sub: Any, common: Common) -> None:
    replays = sub.add_parser("replays", help="list replays, follow one, cancel a running one")
    actions = replays.add_subparsers(dest="replays_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="replays newest first")
    _paging(listing)
    common(listing)
    listing.set_defaults(func=run(replays_list))
    show = actions.add_parser(
        "show",
        help="one replay: its progress and outcome",
        description="A replay's progress (events walked of those it matched, deliveries"
        " created) and outcome (how many of its deliveries were delivered, are dead, still"
        " pending, or were discarded), per destination.",
    )
    show.add_argument("id", metavar="ID", help="replay id")
    common(show)
    show.set_defaults(func=run(replays_show))
    cancel = actions.add_parser(
        "cancel",
        help="stop a running replay from creating more deliveries",
        description="Stop a running replay, in whichever relay process runs it, within a"
        " second: it creates no more deliveries. The deliveries it already created are kept and"
        " sent; to drop the ones still waiting, run relay deliveries discard --replay ID.",
    )
    cancel.add_argument("id", metavar="ID", help="replay id")
    common(cancel)
    cancel.set_defaults(func=run(replays_cancel))


def add_delivery_actions(actions: Any, common: Common, filters: Any) -> None:
    """``retry``, ``resolve`` and ``discard`` under ``relay deliveries``."""
    retry = actions.add_parser(
        "retry",
        help="send a delivery now",
        description="Send a delivery now. A pending one waiting out its backoff becomes due at"
        " once (its attempt count goes on). A dead one is sent again as a new delivery of its"
        " event to its destination, like a replay of that one event: the dead one stays in the"
        " history, and is resolved once the new one is delivered.",
    )
    retry.add_argument("id", metavar="ID", help="delivery id")
    common(retry)
    retry.set_defaults(func=run(deliveries_retry))

    resolve = actions.add_parser(
        "resolve",
        help="mark dead deliveries resolved (no longer dead letters)",
        description="Mark dead deliveries resolved by hand, e.g. when the destination no longer"
        " needs the event: they stop counting as dead letters (relay_deliveries{state=\"dead\"},"
        " --state dead, replaying the dead letters) and stay in the history with who resolved"
        " them and why. A dead delivery also resolves by itself once a later delivery of its"
        " event to its destination is delivered.",
    )
    resolve.add_argument("ids", metavar="ID", nargs="+", help="delivery id (several may be given)")
    resolve.add_argument("--reason", help="why, kept with the delivery and in the audit trail")
    common(resolve)
    resolve.set_defaults(func=run(deliveries_resolve))

    discard = actions.add_parser(
        "discard",
        help="drop waiting deliveries so they are never sent",
        description="Drop waiting deliveries (pending or paused) that match, e.g. the rest of a"
        " mistaken replay: they become discarded and are never attempted. A delivery being"
        " sent right now finishes. Counts first and asks on a terminal; when stdin is not a"
        " terminal it refuses unless --yes is given. Filters combine; at least one is needed.",
    )
    discard.add_argument("--replay", metavar="ID", help="deliveries made by this replay")
    discard.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="any key of the API's discard filter, e.g. --filter replay=12 (repeatable)",
    )
    discard.add_argument("--destination", help="deliveries to this destination")
    discard.add_argument("--state", choices=("pending", "paused"), help="only this state")
    filters(discard, delivery_keys=False)
    discard.add_argument("--dry-run", action="store_true", help="only count what would go")
    discard.add_argument("--yes", action="store_true", help="do not ask before discarding")
    common(discard)
    discard.set_defaults(func=run(deliveries_discard))


def add_audit(sub: Any, common: Common) -> None:
    audit = sub.add_parser(
        "audit",
        help="who paused, resumed, replayed, cancelled, discarded, resolved, retried, pruned",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="operator actions newest first",
        description="Operator actions newest first: when, who (--operator / X-Relay-Operator),"
        " from which address, what, on what, and its parameters and effect. Config reloads"
        " (SIGHUP) are listed too.",
    )
    listing.add_argument(
        "--action",
        choices=("pause", "resume", "prune", "replay", "cancel", "discard", "resolve", "retry",
                 "reset", "reload"),
        help="only this kind of action",
    )  # fmt: skip
    listing.add_argument("--by", metavar="OPERATOR", help="only this operator's actions")
    _paging(listing)
    common(listing)
    listing.set_defaults(func=run(audit_list))
