"""Checks across tables of how much relay may hold: bodies in memory, bytes in the store (pure).

    capacity_problems(server, storage, inbounds)  # -> [CapacityProblem(...)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.config.schema import InboundConfig, ServerConfig, StorageConfig


@dataclass(frozen=True, slots=True)
class CapacityProblem:
    key: str
    reason: str
    warning: bool = False  # valid, but most likely not what was meant


def capacity_problems(
    server: ServerConfig, storage: StorageConfig, inbounds: Sequence[InboundConfig]
) -> list[CapacityProblem]:
    found: list[CapacityProblem] = []
    largest = max((i.max_body_bytes for i in inbounds), default=0)
    if largest > server.max_inflight_bytes:
        found.append(
            CapacityProblem(
                "server.max_inflight_bytes",
                f"must be at least the largest max_body_bytes ({largest}), or such a body could"
                " never be taken",
            )
        )
    cap = storage.max_size_mb
    if cap is None:
        return found
    # With a cap on the whole store, an inbound without a quota of its own can fill it, and then
    # every inbound gets 503 (journey webhooks, which Mailchimp never retries, included).
    unbounded = [i.name for i in inbounds if i.quota_mb is None]
    if unbounded and len(inbounds) > 1:
        found.append(
            CapacityProblem(
                "storage.max_size_mb",
                f"inbound(s) {', '.join(unbounded)} have no quota_mb: one of them alone can fill"
                " the store and stop every other inbound",
                warning=True,
            )
        )
    shares = sum(i.quota_mb for i in inbounds if i.quota_mb is not None)
    if shares > cap:
        found.append(
            CapacityProblem(
                "storage.max_size_mb",
                f"the inbounds' quota_mb add up to {shares:g}, more than the cap ({cap:g}): the"
                " cap, not a quota, stops them, and it stops them all",
                warning=True,
            )
        )
    return found
