"""The dead-man's switch (issue 18): a trader whose account's configuration sets heartbeat_timeout_seconds is
paused (heartbeat_pause_state, HALTED by default) when no call and no session message for it arrived within that
time, until a person (ResumeTrading) or the configured policy resumes it.

`heard(trader_id)` is told of every bot call (CanTrade, the reports, every Session message for the trader); the
sidecar runs `scan()` every HEARTBEAT_SCAN_S. A trader known to the engine but not heard since this sidecar
started counts from the first scan that sees it with a heartbeat configured. After a trip the trader is not paused
again until it was heard or resumed (a resume while the bot is still silent starts a new timeout).
"""

from __future__ import annotations

import logging

from .engine import RiskEngine
from .types import TradingState

log = logging.getLogger("tradeguard.heartbeat")

HEARTBEAT_SCAN_S = 0.25


class DeadMansSwitch:
    def __init__(self, engine: RiskEngine) -> None:
        self.engine = engine
        self.last: dict[str, float] = {}  # trader id -> engine-clock time of its last call or session message
        self.tripped: dict[str, float] = {}  # trader id -> when the switch paused it
        self.trips = 0

    def heard(self, trader_id: str) -> None:
        """A call or session message for the trader (hot path: one dict lookup and store; unknown ids ignored)."""
        if trader_id in self.engine.traders:
            self.last[trader_id] = self.engine.clock.now()

    def scan(self) -> list[str]:
        """Pause every trader whose heartbeat is overdue; returns their ids."""
        engine = self.engine
        now = engine.clock.now()
        paused: list[str] = []
        last, tripped = self.last, self.tripped
        for st in list(engine.traders.values()):
            limits = engine.limits_for(st.account_id)
            timeout = limits.heartbeat_timeout_seconds
            trader_id = st.trader_id
            if timeout is None:
                continue
            seen = last.get(trader_id)
            if seen is None:
                seen = last[trader_id] = now
            since = tripped.get(trader_id)
            if since is not None:
                if seen > since:  # the bot is back (its pause stays until resumed)
                    del tripped[trader_id]
                elif st.effective_pause(now) is None:  # resumed while the bot is still silent: count again
                    del tripped[trader_id]
                    last[trader_id] = now
                continue
            if now - seen < timeout:
                continue
            state = limits.heartbeat_pause_state
            if state not in (TradingState.HALTED, TradingState.REDUCING):
                state = TradingState.HALTED
            reason = (f"dead-man's switch: no call or session message for {now - seen:.1f}s "
                      f"(heartbeat_timeout_seconds={timeout}); resume once the bot is back")
            try:
                engine.pause(trader_id, st.account_id, state, None, reason, by="dead-man's switch")
            except Exception:  # a listener failed (logged by the engine): try again at the next scan
                log.exception("dead-man's switch: pausing trader %s failed", trader_id)
                continue
            tripped[trader_id] = now
            self.trips += 1
            paused.append(trader_id)
        if len(last) > 2 * len(engine.traders) + 1000:  # traders gone from the engine (evicted, rebound away)
            for trader_id in [k for k in last if k not in engine.traders]:
                del last[trader_id]
                tripped.pop(trader_id, None)
        return paused
