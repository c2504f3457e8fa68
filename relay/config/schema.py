"""relay's settings as frozen, typed values: what the TOML reader builds and everything reads.

The reader (``relay.config.reader``) is apart from these, so a module that only needs a setting's
shape never imports TOML parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.model import InboundKind

# Characters no HTTP header may carry; checked in config, replaced in what webhooks supply.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``key: reason`` line each.

    ``warnings`` are lines about what is valid but most likely not meant (shown alongside).
    """

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []


# What each kind of inbound really receives: an audience webhook or a journey step is one event
# of a few kilobytes, so their default limit is ~100x the largest seen; a Mandrill batch holds up
# to 1,000 events and reaches megabytes, so it gets [server] max_body_bytes.
SMALL_BODY_LIMIT = 256 * 1024


def default_body_limit(kind: InboundKind, server_limit: int) -> int:
    """An inbound's max_body_bytes when it sets none: its kind's, never over the server's."""
    if kind is InboundKind.MANDRILL:
        return server_limit
    return min(SMALL_BODY_LIMIT, server_limit)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    # Request bodies held in memory at once, across all requests, from before they are read
    # until they are stored; past it new requests get 503 (Mailchimp retries).
    max_inflight_bytes: int = 128 * 1024 * 1024
    log_format: str = "text"
    # How long SIGTERM waits for in-flight deliveries before cancelling them (they stay leased
    # and are retried after the lease, so nothing is lost either way).
    shutdown_grace: float = 10.0
    # How long a client may take to send its body; also how long an idle keep-alive connection
    # stays open. Longer than a reverse proxy's usual 60 s keep-alive.
    read_timeout: float = 75.0
    # How long a client may take to send a request's headers (from connecting, or from the first
    # byte of a further request on a kept-alive connection): a connection that sends nothing
    # useful is closed in seconds, not after the keep-alive time.
    header_timeout: float = 10.0
    # Client connections open at once; past it new ones are closed as they are accepted.
    max_connections: int = 10000
    # Processes serving the listen address(es) together (SO_REUSEPORT), under one supervisor;
    # "auto" in the file is one per core this process may run on. 1 is one plain process.
    workers: int = 1


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """``[storage.sqlite]``: the embedded backend's own settings."""

    synchronous: str = "FULL"
    # How long a write waits for a lock held by another process before it fails (503).
    busy_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """``[storage.postgresql]``: the scale-out backend's own settings."""

    # Connections for claims, admin reads and writes; ingest has one writer connection of its
    # own and signals one listening connection, besides these.
    pool_size: int = 10
    # How long to wait for a connection, and for one statement, before answering 503.
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    # From password_file, when set: kept out of the URL so it is never printed with it.
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = "sqlite:///data/relay.db"
    # A cap on the database file: at the cap new webhooks get 503 (Mailchimp retries) instead
    # of the disk filling up for everything else on the machine. None: no cap.
    max_size_mb: float | None = None
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    postgresql: PostgresSettings = field(default_factory=PostgresSettings)

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith(("postgresql://", "postgres://")) else "sqlite"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: str | None = None
    # When set, /admin, /console and /metrics are served on this (host, port) only, and the
    # public listen address answers them 404: the port Mailchimp reaches exposes inbound paths
    # and health, nothing an attacker could try a token against.
    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class InboundConfig:
    name: str
    path: str
    kind: InboundKind
    source: str
    secret: str | None = None
    event_type: str | None = None
    event_type_header: str | None = None
    # Journey kind: the types a sender may choose with event_type_header (names or globs);
    # None: any. Any other value keeps event_type, and the event records what was refused.
    event_types: tuple[str, ...] | None = None
    signing_secret: str | None = None
    mandrill_key: str | None = None
    public_url: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    bearer_token: str | None = None
    # Larger bodies get 413; the reader fills in default_body_limit() when the TOML sets none.
    max_body_bytes: int = SMALL_BODY_LIMIT
    # This inbound's share of the store, in MB of requests stored; past it, 503 for it alone.
    quota_mb: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_delay: float = 5.0
    max_delay: float = 3600.0
    # Seconds from a delivery's creation after which no further attempt is made; None: no limit.
    max_age: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` (with ``burst``): at most ``rate`` attempts a second to a destination, counted
    across every process sharing the store; up to ``burst`` of them at once after a quiet spell
    (a token bucket of ``burst`` tokens refilled at ``rate`` a second)."""

    rate: float
    burst: float

    @staticmethod
    def default_burst(rate: float) -> float:
        """A tenth of a second's worth, and at least one: smooth, yet a slow rate still sends."""
        return max(1.0, float(int(rate / 10)))


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """``[destination.breaker]``: after ``failures`` consecutive attempts that say the
    destination is down, stop sending to it but for one probe at a time, the probes
    ``probe_interval`` apart at first, the interval doubling up to ``max_probe_interval``."""

    failures: int = 20
    probe_interval: float = 1.0
    max_probe_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``match`` condition on a parsed field: exactly one of equals / one_of / exists is set."""

    field: str
    equals: str | None = None
    one_of: tuple[str, ...] | None = None
    exists: bool | None = None


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    name: str
    url: str
    types: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    lists: tuple[str, ...] | None = None
    match: tuple[Condition, ...] = ()
    timeout: float = 10.0
    concurrency: int = 10
    headers: tuple[tuple[str, str], ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    format: str = "raw"
    signing_secret: str | None = None
    rate_limit: RateLimit | None = None
    breaker: BreakerPolicy | None = None
    # "subscriber": one subscriber's events go out one at a time, in the order relay received
    # them (relay.store.ordering); "none": as they fall due.
    ordering: str = "none"

    @property
    def ordered(self) -> bool:
        return self.ordering == "subscriber"


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: float | None = None
    interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerConfig
    storage: StorageConfig
    admin: AdminConfig
    inbounds: tuple[InboundConfig, ...]
    destinations: tuple[DestinationConfig, ...]
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    dedup_window: float = 86400.0
    # Valid but most likely not meant (a filter no event type can match, "$VAR" without
    # braces): check-config prints them, serve logs them at start.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.destinations if d.name == name), None)

    def inbound_kind(self, name: str) -> InboundKind | None:
        """The kind of a configured inbound; None when it has since been removed."""
        return next((i.kind for i in self.inbounds if i.name == name), None)

    def summary(self) -> str:
        return (
            f"listen {self.server.host}:{self.server.port}, "
            f"storage {redact_url(self.storage.url)}, "
            f"{len(self.inbounds)} inbound(s), {len(self.destinations)} destination(s), "
            f"admin API {'enabled' if self.admin.token else 'closed (no token)'}"
            + (f" on {self.admin.listen[0]}:{self.admin.listen[1]}" if self.admin.listen else "")
            + (f", {self.server.workers} worker processes" if self.server.workers > 1 else "")
        )


MASK = "***"


def redact_url(url: str) -> str:
    """A URL as relay shows or logs it: credentials, query values and fragment hidden.

    Destination and storage URLs carry secrets in their user info (``user:pass@``) and in their
    query (``?token=...``); the scheme, host, port, path and parameter names stay readable.

    >>> redact_url("https://user:pw@crm.internal:8443/hooks?token=abc&v=2#x")
    'https://user:***@crm.internal:8443/hooks?token=***&v=***#***'
    """
    # Taken apart by hand, not with urlsplit: it must never raise on what it hides, and
    # urlunsplit would rewrite sqlite:///path.
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # A user name with no password is often the token itself (https://TOKEN@host).
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    rest, hash_sign, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    if query:
        query = "&".join(
            f"{name}={MASK}" if eq else MASK
            for name, eq, _ in (part.partition("=") for part in query.split("&"))
        )
    return (
        (f"{scheme}://" if sep else "")
        + authority
        + path
        + question
        + query
        + (hash_sign + MASK if fragment else hash_sign)
    )
