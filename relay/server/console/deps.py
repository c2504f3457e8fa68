"""What the console's handlers share: the relay's parts they call, templates, and what is wired."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2

from relay.config import Settings
from relay.obs.metrics import Metrics
from relay.server.control import Control
from relay.store import Store


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Operator controls the console shows. The templates hold the places for the ones that
    wait on operator-control features (replay list and cancel, resolve, discard, retry now, the
    audit trail); each turns on when its handler is wired to the Control method behind it."""

    list_replays: bool = False
    cancel_replay: bool = False
    resolve: bool = False
    discard: bool = False
    retry_now: bool = False
    audit: bool = False


@dataclass(frozen=True, slots=True)
class Auth:
    """Who is using the console in this request, and the CSRF token their forms carry."""

    operator: str  # recorded with every action (a replay's requested_by)
    name: str  # shown in the header
    sid: str
    csrf: str
    via: str  # "session" or "bearer"


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    store: Store
    control: Control
    metrics: Metrics
    ready: Callable[[], Awaitable[tuple[bool, str]]]
    env: jinja2.Environment
    asset_version: str
    can: Capabilities = field(default_factory=Capabilities)

    @property
    def settings(self) -> Settings:
        # The control's, read at each use: a reloaded configuration (token, inbounds,
        # destinations) replaces it there.
        return self.control.settings

    def context(self, auth: Auth | None, section: str, **values: Any) -> dict[str, Any]:
        """The values every page template gets, plus the page's own."""
        return {
            "auth": auth,
            "section": section,
            "asset": self.asset_version,
            "can": self.can,
            "notice": None,
            **values,
        }
