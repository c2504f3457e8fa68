"""A serving process freezes its startup heap and collects the young generation less often."""

from __future__ import annotations

import subprocess
import sys

from relay.server import heap


def test_settle_freezes_what_exists_and_raises_the_young_threshold() -> None:
    # In a process of its own: the test runner's collector keeps its settings.
    code = (
        "import gc; from relay.server import heap; "
        "before = gc.get_threshold(); heap.settle(); "
        "print(gc.get_freeze_count(), *gc.get_threshold(), *before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    frozen, young, middle, old, _, before_middle, before_old = map(int, out)
    assert frozen > 1000  # the imported modules' objects, at least
    assert young == heap.YOUNG_THRESHOLD
    assert (middle, old) == (before_middle, before_old)
