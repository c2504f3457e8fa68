"""Fixtures live in tests/support.py so test modules can import its helpers by name."""

from tests.support import sink, start_relay

__all__ = ["sink", "start_relay"]
