"""The ``relay`` command: serve, check-config, and operator commands over the admin API."""

from relay.cli.main import main

__all__ = ["main"]
