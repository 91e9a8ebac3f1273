"""Bounded traders (server residency.py) in tests: evicting the idle traders of a running sidecar on demand."""

from __future__ import annotations

from tradeguard_server.sidecar import Sidecar


async def evict_idle(sc: Sidecar) -> int:
    """Two eviction rounds with the writer's flush between: the first marks the idle traders, the second evicts
    those whose marked version is written (what the periodic task does every second). Returns how many left."""
    evicted = await sc.residency.evict_round()
    assert await sc.store.flush(10.0)
    return evicted + await sc.residency.evict_round()
