"""Wait for a condition instead of sleeping a fixed time: poll a predicate until it holds or a deadline passes.

Use these where the sidecar makes something true in the background and offers no event a test can await
(a credentials file re-read, a metric reaching a value, a row reaching the database). Where an event exists
(a watch update, a health status change, a ready file, `store.flush()`), await the event itself.

    assert await eventually(lambda: sidecar.metrics.value(...) == 3, timeout=5)
    assert eventually_sync(lambda: ready.exists(), timeout=30)

Both return True as soon as the predicate holds and False at the deadline (the test asserts on it, so a
failure says which condition never came). The timeout is a ceiling, not a wait: a generous one costs nothing
on a fast machine and keeps a busy 2-core machine from failing the test.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT_S = 10.0
POLL_S = 0.01


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = DEFAULT_TIMEOUT_S,
                     interval: float = POLL_S) -> bool:
    """Poll `predicate` (plain or async) on the running loop until it is true; False after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)  # the poll interval, not a wait for the condition


def eventually_sync(predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT_S,
                    interval: float = POLL_S) -> bool:
    """`eventually` for synchronous tests (a sidecar in another thread or process)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # the poll interval, not a wait for the condition
