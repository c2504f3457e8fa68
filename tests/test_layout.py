"""The source tree keeps the shape the README describes: small modules, one job each."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relay"
# A module past this has usually picked up a second job; split it where the jobs part.
MAX_LINES = 450


@pytest.mark.parametrize(
    "module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_over_the_line_limit(module: Path) -> None:
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module.relative_to(PACKAGE)} has {lines} lines"


def test_every_folder_under_relay_is_a_package() -> None:
    folders = [
        d for d in PACKAGE.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    ]  # fmt: skip
    assert folders
    assert [d for d in folders if not (d / "__init__.py").exists()] == []
