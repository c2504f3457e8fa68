"""Inbound URLs routed through a router of their own, so a reload can add and remove them.

aiohttp freezes an application's router once it serves; the inbound paths live in a second
router, rebuilt from the configuration on every reload and swapped in whole, which a middleware
consults before the application's own routes. A path that is not an inbound's falls through to
those (admin API, health, metrics); a configured path asked with another method is 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from relay.server.ingest import Ingest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InboundRoutes:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self._router = self._build()

    def _build(self) -> web.UrlDispatcher:
        router = web.UrlDispatcher()
        router.add_routes(self.ingest.routes())
        return router

    def rebuild(self) -> None:
        """Route by the ingest's current configuration from the next request on."""
        self._router = self._build()

    def middleware(self) -> Any:
        @web.middleware
        async def route_inbounds(request: web.Request, handler: Handler) -> web.StreamResponse:
            match = await self._router.resolve(request)
            if isinstance(match, MatchInfoError):
                if match.http_exception.status == 405:
                    raise match.http_exception
                return await handler(request)
            return await match.handler(request)

        return route_inbounds
