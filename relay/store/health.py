"""How each destination has fared lately, read from the attempts every process records (pure SQL
and row mapping, the same for every backend but for placeholders).

    sql, params = health_query(SQLITE, since=now - 3600, limit=10_000)
    report = health_report(rows, since=now - 3600, limit=10_000)

A process's own counters only know its own attempts, and start again at zero with it; the store
knows every attempt of every process. The read walks the newest attempts by their start time
(index ``attempts_started``) and joins each to its delivery by primary key, so its cost follows
``limit``, never the millions of attempts a store keeps: at a high rate the window it covers
shrinks instead, and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.model import AttemptOutcome
from relay.store.filters import Dialect, Params
from relay.store.rules import attempt_error


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """The latest attempt to a destination that did not get a 2xx."""

    delivery_id: int
    started_at: float
    status: int | None
    error: str  # what a delivery keeps as its last error: "HTTP 503: ...", "timed out ..."


@dataclass(frozen=True, slots=True)
class DestinationHealth:
    destination: str
    attempts: int
    succeeded: int  # got a 2xx
    last_failure: FailedAttempt | None

    @property
    def success_percent(self) -> float | None:
        return 100.0 * self.succeeded / self.attempts if self.attempts else None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Attempts per destination since ``since``, from every process sharing the store.

    ``complete`` is False when there were more than the read's limit: then ``since`` is the
    start of the newest attempts it counted, later than the start asked for.
    """

    since: float
    complete: bool
    destinations: Mapping[str, DestinationHealth]


def health_query(dialect: Dialect, since: float, limit: int) -> tuple[str, list[Any]]:
    """One row per destination: attempts, 2xx answers, the earliest start counted, and its
    latest failed attempt (delivery id, start, status, error, response head) if any."""
    p = Params(dialect)
    ok = AttemptOutcome.SUCCESS.value
    # Placeholders are added in the order they appear: SQLite's ? are positional.
    sql = f"""
        WITH recent AS (
            SELECT d.destination AS destination, a.delivery_id AS delivery_id,
                   a.started_at AS started_at, a.outcome AS outcome, a.status AS status,
                   a.error AS error, a.response_head AS response_head
              FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE a.started_at >= {p.add(since)}
             ORDER BY a.started_at DESC
             LIMIT {p.add(limit)}
        ), failed AS (
            SELECT destination, delivery_id, started_at, status, error, response_head,
                   row_number() OVER (PARTITION BY destination
                                      ORDER BY started_at DESC, delivery_id DESC) AS n
              FROM recent WHERE outcome <> {p.add(ok)}
        )
        SELECT r.destination, count(*), sum(CASE WHEN r.outcome = {p.add(ok)} THEN 1 ELSE 0 END),
               min(r.started_at), f.delivery_id, f.started_at, f.status, f.error,
               f.response_head
          FROM recent r LEFT JOIN failed f ON f.destination = r.destination AND f.n = 1
         GROUP BY r.destination, f.delivery_id, f.started_at, f.status, f.error,
                  f.response_head
         ORDER BY r.destination"""
    return sql, p.values


def health_report(rows: Sequence[Sequence[Any]], since: float, limit: int) -> HealthReport:
    """The rows of ``health_query`` as a report."""
    destinations: dict[str, DestinationHealth] = {}
    counted = 0
    earliest: float | None = None
    for name, attempts, succeeded, first, delivery_id, at, status, error, head in rows:
        counted += int(attempts)
        earliest = float(first) if earliest is None else min(earliest, float(first))
        failure = None
        if delivery_id is not None:
            text = attempt_error(status, error, bytes(head or b""))
            failure = FailedAttempt(int(delivery_id), float(at), status, text or "no answer")
        destinations[str(name)] = DestinationHealth(
            str(name), int(attempts), int(succeeded or 0), failure
        )
    if counted >= limit and earliest is not None:
        return HealthReport(earliest, False, destinations)
    return HealthReport(since, True, destinations)
