"""``/metrics`` of a relay that runs several worker processes: every worker's series, labelled.

The listen socket is shared (SO_REUSEPORT), so a scrape reaches whichever worker the kernel
picks. That worker asks each sibling for its own exposition over a unix socket in the
supervisor's run directory and answers with all of them, each sample labelled
``worker="<index>"``: Prometheus sees every process's counters on every scrape, and a worker
that restarts resets only its own series (``rate()`` handles that; a sum over workers computed
here would look like a counter going backwards). Totals are ``sum without (worker) (...)``.
Gauges read from the store (pending deliveries, dead letters, circuits) are the same in every
worker: take ``max without (worker)``. A sibling that does not answer within a second (it is
restarting) is left out of that scrape.

    metrics = WorkerMetrics(siblings, relay.metrics.exposition)
    await metrics.start()
    body = await metrics.gather(relay.metrics.exposition())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from relay.store.siblings import Siblings

log = logging.getLogger("relay.metrics")

KIND = "metrics"
SIBLING_TIMEOUT = 1.0
LABEL = "worker"


class WorkerMetrics:
    """Serves this worker's exposition to its siblings, and gathers theirs for a scrape."""

    def __init__(self, siblings: Siblings, exposition: Callable[[], bytes]) -> None:
        self._siblings = siblings
        self._exposition = exposition
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self._siblings.socket(KIND)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        self._server = await asyncio.start_unix_server(self._serve, path=path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self._siblings.socket(KIND))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._exposition())
            await writer.drain()
        except OSError:
            pass  # the asking sibling gave up
        finally:
            writer.close()

    async def gather(self, own: bytes) -> bytes:
        """This worker's exposition and its siblings', one labelled exposition."""
        others = self._siblings.others()
        texts = await asyncio.gather(*(self._ask(i) for i in others))
        parts = [(self._siblings.index, own)]
        parts += [(i, text) for i, text in zip(others, texts, strict=True) if text is not None]
        return merge(sorted(parts))

    async def _ask(self, index: int) -> bytes | None:
        try:
            async with asyncio.timeout(SIBLING_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(
                    self._siblings.socket(KIND, index)
                )
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.debug("worker %d's metrics left out of this scrape: %s", index, exc)
            return None


def merge(parts: Iterable[tuple[int, bytes]]) -> bytes:
    """Expositions of several workers as one, each sample labelled with its worker's index.

    >>> text = b"# HELP x_total X.\\n# TYPE x_total counter\\nx_total 2.0\\n"
    >>> print(merge([(0, text), (1, text)]).decode(), end="")
    # HELP x_total X.
    # TYPE x_total counter
    x_total{worker="0"} 2.0
    x_total{worker="1"} 2.0
    """
    families: dict[str, Metric] = {}
    for index, text in parts:
        for family in text_string_to_metric_families(text.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            worker = str(index)
            merged.samples += [
                Sample(s.name, {**s.labels, LABEL: worker}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    """The merged families, as a collector ``generate_latest`` can read."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
