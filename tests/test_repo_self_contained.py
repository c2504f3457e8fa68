"""A clone of relay runs its tests, benchmarks and CI on its own: no file reaches outside it.

A clone lands in a different folder on every machine, with different neighbours. A path that climbs
out of the repository (to reference material kept beside CI's clone, say) works where that
neighbour happens to be and fails everywhere else, which is how the Mailchimp samples were once
read. These checks read the files instead of running them, so such a path fails here first.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where code that runs from a clone lives: tests, benchmarks, CI, the Makefile, and the deploy files
# (compose and Kubernetes name paths relative to themselves).
SCANNED = ("tests", "bench", ".ci", "deploy", "Makefile")
# Request bodies and other data are read, never run; caches and benchmark output are not tracked.
SKIPPED = {Path("tests/fixtures"), Path("bench/.work")}
SKIPPED_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}

# Built from pieces so that this file, and greps for the same mistake, do not find it here.
_WORD = "sha" + "red"
_UP = "." + "."
# The word as a path component: next to a slash, or a whole quoted string.
NEIGHBOUR = re.compile(
    rf"(?<![\w.-]){_WORD}(?=/)|(?<=/){_WORD}(?![\w.-])|(?P<q>[\"']){_WORD}(?P=q)"
)
# A run of ".." path segments touching a slash ("../..", "x/.."), not Lua's ".." operator nor "...".
CLIMB = re.compile(r"(?<![\w.])(?:\.\./)*\.\.(?![\w.])")


def scanned_files() -> Iterator[Path]:
    for top in SCANNED:
        path = ROOT / top
        if path.is_file():
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            here = Path(dirpath).relative_to(ROOT)
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIPPED_NAMES and here / d not in SKIPPED
            )
            # os.walk does not enter a linked folder; the link itself is checked.
            yield from (Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink())
            yield from (Path(dirpath) / name for name in sorted(filenames))


def problems(relative: Path, text: str) -> list[str]:
    """Every place in ``text`` (the file ``relative``, from the repository root) that leaves it."""
    found = []
    lines = text.splitlines()
    # Climbs are counted from the file's own folder, the most a relative path there can mean:
    # compose and `$(dirname "$0")` start there, make and pytest start at the root, below it.
    depth = len(relative.parent.parts)
    for number, line in enumerate(lines, 1):
        if NEIGHBOUR.search(line):
            found.append(f"{relative}:{number}: names the folder beside the clone: {line.strip()}")
        for match in CLIMB.finditer(line):
            start, end = match.span()
            touches_slash = line[end : end + 1] == "/" or line[start - 1 : start] == "/"
            if touches_slash and match.group().count(_UP) > depth:
                found.append(f"{relative}:{number}: climbs above the repository: {line.strip()}")
    if relative.suffix == ".py":
        for number in sorted(_paths_outside(relative, text)):
            line = lines[number - 1].strip()
            found.append(f"{relative}:{number}: builds a path outside the repository: {line}")
    return found


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SystemError:
        # CPython 3.11 before 3.11.8 can leave its AST recursion counter off after an error
        # elsewhere in the process (gh-106905) and then refuse a sound file with "AST
        # constructor recursion depth mismatch"; seen once in a pytest-xdist worker after a
        # timed-out test. A new thread has a counter of its own.
        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(ast.parse, source).result()


def _paths_outside(relative: Path, source: str) -> set[int]:
    """Lines where a path built from ``__file__`` resolves outside the repository.

    The expressions are evaluated on the file's own location, so ``parents[1]`` is the root from
    tests/ and ``ROOT.parent`` is outside whatever name the root was given.
    """
    here = str(ROOT / relative)
    names: dict[str, str] = {}
    tree = _parse(source)
    assignments = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)]
    for node in sorted(assignments, key=lambda n: (n.lineno, n.col_offset)):
        value = _evaluate(node.value, here, names)
        for target in node.targets:
            if isinstance(target, ast.Name) and value is not None:
                names[target.id] = value
    lines = set()
    for node in ast.walk(tree):
        # A name is reported where it was bound, not at every use.
        if isinstance(node, ast.expr) and not isinstance(node, ast.Name):
            value = _evaluate(node, here, names)
            if value is not None and not _inside(value):
                lines.add(node.lineno)
    return lines


def _inside(path: str) -> bool:
    return path == str(ROOT) or path.startswith(str(ROOT) + os.sep)


def _evaluate(node: ast.expr, here: str, names: dict[str, str]) -> str | None:
    """The path ``node`` builds from ``__file__`` and names bound to such paths, else None."""

    def walk(node: ast.expr) -> str | None:
        match node:
            case ast.Name(id="__file__"):
                return here
            case ast.Name(id=name):
                return names.get(name)
            case ast.Attribute(value=inner, attr="parent"):
                path = walk(inner)
                return None if path is None else os.path.dirname(path)
            case ast.Subscript(
                value=ast.Attribute(value=inner, attr="parents"), slice=ast.Constant(value=int(n))
            ) if n >= 0:
                path = walk(inner)
                if path is None:
                    return None
                for _ in range(n + 1):
                    path = os.path.dirname(path)
                return path
            case ast.BinOp(left=left, op=ast.Div(), right=ast.Constant(value=str(part))):
                path = walk(left)
                return None if path is None else os.path.normpath(os.path.join(path, part))
            case ast.Call(func=ast.Name(id="Path" | "PurePath"), args=[inner]):
                return walk(inner)
            case ast.Call(
                func=ast.Attribute(value=inner, attr="resolve" | "absolute"), args=[]
            ):
                return walk(inner)
            case ast.Call(func=ast.Attribute(value=inner, attr="joinpath"), args=parts):
                return _join(walk(inner), parts)
            case ast.Call(
                func=ast.Attribute(
                    value=ast.Attribute(value=ast.Name(id="os"), attr="path"), attr=function
                ),
                args=[inner, *parts],
            ):
                path = walk(inner)
                if function == "join":
                    return _join(path, parts)
                if function == "dirname" and not parts and path is not None:
                    return os.path.dirname(path)
                if function in {"abspath", "realpath", "normpath"} and not parts:
                    return path
        return None

    return walk(node)


def _join(path: str | None, parts: list[ast.expr]) -> str | None:
    if path is None:
        return None
    for part in parts:
        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
            return None
        path = os.path.normpath(os.path.join(path, part.value))
    return path


def test_no_test_benchmark_or_script_reaches_outside_the_repository() -> None:
    found = []
    for path in scanned_files():
        relative = path.relative_to(ROOT)
        if path.is_symlink():
            if not _inside(str(path.resolve())):
                found.append(f"{relative}: a link to {path.resolve()}")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found.extend(problems(relative, text))
    assert found == []


def test_the_scan_covers_the_files_that_run_from_a_clone() -> None:
    scanned = {path.relative_to(ROOT) for path in scanned_files()}
    for expected in ("Makefile", ".ci/run", "tests/support.py", "bench/run.py", "deploy/Dockerfile"):
        assert Path(expected) in scanned, expected
    assert Path(__file__).relative_to(ROOT) in scanned
    assert not any(path.is_relative_to("tests/fixtures") for path in scanned)


@pytest.mark.parametrize(
    ("relative", "line"),
    [
        # The two lines that read the Mailchimp samples from beside CI's clone.
        ("tests/support.py", f'REPO = Path(__file__).resolve().parents[1]\nX = REPO.parent / "{_WORD}" / "mailchimp"'),
        ("tests/test_mailchimp.py", f'X = Path(__file__).resolve().parents[1].parent / "{_WORD}" / "mailchimp"'),
        # The same escape without the word, which only the evaluation of the path catches.
        ("tests/support.py", 'REPO = Path(__file__).resolve().parents[1]\nX = REPO.parent / "elsewhere"'),
        ("tests/support.py", 'X = Path(__file__).resolve().parents[2] / "elsewhere"'),
        ("tests/support.py", 'X = Path(__file__).parent.parent.parent / "elsewhere"'),
        ("tests/support.py", f'X = Path(__file__).parent / "{_UP}/{_UP}/elsewhere"'),
        ("tests/support.py", 'X = Path(__file__).resolve().parent.joinpath("..", "..", "x")'),
        ("bench/run.py", 'X = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")'),
        ("bench/run.py", "BENCH = Path(__file__).resolve().parent\nROOT = BENCH.parent\nX = ROOT.parent"),
        # Scripts and the Makefile.
        ("Makefile", f"\t$(BIN)/pip install -r {_UP}/{_WORD}/requirements.txt"),
        ("Makefile", f"FIXTURES := {_UP}/mailchimp"),
        (".ci/run", f'cd "$(dirname "$0")/{_UP}/{_UP}"'),
        (".ci/run", f"cp -r /work/{_WORD}/mailchimp tests/"),
        ("tests/support.py", f'SAMPLES = os.environ.get("SAMPLES", "{_UP}/{_UP}/{_WORD}")'),
        ("deploy/docker-compose.yml", f"      - {_UP}/{_UP}/data:/var/lib/relay"),
    ],
)
def test_the_check_catches_a_path_that_leaves_the_repository(relative: str, line: str) -> None:
    assert problems(Path(relative), line)


@pytest.mark.parametrize(
    ("relative", "line"),
    [
        ("tests/support.py", 'REPO = Path(__file__).resolve().parents[1]\nX = REPO / "tests" / "fixtures"'),
        ("tests/test_config.py", 'X = Path(__file__).resolve().parents[1] / "examples" / "relay.toml"'),
        ("bench/run.py", 'BENCH = Path(__file__).resolve().parent\nROOT = BENCH.parent\nX = ROOT / "docs"'),
        ("tests/test_deploy_files.py", f'assert (COMPOSE.parent / "{_UP}/grafana/dashboards").resolve() == X'),
        ("tests/test_cli.py", f'await cli("events", "show", "{_UP}/destinations", url=running.url)'),
        ("tests/test_cli.py", f'await cli("destinations", "pause", "{_UP}", url=running.url)'),
        (".ci/run", f'cd "$(dirname "$0")/{_UP}"'),
        ("deploy/docker-compose.yml", f"      - {_UP}/grafana/dashboards:/etc/grafana/dashboards:ro"),
        ("bench/post.lua", f'  prefix = body:sub(1, s - 1) {_UP} "data%5Bid%5D="'),
        ("bench/README.md", f"machine). The machine is {_WORD}: compare rows of the same run, not runs..."),
    ],
)
def test_the_check_lets_a_path_inside_the_repository_pass(relative: str, line: str) -> None:
    assert problems(Path(relative), line) == []
