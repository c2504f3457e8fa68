"""Load relay's TOML configuration into frozen, typed settings, reporting every problem by key.

settings = load_config(Path("relay.toml"))   # raises ConfigError listing "key: problem" lines
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.config import checks, limits
from relay.config.capacity import capacity_problems
from relay.config.schema import (
    CONTROL_CHARS,
    AdminConfig,
    Condition,
    ConfigError,
    DestinationConfig,
    InboundConfig,
    PostgresSettings,
    RetentionConfig,
    RetryPolicy,
    ServerConfig,
    Settings,
    SqliteSettings,
    StorageConfig,
    default_body_limit,
)
from relay.config.walker import TreeWalker, did_you_mean
from relay.model import InboundKind
from relay.protocols import event_types
from relay.protocols.standard_webhooks import signing_key

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file; raise ConfigError with every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(text, os.environ if environ is None else environ, source=str(path))


def parse_config(text: str, environ: Mapping[str, str], source: str = "config") -> Settings:
    """Validate TOML text; ``source`` names it in problems about the file as a whole."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([toml_problem(source, str(exc))]) from None
    if not raw:
        # Every key has a default, so an empty file would start a relay that receives nothing.
        raise ConfigError([f"{source}: the file is empty: relay needs at least an [[inbound]]"])
    reader = _Reader(environ)
    settings = reader.settings(raw)
    warnings = [str(w) for w in reader.warnings]
    if reader.problems or settings is None:
        raise ConfigError([str(p) for p in reader.problems], warnings)
    return dataclasses.replace(settings, warnings=tuple(warnings))


def toml_problem(source: str, message: str) -> str:
    """``relay.toml: line 3, column 8: invalid TOML: ...``, where tomllib says where."""
    found = _POSITION.search(message)
    if found is None:
        return f"{source}: invalid TOML: {message}"
    line, column = found.groups()
    return f"{source}: line {line}, column {column}: invalid TOML: {message[: found.start()]}"


class _Reader(TreeWalker):
    """relay's tables, read with TreeWalker's helpers."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        # The types destination filters can match: known ones plus the journeys' own.
        self._types: frozenset[str] = event_types.KNOWN_TYPES
        self._any_type = False

    def settings(self, raw: dict[str, Any]) -> Settings | None:
        self.unknown(
            raw,
            "",
            {"server", "storage", "admin", "inbound", "destination", "retention", "dedup"},
        )
        server = self.server(self.table(raw, "server"))
        storage = self.storage(self.table(raw, "storage"))
        admin = self.admin(self.table(raw, "admin"), server)
        retention_raw = self.table(raw, "retention")
        self.unknown(retention_raw, "retention.", {"days", "interval"})
        retention = RetentionConfig(
            days=self.get(retention_raw, "retention.", "days", float, 0.0, checks.positive)
            if "days" in retention_raw
            else None,
            interval=self.get(
                retention_raw, "retention.", "interval", float, 3600.0, checks.positive
            ),
        )
        dedup_raw = self.table(raw, "dedup")
        self.unknown(dedup_raw, "dedup.", {"window"})
        dedup_window = self.get(dedup_raw, "dedup.", "window", float, 86400.0, checks.non_negative)

        inbounds = self.list_of_tables(
            raw, "inbound", lambda item, p: self.inbound(item, p, server.max_body_bytes)
        )
        self._types = event_types.KNOWN_TYPES | {i.event_type for i in inbounds if i.event_type}
        # A header the marketer sets can name any type: no filter can be called unmatchable.
        self._any_type = any(i.event_type_header for i in inbounds)
        destinations = self.list_of_tables(raw, "destination", self.destination)
        self.unique(raw, "inbound", "name")
        self.unique(raw, "inbound", "path")
        self.unique(raw, "destination", "name")
        for problem in capacity_problems(server, storage, inbounds):
            report = self.warn if problem.warning else self.fail
            report(problem.key, problem.reason)
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

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        p = "server."
        self.unknown(
            raw,
            p,
            {
                "listen",
                "max_body_bytes",
                "max_inflight_bytes",
                "log_format",
                "shutdown_grace",
                "read_timeout",
                "header_timeout",
                "max_connections",
                "workers",
            },
        )
        listen = self.get(raw, p, "listen", str, "127.0.0.1:8080")
        host, port = "127.0.0.1", 8080
        parsed = checks.parse_listen(listen)
        if parsed is None:
            self.fail(f"{p}listen", "must be host:port with a port from 1 to 65535")
        else:
            host, port = parsed
        return ServerConfig(
            host=host,
            port=port,
            max_body_bytes=self.get(
                raw, p, "max_body_bytes", int, 10 * 1024 * 1024, checks.positive
            ),
            max_inflight_bytes=self.get(
                raw, p, "max_inflight_bytes", int, 128 * 1024 * 1024, checks.positive
            ),
            log_format=self.get(raw, p, "log_format", str, "text", checks.one_of("text", "json")),
            shutdown_grace=self.get(raw, p, "shutdown_grace", float, 10.0, checks.non_negative),
            read_timeout=self.get(raw, p, "read_timeout", float, 75.0, checks.positive),
            header_timeout=self.get(raw, p, "header_timeout", float, 10.0, checks.positive),
            max_connections=self.get(raw, p, "max_connections", int, 10000, checks.positive),
            workers=self.workers(raw, p),
        )

    def workers(self, raw: dict[str, Any], p: str) -> int:
        value = self.get(raw, p, "workers", (int, str), 1)
        count = checks.worker_count(value)
        if count is None:
            self.fail(f"{p}workers", 'must be a whole number from 1 to 1024, or "auto"')
            return 1
        return count

    def admin(self, raw: dict[str, Any], server: ServerConfig) -> AdminConfig:
        self.unknown(raw, "admin.", {"token", "listen"})
        if raw.get("token") == "":
            self.fail(
                "admin.token", "must not be empty (leave it out to keep the admin API closed)"
            )
        # Empty only through a variable, as "${RELAY_ADMIN_TOKEN:-}" gives where it is unset:
        # the admin API stays closed, so the example config runs without any variable set.
        token = self.get(raw, "admin.", "token", str, "") or None
        text = self.get(raw, "admin.", "listen", str, "", checks.listen_address)
        listen = checks.parse_listen(text) if text else None
        if listen is not None and checks.same_socket(listen, (server.host, server.port)):
            self.fail("admin.listen", "must differ from server.listen (operators get their own)")
        return AdminConfig(token=token, listen=listen)

    def storage(self, raw: dict[str, Any]) -> StorageConfig:
        p = "storage."
        for moved in ("synchronous", "busy_timeout"):
            if moved in raw:
                self.fail(f"{p}{moved}", f"moved to [storage.sqlite] (storage.sqlite.{moved})")
        self.unknown(
            raw, p, {"url", "max_size_mb", "sqlite", "postgresql", "synchronous", "busy_timeout"}
        )
        url = self.get(raw, p, "url", str, "sqlite:///data/relay.db", checks.storage_url)
        max_size = (
            self.get(raw, p, "max_size_mb", float, 0.0, checks.positive)
            if "max_size_mb" in raw
            else None
        )
        return StorageConfig(
            url=url,
            max_size_mb=max_size,
            sqlite=self.sqlite(self.table(raw, "sqlite")),
            postgresql=self.postgresql(self.table(raw, "postgresql")),
        )

    def sqlite(self, raw: dict[str, Any]) -> SqliteSettings:
        p = "storage.sqlite."
        self.unknown(raw, p, {"synchronous", "busy_timeout"})
        return SqliteSettings(
            synchronous=self.get(
                raw, p, "synchronous", str, "FULL", checks.one_of("FULL", "NORMAL", "EXTRA")
            ),
            busy_timeout=self.get(raw, p, "busy_timeout", float, 5.0, checks.non_negative),
        )

    def postgresql(self, raw: dict[str, Any]) -> PostgresSettings:
        p = "storage.postgresql."
        self.unknown(raw, p, {"pool_size", "connect_timeout", "command_timeout", "password_file"})
        password = None
        password_file = self.optional_str(raw, p, "password_file")
        if password_file is not None:
            try:
                # One line, as Kubernetes and Docker secrets hold it; the newline is not part of it.
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.fail(f"{p}password_file", f"cannot read {password_file}: {reason}")
        return PostgresSettings(
            pool_size=self.get(raw, p, "pool_size", int, 10, checks.positive),
            connect_timeout=self.get(raw, p, "connect_timeout", float, 5.0, checks.positive),
            command_timeout=self.get(raw, p, "command_timeout", float, 10.0, checks.positive),
            password=password,
        )

    def inbound(self, raw: dict[str, Any], p: str, server_limit: int) -> InboundConfig | None:
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
                "event_types",
                "signing_secret",
                "mandrill_key",
                "public_url",
                "auth_username",
                "auth_password",
                "bearer_token",
                "max_body_bytes",
                "quota_mb",
            },
        )
        before = len(self.problems)
        name = self.get(raw, p, "name", str, "", checks.name)
        path = self.get(raw, p, "path", str, "", checks.path)
        kind = self.get(raw, p, "kind", str, "mailchimp", checks.one_of(*InboundKind))
        for required in ("name", "path"):
            if required not in raw:
                self.fail(f"{p}{required}", "is required")
        kind_value = InboundKind(kind) if kind in set(InboundKind) else InboundKind.MAILCHIMP
        inbound = InboundConfig(
            name=name,
            path=path,
            kind=kind_value,
            source=self.get(raw, p, "source", str, name or "default", checks.name),
            secret=self.optional_str(raw, p, "secret"),
            event_type=self.optional_str(raw, p, "event_type"),
            event_type_header=self.optional_str(raw, p, "event_type_header"),
            event_types=self.str_list(raw, p, "event_types"),
            signing_secret=self.optional_str(raw, p, "signing_secret"),
            mandrill_key=self.optional_str(raw, p, "mandrill_key"),
            public_url=self.get(raw, p, "public_url", str, "", checks.http_url) or None,
            auth_username=self.optional_str(raw, p, "auth_username"),
            auth_password=self.optional_str(raw, p, "auth_password"),
            bearer_token=self.optional_str(raw, p, "bearer_token"),
            max_body_bytes=self.get(
                raw,
                p,
                "max_body_bytes",
                int,
                default_body_limit(kind_value, server_limit),
                checks.positive,
            ),
            quota_mb=self.get(raw, p, "quota_mb", float, 0.0, checks.positive) or None,
        )
        if inbound.kind is InboundKind.JOURNEY and not (
            inbound.event_type or inbound.event_type_header
        ):
            self.fail(f"{p}event_type", "is required for kind journey (or set event_type_header)")
        if inbound.event_types is not None and not inbound.event_type_header:
            self.fail(f"{p}event_types", "only applies with event_type_header (kind journey)")
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
                "breaker",
                *limits.PACING_KEYS,
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
                if checks.relay_header(hname):
                    # Sent as well, it would make a second header that receivers read at random.
                    self.fail(f"{p}headers.{hname}", "is set by relay on every delivery")
                    continue
                expanded = self.expand(f"{p}headers.{hname}", hvalue)
                if expanded is None:
                    continue
                hvalue = expanded
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
            max_attempts=self.get(retry_raw, rp, "max_attempts", int, 10, checks.positive),
            initial_delay=self.get(retry_raw, rp, "initial_delay", float, 5.0, checks.positive),
            max_delay=self.get(retry_raw, rp, "max_delay", float, 3600.0, checks.positive),
            max_age=(
                self.get(retry_raw, rp, "max_age", float, 0.0, checks.positive)
                if "max_age" in retry_raw
                else None
            ),
        )
        if retry.max_delay < retry.initial_delay:
            self.fail(f"{rp}max_delay", "must be at least initial_delay")
        destination = DestinationConfig(
            name=self.get(raw, p, "name", str, "", checks.name),
            url=self.get(raw, p, "url", str, "", checks.http_url),
            types=self.str_list(raw, p, "types"),
            sources=self.str_list(raw, p, "sources"),
            lists=self.str_list(raw, p, "lists"),
            match=self.conditions(raw.get("match"), f"{p}match"),
            timeout=self.get(raw, p, "timeout", float, 10.0, checks.positive),
            concurrency=self.get(raw, p, "concurrency", int, 10, checks.positive),
            headers=tuple(headers),
            retry=retry,
            format=self.get(raw, p, "format", str, "raw", checks.one_of("raw", "json")),
            signing_secret=self.optional_str(raw, p, "signing_secret"),
            **limits.pacing(self, raw, p),
        )
        self.unmatchable_types(destination.types, f"{p}types")
        if destination.signing_secret is not None:
            try:
                signing_key(destination.signing_secret)
            except ValueError as exc:
                self.fail(f"{p}signing_secret", str(exc))
        return destination if len(self.problems) == before else None

    def unmatchable_types(self, patterns: tuple[str, ...] | None, key: str) -> None:
        if self._any_type:
            return
        for pattern in patterns or ():
            # fnmatchcase: the same case-sensitive glob the routing applies.
            if not any(fnmatch.fnmatchcase(t, pattern) for t in self._types):
                self.warn(
                    key,
                    f"{pattern!r} matches no event type relay makes, so it never matches"
                    + did_you_mean(pattern, self._types),
                )

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
            field_name = self.get(item, p, "field", str, "", checks.non_empty)
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
