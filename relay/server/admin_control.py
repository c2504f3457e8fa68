"""The admin API's control of work in flight: replays (list, show, cancel), single deliveries
(show, retry now, resolve), discarding waiting deliveries, and the audit trail.

Errors and auth are the admin middleware's (``relay.server.admin_api``); the work is Control's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from relay.model import DeliveryFilter, DeliveryState, EventFilter
from relay.server.admin_api import PREFIX, actor, json_response
from relay.server.admin_json import (
    FILTER_KEYS,
    BadRequestError,
    audit_json,
    check_keys,
    delivery_json,
    filter_json,
    parse_body,
    parse_filter,
    parse_flag,
    parse_id,
    parse_limit,
    parse_reason,
    replay_json,
    replay_summary_json,
)
from relay.server.control import Control, NotFoundError
from relay.store import Store

# A discard's filter: the delivery's own keys, and its event's (as the events list takes them).
_DELIVERY_KEYS = ("destination", "replay", "state")
_EVENT_KEYS = tuple(k for k in FILTER_KEYS if k not in ("state", "destination"))
DISCARDABLE = (DeliveryState.PENDING, DeliveryState.PAUSED)


class AdminControl:
    def __init__(self, store: Store, control: Control) -> None:
        self.store = store
        self.control = control

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/replays", self.list_replays, allow_head=False),
            web.get(PREFIX + "/replays/{id}", self.show_replay, allow_head=False),
            web.post(PREFIX + "/replays/{id}/cancel", self.cancel_replay),
            web.post(PREFIX + "/deliveries/discard", self.discard),
            web.get(PREFIX + "/deliveries/{id}", self.show_delivery, allow_head=False),
            web.post(PREFIX + "/deliveries/{id}/retry", self.retry),
            web.post(PREFIX + "/deliveries/{id}/resolve", self.resolve),
            web.get(PREFIX + "/audit", self.list_audit, allow_head=False),
        ]

    # -- replays -----------------------------------------------------------------------------

    async def list_replays(self, request: web.Request) -> web.Response:
        check_keys(request.query, {"limit", "cursor"}, "parameter")
        page = await self.store.list_replays(
            parse_limit(request.query.get("limit")), _cursor(request.query)
        )
        return json_response(
            {
                "replays": [replay_summary_json(r) for r in page.replays],
                "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
            }
        )

    async def show_replay(self, request: web.Request) -> web.Response:
        replay_id = _path_id(request, "replay")
        record = await self.store.get_replay(replay_id)
        if record is None:
            raise NotFoundError(f"unknown replay: {request.match_info['id']}")
        return json_response(replay_json(record))

    async def cancel_replay(self, request: web.Request) -> web.Response:
        parse_body(await request.read(), ())
        outcome = await self.control.cancel_replay(_path_id(request, "replay"), actor(request))
        return json_response({**replay_json(outcome.replay), "waiting": outcome.waiting})

    # -- deliveries --------------------------------------------------------------------------

    async def show_delivery(self, request: web.Request) -> web.Response:
        delivery = await self.store.get_delivery(_path_id(request, "delivery"))
        if delivery is None:
            raise NotFoundError(f"unknown delivery: {request.match_info['id']}")
        return json_response(delivery_json(delivery))

    async def retry(self, request: web.Request) -> web.Response:
        parse_body(await request.read(), ())
        outcome = await self.control.retry(_path_id(request, "delivery"), actor(request))
        answer: dict[str, Any] = {
            "retried": outcome.delivery.id,
            "due_now": outcome.due_now,
            "delivery": delivery_json(outcome.delivery),
        }
        if outcome.replay is not None:
            answer["replay_id"] = outcome.replay.replay_id
            answer["deliveries"] = [
                {"id": c.id, "destination": c.destination, "state": c.state.value}
                for c in outcome.replay.created
            ]
        return json_response(answer)

    async def resolve(self, request: web.Request) -> web.Response:
        body = parse_body(await request.read(), {"reason"})
        reason = parse_reason(body.get("reason"))
        delivery = await self.control.resolve(_path_id(request, "delivery"), actor(request), reason)
        return json_response({"delivery": delivery_json(delivery)})

    async def discard(self, request: web.Request) -> web.Response:
        body = parse_body(await request.read(), {"filter", "dry_run"})
        raw = body.get("filter")
        if not isinstance(raw, dict):
            raise BadRequestError("filter: expected a JSON object")
        where, text = parse_discard_filter(raw)
        outcome = await self.control.discard(
            where, actor(request), dry_run=parse_flag(body, "dry_run"), filter_json=text
        )
        return json_response(
            {
                "matched" if outcome.dry_run else "discarded": outcome.matched,
                "per_destination": outcome.per_destination,
                "dry_run": outcome.dry_run,
            }
        )

    # -- the audit trail -----------------------------------------------------------------------

    async def list_audit(self, request: web.Request) -> web.Response:
        query = request.query
        check_keys(query, {"limit", "cursor", "action", "operator"}, "parameter")
        page = await self.store.list_audit(
            parse_limit(query.get("limit")),
            _cursor(query),
            action=query.get("action") or None,
            operator=query.get("operator") or None,
        )
        return json_response(
            {
                "entries": [audit_json(a) for a in page.entries],
                "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
            }
        )


def parse_discard_filter(raw: Mapping[str, Any]) -> tuple[DeliveryFilter, str]:
    """A discard's filter, and the same as JSON for the log and the audit trail.

    At least one key: an empty filter would discard every waiting delivery, which is never
    what a hurried operator means (``{"state": "pending"}`` says it when it is).
    """
    check_keys(raw, {*_DELIVERY_KEYS, *_EVENT_KEYS})
    given = {k: v for k, v in raw.items() if v not in (None, "")}
    if not given:
        raise BadRequestError(
            "filter: name at least one of " + ", ".join(sorted({*_DELIVERY_KEYS, *_EVENT_KEYS}))
        )
    states: tuple[DeliveryState, ...] = DISCARDABLE
    if "state" in given:
        try:
            state = DeliveryState(given["state"])
        except ValueError:
            state = None
        if state not in DISCARDABLE:
            raise BadRequestError("state: only pending or paused deliveries are discarded")
        states = (state,)
    replay = given.get("replay")
    replay_id = parse_id(str(replay)) if replay is not None else None
    if replay is not None and (replay_id is None or isinstance(replay, bool)):
        raise BadRequestError("replay: expected a replay id")
    destination = given.get("destination")
    if destination is not None and not isinstance(destination, str):
        raise BadRequestError("destination: expected a string")
    event: EventFilter = parse_filter({k: v for k, v in given.items() if k in _EVENT_KEYS})
    where = DeliveryFilter(destination=destination, replay_id=replay_id, states=states,
                           event=event)  # fmt: skip
    # Stored and logged as the operator wrote it, times as ISO-8601.
    shown = {**orjson.loads(filter_json(event)), **{k: given[k] for k in _DELIVERY_KEYS
                                                    if k in given}}  # fmt: skip
    return where, orjson.dumps(shown).decode()


def _path_id(request: web.Request, what: str) -> int:
    text = request.match_info["id"]
    number = parse_id(text)
    if number is None:
        raise NotFoundError(f"unknown {what}: {text}")
    return number


def _cursor(query: Mapping[str, str]) -> int | None:
    text = query.get("cursor") or None
    if text is None:
        return None
    number = parse_id(text)
    if number is None:
        raise BadRequestError("cursor: expected the next_cursor of a previous page")
    return number
