"""The console's replay pages (GET only): the dry run before a bulk replay, the list of replays,
one replay with its progress and outcome, and the step that confirms a cancel.

Reads go through the Store and Control calls the admin API makes (``/admin/replays``,
``/admin/replay`` with ``dry_run``), so both always agree.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from relay.model import DeliveryState, EventFilter, ReplayRecord, ReplayState
from relay.server.admin_json import (
    BadRequestError,
    filter_json,
    parse_filter,
    parse_id,
    parse_names,
)
from relay.server.console import views
from relay.server.console.deps import Auth, ConsoleDeps
from relay.server.console.render import redirect
from relay.server.control import ReplayRequest
from relay.store.rules import UNFINISHED

REPLAYS_PER_PAGE = 25

NO_FILTER = (
    "Choose at least one filter: replaying every stored event is something to ask for on "
    "purpose (the CLI's relay replay --since 1970-01-01 does it)."
)


class ReplayPages:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps

    async def preview(self, request: web.Request, auth: Auth) -> web.Response:
        """The dry run of a bulk replay, and the form that confirms it."""
        query = request.query
        show = self.deps.show
        try:
            where = parse_filter(query, ignore=frozenset({"to"}))
            to = parse_names(query.getall("to", []) or None)
        except BadRequestError as exc:
            return await show(request, auth, "replay_preview.html", "events", 400,
                              problem=str(exc))  # fmt: skip
        if where == EventFilter():
            return await show(request, auth, "replay_preview.html", "events", 400,
                              problem=NO_FILTER)  # fmt: skip
        # The confirmation replays what was counted: events received after this page are
        # live traffic, not part of it.
        now = time.time()
        pinned = dataclasses.replace(where, until=min(where.until or now, now))
        outcome = await self.deps.control.replay(
            ReplayRequest(pinned, to, auth.operator, filter_json(pinned), dry_run=True)
        )
        return await show(
            request,
            auth,
            "replay_preview.html",
            "events",
            problem=None,
            outcome=outcome,
            fields=orjson.loads(filter_json(pinned)),
            to=to,
        )

    async def replays(self, request: web.Request, auth: Auth) -> web.Response:
        """Replays newest first, a page at a time; or the one whose number was typed."""
        query = request.query
        text = query.get("id", "").strip().lstrip("#")
        values: dict[str, Any] = {"problem": None, "replays": (), "next_cursor": None}
        if text:
            number = parse_id(text)
            if number is not None:
                return redirect(f"/console/replays/{number}")
            values["problem"] = f"{text!r} is not a replay number."
        cursor_text = query.get("cursor", "")
        cursor = parse_id(cursor_text) if cursor_text else None
        if cursor_text and cursor is None:
            values["problem"] = "That page of replays does not exist: start from the newest."
        if values["problem"] is not None:
            return await self.deps.show(request, auth, "replays.html", "replays", 400, **values)
        page = await self.deps.store.list_replays(REPLAYS_PER_PAGE, cursor)
        values.update(replays=page.replays, next_cursor=page.next_cursor, paged=cursor is not None)
        return await self.deps.show(request, auth, "replays.html", "replays", **values)

    async def _replay(self, request: web.Request) -> ReplayRecord:
        number = parse_id(request.match_info["id"])
        record = await self.deps.store.get_replay(number) if number is not None else None
        if record is None:
            raise web.HTTPNotFound()
        return record

    async def replay(self, request: web.Request, auth: Auth) -> web.Response:
        record = await self._replay(request)
        return await self.deps.show(
            request,
            auth,
            "replay.html",
            "replays",
            filter=views.pretty_json(orjson.loads(record.filter)),
            cancelled_now=request.query.get("done") == "cancel",
            **_progress(record),
        )

    async def progress(self, request: web.Request, auth: Auth) -> web.Response:
        """The progress and outcome alone: what the replay page polls (htmx) while it moves."""
        record = await self._replay(request)
        return self.deps.page(auth, "_replay_progress.html", "replays", **_progress(record))

    async def confirm_cancel(self, request: web.Request, auth: Auth) -> web.Response:
        """What cancelling would stop and what it would leave, and the form that does it."""
        record = await self._replay(request)
        return await self.deps.show(
            request, auth, "replay_cancel.html", "replays", **_progress(record)
        )


def _progress(r: ReplayRecord) -> dict[str, Any]:
    """What the replay templates show of one replay: the record, its outcome per destination,
    what still waits, and whether it still moves (then the page refreshes itself)."""
    waiting = r.in_state(*UNFINISHED)
    return {
        "r": r,
        "outcome": views.replay_outcome(r),
        "columns": views.OUTCOME_COLUMNS,
        "delivered": r.in_state(DeliveryState.DELIVERED),
        "dead": r.in_state(DeliveryState.DEAD),
        "waiting": waiting,
        "discarded": r.in_state(DeliveryState.DISCARDED),
        "moving": r.state is ReplayState.RUNNING or waiting > 0,
    }
