"""The console's actions (POST, CSRF-checked by the access guard): replay one event, confirm a
bulk replay, pause and resume a destination, close its circuit by hand, cancel a replay,
resolve or retry a delivery, confirm a discard.

Each calls the Control method the admin API calls, with the logged-in operator as the one who
asked (so the audit trail names them), then redirects (303) to the page that shows the result.
What Control refuses (a 409: the thing is in another state now) is shown by the access guard
with its reason and a link back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from relay.model import EventFilter
from relay.server.admin_json import (
    BadRequestError,
    filter_json,
    parse_filter,
    parse_id,
    parse_names,
    parse_reason,
)
from relay.server.console import session
from relay.server.console.control_pages import discard_filter
from relay.server.console.deps import Auth, ConsoleDeps
from relay.server.console.render import redirect
from relay.server.console.views import with_notice
from relay.server.control import NotFoundError, ReplayRequest

log = logging.getLogger("relay.console")

# Form fields of the confirm form that are not part of the replay's filter.
_NOT_FILTER = frozenset({"to", "csrf"})


def _back(form: Mapping[str, Any], default: str) -> str:
    """Where a form returns to: its ``back`` field when that is a console page."""
    given = form.get("back")
    return session.safe_next(str(given)) if given else default


def _path_id(request: web.Request, what: str) -> int:
    number = parse_id(request.match_info["id"])
    if number is None:
        raise NotFoundError(f"unknown {what}: {request.match_info['id']}")
    return number


class Actions:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps

    async def replay_event(self, request: web.Request, auth: Auth) -> web.Response:
        event_id = request.match_info["id"]
        form = await request.post()
        to = parse_names([str(v) for v in form.getall("to", [])] or None)
        outcome = await self.deps.control.replay_event(
            event_id, to, auth.operator, peer=request.remote
        )
        if outcome is None:
            raise web.HTTPNotFound()
        log.info(
            "console: %s replayed event=%s as replay=%s", auth.operator, event_id, outcome.replay_id
        )
        query = urlencode({"replay": outcome.replay_id})
        return redirect(f"/console/events/{quote(event_id)}?{query}#deliveries")

    async def replay(self, request: web.Request, auth: Auth) -> web.Response:
        """Carry out the bulk replay the operator saw counted on the dry-run page."""
        form = await request.post()
        fields = {k: str(v) for k, v in form.items() if k not in _NOT_FILTER}
        where = parse_filter(fields)
        if where == EventFilter():
            raise BadRequestError("a bulk replay needs at least one filter")
        to = parse_names([str(v) for v in form.getall("to", [])] or None)
        outcome = await self.deps.control.replay(
            ReplayRequest(where, to, auth.operator, filter_json(where), peer=request.remote)
        )
        log.info(
            "console: %s started replay=%s matched=%d",
            auth.operator,
            outcome.replay_id,
            outcome.matched,
        )
        return redirect(f"/console/replays/{outcome.replay_id}")

    # -- destinations ------------------------------------------------------------------------

    async def pause(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        held = await self.deps.control.pause(name, auth.actor(request))
        return redirect("/console?" + urlencode({"done": "pause", "name": name, "n": held}))

    async def resume(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        released = await self.deps.control.resume(name, auth.actor(request))
        return redirect("/console?" + urlencode({"done": "resume", "name": name, "n": released}))

    async def reset(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        was_open = await self.deps.control.reset_circuit(name, auth.actor(request))
        query = urlencode({"done": "reset", "name": name, "n": int(was_open)})
        return redirect(f"/console?{query}")

    # -- replays, deliveries, discards -------------------------------------------------------

    async def cancel_replay(self, request: web.Request, auth: Auth) -> web.Response:
        replay_id = _path_id(request, "replay")
        await self.deps.control.cancel_replay(replay_id, auth.actor(request))
        return redirect(f"/console/replays/{replay_id}?done=cancel")

    async def resolve(self, request: web.Request, auth: Auth) -> web.Response:
        delivery_id = _path_id(request, "delivery")
        form = await request.post()
        reason = parse_reason(str(form.get("reason", "")))
        if reason is None:
            # The admin API lets scripts leave it out; a person clicking says why, for whoever
            # wonders later why this dead letter was let go.
            raise BadRequestError("reason: say why it needs no replay (it is kept with it)")
        await self.deps.control.resolve(delivery_id, auth.actor(request), reason)
        back = _back(form, f"/console/deliveries/{delivery_id}")
        return redirect(with_notice(back, done="resolve", delivery=delivery_id))

    async def retry(self, request: web.Request, auth: Auth) -> web.Response:
        delivery_id = _path_id(request, "delivery")
        form = await request.post()
        outcome = await self.deps.control.retry(delivery_id, auth.actor(request))
        back = _back(form, f"/console/events/{quote(outcome.delivery.event_id)}")
        notice: dict[str, str | int] = {"done": "retry", "delivery": delivery_id}
        if outcome.replay is not None and outcome.replay.created:
            notice["new"] = outcome.replay.created[0].id
        return redirect(with_notice(back, **notice) + "#deliveries")

    async def discard(self, request: web.Request, auth: Auth) -> web.Response:
        """Carry out the discard the operator saw counted on the dry-run page."""
        form = await request.post()
        where, text = discard_filter(form)
        outcome = await self.deps.control.discard(
            where, auth.actor(request), dry_run=False, filter_json=text
        )
        return redirect(with_notice(_back(form, "/console"), done="discard", n=outcome.matched))
