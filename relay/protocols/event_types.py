"""The event types relay derives from what Mailchimp sends, for metric labels and config checks.

A journey inbound adds its configured ``event_type``; anything else counts as "other" in
metrics, and a destination filter that matches none of these (nor a journey's) never fires.
"""

from __future__ import annotations

from relay.model import UNKNOWN_TYPE
from relay.protocols.mailchimp import AUDIENCE_TYPES

MANDRILL_MESSAGE_TYPES = frozenset(
    {
        "send", "deferral", "hard_bounce", "soft_bounce", "delivered", "open", "click", "spam",
        "unsub", "reject", "inbound",
    }
)  # fmt: skip
MANDRILL_SYNC_TYPES = frozenset(
    f"{list_name}.{action}"
    for list_name in ("blacklist", "whitelist", "denylist", "allowlist")
    for action in ("add", "remove", "change")
)
KNOWN_TYPES = AUDIENCE_TYPES | MANDRILL_MESSAGE_TYPES | MANDRILL_SYNC_TYPES | {UNKNOWN_TYPE}
