"""How a long copy shows its progress: a redrawn bar per table on a terminal, plain lines in a log.

>>> progress_line("events", 520, 1000, 2.0)
'events            [############............]  52%        520 / 1,000 rows       260 rows/s'
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

BAR = 24
# How often a log gets a line about a table still being copied.
PLAIN_INTERVAL = 10.0
# How often the terminal line is redrawn at most: drawing is not free and the eye is slower.
REDRAW_INTERVAL = 0.1


def progress_line(
    table: str, done: int, total: int, seconds: float, copied: int | None = None
) -> str:
    """One table's progress: bar, percentage, rows, and the rate of the rows this run copied."""
    share = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(share * BAR)
    bar = "#" * filled + "." * (BAR - filled)
    line = f"{table:<17} [{bar}] {share:4.0%} {done:>10,} / {total:,} rows"
    moved = done if copied is None else copied
    if moved <= 0 or seconds <= 0:
        return line  # nothing copied by this run (yet): no rate to speak of
    return f"{line} {moved / seconds:>9,.0f} rows/s"


class Progress:
    """Receives relay.store.copy's progress calls and shows them on ``out``."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self.started = False  # whether any table has begun
        self._first: dict[str, tuple[int, float]] = {}  # rows already there, and when it began
        self._shown = 0.0 if terminal else time.monotonic()
        self._open_line = False

    def _line(self, table: str, done: int, total: int) -> str:
        first, began = self._first.setdefault(table, (done, time.monotonic()))
        return progress_line(table, done, total, time.monotonic() - began, done - first)

    def note(self, line: str) -> None:
        self.end_line()
        print(line, file=self.out, flush=True)

    def update(self, table: str, done: int, total: int) -> None:
        self.started = True
        line = self._line(table, done, total)
        now = time.monotonic()
        if self.terminal:
            if now - self._shown >= REDRAW_INTERVAL:
                # \r back to the start, \x1b[K clears what a longer earlier line left.
                self.out.write(f"\r{self._fit(line)}\x1b[K")
                self.out.flush()
                self._open_line = True
                self._shown = now
        elif now - self._shown >= PLAIN_INTERVAL and self._first[table][0] != done:
            print(line, file=self.out, flush=True)
            self._shown = now

    def finish(self, table: str, done: int, total: int) -> None:
        line = self._line(table, done, total)
        if self.terminal:
            self.out.write(f"\r{self._fit(line)}\x1b[K\n")
            self.out.flush()
            self._open_line = False
        else:
            print(line, file=self.out, flush=True)
        self._shown = time.monotonic() if not self.terminal else 0.0

    @staticmethod
    def _fit(line: str) -> str:
        # A line that wraps cannot be redrawn in place: \r only returns to its last row.
        return line[: shutil.get_terminal_size().columns - 1]

    def end_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self._open_line = False
