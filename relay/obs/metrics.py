"""Prometheus metrics: one registry per app, fed by small calls from ingest, store and delivery.

Labels are bounded: inbound and destination names come from the config, event types from the
known Mailchimp set (anything else is counted as "other"), never an email, id or URL.
"""

from __future__ import annotations

import collections
import contextlib
import platform
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from relay import __version__
from relay.protocols.event_types import KNOWN_TYPES
from relay.store.base import DestinationStats
from relay.store.gate import GateState

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Every outcome ingest counts in relay_requests_received_total. Each exists at 0 from the start
# for every inbound: `increase(...[15m]) > 0` cannot see the first increment of a series that
# did not exist before it, so an alert would miss the first burst after a restart.
REQUEST_OUTCOMES = (
    "accepted",
    "validation",
    "rejected_auth",
    "too_large",
    "read_timeout",
    "unsupported",
    "overloaded",
    "aborted",
    "over_quota",
    "store_error",
)
# Why relay_connections_rejected_total counted a connection; each series exists from the start.
CONNECTION_REJECTIONS = ("max_connections", "fd_exhausted", "header_timeout")


class Metrics:
    """Every collector relay exports, registered on the given (or a new) registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        journey_types: frozenset[str] = frozenset(),
        inbounds: Sequence[str] = (),
        destinations: Sequence[str] = (),
        rates: Mapping[str, float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._types = KNOWN_TYPES | journey_types
        self._event_children: dict[tuple[str, str, str], Counter] = {}
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter(
            "relay_requests_received",
            "HTTP requests to inbound URLs, by outcome.",
            ["inbound", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "relay_events_received",
            "Events stored, by inbound, type and source.",
            ["inbound", "type", "source"],
            registry=r,
        )
        self.duplicates = Counter(
            "relay_events_duplicate",
            "Events stored as duplicates of an earlier one (Mailchimp retries), not delivered.",
            ["inbound"],
            registry=r,
        )
        self.ingest_duration = Histogram(
            "relay_ingest_duration_seconds",
            "Time from receiving a request to acknowledging it (includes the durable commit).",
            ["inbound"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "relay_store_commit_duration_seconds",
            "Duration of one storage transaction (group commit), fsync included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "relay_store_commit_batch_size",
            "Operations committed together in one storage transaction.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "relay_delivery_attempts",
            "Delivery attempts, by destination and outcome (2xx, 3xx, 4xx, 5xx, timeout, "
            "connection_error).",
            ["destination", "outcome"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "relay_delivery_attempt_duration_seconds",
            "Duration of one delivery attempt.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "relay_delivery_latency_seconds",
            "Time from receiving an event to its successful delivery.",
            ["destination"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.dead = Counter(
            "relay_deliveries_dead",
            "Deliveries that gave up (attempts exhausted or a permanent 4xx).",
            ["destination"],
            registry=r,
        )
        self.deliveries = Gauge(
            "relay_deliveries",
            "Deliveries not delivered, by destination and state: waiting or in flight (pending,"
            " delivering, paused) or dead letters (dead: given up, and not resolved since by a"
            " later delivery of the event or an operator).",
            ["destination", "state"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "relay_oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery per destination (0 when none).",
            ["destination"],
            registry=r,
        )
        self.replays = Counter("relay_replays", "Replay requests carried out.", registry=r)
        self.replayed = Counter(
            "relay_replayed_deliveries",
            "Deliveries created by replays, by destination.",
            ["destination"],
            registry=r,
        )
        self.paused = Gauge(
            "relay_destination_paused",
            "1 while a destination is paused.",
            ["destination"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "relay_destination_circuit_open",
            "1 while a destination's circuit breaker is open (its deliveries wait; one probe at a"
            " time); 0 when closed or without a breaker.",
            ["destination"],
            registry=r,
        )
        self.rate_limit = Gauge(
            "relay_destination_rate_limit",
            "A destination's configured rate limit, in attempts per second across all processes"
            " (only destinations that have one).",
            ["destination"],
            registry=r,
        )
        self.probes = Counter(
            "relay_circuit_probes",
            "Attempts sent as a probe of a destination whose circuit is open.",
            ["destination"],
            registry=r,
        )
        self.attempts_held = Counter(
            "relay_delivery_attempts_held",
            "Attempts that failed while the destination's circuit was open and were not charged"
            " against max_attempts (their deliveries wait for the circuit to close).",
            ["destination"],
            registry=r,
        )
        self.ready = Gauge("relay_ready", "1 when storage is writable and workers run.", registry=r)
        self.connections_open = Gauge(
            "relay_connections_open", "Client connections open now.", registry=r
        )
        self.connections_rejected = Counter(
            "relay_connections_rejected",
            "Client connections refused or closed before a request: max_connections (closed "
            "as accepted), fd_exhausted (accept failed for lack of file descriptors), "
            "header_timeout (no complete headers within header_timeout).",
            ["reason"],
            registry=r,
        )
        self.inbound_stored = Gauge(
            "relay_inbound_stored_bytes",
            "Bytes of requests (bodies and headers) stored for each inbound: what quota_mb caps.",
            ["inbound"],
            registry=r,
        )
        self.inbound_quota = Gauge(
            "relay_inbound_quota_bytes",
            "Each inbound's quota_mb in bytes (inbounds with a quota only).",
            ["inbound"],
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "relay_request_body_bytes_in_progress",
            "Bytes of inbound request bodies held, from before they are read until they are "
            "stored ([server] max_inflight_bytes caps it).",
            registry=r,
        )
        self.build_info = Gauge(
            "relay_build_info",
            "relay's version and Python version.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._create_known_series(inbounds, destinations)
        for name, rate in (rates or {}).items():
            self.rate_limit.labels(name).set(rate)

    def reconfigure(
        self,
        journey_types: frozenset[str],
        inbounds: Sequence[str],
        destinations: Sequence[str],
        removed_destinations: Sequence[str] = (),
        rates: Mapping[str, float] | None = None,
    ) -> None:
        """After a reload: new names' series exist at 0 at once; the gauges of destinations no
        longer configured go (their counters stay: they count what happened), and rate limits
        are the configured ones."""
        self._types = KNOWN_TYPES | journey_types
        self._event_children.clear()
        self._create_known_series(inbounds, destinations)
        rates = rates or {}
        gone = [
            *((gauge, (name,)) for name in removed_destinations
              for gauge in (self.oldest_pending, self.paused, self.circuit_open)),
            *((self.deliveries, (name, s)) for name in removed_destinations for s in _STATES),
            *((self.rate_limit, (name,)) for name in destinations if name not in rates),
            *((self.rate_limit, (name,)) for name in removed_destinations),
        ]  # fmt: skip
        for gauge, labels in gone:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        for name, rate in rates.items():
            self.rate_limit.labels(name).set(rate)

    def _create_known_series(self, inbounds: Sequence[str], destinations: Sequence[str]) -> None:
        """Every label combination the config makes known, at 0, before anything is counted."""
        for inbound in inbounds:
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(inbound, outcome)
            self.duplicates.labels(inbound)
        for destination in destinations:
            self.dead.labels(destination)
            self.replayed.labels(destination)
            self.circuit_open.labels(destination)
            self.probes.labels(destination)
            self.attempts_held.labels(destination)
        for reason in CONNECTION_REJECTIONS:
            self.connections_rejected.labels(reason)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format, without the ``*_created`` series.

        ``*_created`` (a Unix time per counter and histogram series) roughly doubles a scrape
        and nothing of relay's reads it. prometheus-client's own switch for it
        (``disable_created_metrics``) is process-global; filtering here keeps it per registry.
        """
        return generate_latest(_WithoutCreated(self.registry))

    def type_label(self, event_type: str) -> str:
        return event_type if event_type in self._types else "other"

    def count_events(self, inbound: str, types: Sequence[str], source: str) -> None:
        """Count one request's events: a Mandrill batch's thousand are a handful of types, so
        each type's series is found and incremented once."""
        if len(types) == 1:
            self.count_event(inbound, types[0], source)
            return
        for event_type, count in collections.Counter(types).items():
            self.count_event(inbound, event_type, source, count)

    def count_event(self, inbound: str, event_type: str, source: str, count: int = 1) -> None:
        key = (inbound, event_type, source)
        child = self._event_children.get(key)
        if child is None:
            child = self.events.labels(inbound, self.type_label(event_type), source)
            # Bounded like the labels: types outside the known set share the "other" series.
            if event_type in self._types:
                self._event_children[key] = child
        child.inc(count)

    def observe_commit(self, batch_size: int, seconds: float) -> None:
        self.commit_batch.observe(batch_size)
        self.commit_duration.observe(seconds)

    def set_destination_stats(
        self, destinations: list[str], stats: list[DestinationStats], now: float
    ) -> None:
        by_name = {s.destination: s for s in stats}
        for name in destinations:
            s = by_name.get(name, DestinationStats(destination=name))
            for state in _STATES:
                self.deliveries.labels(name, state).set(getattr(s, state))
            age = now - s.oldest_pending_at if s.oldest_pending_at is not None else 0.0
            self.oldest_pending.labels(name).set(max(0.0, age))


    def set_circuits(self, breakers: Sequence[str], states: Mapping[str, GateState]) -> None:
        """The circuits of the destinations with a breaker, as the store has them now."""
        for name in breakers:
            state = states.get(name)
            self.circuit_open.labels(name).set(1 if state is not None and state.open else 0)


_STATES = ("pending", "delivering", "paused", "dead")


class _WithoutCreated:
    """A registry as a collector that leaves out the ``*_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            created = metric.name + "_created"
            # collect() builds new Metric objects on every call, so trimming them is safe.
            metric.samples = [s for s in metric.samples if s.name != created]
            yield metric
