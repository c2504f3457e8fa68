"""The console's pages (GET only, nothing changes): overview, events, one event and its
deliveries, dead letters. Replays are in ``replay_pages``, discard and the audit trail in
``control_pages``.

Every read goes through the same Store and Control calls as the admin API, and filters are read
by the admin API's own parser, so the console and ``/admin`` always agree on what matches.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from relay.model import ClaimedDelivery, DeliveryState, EventDetail, EventFilter
from relay.pipeline.outbound import envelope
from relay.pipeline.payload import parsed_view
from relay.server.admin_json import (
    DELIVERIES_CURSOR,
    EVENTS_CURSOR,
    FILTER_KEYS,
    BadRequestError,
    parse_cursor,
    parse_filter,
    parse_id,
)
from relay.server.console import views
from relay.server.console.deps import Auth, ConsoleDeps
from relay.server.console.render import redirect

EVENTS_PER_PAGE = 50
DEAD_PER_PAGE = 50
# Dead letters are grouped over at most this many of the newest (the admin API's largest page).
DEAD_GROUPED = 1000
RATE_WINDOW = 3600.0
# The overview's recent attempts: this long back, at most this many (the newest) of them.
HEALTH_WINDOW = 3600.0
HEALTH_ATTEMPTS = 10_000
REQUEST_OUTCOMES = ("accepted", "validation", "rejected_auth", "too_large", "store_error")


def _search_fields(query: Any) -> dict[str, str]:
    """The search form's values as the operator typed them, to show them again."""
    return {key: str(query.get(key, "")) for key in FILTER_KEYS}


class Pages:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps

    # -- overview ----------------------------------------------------------------------------

    async def overview(self, request: web.Request, auth: Auth) -> web.Response:
        deps = self.deps
        now = time.time()
        statuses = await deps.control.destinations()
        # From the store: every process's attempts, not only this one's since it started.
        health = await deps.store.destination_health(now - HEALTH_WINDOW, HEALTH_ATTEMPTS)
        ready, reason = await deps.ready()
        requests = views.counter_totals(deps.metrics.requests)
        events = views.counter_totals(deps.metrics.events)
        inbounds = []
        for i in deps.settings.inbounds:
            # From the store, so it counts what every process sharing it received.
            last_hour = await deps.store.count_events(
                EventFilter(inbound=i.name, since=now - RATE_WINDOW)
            )
            inbounds.append(
                {
                    "config": i,
                    "last_hour": last_hour,
                    "requests": {o: int(requests.get((i.name, o), 0)) for o in REQUEST_OUTCOMES},
                    "events": int(sum(v for k, v in events.items() if k[0] == i.name)),
                }
            )
        return await self.deps.show(
            request,
            auth,
            "overview.html",
            "overview",
            destinations=statuses,
            health=health,
            health_limit=HEALTH_ATTEMPTS,
            now=now,
            ready=ready,
            ready_reason=reason,
            inbounds=inbounds,
            outcomes=REQUEST_OUTCOMES,
        )

    # -- events ------------------------------------------------------------------------------

    async def events(self, request: web.Request, auth: Auth) -> web.Response:
        query = request.query
        fields = _search_fields(query)
        given = {k: v for k, v in fields.items() if v}
        values: dict[str, Any] = {
            "fields": fields,
            "problem": None,
            "events": [],
            "next_query": None,
            "filtered": bool(given),
            "paged": bool(query.get("cursor")),
            "replay_query": given,
            "inbound_names": [i.name for i in self.deps.settings.inbounds],
            "destination_names": [d.name for d in self.deps.settings.destinations],
            "states": [s.value for s in DeliveryState],
        }
        try:
            where = parse_filter(query, ignore=frozenset({"cursor"}))
            cursor = parse_cursor(query.get("cursor"), EVENTS_CURSOR)
        except BadRequestError as exc:
            values.update(problem=str(exc), filtered=False)
            return await self.deps.show(request, auth, "events.html", "events", 400, **values)
        page = await self.deps.store.list_events(where, EVENTS_PER_PAGE, cursor)
        values["events"] = page.events
        if page.next_cursor is not None:
            values["next_query"] = {**given, "cursor": str(page.next_cursor)}
        return await self.deps.show(request, auth, "events.html", "events", **values)

    async def _detail(self, request: web.Request) -> EventDetail:
        detail = await self.deps.store.get_event(request.match_info["id"])
        if detail is None:
            raise web.HTTPNotFound()
        return detail

    async def event(self, request: web.Request, auth: Auth) -> web.Response:
        detail = await self._detail(request)
        e = detail.event
        kind = self.deps.settings.inbound_kind(e.inbound)
        # The envelope of a first attempt; a replay's says "replay": true.
        first = ClaimedDelivery(
            id=0,
            event_id=e.id,
            destination="",
            attempt=1,
            replay=False,
            inbound=e.inbound,
            source=e.source,
            type=e.type,
            received_at=e.received_at,
            body=detail.payload,
            content_type=detail.payload_content_type,
            fired_at=e.fired_at,
        )
        preview = await self.deps.control.replay_event(e.id, (), auth.operator, dry_run=True)
        parsed = parsed_view(kind, detail.payload, detail.payload_content_type)
        notice = None
        replay_id = parse_id(request.query.get("replay", ""))
        if replay_id is not None:
            notice = await self.deps.store.get_replay(replay_id)
        return await self.deps.show(
            request,
            auth,
            "event.html",
            "events",
            detail=detail,
            e=e,
            kind=kind.value if kind is not None else None,
            body=views.body_view(detail.request.body),
            payload=views.body_view(detail.payload)
            if detail.payload != detail.request.body
            else None,
            parsed=views.pretty_json(parsed),
            envelope=views.pretty_json(orjson.loads(envelope(first, kind))),
            routed=sorted(preview.per_destination or {}) if preview is not None else [],
            destination_names=[d.name for d in self.deps.settings.destinations],
            timelines=views.timelines(detail.deliveries),
            polling=views.any_unfinished(detail.deliveries),
            replayed=notice,
            here=f"/console/events/{quote(e.id)}",
        )

    async def event_deliveries(self, request: web.Request, auth: Auth) -> web.Response:
        """The timelines alone: what the event page polls (htmx) while a delivery is unfinished."""
        detail = await self._detail(request)
        return await self.deps.show(
            request,
            auth,
            "_deliveries.html",
            "events",
            e=detail.event,
            timelines=views.timelines(detail.deliveries),
            polling=views.any_unfinished(detail.deliveries),
            here=f"/console/events/{quote(detail.event.id)}",
        )

    async def event_body(self, request: web.Request, auth: Auth) -> web.StreamResponse:
        """The exact request body, as a download the browser never renders."""
        detail = await self._detail(request)
        response = web.Response(
            body=detail.request.body,
            content_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{detail.event.id}.body"',
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )
        return response

    # -- dead letters ------------------------------------------------------------------------

    async def dead(self, request: web.Request, auth: Auth) -> web.Response:
        store = self.deps.store
        destination = request.query.get("destination") or None
        cursor = parse_cursor(request.query.get("cursor"), DELIVERIES_CURSOR)
        newest = await store.list_deliveries(DeliveryState.DEAD, destination, DEAD_GROUPED)
        if cursor is None:
            rows = newest.deliveries[:DEAD_PER_PAGE]
            more = len(newest.deliveries) > DEAD_PER_PAGE
        else:
            page = await store.list_deliveries(
                DeliveryState.DEAD, destination, DEAD_PER_PAGE, cursor
            )
            rows, more = page.deliveries, page.next_cursor is not None
        next_query = None
        if more and rows:
            next_query = {"cursor": str(rows[-1].delivery.id)}
            if destination:
                next_query["destination"] = destination
        statuses = {s.name: s for s in await self.deps.control.destinations()}
        return await self.deps.show(
            request,
            auth,
            "dead.html",
            "dead",
            destination=destination,
            statuses=statuses,
            grouped=views.dead_groups(newest.deliveries),
            grouped_of=len(newest.deliveries),
            grouped_all=newest.next_cursor is None,
            rows=rows,
            next_query=next_query,
            here=views.here(request.path, request.query),
        )

    async def delivery(self, request: web.Request, auth: Auth) -> web.Response:
        """One delivery: its place in its event's timeline (audit entries and the overview
        name deliveries by id)."""
        number = parse_id(request.match_info["id"])
        found = await self.deps.store.get_delivery(number) if number is not None else None
        if found is None:
            raise web.HTTPNotFound()
        return redirect(f"/console/events/{quote(found.event_id)}#delivery-{found.id}")
