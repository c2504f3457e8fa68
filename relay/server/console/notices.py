"""The line a page shows after an action redirected to it (``?done=pause&name=crm&n=3``).

Built here from the store and the configuration, never taken from the URL: a crafted link can
make a page say at most that a known destination was paused, or a number, never put words on
it. What it says of a delivery is what the store holds for it now.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from relay.model import DeliveryState
from relay.server.admin_json import parse_id
from relay.store import Store


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def destination_notice(done: str, name: str, count: int) -> str | None:
    """After a pause, resume or circuit reset of ``name``."""
    if done == "pause":
        return f"Paused {name}: {_plural(count, 'pending delivery', 'pending deliveries')} held" \
            " until it is resumed."  # fmt: skip
    if done == "resume":
        return f"Resumed {name}: {_plural(count, 'held delivery is', 'held deliveries are')}" \
            " due now."  # fmt: skip
    if done == "reset":
        if count:
            return f"Closed the circuit of {name}: its waiting deliveries go out again."
        return f"The circuit of {name} was not open; its failure count starts again."
    return None


async def action_notice(
    store: Store, query: Mapping[str, str], names: Collection[str]
) -> str | None:
    done = query.get("done", "")
    count = parse_id(query.get("n", ""))
    if done in ("pause", "resume", "reset"):
        name = query.get("name", "")
        if name not in names or count is None:
            return None
        return destination_notice(done, name, count)
    if done == "discard" and count is not None:
        return f"Discarded {_plural(count, 'waiting delivery', 'waiting deliveries')}: never sent."
    delivery_id = parse_id(query.get("delivery", ""))
    delivery = await store.get_delivery(delivery_id) if delivery_id is not None else None
    if delivery is None:
        return None
    if done == "resolve" and delivery.resolved_at is not None:
        why = f": {delivery.resolve_reason}" if delivery.resolve_reason else ""
        return (
            f"Resolved delivery {delivery.id} to {delivery.destination} "
            f"({delivery.resolved_by}{why}): it is no longer a dead letter."
        )
    if done != "retry":
        return None
    new_id = parse_id(query.get("new", ""))
    again = await store.get_delivery(new_id) if new_id is not None else None
    if (
        again is not None
        and again.replay_id is not None
        and (again.event_id, again.destination) == (delivery.event_id, delivery.destination)
    ):
        return (
            f"Sent delivery {delivery.id} again as delivery {again.id} (replay "
            f"#{again.replay_id}); once that one is delivered, {delivery.id} is resolved."
        )
    if delivery.state is DeliveryState.PENDING:
        return f"Delivery {delivery.id} is due now: it goes out within a second."
    return f"Retried delivery {delivery.id} now: it is {delivery.state.value}."
