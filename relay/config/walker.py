"""Walking a parsed TOML tree: typed values by key, ``${VAR}`` expansion, and every problem found.

The reader (``relay.config.reader``) knows relay's tables; this knows how to read any of them
and how to say what is wrong: one line per problem, naming the key, and the name of the
``[[inbound]]`` or ``[[destination]]`` it is in when that has one:

    destination[1].url: not an http(s) URL (destination crm)

The index keeps each line pointing at one table even when its name is missing or repeated;
the name is what an operator greps for.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from relay.config import checks

T = TypeVar("T")

# ${NAME}, or ${NAME:-default}: the default (taken as written) when NAME is unset or empty,
# as in a shell; so a config can run where an optional variable is not set.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# "$NAME" without braces, as a shell would expand it: kept as written, which is almost always a
# mistake. Upper case only, so a password such as "pa$word" is not taken for one.
_BARE_ENV_REF = re.compile(r"\$([A-Z_][A-Z0-9_]*)(?![A-Za-z0-9_{])")


@dataclass
class Problem:
    key: str
    reason: str
    # The table it is in, as "destination crm", when that table has a valid name.
    context: str | None = None
    # Other keys with the same cause (a missing variable used in several places).
    also: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        line = f"{self.key}: {self.reason}"
        if self.context:
            line += f" ({self.context})"
        if self.also:
            line += f"; also used by {', '.join(self.also)}"
        return line


class TreeWalker:
    """Reads values out of a TOML tree, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._context: str | None = None
        self._missing: dict[str, Problem] = {}

    def fail(self, key: str, reason: str) -> None:
        self.problems.append(Problem(key, reason, self._context))

    def warn(self, key: str, reason: str) -> None:
        self.warnings.append(Problem(key, reason, self._context))

    @contextmanager
    def within(self, table: str, raw: Mapping[str, Any]) -> Iterator[None]:
        """Problems found meanwhile name the table by its ``name``, when it has a valid one."""
        name = raw.get("name")
        valid = isinstance(name, str) and checks.name(name) is None
        self._context = f"{table} {name}" if valid else None
        try:
            yield
        finally:
            self._context = None

    def expand(self, key: str, value: str) -> str | None:
        """``${NAME}`` (or ``${NAME:-default}``) replaced from the environment; None, and one
        problem, when a variable without a default is unset."""
        complete = True

        def sub(m: re.Match[str]) -> str:
            nonlocal complete
            name, default = m.group(1), m.group(2)
            if default is not None:
                return self.environ.get(name) or default
            if name in self.environ:
                return self.environ[name]
            complete = False
            first = self._missing.get(name)
            if first is None:
                self._missing[name] = Problem(
                    key, f"environment variable {name} is not set", self._context
                )
                self.problems.append(self._missing[name])
            elif key not in first.also and key != first.key:
                first.also.append(key)
            return ""

        expanded = _ENV_REF.sub(sub, value)
        bare = _BARE_ENV_REF.search(_ENV_REF.sub("", value))
        if bare is not None:
            self.warn(
                key,
                f"{bare.group(0)} is used as written, not read from the environment;"
                f" write ${{{bare.group(1)}}} to read it",
            )
        return expanded if complete else None

    def table(self, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
            return {}
        return value

    def unknown(self, raw: Mapping[str, Any], prefix: str, known: Collection[str]) -> None:
        for k in raw:
            if k not in known:
                self.fail(f"{prefix}{k}", "unknown key" + did_you_mean(k, known))

    def get(
        self,
        raw: Mapping[str, Any],
        prefix: str,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        if key not in raw:
            return default
        value = raw[key]
        full = f"{prefix}{key}"
        if isinstance(value, str):
            value = self.expand(full, value)
            if value is None:  # reported once, as the missing variable; nothing else to check
                return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            self.fail(full, f"must be {checks.kind_name(kind)}")
            return default
        if not isinstance(value, kind):
            self.fail(full, f"must be {checks.kind_name(kind)}")
            return default
        if check is not None and (reason := check(value)) is not None:
            self.fail(full, reason)
            return default
        return value  # type: ignore[return-value]

    def optional_str(self, raw: Mapping[str, Any], prefix: str, key: str) -> str | None:
        value = self.get(raw, prefix, key, str, "", checks.non_empty)
        return value or None

    def str_list(self, raw: Mapping[str, Any], prefix: str, key: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"{prefix}{key}", "must be a list of non-empty strings")
            return None
        expanded = [self.expand(f"{prefix}{key}", v) for v in value]
        return tuple(v for v in expanded if v is not None)

    def list_of_tables(
        self, raw: Mapping[str, Any], key: str, build: Callable[[dict[str, Any], str], T | None]
    ) -> list[T]:
        out: list[T] = []
        for i, item in self.items(raw, key):
            with self.within(key, item):
                built = build(item, f"{key}[{i}].")
            if built is not None:
                out.append(built)
        return out

    def items(
        self, raw: Mapping[str, Any], key: str, report: bool = True
    ) -> list[tuple[int, dict[str, Any]]]:
        """The tables of an array of tables with their indexes; a problem for anything else."""
        value = raw.get(key, [])
        if not isinstance(value, list):
            if report:
                self.fail(key, f"must be an array of tables ([[{key}]])")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                out.append((i, item))
            elif report:
                self.fail(f"{key}[{i}]", "must be a table")
        return out

    def unique(self, raw: Mapping[str, Any], table: str, key: str) -> None:
        """Each ``key`` of an array of tables is used once, whatever else is wrong with them."""
        seen: set[str] = set()
        for i, item in self.items(raw, table, report=False):
            value = item.get(key)
            if not isinstance(value, str):
                continue
            if value in seen:
                self.fail(f"{table}[{i}].{key}", f"duplicate {key} {value!r}")
            seen.add(value)


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'listen'?)`` for a near miss among ``choices``, else ""."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
