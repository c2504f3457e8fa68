"""Wiring: build the aiohttp application from settings, and start and stop its parts in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relay.config import Settings
from relay.delivery.sender import Sender
from relay.delivery.worker import Dispatcher
from relay.model import AuditAction, InboundKind
from relay.obs.logs import FLUSH_INTERVAL, flush_logs
from relay.obs.metrics import Metrics
from relay.server.admin_api import Admin, admin_middleware
from relay.server.admin_control import AdminControl
from relay.server.audit import Actor
from relay.server.body import InflightBudget
from relay.server.console import Console
from relay.server.control import Control
from relay.server.inbound_routes import InboundRoutes
from relay.server.ingest import Ingest
from relay.server.listener import ConnectionGate, connection_middleware
from relay.server.memory import HeapTrimmer, trim_loop
from relay.server.quotas import Quotas
from relay.server.reload import ConfigReloader
from relay.server.worker_metrics import WorkerMetrics
from relay.store import Store, StoreError, create_store
from relay.store.siblings import Siblings

log = logging.getLogger("relay.app")

STATS_INTERVAL = 5.0
# A commit this recent proves storage is writable without writing again for /readyz.
READY_FRESHNESS = 5.0
PING_TIMEOUT = 10.0


class Relay:
    """The running parts of one relay, shared by its handlers through the application."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        gate: ConnectionGate,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        # Connections to this relay, counted and timed by the sites that serve it (RelaySite).
        self.gate = gate
        self.sender = Sender()
        self.dispatcher = Dispatcher(
            settings.destinations, store, self.sender, metrics, on_fatal, _kinds(settings)
        )
        self.control = Control(settings, store, metrics, on_fatal)
        # Request bodies held in memory, across all inbound requests, and the heap they free.
        self.budget = InflightBudget(settings.server.max_inflight_bytes)
        metrics.inflight_bytes.set_function(lambda: self.budget.in_use)
        self.trimmer = HeapTrimmer(self.budget)
        self.quotas = Quotas(settings, store, metrics)
        self.ingest = Ingest(settings, store, metrics, self.budget, self.quotas)
        self.inbound_routes = InboundRoutes(self.ingest)
        self._last_write_ok = 0.0
        # One of several worker processes: /metrics answers for all of them.
        self.worker_metrics: WorkerMetrics | None = None

    async def reload(self, new: Settings) -> None:
        """Put a reloaded configuration into effect (``relay.server.reload`` checked it): from
        the next request on, everything routes, delivers and authenticates by it."""
        old = self.settings
        gone = [d.name for d in old.destinations if new.destination(d.name) is None]
        self.metrics.reconfigure(
            _journey_types(new),
            [i.name for i in new.inbounds],
            [d.name for d in new.destinations],
            gone,
            _rates(new),
        )
        # No await from here to the end of the swap: a request sees all of the old
        # configuration or all of the new.
        self.ingest.apply(new)
        self.quotas.apply(new)
        self.inbound_routes.rebuild()
        self.control.apply(new)
        self.settings = new
        self.dispatcher.apply(new.destinations, _kinds(new), new.server.shutdown_grace)
        try:
            await self.control.show_paused(new.destinations)
        except StoreError as exc:
            log.warning("paused destinations not read after the reload: %s", exc)

    async def ready(self) -> tuple[bool, str]:
        if not self.dispatcher.running:
            return False, "delivery workers are not running"
        if (trouble := self.store.trouble()) is not None:
            return False, f"storage is not writable: {trouble}"
        if time.monotonic() - self._last_write_ok > READY_FRESHNESS:
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
                # as the ping completes, and the stats loop then never stops on shutdown.
                async with asyncio.timeout(PING_TIMEOUT):
                    await self.store.ping()
            except (StoreError, TimeoutError) as exc:
                return False, f"storage is not writable: {exc or 'timed out'}"
            self._last_write_ok = time.monotonic()
        return True, "ready"

    async def refresh_stats(self) -> None:
        stats = await self.store.destination_stats()
        self.metrics.set_destination_stats(
            [d.name for d in self.settings.destinations], stats, time.time()
        )
        breakers = [d.name for d in self.settings.destinations if d.breaker is not None]
        if breakers:
            # The circuits are shared: another process may have opened or closed one.
            self.metrics.set_circuits(breakers, await self.store.gate_states())


def _kinds(settings: Settings) -> dict[str, InboundKind]:
    return {i.name: i.kind for i in settings.inbounds}


def _rates(settings: Settings) -> dict[str, float]:
    return {d.name: d.rate_limit.rate for d in settings.destinations if d.rate_limit}


def _journey_types(settings: Settings) -> frozenset[str]:
    return frozenset(i.event_type for i in settings.inbounds if i.event_type)


RELAY_KEY = web.AppKey("relay", Relay)


def _fatal_to_stop(app: web.Application) -> Callable[[BaseException], None]:
    def on_fatal(exc: BaseException) -> None:
        fut = app.get(FATAL_KEY)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    return on_fatal


FATAL_KEY = web.AppKey("fatal", asyncio.Future[None])


ADMIN_APP_KEY = web.AppKey("admin_app", web.Application)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    siblings: Siblings | None = None,
) -> web.Application:
    """The whole relay as one aiohttp Application; its startup opens storage and starts workers.

    With ``[admin] listen`` the operator half (/admin, /console, /metrics) is a second
    application, ``app[ADMIN_APP_KEY]``, to be served on that address; the first then answers
    those paths 404. Both share one Relay, started and stopped with the first.

    ``siblings``: this is one of a supervisor's worker processes (``[server] workers``); its
    store signals and takes write turns with the others, and /metrics answers for all of them.
    """
    metrics = Metrics(
        registry,
        journey_types=_journey_types(settings),
        inbounds=[i.name for i in settings.inbounds],
        destinations=[d.name for d in settings.destinations],
        rates=_rates(settings),
    )
    the_store = (
        store
        if store is not None
        else create_store(settings.storage, settings.dedup_window, siblings)
    )
    the_store.on_commit = metrics.observe_commit
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    # Connections to either address are counted and timed by the sites serving them (RelaySite).
    gate = ConnectionGate(settings.server, metrics)
    app.middlewares.append(connection_middleware(gate))
    relay = Relay(settings, the_store, metrics, gate, _fatal_to_stop(app))
    console = Console(the_store, relay.control, metrics, relay.ready)
    app[RELAY_KEY] = relay
    if siblings is not None:
        relay.worker_metrics = WorkerMetrics(siblings, metrics.exposition)
    # Inbound URLs are routed by the relay's current configuration: a reload changes them.
    app.router.register_resource(relay.inbound_routes)
    _add_health(app)
    if settings.admin.listen is None:
        _add_operator_parts(app, relay, console)
    else:
        admin = web.Application()
        admin.middlewares.append(connection_middleware(gate))
        admin[RELAY_KEY] = relay
        _add_health(admin)
        _add_operator_parts(admin, relay, console)
        app[ADMIN_APP_KEY] = admin
    app.cleanup_ctx.append(_lifecycle)
    return app


def _add_health(app: web.Application) -> None:
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)


def _add_operator_parts(app: web.Application, relay: Relay, console: Console) -> None:
    # The token is read at each request: a reload changes it.
    app.middlewares.append(admin_middleware(lambda: relay.settings.admin.token))
    app.middlewares.append(console.middleware())
    app.router.add_routes(Admin(relay.store, relay.control).routes())
    app.router.add_routes(AdminControl(relay.store, relay.control).routes())
    app.router.add_routes(console.routes())
    app.router.add_get("/metrics", _metrics)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    relay = app[RELAY_KEY]
    app[FATAL_KEY] = asyncio.get_running_loop().create_future()
    await relay.store.open()
    await relay.sender.start()
    relay.dispatcher.start()
    side_tasks = [
        asyncio.create_task(_stats_loop(relay), name="relay-stats"),
        asyncio.create_task(_flush_loop(), name="relay-log-flush"),
        asyncio.create_task(trim_loop(relay.trimmer), name="relay-heap-trim"),
        asyncio.create_task(relay.quotas.run(), name="relay-quotas"),
    ]
    await relay.control.start()
    if relay.worker_metrics is not None:
        await relay.worker_metrics.start()
    try:
        yield
    finally:
        if relay.worker_metrics is not None:
            await relay.worker_metrics.stop()
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        await relay.control.stop()
        await relay.dispatcher.stop(relay.settings.server.shutdown_grace)
        await relay.sender.close()
        await relay.store.close()
        log.info("relay stopped")
        flush_logs()


async def _flush_loop() -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        flush_logs()


async def _stats_loop(relay: Relay) -> None:
    while True:
        try:
            await relay.refresh_stats()
        except StoreError as exc:
            log.warning("could not refresh delivery stats: %s", exc)
        ok, _ = await relay.ready()
        relay.metrics.ready.set(1 if ok else 0)
        await asyncio.sleep(STATS_INTERVAL)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    ok, reason = await request.app[RELAY_KEY].ready()
    request.app[RELAY_KEY].metrics.ready.set(1 if ok else 0)
    return web.Response(status=200 if ok else 503, text=reason + "\n")


async def _metrics(request: web.Request) -> web.Response:
    relay = request.app[RELAY_KEY]
    with contextlib.suppress(StoreError):
        await relay.refresh_stats()
    body = relay.metrics.exposition()
    if relay.worker_metrics is not None:
        body = await relay.worker_metrics.gather(body)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def config_reloader(app: web.Application, path: Path) -> ConfigReloader:
    """What ``kill -HUP`` runs: re-read ``path`` and put it into effect (``relay.server.reload``).

    The hook for a supervisor of several processes: each worker process installs this on its
    own SIGHUP; the parent forwards the signal to every worker.
    """
    relay = app[RELAY_KEY]

    async def audit(actor: Actor, action: AuditAction, changes: list[str]) -> None:
        await relay.control.auditor.record(actor, action, None, changes=changes)

    return ConfigReloader(path, lambda: relay.settings, relay.reload, audit)
