"""relay's configuration: TOML in, frozen settings out (``load_config``), every problem by key."""

from relay.config.reader import load_config, parse_config
from relay.config.schema import (
    CONTROL_CHARS,
    AdminConfig,
    BreakerPolicy,
    Condition,
    ConfigError,
    DestinationConfig,
    InboundConfig,
    PostgresSettings,
    RateLimit,
    RetentionConfig,
    RetryPolicy,
    ServerConfig,
    Settings,
    SqliteSettings,
    StorageConfig,
    redact_url,
)

__all__ = [
    "CONTROL_CHARS",
    "AdminConfig",
    "BreakerPolicy",
    "Condition",
    "ConfigError",
    "DestinationConfig",
    "InboundConfig",
    "PostgresSettings",
    "RateLimit",
    "RetentionConfig",
    "RetryPolicy",
    "ServerConfig",
    "Settings",
    "SqliteSettings",
    "StorageConfig",
    "load_config",
    "parse_config",
    "redact_url",
]
