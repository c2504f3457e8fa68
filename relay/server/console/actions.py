"""The console's actions (POST, CSRF-checked by the access guard): replay one event, confirm a
bulk replay, pause and resume a destination, close its circuit by hand.

Each calls the Control method the admin API calls, with the logged-in operator as the one who
asked, then redirects (303) to the page that shows the result.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

from aiohttp import web

from relay.model import EventFilter
from relay.server.admin_json import BadRequestError, filter_json, parse_filter, parse_names
from relay.server.console.deps import Auth, ConsoleDeps
from relay.server.console.render import redirect
from relay.server.control import Actor, ReplayRequest

log = logging.getLogger("relay.console")

# Form fields of the confirm form that are not part of the replay's filter.
_NOT_FILTER = frozenset({"to", "csrf"})


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

    async def pause(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        held = await self.deps.control.pause(name, Actor(auth.operator, request.remote))
        log.info("console: %s paused destination=%s", auth.operator, name)
        return redirect("/console?" + urlencode({"done": "pause", "name": name, "n": held}))

    async def resume(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        released = await self.deps.control.resume(name, Actor(auth.operator, request.remote))
        log.info("console: %s resumed destination=%s", auth.operator, name)
        return redirect("/console?" + urlencode({"done": "resume", "name": name, "n": released}))

    async def reset(self, request: web.Request, auth: Auth) -> web.Response:
        name = request.match_info["name"]
        was_open = await self.deps.control.reset_circuit(name, Actor(auth.operator, request.remote))
        log.info("console: %s reset the circuit of destination=%s", auth.operator, name)
        query = urlencode({"done": "reset", "name": name, "n": int(was_open)})
        return redirect(f"/console?{query}")
