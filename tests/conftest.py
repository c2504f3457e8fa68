"""Fixtures live in tests/support.py (and backends.py, pg.py) so modules import helpers by name."""

import os

import pytest
from hypothesis import settings

from tests.backends import parametrize_backends, relay_backend
from tests.pg import postgres_database
from tests.support import sink, start_relay

# `make test` must give the same answer on every run, so CI never fails on an example that no
# one has seen before; `RELAY_HYPOTHESIS_PROFILE=explore make test` searches fresh examples.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("RELAY_HYPOTHESIS_PROFILE", "repeatable"))

__all__ = ["postgres_database", "relay_backend", "sink", "start_relay"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-schema",
        action="store_true",
        help="rewrite tests/store_contract/schema/*.txt from what the migrations build",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_backends(metafunc)
