"""What the console's handlers share: the relay's parts they call, templates, and how a page is
rendered (errors included)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from relay.config import Settings
from relay.obs.metrics import Metrics
from relay.server.console.notices import action_notice
from relay.server.console.render import html
from relay.server.control import Actor, Control
from relay.store import Store


@dataclass(frozen=True, slots=True)
class Auth:
    """Who is using the console in this request, and the CSRF token their forms carry."""

    operator: str  # recorded with every action (a replay's requested_by, the audit trail)
    name: str  # shown in the header
    sid: str
    csrf: str
    via: str  # "session" or "bearer"

    def actor(self, request: web.Request) -> Actor:
        """The operator as Control records them: this name, from the client's address."""
        return Actor(self.operator, request.remote)


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    store: Store
    control: Control
    metrics: Metrics
    ready: Callable[[], Awaitable[tuple[bool, str]]]
    env: jinja2.Environment
    asset_version: str

    @property
    def settings(self) -> Settings:
        # The control's, read at each use: a reloaded configuration (token, inbounds,
        # destinations) replaces it there.
        return self.control.settings

    def context(self, auth: Auth | None, section: str, **values: Any) -> dict[str, Any]:
        """The values every page template gets, plus the page's own."""
        return {"auth": auth, "section": section, "asset": self.asset_version, "notice": None,
                **values}  # fmt: skip

    def page(
        self, auth: Auth | None, template: str, section: str, status: int = 200, **values: Any
    ) -> web.Response:
        return html(self.env, template, self.context(auth, section, **values), status)

    async def show(
        self,
        request: web.Request,
        auth: Auth,
        template: str,
        section: str,
        status: int = 200,
        **values: Any,
    ) -> web.Response:
        """A page, with the notice of the action that redirected to it (if one did)."""
        names = [d.name for d in self.settings.destinations]
        notice = await action_notice(self.store, request.query, names)
        return self.page(auth, template, section, status, notice=notice, **values)

    def error(
        self, auth: Auth | None, status: int, message: str, back: str | None = None
    ) -> web.Response:
        """A page that says in one line why something was not done, with a way back."""
        return self.page(auth, "error.html", "", status, code=status, message=message, back=back)
