"""Who asks: the operator behind an admin request, and the audit trail of what operators did.

Every change an operator makes (pause, resume, prune, replay, cancel, discard, resolve, retry,
reset of a circuit, and config reloads) is appended to the store's audit table after it is
done, with who asked (``X-Relay-Operator``, the CLI's ``--operator``), from which address, and
its parameters and effect; ``GET /admin/audit`` and ``relay audit list`` read it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from relay.model import AuditAction, NewAudit
from relay.store import Store, StoreError

log = logging.getLogger("relay.audit")

# Who asks when an admin request does not say (no X-Relay-Operator header).
DEFAULT_OPERATOR = "admin-api"
MAX_OPERATOR = 100


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for an operator action, and from where (the client's address)."""

    name: str = DEFAULT_OPERATOR
    peer: str | None = None


def operator_name(header: str | None) -> str | None:
    """The operator a request names, cut to a sane length; None when it names none, or
    names one that cannot be stored or logged as text (not printable)."""
    name = (header or "").strip()
    if not name:
        return DEFAULT_OPERATOR
    if not name.isprintable():
        return None
    return name[:MAX_OPERATOR]


class Auditor:
    """Appends operator actions to the audit trail; a failure to do so is logged, never lost
    silently, and never undoes the action (which is done by then)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self,
        actor: Actor,
        action: AuditAction,
        target: str | None = None,
        **detail: Any,
    ) -> None:
        entry = NewAudit(
            operator=actor.name,
            action=action,
            target=target,
            detail=orjson.dumps(detail).decode(),
            peer=actor.peer,
        )
        try:
            await self.store.record_audit(entry)
        except StoreError as exc:
            log.error(
                "audit entry not stored (%s): operator=%s action=%s target=%s detail=%s",
                exc,
                entry.operator,
                entry.action.value,
                entry.target or "-",
                entry.detail,
            )
