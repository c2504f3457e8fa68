"""Per-inbound quotas: one inbound's sender cannot fill the store and silence the others.

An inbound with ``quota_mb`` gets 503 (Mailchimp retries later) once the requests stored for it
take that much, while every other inbound keeps taking webhooks. What each inbound's requests
take is counted by the store in the transactions that store and prune them
(``Store.inbound_usage``), shared by every process; this process reads it every second and adds
what it stores meanwhile, so an inbound goes over its quota by at most about a second of its
traffic.
"""

from __future__ import annotations

import asyncio
import logging

from relay.config import InboundConfig, Settings
from relay.model import RawRequest
from relay.obs.metrics import Metrics
from relay.store import Store, StoreError

log = logging.getLogger("relay.ingest")

REFRESH = 1.0
MB = 1024 * 1024


class Quotas:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._usage: dict[str, int] = {}
        self._over: set[str] = set()
        self._limits: dict[str, int] = {}
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Take the quotas of a (re)loaded configuration."""
        limits = {
            i.name: int(i.quota_mb * MB) for i in settings.inbounds if i.quota_mb is not None
        }
        for name in set(self._limits) - set(limits):
            self.metrics.inbound_quota.remove(name)
        for name, limit in limits.items():
            self.metrics.inbound_quota.labels(name).set(limit)
        self._limits = limits
        self._over &= set(limits)

    def over(self, inbound: InboundConfig) -> bool:
        return inbound.name in self._over

    def stored(self, inbound: InboundConfig, request: RawRequest) -> None:
        """What this process just stored for ``inbound``, until the next count says exactly."""
        limit = self._limits.get(inbound.name)
        if limit is not None:
            # The store counts the headers as a JSON array of pairs: ["name","value"], ...
            headers = sum(len(k) + len(v) + 8 for k, v in request.headers) + 2
            size = len(request.body) + headers
            self._usage[inbound.name] = self._usage.get(inbound.name, 0) + size
            self._check(inbound.name, limit)

    def refresh(self, usage: dict[str, int]) -> None:
        self._usage = dict(usage)
        for name, used in usage.items():
            self.metrics.inbound_stored.labels(name).set(used)
        for name, limit in self._limits.items():
            self._check(name, limit)

    def _check(self, name: str, limit: int) -> None:
        used = self._usage.get(name, 0)
        if used >= limit and name not in self._over:
            self._over.add(name)
            log.warning(
                "inbound=%s is at its quota_mb=%g (%.2f MB stored): its webhooks get 503 until"
                " retention or `relay prune` frees room or the quota is raised",
                name, limit / MB, used / MB,
            )  # fmt: skip
        elif used < limit and name in self._over:
            self._over.discard(name)
            log.warning("inbound=%s is back under its quota_mb=%g", name, limit / MB)

    async def run(self) -> None:
        """Read what every process has stored, every second, until cancelled."""
        while True:
            try:
                self.refresh(await self.store.inbound_usage())
            except StoreError as exc:
                log.warning("could not read the inbounds' stored bytes: %s", exc)
            await asyncio.sleep(REFRESH)
