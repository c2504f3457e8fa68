"""copy-store's decisions, as tables of cases: where to start, what differs, how progress reads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from relay.cli.progress import Progress, progress_line
from relay.store.bulk import TABLES, Kind, normalize, store_location
from relay.store.copy import (
    CopyError,
    Marker,
    Start,
    compare_counts,
    missing_rows,
    plan_start,
)

SOURCE = "sqlite:////var/lib/relay/relay.db"
MINE = Marker(SOURCE, "2026-12-01T10:00:00.000Z")
OTHER = Marker("sqlite:////srv/other.db", "2026-11-30T09:00:00.000Z")


@pytest.mark.parametrize(
    ("marker", "holds_history", "force", "start"),
    [
        (None, False, False, Start.FRESH),  # an empty database
        (MINE, False, False, Start.RESUME),  # interrupted before its first batch
        (MINE, True, False, Start.RESUME),  # interrupted, or finished: continue and verify
        (OTHER, False, False, Start.FRESH),  # another copy that never got a row: nothing to lose
        (None, False, True, Start.FRESH),
        (None, True, True, Start.CLEAR),
        (MINE, True, True, Start.CLEAR),  # --force starts over even a copy of this source
        (OTHER, False, True, Start.CLEAR),
    ],
)
def test_where_a_copy_starts(
    marker: Marker | None, holds_history: bool, force: bool, start: Start
) -> None:
    assert plan_start(SOURCE, marker, holds_history, force) is start


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (None, "already holds relay data that did not come from this copy"),
        (
            OTHER,
            "holds a copy of sqlite:////srv/other.db (started 2026-11-30T09:00:00.000Z), not of",
        ),
    ],
)
def test_a_target_with_other_data_is_refused(marker: Marker | None, message: str) -> None:
    with pytest.raises(CopyError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        plan_start(SOURCE, marker, holds_history=True, force=False)
    assert "--force" in str(info.value)


def test_a_marker_survives_its_round_trip_and_garbage_is_no_marker() -> None:
    finished = Marker(SOURCE, MINE.started_at, "2026-12-01T11:00:00.000Z")
    assert Marker.load(finished.dump()) == finished
    assert Marker.load("") is None
    assert Marker.load('{"source": 1}') is None


def test_counts_that_differ_are_named_and_equal_ones_are_not() -> None:
    source = {"events": 10, "attempts": 5, "replays": 1}
    target = {"events": 10, "attempts": 4, "dedup": 2}
    assert compare_counts(source, target) == [
        "attempts: source 5, target 4",
        "dedup: source 0, target 2",
        "replays: source 1, target 0",
    ]


def test_state_rows_missing_or_different_in_the_target_are_named() -> None:
    source = [("crm", True, 1.0), ("dw", False, 2.0), ("erp", False, 3.0)]
    target = [("crm", True, 1.0), ("dw", True, 2.0), ("other", False, 9.0)]
    assert missing_rows(source, target, key_index=0) == ["dw", "erp"]


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("postgresql://relay:pw@db.internal/relay", "postgresql://db.internal:5432/relay"),
        ("postgres://other@db.internal:5432/relay", "postgresql://db.internal:5432/relay"),
        ("postgresql:///relay?host=/run/postgresql", "postgresql:///run/postgresql:5432/relay"),
        ("postgresql://db:6432/?dbname=relay", "postgresql://db:6432/relay"),
    ],
)
def test_two_urls_of_one_database_name_one_location(url: str, location: str) -> None:
    assert store_location(url) == location


def test_a_relative_and_an_absolute_sqlite_url_name_one_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert store_location("sqlite:///data/relay.db") == f"sqlite:///{tmp_path}/data/relay.db"
    assert store_location(f"sqlite:///{tmp_path}/data/relay.db") == store_location(
        "sqlite:///./data/../data/relay.db"
    )


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (None, Kind.TEXT, None),
        (b"caf\xc3\xa9", Kind.TEXT, "café"),  # SQLite may hold text as a blob
        ("body", Kind.BYTES, b"body"),
        (memoryview(b"head"), Kind.BYTES, b"head"),
        (3, Kind.FLOAT, 3.0),
        (7.0, Kind.INT, 7),
        (1, Kind.BOOL, True),
        (0, Kind.BOOL, False),
    ],
)
def test_values_are_normalised_to_what_every_backend_takes(
    value: object, kind: Kind, expected: object
) -> None:
    got = normalize(value, kind)
    assert got == expected and type(got) is type(expected)


def test_every_table_is_copied_after_the_tables_it_references() -> None:
    order = [table.name for table in TABLES]
    assert order.index("requests") < order.index("events") < order.index("deliveries")
    assert order.index("replays") < order.index("deliveries") < order.index("attempts")
    for table in TABLES:
        assert table.key in table.names


@pytest.mark.parametrize(
    ("done", "total", "bar", "share"),
    [(0, 0, "." * 24, "100%"), (0, 10, "." * 24, "  0%"), (5, 10, "#" * 12 + "." * 12, " 50%"),
     (10, 10, "#" * 24, "100%")],
)  # fmt: skip
def test_a_progress_line_shows_bar_share_rows_and_rate(
    done: int, total: int, bar: str, share: str
) -> None:
    line = progress_line("events", done, total, 2.0)
    expected = f"[{bar if total else '#' * 24}] {share}"
    assert expected in line and f"{done:,} / {total:,} rows" in line


def test_the_rate_counts_only_rows_this_run_copied() -> None:
    assert progress_line("events", 1500, 2000, 2.0, copied=500).endswith("250 rows/s")


def test_plain_progress_prints_a_line_per_table_and_no_control_characters() -> None:
    out = io.StringIO()
    progress = Progress(out, terminal=False)
    progress.update("events", 0, 3)
    progress.update("events", 2, 3)
    progress.finish("events", 3, 3)
    progress.note("verified")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("events") and lines[1] == "verified"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_terminal_progress_redraws_one_line_per_table() -> None:
    out = io.StringIO()
    progress = Progress(out, terminal=True)
    progress.update("events", 0, 3)
    progress.finish("events", 3, 3)
    progress.update("deliveries", 1, 4)
    progress.end_line()
    text = out.getvalue()
    assert text.startswith("\revents") and "\r" + progress_line("events", 3, 3, 1.0)[:40] in text
    assert text.count("\n") == 2 and text.endswith("\n")


def test_a_table_this_run_copied_nothing_of_shows_no_rate() -> None:
    assert progress_line("replays", 0, 0, 1.0).endswith("0 / 0 rows")
    assert progress_line("events", 20, 20, 1.0, copied=0).endswith("20 / 20 rows")
