"""The admin API under /admin: find events, see what happened to them, replay, pause, prune.

Every /admin request needs ``Authorization: Bearer TOKEN`` matching ``[admin] token``; without a
configured token every call is 401. Answers are JSON; errors are ``{"error": "one line"}``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from relay.config import Settings, redact_url
from relay.model import DeliveryState, ReplayState, iso_utc
from relay.pipeline.payload import parsed_view
from relay.server.admin_json import (
    DELIVERIES_CURSOR,
    EVENTS_CURSOR,
    BadRequestError,
    check_keys,
    delivery_json,
    event_json,
    filter_json,
    gate_json,
    listing_json,
    parse_body,
    parse_cursor,
    parse_filter,
    parse_flag,
    parse_limit,
    parse_names,
    request_json,
)
from relay.server.audit import Actor, operator_name
from relay.server.auth import admin_auth_problem
from relay.server.control import (
    ConflictError,
    Control,
    NoBreakerError,
    NotFoundError,
    ReplayOutcome,
    ReplayRequest,
    UnknownDestinationError,
)
from relay.store import Store, StoreError

log = logging.getLogger("relay.admin")

PREFIX = "/admin"
OPERATOR_HEADER = "X-Relay-Operator"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": reason}, status)
    response.headers.update(headers or {})
    return response


def admin_middleware(token: Callable[[], str | None]) -> Any:
    """Auth for every /admin path (known or not), JSON for every error it answers, and one log
    line per admin request (401s included): method, path, status, operator, peer.

    ``token`` gives the current ``[admin] token``: a reloaded configuration changes it.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
            return await handler(request)
        started = time.perf_counter()
        response = await _answer(request, handler, token())
        _log_request(request, response.status, time.perf_counter() - started)
        return response

    return middleware


async def _answer(
    request: web.Request, handler: Handler, token: str | None
) -> web.StreamResponse:
    problem = admin_auth_problem(token, request.headers.get("Authorization"))
    if problem is not None:
        return error(401, problem, {"WWW-Authenticate": 'Bearer realm="relay admin"'})
    try:
        return await handler(request)
    except BadRequestError as exc:
        return error(400, str(exc))
    except (UnknownDestinationError, NotFoundError) as exc:
        return error(404, str(exc))
    except (ConflictError, NoBreakerError) as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return error(503, f"storage unavailable: {exc}")
    except web.HTTPMethodNotAllowed:
        return error(405, f"method {request.method} not allowed on {request.path}")
    except web.HTTPNotFound:
        return error(404, f"no admin route {request.path}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)


def _log_request(request: web.Request, status: int, seconds: float) -> None:
    # The operator a request claims, even unauthenticated: a 401 shows who tried.
    claimed = operator_name(request.headers.get(OPERATOR_HEADER)) or "(not printable)"
    log.log(
        logging.WARNING if status == 401 else logging.INFO,
        "admin request method=%s path=%s status=%d operator=%r peer=%s duration_ms=%.1f",
        request.method,
        request.path,
        status,
        claimed,
        request.remote or "-",
        seconds * 1000,
    )


class Admin:
    """The /admin handlers of one relay."""

    def __init__(self, store: Store, control: Control) -> None:
        self.store = store
        self.control = control

    @property
    def settings(self) -> Settings:
        # The control's: a reloaded configuration replaces it there.
        return self.control.settings

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/events", self.list_events, allow_head=False),
            web.get(PREFIX + "/events/{id}", self.show_event, allow_head=False),
            web.post(PREFIX + "/events/{id}/replay", self.replay_event),
            web.post(PREFIX + "/replay", self.replay),
            web.get(PREFIX + "/deliveries", self.list_deliveries, allow_head=False),
            web.get(PREFIX + "/destinations", self.list_destinations, allow_head=False),
            web.post(PREFIX + "/destinations/{name}/pause", self.pause),
            web.post(PREFIX + "/destinations/{name}/resume", self.resume),
            web.post(PREFIX + "/destinations/{name}/reset", self.reset),
            web.post(PREFIX + "/prune", self.prune),
        ]

    async def list_events(self, request: web.Request) -> web.Response:
        query = request.query
        where = parse_filter(query, ignore=frozenset({"limit", "cursor"}))
        before = parse_cursor(query.get("cursor"), EVENTS_CURSOR)
        page = await self.store.list_events(where, parse_limit(query.get("limit")), before)
        next_cursor = str(page.next_cursor) if page.next_cursor is not None else None
        return json_response(
            {"events": [event_json(e) for e in page.events], "next_cursor": next_cursor}
        )

    async def show_event(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        detail = await self.store.get_event(event_id)
        if detail is None:
            return error(404, f"unknown event: {event_id}")
        kind = self.settings.inbound_kind(detail.event.inbound)
        out = event_json(detail.event)
        out["request"] = request_json(detail.request)
        out["kind"] = kind.value if kind is not None else None
        out["parsed"] = parsed_view(kind, detail.payload, detail.payload_content_type)
        if detail.payload != detail.request.body:
            out["payload_b64"] = base64.b64encode(detail.payload).decode("ascii")
            out["payload_content_type"] = detail.payload_content_type
        out["deliveries"] = [delivery_json(d, with_attempts=True) for d in detail.deliveries]
        return json_response(out)

    async def replay_event(self, request: web.Request) -> web.Response:
        body = parse_body(await request.read(), {"destinations", "dry_run"})
        dry_run = parse_flag(body, "dry_run")
        who = actor(request)
        outcome = await self.control.replay_event(
            request.match_info["id"],
            parse_names(body.get("destinations")),
            who.name,
            dry_run=dry_run,
            peer=who.peer,
        )
        if outcome is None:
            return error(404, f"unknown event: {request.match_info['id']}")
        if outcome.dry_run:
            return json_response(_outcome_json(outcome))
        return json_response(
            {
                "replay_id": outcome.replay_id,
                "deliveries": [
                    {"id": c.id, "destination": c.destination, "state": c.state.value}
                    for c in outcome.created
                ],
            }
        )

    async def replay(self, request: web.Request) -> web.Response:
        body = parse_body(await request.read(), {"filter", "destinations", "dry_run"})
        raw_filter = body.get("filter", {})
        if not isinstance(raw_filter, dict):
            raise BadRequestError("filter: expected a JSON object")
        dry_run = parse_flag(body, "dry_run")
        where = parse_filter(raw_filter)
        who = actor(request)
        outcome = await self.control.replay(
            ReplayRequest(
                where=where,
                destinations=parse_names(body.get("destinations")),
                requested_by=who.name,
                filter_json=filter_json(where),
                dry_run=dry_run,
                peer=who.peer,
            )
        )
        running = outcome.state is ReplayState.RUNNING
        return json_response(_outcome_json(outcome), status=202 if running else 200)

    async def list_deliveries(self, request: web.Request) -> web.Response:
        query = request.query
        check_keys(query, {"state", "destination", "limit", "cursor"}, "parameter")
        state = parse_filter({"state": query.get("state")}).state
        after = parse_cursor(query.get("cursor"), DELIVERIES_CURSOR)
        page = await self.store.list_deliveries(
            state, query.get("destination") or None, parse_limit(query.get("limit")), after
        )
        return json_response(
            {
                "deliveries": [listing_json(d) for d in page.deliveries],
                "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
            }
        )

    async def list_destinations(self, request: web.Request) -> web.Response:
        out = [
            {
                "name": d.name,
                "configured": d.config is not None,
                "url": redact_url(d.config.url) if d.config is not None else None,
                "paused": d.paused,
                "counts": {state.value: getattr(d.stats, state.value) for state in _COUNTED},
                "oldest_pending_at": d.stats.oldest_pending_at,
                **gate_json(d),
            }
            for d in await self.control.destinations()
        ]
        return json_response({"destinations": out})

    async def pause(self, request: web.Request) -> web.Response:
        parse_body(await request.read(), ())
        name = request.match_info["name"]
        held = await self.control.pause(name, actor(request))
        return json_response({"destination": name, "paused": True, "held": held})

    async def resume(self, request: web.Request) -> web.Response:
        parse_body(await request.read(), ())
        name = request.match_info["name"]
        released = await self.control.resume(name, actor(request))
        return json_response({"destination": name, "paused": False, "released": released})

    async def reset(self, request: web.Request) -> web.Response:
        parse_body(await request.read(), ())
        name = request.match_info["name"]
        was_open = await self.control.reset_circuit(name, actor(request))
        return json_response({"destination": name, "circuit": "closed", "was_open": was_open})

    async def prune(self, request: web.Request) -> web.Response:
        body = parse_body(await request.read(), {"older_than_days", "dry_run"})
        days = body.get("older_than_days")
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= 36500:
            raise BadRequestError("older_than_days: expected a number of days from 0 to 36500")
        if parse_flag(body, "dry_run"):
            older_than = days * 86400.0
            # Ages are measured on the store's clock, as the prune measures them.
            cutoff = await self.store.now() - older_than
            matched = await self.store.count_prunable(older_than)
            return json_response(
                {
                    "matched": matched,
                    "older_than_days": days,
                    "cutoff": iso_utc(cutoff),
                    "dry_run": True,
                }
            )
        result = await self.control.prune(float(days), actor(request))
        return json_response(
            {
                "deleted_events": result.deleted_events,
                "deleted_requests": result.deleted_requests,
                "dry_run": False,
            }
        )


_COUNTED = (
    DeliveryState.PENDING,
    DeliveryState.DELIVERING,
    DeliveryState.PAUSED,
    DeliveryState.DEAD,
)


def _outcome_json(outcome: ReplayOutcome) -> dict[str, Any]:
    return {
        "replay_id": outcome.replay_id,
        "state": outcome.state.value,
        "matched": outcome.matched,
        "deliveries": outcome.deliveries,
        "per_destination": outcome.per_destination,
        "dry_run": outcome.dry_run,
    }


def actor(request: web.Request) -> Actor:
    """Who asks: ``X-Relay-Operator`` (default ``admin-api``), from the client's address."""
    name = operator_name(request.headers.get(OPERATOR_HEADER))
    if name is None:
        # Header bytes that are not UTF-8 arrive as lone surrogates, which no store keeps as
        # text: the client's mistake, so 400, not 503.
        raise BadRequestError(f"{OPERATOR_HEADER}: must be printable UTF-8 text")
    return Actor(name, request.remote)
