"""The `gc_pauses` fixture (a root conftest plugin): for tests whose assertion bounds one call's duration.

Late in the CI suite (one pytest process, ~1950 tests) the objects earlier tests left alive make a full collection
slow: one stalled every call of a sidecar for about a second (test_persistence_server's outage test, 1.03 s against
a 1.0 s bound). Such a pause says nothing about the code under test. The fixture collects once, then freezes every
object alive at the start of the test out of the collector (gc.freeze: they are never scanned again until the
test ends), so a collection during the test only scans what the test itself allocated. It yields the collector's
pauses during the test (seconds), for the test to print next to its figures.

What it does not hide: a pause caused by the test's own allocations, and every stall that is not the collector.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest


@pytest.fixture
def gc_pauses() -> Iterator[list[float]]:
    """The objects earlier tests left in this long pytest process frozen out of the collector, and the
    collector's pauses while the test runs, in seconds."""
    pauses: list[float] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.collect()
    gc.freeze()
    gc.callbacks.append(timed)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(timed)
        gc.unfreeze()


def longest_ms(pauses: list[float]) -> str:
    """'N GC pauses, longest X ms' for a test's printed figures."""
    return f"{len(pauses)} GC pauses, longest {max(pauses, default=0.0) * 1e3:.0f} ms"
