"""Inbound URLs as one resource of the application's router, so a reload can add and remove them.

aiohttp freezes an application's router once it serves; the inbound paths live in a table of
their own, rebuilt from the configuration on every reload and swapped in whole, which a single
resource registered in the router consults. Being a resource (not a middleware that resolves a
second time) matters on the hot path: aiohttp resolves every request once anyway, and a path its
router does not know costs an HTTPNotFound, a system route and middlewares wrapped afresh, per
webhook. A path that is not an inbound's falls through to the others (admin API, health,
metrics); a configured path asked with another method is 405. Config checks keep inbound paths
off the reserved prefixes, so the order in which the router asks its resources does not matter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, ResourceRoute, UrlMappingMatchInfo
from yarl import URL

from relay.server.ingest import Ingest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# path -> method -> route, and the methods allowed on the path (for a 405's Allow header).
Table = dict[str, tuple[dict[str, ResourceRoute], set[str]]]


class InboundRoutes(AbstractResource):
    def __init__(self, ingest: Ingest) -> None:
        super().__init__(name=None)
        self.ingest = ingest
        self._table = self._build()

    def _build(self) -> Table:
        table: Table = {}
        for route in self.ingest.routes():
            assert isinstance(route, web.RouteDef)
            methods, allowed = table.setdefault(route.path, ({}, set()))
            heads = ("HEAD",) if route.kwargs.get("allow_head") else ()
            for method in (route.method, *heads):
                methods[method] = ResourceRoute(method, route.handler, self)
                allowed.add(method)
        return table

    def rebuild(self) -> None:
        """Route by the ingest's current configuration from the next request on."""
        self._table = self._build()

    # -- what aiohttp's router asks of a resource -----------------------------------------------

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        entry = self._table.get(request.rel_url.path_safe)
        if entry is None:
            return None, set()
        methods, allowed = entry
        route = methods.get(request.method)
        if route is None:
            return None, allowed
        return UrlMappingMatchInfo({}, route), allowed

    @property
    def canonical(self) -> str:
        # Indexed under "/": asked after every resource with a more specific path.
        return "/{inbound}"

    def url_for(self, **kwargs: str) -> URL:
        raise NotImplementedError("inbound routes are not reversed by name")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("inbound routes are served at their configured paths")

    def get_info(self) -> Any:
        return {"paths": sorted(self._table)}

    def raw_match(self, path: str) -> bool:
        return path in self._table

    def __len__(self) -> int:
        return sum(len(methods) for methods, _ in self._table.values())

    def __iter__(self) -> Iterator[Any]:
        return (route for methods, _ in self._table.values() for route in methods.values())
