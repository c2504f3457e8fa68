"""Load relay's TOML configuration into frozen, typed settings, reporting every problem by key.

settings = load_config(Path("relay.toml"))   # raises ConfigError listing "key: problem" lines
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from relay.model import InboundKind
from relay.protocols.standard_webhooks import signing_key

T = TypeVar("T")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 3986 path characters without "{" and "}", which aiohttp reads as route variables.
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
# Characters no HTTP header may carry; checked in config, replaced in what webhooks supply.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``key: reason`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    log_format: str = "text"
    # How long SIGTERM waits for in-flight deliveries before cancelling them (they stay leased
    # and are retried after the lease, so nothing is lost either way).
    shutdown_grace: float = 10.0
    # How long a client may take to send its headers, and then its body; also how long an idle
    # keep-alive connection stays open. Longer than a reverse proxy's usual 60 s keep-alive.
    read_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = "sqlite:///data/relay.db"
    synchronous: str = "FULL"
    # How long a write waits for a lock held by another process before it fails (503).
    busy_timeout: float = 5.0
    # A cap on the database file: at the cap new webhooks get 503 (Mailchimp retries) instead
    # of the disk filling up for everything else on the machine. None: no cap.
    max_size_mb: float | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: str | None = None


@dataclass(frozen=True, slots=True)
class InboundConfig:
    name: str
    path: str
    kind: InboundKind
    source: str
    secret: str | None = None
    event_type: str | None = None
    event_type_header: str | None = None
    signing_secret: str | None = None
    mandrill_key: str | None = None
    public_url: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    bearer_token: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_delay: float = 5.0
    max_delay: float = 3600.0
    # Seconds from a delivery's creation after which no further attempt is made; None: no limit.
    max_age: float | None = None


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

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.destinations if d.name == name), None)

    def summary(self) -> str:
        return (
            f"listen {self.server.host}:{self.server.port}, "
            f"storage {redact_url(self.storage.url)}, "
            f"{len(self.inbounds)} inbound(s), {len(self.destinations)} destination(s), "
            f"admin API {'enabled' if self.admin.token else 'closed (no token)'}"
        )


def redact_url(url: str) -> str:
    """Hide a password in a storage URL before it is printed."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file; raise ConfigError with every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(text, os.environ if environ is None else environ)


def parse_config(text: str, environ: Mapping[str, str]) -> Settings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"toml: {exc}"]) from None
    reader = _Reader(environ)
    settings = reader.settings(raw)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    return settings


class _Reader:
    """Walks the TOML tree, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def fail(self, key: str, reason: str) -> None:
        self.problems.append(f"{key}: {reason}")

    def expand(self, key: str, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.environ:
                self.fail(key, f"environment variable {name} is not set")
                return ""
            return self.environ[name]

        return _ENV_REF.sub(sub, value)

    def table(self, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
            return {}
        return value

    def unknown(self, raw: Mapping[str, Any], prefix: str, known: set[str]) -> None:
        for k in raw:
            if k not in known:
                self.fail(f"{prefix}{k}", "unknown key")

    def get(
        self,
        raw: Mapping[str, Any],
        prefix: str,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        if key not in raw:
            return default
        value = raw[key]
        full = f"{prefix}{key}"
        if isinstance(value, str):
            value = self.expand(full, value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            self.fail(full, f"must be {_kind_name(kind)}")
            return default
        if not isinstance(value, kind):
            self.fail(full, f"must be {_kind_name(kind)}")
            return default
        if check is not None and (reason := check(value)) is not None:
            self.fail(full, reason)
            return default
        return value  # type: ignore[return-value]

    def optional_str(self, raw: Mapping[str, Any], prefix: str, key: str) -> str | None:
        value = self.get(raw, prefix, key, str, "", _non_empty)
        return value or None

    def str_list(self, raw: Mapping[str, Any], prefix: str, key: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"{prefix}{key}", "must be a list of non-empty strings")
            return None
        return tuple(self.expand(f"{prefix}{key}", v) for v in value)

    def settings(self, raw: dict[str, Any]) -> Settings | None:
        self.unknown(
            raw,
            "",
            {"server", "storage", "admin", "inbound", "destination", "retention", "dedup"},
        )
        server = self.server(self.table(raw, "server"))
        storage = self.storage(self.table(raw, "storage"))
        admin_raw = self.table(raw, "admin")
        self.unknown(admin_raw, "admin.", {"token"})
        admin = AdminConfig(token=self.optional_str(admin_raw, "admin.", "token"))
        retention_raw = self.table(raw, "retention")
        self.unknown(retention_raw, "retention.", {"days", "interval"})
        retention = RetentionConfig(
            days=self.get(retention_raw, "retention.", "days", float, 0.0, _positive)
            if "days" in retention_raw
            else None,
            interval=self.get(retention_raw, "retention.", "interval", float, 3600.0, _positive),
        )
        dedup_raw = self.table(raw, "dedup")
        self.unknown(dedup_raw, "dedup.", {"window"})
        dedup_window = self.get(dedup_raw, "dedup.", "window", float, 86400.0, _non_negative)

        inbounds = self.list_of_tables(raw, "inbound", self.inbound)
        destinations = self.list_of_tables(raw, "destination", self.destination)
        self.unique([i.name for i in inbounds], "inbound", "name")
        self.unique([i.path for i in inbounds], "inbound", "path")
        self.unique([d.name for d in destinations], "destination", "name")
        if self.problems:
            return None
        return Settings(
            server=server,
            storage=storage,
            admin=admin,
            inbounds=tuple(inbounds),
            destinations=tuple(destinations),
            retention=retention,
            dedup_window=dedup_window,
        )

    def unique(self, values: list[str], table: str, key: str) -> None:
        seen: set[str] = set()
        for i, v in enumerate(values):
            if v in seen:
                self.fail(f"{table}[{i}].{key}", f"duplicate {key} {v!r}")
            seen.add(v)

    def list_of_tables(
        self, raw: Mapping[str, Any], key: str, build: Callable[[dict[str, Any], str], T | None]
    ) -> list[T]:
        value = raw.get(key, [])
        if not isinstance(value, list):
            self.fail(key, f"must be an array of tables ([[{key}]])")
            return []
        out: list[T] = []
        for i, item in enumerate(value):
            prefix = f"{key}[{i}]."
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", "must be a table")
                continue
            built = build(item, prefix)
            if built is not None:
                out.append(built)
        return out

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        p = "server."
        self.unknown(
            raw, p, {"listen", "max_body_bytes", "log_format", "shutdown_grace", "read_timeout"}
        )
        listen = self.get(raw, p, "listen", str, "127.0.0.1:8080")
        host, port = "127.0.0.1", 8080
        parsed = _parse_listen(listen)
        if parsed is None:
            self.fail(f"{p}listen", "must be host:port with a port from 1 to 65535")
        else:
            host, port = parsed
        return ServerConfig(
            host=host,
            port=port,
            max_body_bytes=self.get(raw, p, "max_body_bytes", int, 10 * 1024 * 1024, _positive),
            log_format=self.get(raw, p, "log_format", str, "text", _one_of("text", "json")),
            shutdown_grace=self.get(raw, p, "shutdown_grace", float, 10.0, _non_negative),
            read_timeout=self.get(raw, p, "read_timeout", float, 75.0, _positive),
        )

    def storage(self, raw: dict[str, Any]) -> StorageConfig:
        p = "storage."
        self.unknown(raw, p, {"url", "synchronous", "busy_timeout", "max_size_mb"})
        url = self.get(raw, p, "url", str, "sqlite:///data/relay.db", _storage_url)
        sync = self.get(raw, p, "synchronous", str, "FULL", _one_of("FULL", "NORMAL", "EXTRA"))
        busy = self.get(raw, p, "busy_timeout", float, 5.0, _non_negative)
        max_size = (
            self.get(raw, p, "max_size_mb", float, 0.0, _positive) if "max_size_mb" in raw else None
        )
        return StorageConfig(url=url, synchronous=sync, busy_timeout=busy, max_size_mb=max_size)

    def inbound(self, raw: dict[str, Any], p: str) -> InboundConfig | None:
        self.unknown(
            raw,
            p,
            {
                "name",
                "path",
                "kind",
                "secret",
                "source",
                "event_type",
                "event_type_header",
                "signing_secret",
                "mandrill_key",
                "public_url",
                "auth_username",
                "auth_password",
                "bearer_token",
            },
        )
        before = len(self.problems)
        name = self.get(raw, p, "name", str, "", _name)
        path = self.get(raw, p, "path", str, "", _path)
        kind = self.get(raw, p, "kind", str, "mailchimp", _one_of(*InboundKind))
        for required in ("name", "path"):
            if required not in raw:
                self.fail(f"{p}{required}", "is required")
        inbound = InboundConfig(
            name=name,
            path=path,
            kind=InboundKind(kind) if kind in set(InboundKind) else InboundKind.MAILCHIMP,
            source=self.get(raw, p, "source", str, name or "default", _name),
            secret=self.optional_str(raw, p, "secret"),
            event_type=self.optional_str(raw, p, "event_type"),
            event_type_header=self.optional_str(raw, p, "event_type_header"),
            signing_secret=self.optional_str(raw, p, "signing_secret"),
            mandrill_key=self.optional_str(raw, p, "mandrill_key"),
            public_url=self.get(raw, p, "public_url", str, "", _http_url) or None,
            auth_username=self.optional_str(raw, p, "auth_username"),
            auth_password=self.optional_str(raw, p, "auth_password"),
            bearer_token=self.optional_str(raw, p, "bearer_token"),
        )
        if inbound.kind is InboundKind.JOURNEY and not (
            inbound.event_type or inbound.event_type_header
        ):
            self.fail(f"{p}event_type", "is required for kind journey (or set event_type_header)")
        if inbound.kind is not InboundKind.MAILCHIMP and inbound.signing_secret:
            self.fail(f"{p}signing_secret", "only applies to kind mailchimp")
        if inbound.kind is not InboundKind.MANDRILL and (
            inbound.mandrill_key or inbound.public_url
        ):
            key = "mandrill_key" if inbound.mandrill_key else "public_url"
            self.fail(f"{p}{key}", "only applies to kind mandrill")
        if inbound.kind is InboundKind.MANDRILL and inbound.mandrill_key and not inbound.public_url:
            self.fail(f"{p}public_url", "is required with mandrill_key (the URL Mailchimp signs)")
        if (inbound.auth_username is None) != (inbound.auth_password is None):
            self.fail(f"{p}auth_password", "auth_username and auth_password go together")
        return inbound if len(self.problems) == before else None

    def destination(self, raw: dict[str, Any], p: str) -> DestinationConfig | None:
        self.unknown(
            raw,
            p,
            {
                "name",
                "url",
                "types",
                "sources",
                "lists",
                "match",
                "timeout",
                "concurrency",
                "headers",
                "retry",
                "format",
                "signing_secret",
            },
        )
        before = len(self.problems)
        for required in ("name", "url"):
            if required not in raw:
                self.fail(f"{p}{required}", "is required")
        headers_raw = raw.get("headers", {})
        headers: list[tuple[str, str]] = []
        if not isinstance(headers_raw, dict):
            self.fail(f"{p}headers", "must be a table of header names to strings")
        else:
            for hname, hvalue in headers_raw.items():
                if not isinstance(hvalue, str):
                    self.fail(f"{p}headers.{hname}", "must be a string")
                    continue
                if _relay_header(hname):
                    # Sent as well, it would make a second header that receivers read at random.
                    self.fail(f"{p}headers.{hname}", "is set by relay on every delivery")
                    continue
                hvalue = self.expand(f"{p}headers.{hname}", hvalue)
                if CONTROL_CHARS.search(hname + hvalue):
                    # The value may come from the environment; it is not repeated here.
                    self.fail(f"{p}headers.{hname}", "must not contain control characters")
                    continue
                headers.append((hname, hvalue))
        retry_raw = raw.get("retry", {})
        if not isinstance(retry_raw, dict):
            self.fail(f"{p}retry", "must be a table")
            retry_raw = {}
        rp = f"{p}retry."
        self.unknown(retry_raw, rp, {"max_attempts", "initial_delay", "max_delay", "max_age"})
        retry = RetryPolicy(
            max_attempts=self.get(retry_raw, rp, "max_attempts", int, 10, _positive),
            initial_delay=self.get(retry_raw, rp, "initial_delay", float, 5.0, _positive),
            max_delay=self.get(retry_raw, rp, "max_delay", float, 3600.0, _positive),
            max_age=(
                self.get(retry_raw, rp, "max_age", float, 0.0, _positive)
                if "max_age" in retry_raw
                else None
            ),
        )
        if retry.max_delay < retry.initial_delay:
            self.fail(f"{rp}max_delay", "must be at least initial_delay")
        destination = DestinationConfig(
            name=self.get(raw, p, "name", str, "", _name),
            url=self.get(raw, p, "url", str, "", _http_url),
            types=self.str_list(raw, p, "types"),
            sources=self.str_list(raw, p, "sources"),
            lists=self.str_list(raw, p, "lists"),
            match=self.conditions(raw.get("match"), f"{p}match"),
            timeout=self.get(raw, p, "timeout", float, 10.0, _positive),
            concurrency=self.get(raw, p, "concurrency", int, 10, _positive),
            headers=tuple(headers),
            retry=retry,
            format=self.get(raw, p, "format", str, "raw", _one_of("raw", "json")),
            signing_secret=self.optional_str(raw, p, "signing_secret"),
        )
        if destination.signing_secret is not None:
            try:
                signing_key(destination.signing_secret)
            except ValueError as exc:
                self.fail(f"{p}signing_secret", str(exc))
        return destination if len(self.problems) == before else None

    def conditions(self, raw: Any, key: str) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.fail(key, "must be an array of tables ([[destination.match]])")
            return ()
        out: list[Condition] = []
        for i, item in enumerate(raw):
            p = f"{key}[{i}]."
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", "must be a table")
                continue
            self.unknown(item, p, {"field", "equals", "one_of", "exists"})
            field_name = self.get(item, p, "field", str, "", _non_empty)
            if "field" not in item:
                self.fail(f"{p}field", "is required")
            equals = self.get(item, p, "equals", str, "") if "equals" in item else None
            one_of = self.str_list(item, p, "one_of")
            exists = self.get(item, p, "exists", bool, True) if "exists" in item else None
            if sum(x is not None for x in (equals, one_of, exists)) != 1:
                self.fail(f"{key}[{i}]", "needs exactly one of equals, one_of, exists")
                continue
            out.append(Condition(field=field_name, equals=equals, one_of=one_of, exists=exists))
        return tuple(out)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _parse_listen(value: str) -> tuple[str, int] | None:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def _name(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return "must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def _path(value: str) -> str | None:
    if not value.startswith("/") or "?" in value or "#" in value:
        return "must be an absolute URL path without query, like /hooks/mailchimp"
    if not _PATH.fullmatch(value):
        return "may hold only URL path characters (letters, digits and -._~!$&'()*+,;=:@%/)"
    if value.startswith(("/admin", "/metrics", "/healthz", "/readyz")):
        return "collides with relay's own endpoints"
    return None


def _relay_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("content-type", "content-length", "webhook-id", "webhook-timestamp",
                       "webhook-signature") or lowered.startswith("x-relay-")  # fmt: skip


def _http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        return "not an http(s) URL"
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or port == 0 or not _HOST.fullmatch(host):
        return "not an http(s) URL"
    return None


# A DNS name, IPv4 address or bracketed IPv6 literal (urlsplit drops the brackets).
_HOST = re.compile(r"[A-Za-z0-9._~-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?")


def _storage_url(value: str) -> str | None:
    if value == "sqlite:///:memory:":
        # Each of relay's connections would get its own empty database; nothing would persist.
        return "an in-memory database cannot be used: relay's connections would not share it"
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if value.startswith(("postgresql://", "postgres://")):
        # Said at load time, not as a failure after start-up: the backend is not built yet.
        return "the PostgreSQL backend is not available in this release; use sqlite:///PATH"
    return "must be sqlite:///PATH (sqlite:////abs/path for an absolute path)"
