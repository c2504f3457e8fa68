"""A hookspool source plugin for Mailchimp audience webhooks, written for the benchmark.

hookspool's built-in ``hookspool.webhook`` bobbin reads JSON bodies only; a Mailchimp form body
would be quarantined (202) instead of queued, which is not the path relay takes. This plugin is
the smallest code source that makes hookspool do relay's work: check ``?secret=`` in constant
time, parse the form body, and expose the event type so routes can filter on it.
The harness puts this directory on hookspool's PYTHONPATH and names the module in
``[sources.<name>].module``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from hookspool.plugin import BadPayload, Request, Secrets
from hookspool.plugin import verify as v

auth_headers: tuple[str, ...] = ()
secrets = ("secret",)
sender_retries = True  # Mailchimp retries failed deliveries itself


def verify(req: Request, secrets: Secrets) -> bool:
    return bool(v.static_token(req.query.get("secret", ""), secrets["secret"]))


def payload(req: Request) -> dict[str, str]:
    try:
        return dict(parse_qsl(req.body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise BadPayload("body is not UTF-8") from None


def key(payload: dict[str, Any], req: Request) -> str:
    # One audience per key: hookspool keeps order per key, as Mailchimp does per list.
    return str(payload.get("data[list_id]") or "mailchimp")


def event_type(payload: dict[str, Any], req: Request) -> str:
    return str(payload.get("type", ""))


def attrs(payload: dict[str, Any], req: Request) -> dict[str, str]:
    return {"type": str(payload.get("type", ""))}
