"""Stopping background tasks without ever hanging a shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("tradeguard.cluster")


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], what: str, *, within_s: float = 10.0) -> None:
    """Cancel `tasks` until they are done, for at most `within_s`. Cancelled again and again: on Python 3.11
    asyncio.wait_for can swallow a cancellation that arrives as its inner call completes (cpython #86296), and a
    task with a loop would then go round once more; a task still running at the end is left behind, logged."""
    pending = {t for t in tasks if not t.done()}
    rounds = max(1, int(within_s / 0.5))
    for _ in range(rounds):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.warning("%s: %d task(s) did not stop within %.0fs; left behind", what, len(pending), within_s)
