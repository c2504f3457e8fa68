"""requirements/*.txt pin, with hashes, every dependency that pyproject.toml declares.

make, CI and the container install dependencies from these files only, and relay itself with
--no-deps, so a dependency added to pyproject.toml without `make lock` would be missing at run
time rather than at install time. These tests fail first.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUNTIME = PROJECT["dependencies"]
TEST = RUNTIME + PROJECT["optional-dependencies"]["test"]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)")


def locked(name: str) -> dict[str, tuple[str, int]]:
    """Package -> (version, number of hashes), from one lock file."""
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    # An entry is its pin line and the indented --hash lines that continue it.
    for entry in re.split(r"\n(?=\S)", text):
        match = PIN.match(entry)
        if match:
            package = canonicalize_name(match["name"])
            pins[package] = (match["version"], entry.count("--hash=sha256:"))
    return pins


@pytest.mark.parametrize(("lock", "declared"), [("runtime.txt", RUNTIME), ("test.txt", TEST)])
def test_lock_pins_every_declared_dependency_within_its_range(
    lock: str, declared: list[str]
) -> None:
    pins = locked(lock)
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements/{lock}: run make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside {requirement.specifier}: "
            "run make lock"
        )


@pytest.mark.parametrize("lock", ["runtime.txt", "test.txt"])
def test_every_locked_package_carries_hashes(lock: str) -> None:
    pins = locked(lock)
    assert pins
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []


def test_runtime_and_test_locks_agree_on_shared_packages() -> None:
    runtime, test = locked("runtime.txt"), locked("test.txt")
    assert runtime.keys() <= test.keys()
    assert {n: runtime[n][0] for n in runtime} == {n: test[n][0] for n in runtime}


def test_make_and_the_container_install_from_the_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/runtime.txt" in makefile
    assert "--require-hashes -r requirements/test.txt" in makefile
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes" in dockerfile
    assert "requirements/runtime.txt" in dockerfile
