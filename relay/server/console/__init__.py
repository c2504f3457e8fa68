"""The operator console: server-rendered HTML at /console, on the admin address.

    console = Console(store, control, metrics, relay.ready)
    app = web.Application(middlewares=[console.middleware()])
    app.router.add_routes(console.routes())

Pages are plain HTML forms and links, so every page works without JavaScript; a vendored htmx
(static/htmx.min.js) only refreshes a delivery timeline or a replay's progress while they move.
Every action that changes something (replay, cancel, pause, resume, reset, resolve, retry,
discard) is a CSRF-checked form that calls the Control method the admin API calls, with the
logged-in operator, so the audit trail says who did it; bulk ones show a dry run first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay.obs.metrics import Metrics
from relay.server.console.access import PREFIX, Access
from relay.server.console.actions import Actions
from relay.server.console.control_pages import ControlPages
from relay.server.console.deps import ConsoleDeps
from relay.server.console.pages import Pages
from relay.server.console.render import asset_version, environment, load_static
from relay.server.console.replay_pages import ReplayPages
from relay.server.control import Control
from relay.store import Store

__all__ = ["Console"]


class Console:
    def __init__(
        self,
        store: Store,
        control: Control,
        metrics: Metrics,
        ready: Callable[[], Awaitable[tuple[bool, str]]],
    ) -> None:
        self._static = load_static()
        deps = ConsoleDeps(
            store, control, metrics, ready, environment(), asset_version(self._static)
        )
        self.access = Access(deps)
        self.pages = Pages(deps)
        self.replay_pages = ReplayPages(deps)
        self.control_pages = ControlPages(deps)
        self.actions = Actions(deps)

    def middleware(self) -> Any:
        return self.access.middleware()

    def routes(self) -> list[web.RouteDef]:
        p, r, c, a, access = (
            self.pages, self.replay_pages, self.control_pages, self.actions, self.access
        )
        page = {
            "": p.overview,
            "/events": p.events,
            "/events/{id}": p.event,
            "/events/{id}/deliveries": p.event_deliveries,
            "/events/{id}/body": p.event_body,
            "/deliveries/{id}": p.delivery,
            "/dead": p.dead,
            "/replay": r.preview,
            "/replays": r.replays,
            "/replays/{id}": r.replay,
            "/replays/{id}/progress": r.progress,
            "/replays/{id}/cancel": r.confirm_cancel,
            "/discard": c.discard_preview,
            "/audit": c.audit,
        }
        action = {
            "/logout": access.logout,
            "/events/{id}/replay": a.replay_event,
            "/replay": a.replay,
            "/destinations/{name}/pause": a.pause,
            "/destinations/{name}/resume": a.resume,
            "/destinations/{name}/reset": a.reset,
            "/replays/{id}/cancel": a.cancel_replay,
            "/deliveries/{id}/resolve": a.resolve,
            "/deliveries/{id}/retry": a.retry,
            "/discard": a.discard,
        }
        return [
            web.get(PREFIX + "/login", access.show_login, allow_head=False),
            web.post(PREFIX + "/login", access.login),
            web.get(PREFIX + "/static/{name}", self._static_file, allow_head=False),
            *(
                web.get(PREFIX + path, access.authed(h), allow_head=False)
                for path, h in page.items()
            ),
            *(web.post(PREFIX + path, access.authed(h)) for path, h in action.items()),
        ]

    async def _static_file(self, request: web.Request) -> web.Response:
        found = self._static.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(body=found.body, headers={"Content-Type": found.content_type})
