"""Named queries from a backend's ``queries.sql``, loaded once (procrastinate's convention).

    -- name: claim
    -- Lease due deliveries of one destination.
    UPDATE deliveries ...

``load_queries("relay.store.postgres")["claim"]`` is that statement's text.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file into its named statements; comment lines in a statement are dropped."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def load_queries(package: str) -> dict[str, str]:
    return parse_queries((resources.files(package) / "queries.sql").read_text(encoding="utf-8"))


def migrations(package: str) -> list[tuple[int, str]]:
    """The numbered ``NNNN_name.sql`` scripts in a backend's ``migrations`` folder, in order."""
    folder = resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)
