"""Shell-style globs in SQL, meaning what destination filters mean by them (pure).

Destination ``types`` use ``fnmatch``: ``*`` any text, ``?`` one character, ``[abc]``,
``[a-z]`` and ``[!abc]`` one of (or none of) a set, everything else itself, case-sensitive. The
same pattern in an events filter is written for each backend (SQLite ``GLOB``, a PostgreSQL
regular expression) with every other character escaped, and its literal prefix becomes an
index range:

    g = parse_glob("unsub*")
    g.prefix, g.sqlite_glob(), g.postgres_regex()   # -> ('unsub', 'unsub*', '^unsub.*$')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Class:
    negated: bool
    # Single characters and ranges, as (first, last).
    items: tuple[tuple[str, str], ...]


_Token = str | _Class  # a literal character, "*", "?" (as _STAR/_ONE) or a set
_STAR = "\x00*"
_ONE = "\x00?"


@dataclass(frozen=True, slots=True)
class Glob:
    tokens: tuple[_Token, ...]
    # A set with nothing in it ([z-a]: fnmatch drops reversed ranges) matches no text at all.
    never: bool = False

    @property
    def is_pattern(self) -> bool:
        return any(t in (_STAR, _ONE) or isinstance(t, _Class) for t in self.tokens)

    @property
    def prefix(self) -> str:
        """The literal text every match starts with."""
        out = []
        for t in self.tokens:
            if isinstance(t, _Class) or t in (_STAR, _ONE):
                break
            out.append(t)
        return "".join(out)

    def literal(self) -> str:
        """The pattern as plain text (only meaningful when not ``is_pattern``)."""
        return "".join(t for t in self.tokens if isinstance(t, str))

    def sqlite_glob(self) -> str:
        out = []
        for t in self.tokens:
            if t == _STAR:
                out.append("*")
            elif t == _ONE:
                out.append("?")
            elif isinstance(t, _Class):
                out.append(_sqlite_class(t))
            elif t in "*?[":
                out.append(f"[{t}]")
            else:
                out.append(t)
        return "".join(out)

    def postgres_regex(self) -> str:
        out = ["^"]
        for t in self.tokens:
            if t == _STAR:
                out.append(".*")
            elif t == _ONE:
                out.append(".")
            elif isinstance(t, _Class):
                body = "".join(
                    _re_char(a) if a == b else f"{_re_char(a)}-{_re_char(b)}" for a, b in t.items
                )
                out.append(f"[{'^' if t.negated else ''}{body}]")
            else:
                out.append(_re_char(t))
        out.append("$")
        return "".join(out)


def _re_char(c: str) -> str:
    # In PostgreSQL's advanced regular expressions a backslash before any character that is not
    # a letter or digit stands for that character, inside brackets too.
    return c if c.isalnum() and c.isascii() else "\\" + c


# What a character means inside a GLOB set depends on where it stands ("]" first is itself,
# later it closes; "^" first negates; "-" between two characters makes a range).
_SET_SPECIAL = "]^-"


def _sqlite_class(t: _Class) -> str:
    # SQLite reads a set as: an optional "^", an optional "]" that is itself, then characters
    # and ranges, where "-" is a range unless it comes first, right after a range, or last.
    # Every special character is therefore taken out of the ranges and placed where it means
    # itself: "]" first, "^" anywhere but first, "-" last.
    singles: set[str] = set()
    ranges: list[str] = []
    for first, last in t.items:
        lo, hi = ord(first), ord(last)
        while lo <= hi and chr(lo) in _SET_SPECIAL:
            singles.add(chr(lo))
            lo += 1
        while lo <= hi and chr(hi) in _SET_SPECIAL:
            singles.add(chr(hi))
            hi -= 1
        if lo == hi:
            singles.add(chr(lo))
        elif lo < hi:
            ranges.append(f"{chr(lo)}-{chr(hi)}")
    plain = "".join(sorted(c for c in singles if c not in _SET_SPECIAL)) + "".join(ranges)
    head = ("]" if "]" in singles else "") + plain
    caret, dash = "^" in singles, "-" in singles
    if caret and not head:
        # "^" may not come first, and "-" first is itself: the set of "^" and "-" is "-^".
        body = "-^" if dash else "^"
    else:
        body = head + ("^" if caret else "") + ("-" if dash else "")
    if body == "^" and not t.negated:
        return "^"  # the set of "^" alone: outside brackets "^" is itself
    return f"[{'^' if t.negated else ''}{body}]"


def parse_glob(pattern: str) -> Glob:
    """Tokens as ``fnmatch.translate`` reads them (an unclosed ``[`` is a literal)."""
    tokens: list[_Token] = []
    never = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
        elif c == "?":
            tokens.append(_ONE)
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                tokens.append("[")
                continue
            body, i = pattern[i:j], j + 1
            negated, items = _set(body)
            if not items:
                never = never or not negated
                tokens.append(_ONE)  # none of nothing: any one character
            else:
                tokens.append(_Class(negated, items))
        else:
            tokens.append(c)
    return Glob(tuple(tokens), never)


def _set(body: str) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """Whether the set ``[body]`` is negated, and its characters and ranges, as fnmatch
    (Python 3.11 to 3.13) reads it.

    fnmatch cuts the body at each "-" that makes a range, drops reversed ranges (``z-a``) by
    joining their neighbours, and only then looks for a leading "!". So ``[\\-[!]`` is not a
    set of "\\" to "[" and "!": the reversed range goes and what is left, "!", is "none of
    nothing", any one character.
    """
    if "-" not in body:
        chunks = [body]
    else:
        chunks = []
        start, k = 0, (2 if body.startswith("!") else 1)
        while (k := body.find("-", k)) >= 0:
            chunks.append(body[start:k])
            start, k = k + 1, k + 3
        if body[start:]:
            chunks.append(body[start:])
        else:
            chunks[-1] += "-"  # a "-" just before "]" is itself
        for k in range(len(chunks) - 1, 0, -1):
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    # Characters, with True where a range runs from the one before to the one after.
    marks: list[tuple[str, bool]] = []
    for n, chunk in enumerate(chunks):
        if n:
            marks.append(("-", True))
        marks.extend((c, False) for c in chunk)
    negated = bool(marks) and marks[0] == ("!", False)
    if negated:
        marks = marks[1:]
    items: list[tuple[str, str]] = []
    k = 0
    while k < len(marks):
        if k + 2 < len(marks) and marks[k + 1][1]:
            items.append((marks[k][0], marks[k + 2][0]))
            k += 3
        else:
            items.append((marks[k][0], marks[k][0]))
            k += 1
    return negated, tuple(items)


def upper_bound(prefix: str) -> str | None:
    """The smallest text above every text starting with ``prefix`` (code point order, which
    is byte order in UTF-8); None when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None
