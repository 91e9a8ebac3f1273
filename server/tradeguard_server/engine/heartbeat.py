"""The dead-man's switch (issue 18): a trader whose account's configuration sets heartbeat_timeout_seconds is
paused (heartbeat_pause_state, HALTED by default) when no call and no session message for it arrived within that
time, until a person (ResumeTrading) or the configured policy resumes it.

`heard(trader_id)` is told of every bot call (CanTrade, the reports, every Session message for the trader); the
sidecar runs `scan()` every HEARTBEAT_SCAN_S. A trader known to the engine but not heard since this sidecar
started counts from the first scan that sees it with a heartbeat configured. After a trip the trader is not paused
again until it was heard or resumed (a resume while the bot is still silent starts a new timeout).

Bounded traders (residency.py): a trader evicted from memory is not walked by `scan`, and it cannot have been evicted
while its account's heartbeat was in effect (that pins it). So its count starts at the first scan that found the
heartbeat in effect for its account (`armed`, kept per configured account), like a kept trader never heard. When it is
loaded back (single mode: Residency tells `heard` while the id is still in `engine.evicted`), its silence since then
(or since its stored `updated_at`, if later) is judged before the call is answered: past the timeout it is paused
exactly as `scan` would have, and that call is its first heard one after the trip. Cluster mode: an evicted trader's
next call claims it; when the claim's lease epoch follows the one this sidecar released (no other sidecar owned it
meanwhile, so none heard the bot), Residency.claimed calls `returned`, judged the same. Claimed with another epoch from
a lease that had ended (its sidecar died, stopped or evicted it), it is a takeover: `taken_over` judges the silence
since that lease ended (nobody owned the trader, so no call of its bot was answered), then counts from the claim.
"""

from __future__ import annotations

import logging

from .engine import RiskEngine
from .limits import Limits
from .state import INF, TraderState
from .types import TradingState

log = logging.getLogger("tradeguard.heartbeat")

HEARTBEAT_SCAN_S = 0.25
LOADING_KEPT = 10_000  # evicted ids a bot call is loading back (heard again once loaded)


class DeadMansSwitch:
    def __init__(self, engine: RiskEngine) -> None:
        self.engine = engine
        self.last: dict[str, float] = {}  # trader id -> engine-clock time of its last call or session message
        self.tripped: dict[str, float] = {}  # trader id -> when the switch paused it
        # account id -> engine-clock time of the first scan that found its configured heartbeat in effect (the
        # count's start for its traders not in memory then); `armed_default` the same for the defaults.
        self.armed: dict[str, float] = {}
        self.armed_default: float | None = None
        self.trips = 0
        self._loading: set[str] = set()  # evicted ids a bot call is loading back (see `heard`)

    def heard(self, trader_id: str) -> None:
        """A call or session message for the trader (hot path: two lookups and a store; unknown ids ignored).

        Also told when an evicted trader is loaded back (Residency's `touch`, the id still in `engine.evicted`),
        whoever's call loads it: a bot call first tells `heard` while the trader is evicted (it is noted in
        `_loading`), then the reload does; an operator's or a dashboard's read (GetRiskState, a watch, an admin
        call) only the reload: its silence is judged, but the read is not the bot's heartbeat."""
        engine = self.engine
        if trader_id in engine.traders:
            if trader_id in engine.evicted:  # loaded back just now (Residency._load tells us before it drops the id)
                seen = self._returned(engine.traders[trader_id])
                if trader_id not in self._loading:  # not a bot call: silent since `seen` (None: no count yet)
                    if seen is not None:
                        self.last[trader_id] = seen
                    return
                self._loading.discard(trader_id)
            self.last[trader_id] = engine.clock.now()
        elif trader_id in engine.evicted:  # a bot call that loads it back (told again once it is in memory)
            if len(self._loading) > LOADING_KEPT:  # (reloads that failed and were never retried)
                self._loading.clear()
            self._loading.add(trader_id)

    def returned(self, st: TraderState) -> None:
        """Cluster mode: an evicted trader claimed back by this sidecar (residency.Residency.claimed), before its call
        is answered: judged as `heard` judges a reload in single mode, then heard."""
        self._returned(st)
        self.last[st.trader_id] = self.engine.clock.now()

    def taken_over(self, st: TraderState, unowned_s: float) -> None:
        """Cluster mode: a trader claimed here from a lease that ended `unowned_s` seconds ago (its sidecar died,
        stopped or evicted it), before the call that claimed it is answered. No sidecar owned it meanwhile, so no
        call of its bot was answered anywhere: its silence is at least that long (a bot killed with its sidecar
        stays silent, and no sidecar counted it). Judged as `_returned` judges a reload, from the latest of: when
        the lease ended, its stored `updated_at`, and when this sidecar first found the heartbeat in effect. The
        count goes on from there: the claiming call is heard only if it is the bot's (Takeover.called), not an
        operator's or a dashboard's read."""
        now = self.engine.clock.now()
        seen = self._returned(st, since=now - unowned_s)
        # the count goes on from `seen`; no heartbeat in effect yet (None): it starts with this claim
        self.last[st.trader_id] = now if seen is None else seen

    def _returned(self, st: TraderState, since: float = -INF) -> float | None:
        """An evicted trader is in memory again, before its call is answered: pause it if its account's heartbeat
        has been in effect (since the scan that found it) for longer than the timeout and it was not heard since
        (nor after `since`: a takeover's lease end). Returns the time its silence counts from (None: no heartbeat in
        effect yet). A listener's failure propagates (the call fails; the pause is in memory)."""
        engine = self.engine
        limits = engine.limits_for(st.account_id)
        timeout = limits.heartbeat_timeout_seconds
        if timeout is None:
            return None
        armed = self.armed.get(st.account_id) if st.account_id in engine.account_limits else self.armed_default
        if armed is None:  # no scan has found the heartbeat yet: the count starts with this call
            return None
        now = engine.clock.now()
        seen = max(armed, st.updated_at, since)  # heard last before its eviction, when no heartbeat was in effect
        if now - seen < timeout:
            return seen
        self._pause(st, limits, timeout, now - seen)
        self.tripped[st.trader_id] = now
        self.trips += 1
        return seen

    def _pause(self, st: TraderState, limits: Limits, timeout: float, silent_s: float) -> None:
        state = limits.heartbeat_pause_state
        if state not in (TradingState.HALTED, TradingState.REDUCING):
            state = TradingState.HALTED
        reason = (f"no call or session message for {silent_s:.1f}s "
                  f"(heartbeat_timeout_seconds={timeout}); resume once the bot is back")
        self.engine.pause(st.trader_id, st.account_id, state, None, reason, by="dead-man's switch")

    def _arm(self, now: float) -> None:
        """Note when each configured account's heartbeat came into effect: the first scan that finds it (accounts
        without one, or no longer configured, are dropped). The defaults (settings) carry no heartbeat today; were
        they to, an account without a configuration of its own would count from `armed_default`."""
        engine = self.engine
        if engine.defaults.heartbeat_timeout_seconds is None:
            self.armed_default = None
        elif self.armed_default is None:
            self.armed_default = now
        armed, configured = self.armed, engine.account_limits
        for account_id, limits in configured.items():
            if limits.heartbeat_timeout_seconds is None:
                armed.pop(account_id, None)
            elif account_id not in armed:
                armed[account_id] = now
        if len(armed) > len(configured):
            for account_id in [a for a in armed if a not in configured]:
                del armed[account_id]

    def scan(self) -> list[str]:
        """Pause every trader whose heartbeat is overdue; returns their ids."""
        engine = self.engine
        now = engine.clock.now()
        paused: list[str] = []
        last, tripped = self.last, self.tripped
        self._arm(now)
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
            try:
                self._pause(st, limits, timeout, now - seen)
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
