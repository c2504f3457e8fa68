"""A type glob means in SQL what it means in a destination filter (fnmatch), on both backends."""

from __future__ import annotations

import asyncio
import fnmatch
import sqlite3

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.store.globs import parse_glob, upper_bound
from tests.pg import ADMIN_URL

# The characters that mean something to fnmatch, GLOB, LIKE or a regular expression.
ALPHABET = "ab*?[]!-^\\%_.$"
_sets = st.builds(
    lambda negated, body: f"[{'!' if negated else ''}{body}]",
    st.booleans(),
    st.text(alphabet="abc]!-^\\[.", min_size=1, max_size=4),
)
# Whole sets ([!a-c]) as often as single characters, so negations and ranges are well covered.
patterns = st.lists(
    st.one_of(st.sampled_from(ALPHABET), st.sampled_from(["*", "?"]), _sets), max_size=5
).map("".join)
texts = st.text(alphabet="abc[]!-^\\%_.$*?", max_size=6)


def sqlite_matches(conn: sqlite3.Connection, text: str, pattern: str) -> bool:
    glob = parse_glob(pattern)
    if glob.never:
        return False
    if not glob.is_pattern:
        return text == glob.literal()
    return bool(conn.execute("SELECT ? GLOB ?", (text, glob.sqlite_glob())).fetchone()[0])


@settings(max_examples=500)
@given(pattern=patterns, candidates=st.lists(texts, max_size=8))
# Sets whose special characters were once reordered into a range: [-^[] became [[-^], which
# SQLite reads as "[" to "^" and so matched "]"; []-a] is "]" to "a", a range SQLite cannot write.
@example(pattern="*[-^[]", candidates=["*[-^]"])
@example(pattern="[]-a]", candidates=["]", "^", "_", "a", "-", "b"])
@example(pattern="[!^-]", candidates=["^", "-", "a"])
# fnmatch drops the reversed range \\-[ and only then reads the "!" left first as a negation.
@example(pattern="*[\\-[!]", candidates=["a", "!", "]"])
def test_sqlite_glob_matches_what_fnmatch_matches(pattern: str, candidates: list[str]) -> None:
    conn = sqlite3.connect(":memory:")
    for text in [*candidates, pattern]:
        assert sqlite_matches(conn, text, pattern) == fnmatch.fnmatchcase(text, pattern), (
            text,
            pattern,
            parse_glob(pattern).sqlite_glob(),
        )


@given(pattern=patterns, text=texts)
def test_every_match_lies_in_the_prefix_range(pattern: str, text: str) -> None:
    glob = parse_glob(pattern)
    if fnmatch.fnmatchcase(text, pattern):
        assert text.startswith(glob.prefix)
        upper = upper_bound(glob.prefix)
        assert upper is None or text < upper


def test_upper_bounds() -> None:
    assert upper_bound("unsub") == "unsuc"
    assert upper_bound("") is None
    assert upper_bound("a\U0010ffff") == "b"
    assert upper_bound("\ud7ff") == "\ue000"


@pytest.fixture(scope="module")
def pg() -> asyncpg.Connection:
    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(ADMIN_URL, timeout=5))
    except (OSError, asyncpg.PostgresError) as exc:
        loop.close()
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    yield loop, conn
    loop.run_until_complete(conn.close())
    loop.close()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=patterns, candidates=st.lists(texts, max_size=8))
@example(pattern="*[\\-[!]", candidates=["a", "!", "]"])
def test_postgres_regex_matches_what_fnmatch_matches(
    pg: tuple[asyncio.AbstractEventLoop, asyncpg.Connection],
    pattern: str,
    candidates: list[str],
) -> None:
    loop, conn = pg
    glob = parse_glob(pattern)
    if glob.never or not glob.is_pattern:
        return
    rows = loop.run_until_complete(
        conn.fetch(
            "SELECT t, t ~ $2 FROM unnest($1::text[]) AS t", [*candidates, pattern],
            glob.postgres_regex(),
        )
    )  # fmt: skip
    for text, matched in rows:
        assert matched == fnmatch.fnmatchcase(text, pattern), (text, glob.postgres_regex())
