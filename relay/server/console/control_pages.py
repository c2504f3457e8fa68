"""The console's pages for operator control (GET only): the dry run before a discard, and the
audit trail of what operators did.

The discard filter is read by the admin API's own parser and counted by the Control call that
``POST /admin/deliveries/discard`` with ``dry_run`` makes; the audit trail is the store's list
that ``GET /admin/audit`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from relay.model import AuditAction, DeliveryFilter, iso_utc
from relay.server.admin_control import parse_discard_filter
from relay.server.admin_json import BadRequestError, parse_id
from relay.server.console import session, views
from relay.server.console.deps import Auth, ConsoleDeps

AUDIT_PER_PAGE = 50
ACTIONS = tuple(a.value for a in AuditAction)
# Form fields of the discard pages that are not part of the discard's filter.
NOT_FILTER = frozenset({"back", "csrf"})


def discard_filter(form: Mapping[str, Any]) -> tuple[DeliveryFilter, str]:
    """The filter a discard form or link names, as the admin API parses it."""
    return parse_discard_filter({k: str(v) for k, v in form.items() if k not in NOT_FILTER})


class ControlPages:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps

    async def discard_preview(self, request: web.Request, auth: Auth) -> web.Response:
        """How many waiting deliveries a discard would drop, and the form that confirms it."""
        query = request.query
        back = session.safe_next(query.get("back"))
        try:
            where, text = discard_filter(query)
        except BadRequestError as exc:
            return await self.deps.show(
                request, auth, "discard.html", "", 400, problem=str(exc), back=back
            )
        # The confirmation drops what was counted: deliveries of events received after this
        # page (live traffic to a paused destination) are not part of it.
        now = time.time()
        if where.event.until is None or where.event.until > now:
            pinned = {**orjson.loads(text), "until": iso_utc(now)}
            where, text = parse_discard_filter(pinned)
        outcome = await self.deps.control.discard(
            where, auth.actor(request), dry_run=True, filter_json=text
        )
        fields = {k: str(v) for k, v in orjson.loads(text).items()}
        return await self.deps.show(
            request,
            auth,
            "discard.html",
            "",
            problem=None,
            matched=outcome.matched,
            fields=fields,
            back=back,
            states=[s.value for s in where.states],
        )

    async def audit(self, request: web.Request, auth: Auth) -> web.Response:
        """Who did what and when, newest first, by action and operator, a page at a time."""
        query = request.query
        action = query.get("action", "").strip()
        operator = query.get("operator", "").strip()
        cursor_text = query.get("cursor", "")
        cursor = parse_id(cursor_text) if cursor_text else None
        values: dict[str, Any] = {
            "fields": {"action": action, "operator": operator},
            "actions": ACTIONS,
            "entries": (),
            "next_query": None,
            "paged": cursor is not None,
            "problem": None,
            "first_query": {k: v for k, v in (("action", action), ("operator", operator)) if v},
            "target_of": views.audit_target,
            "detail_of": views.audit_detail,
        }
        if action and action not in ACTIONS:
            values["problem"] = f"{action!r} is not an action relay records."
        elif cursor_text and cursor is None:
            values["problem"] = "That page of the audit trail does not exist."
        if values["problem"] is not None:
            return await self.deps.show(request, auth, "audit.html", "audit", 400, **values)
        page = await self.deps.store.list_audit(
            AUDIT_PER_PAGE, cursor, action=action or None, operator=operator or None
        )
        if page.next_cursor is not None:
            values["next_query"] = {**values["first_query"], "cursor": str(page.next_cursor)}
        values["entries"] = page.entries
        return await self.deps.show(request, auth, "audit.html", "audit", **values)
