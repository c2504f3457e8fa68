"""The operator commands over work in flight: ``relay replays``, ``relay deliveries retry|
resolve|discard`` and ``relay audit``. Their arguments: ``control_parser``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from relay.cli import output as out
from relay.cli.admin import confirm, emit, event_filter, path_segment
from relay.cli.client import AdminClient, AdminError
from relay.cli.connect import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError


def _paged(args: argparse.Namespace, **extra: str | None) -> dict[str, str]:
    params = {"limit": str(args.limit)}
    if args.cursor:
        params["cursor"] = args.cursor
    params.update({k: v for k, v in extra.items() if v})
    return params


async def replays_list(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get("/admin/replays", _paged(args))
    emit(args, answer, out.replays_table(answer), out.more_hint(answer))
    return EXIT_OK


async def replays_show(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.get(f"/admin/replays/{path_segment(args.id)}")
    emit(args, answer, out.replay_detail(answer))
    return EXIT_OK


async def replays_cancel(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/replays/{path_segment(args.id)}/cancel")
    text = (
        f"replay {answer['id']} cancelled after {answer['matched']} of"
        f" {answer['total'] if answer['total'] is not None else '?'} events;"
        f" {answer['created']} deliveries created"
    )
    hint = None
    if answer["waiting"]:
        # Cancelling stops the replay; dropping what it made is a decision of its own.
        hint = (
            f"{answer['waiting']} of its deliveries are still waiting and will be sent; to drop"
            f" them: relay deliveries discard --replay {answer['id']}"
        )
    emit(args, answer, text, hint)
    return EXIT_OK


async def deliveries_retry(client: AdminClient, args: argparse.Namespace) -> int:
    _, answer = await client.post(f"/admin/deliveries/{path_segment(args.id)}/retry")
    if answer["due_now"]:
        attempt = answer["delivery"]["attempts"] + 1
        text = f"delivery {answer['retried']}: due now (attempt {attempt})"
    else:
        made = ", ".join(f"{d['id']} ({d['state']})" for d in answer["deliveries"])
        text = (
            f"delivery {answer['retried']} was dead: sent again as delivery {made}"
            f" (replay {answer['replay_id']})"
        )
    emit(args, answer, text)
    return EXIT_OK


async def deliveries_resolve(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    code = EXIT_OK
    answers = []
    for delivery_id in args.ids:
        try:
            _, answer = await client.post(
                f"/admin/deliveries/{path_segment(delivery_id)}/resolve", body
            )
        except AdminError as exc:  # one refused id does not stop the others
            if len(args.ids) == 1:
                raise
            print(f"relay: delivery {delivery_id}: {exc}", file=sys.stderr)
            code = EXIT_FAILURE
            continue
        answers.append(answer)
        if not args.json:
            d = answer["delivery"]
            print(f"delivery {d['id']} ({d['destination']}): resolved by {d['resolved_by']}")
    if args.json:
        print(out.as_json(answers if len(args.ids) > 1 else answers[0]))
    return code


async def deliveries_discard(client: AdminClient, args: argparse.Namespace) -> int:
    where: dict[str, Any] = event_filter(args)
    for key in ("destination", "state"):
        if getattr(args, key):
            where[key] = getattr(args, key)
    if args.replay:
        where["replay"] = args.replay
    for item in args.filter or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--filter: expected KEY=VALUE, not {item!r}")
        where[key.strip()] = value.strip()
    if not where:
        raise UsageError(
            "give at least one filter (--replay, --destination, --state, --type, --since, ...)"
        )
    path = "/admin/deliveries/discard"
    _, preview = await client.post(path, {"filter": where, "dry_run": True})
    summary = f"{preview['matched']} waiting deliveries"
    if args.dry_run:
        emit(args, preview, f"dry run: {summary} match; none discarded")
        return EXIT_OK
    if not preview["matched"]:
        emit(args, {**preview, "dry_run": False, "discarded": 0}, "nothing to discard")
        return EXIT_OK
    # Discarded deliveries are never sent: always ask, as prune does, unless told not to.
    if not args.yes and not confirm("discard", summary):
        return EXIT_USAGE
    _, answer = await client.post(path, {"filter": where})
    text = (
        f"discarded {answer['discarded']} deliveries"
        f" ({out.per_destination(answer.get('per_destination'))})"
    )
    emit(args, answer, text)
    return EXIT_OK


async def audit_list(client: AdminClient, args: argparse.Namespace) -> int:
    params = _paged(args, action=args.action, operator=args.by)
    _, answer = await client.get("/admin/audit", params)
    emit(args, answer, out.audit_table(answer), out.more_hint(answer))
    return EXIT_OK
