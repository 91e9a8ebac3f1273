"""Store health: available or not, one warning per outage and one on recovery, a callback on each change."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .dbthread import describe
from .url import redact

log = logging.getLogger("tradeguard.store")


class Health:
    """True when the last connect or write succeeded. Used on the event loop thread only."""

    def __init__(self, url: str, retry_max_s: float, backlog: Callable[[], int],
                 notify: Callable[[bool], None]) -> None:
        self.url = url
        self.retry_max_s = retry_max_s
        self.backlog = backlog  # items not yet written, for the log lines
        self.notify = notify  # called on each change
        self.healthy = False
        self._outage_since: float | None = None

    def available(self) -> None:
        if self._outage_since is not None:
            log.warning("store available again after %.1fs: writing a backlog of %d items",
                        time.monotonic() - self._outage_since, self.backlog())
            self._outage_since = None
        self._set(True)

    def unavailable(self, error: BaseException | None) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("store unavailable (%s): %s; will retry with backoff up to %.1fs, the sidecar keeps "
                        "answering from memory (backlog %d items)", redact(self.url), describe(error),
                        self.retry_max_s, self.backlog())
        else:
            log.debug("store still unavailable: %s", describe(error))
        self._set(False)

    def _set(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        try:
            self.notify(healthy)
        except Exception:
            log.exception("on_health_change callback failed")
