"""From what happened to alerts: at most one alert per episode per event kind.

An **episode** is a stretch of time during which one condition holds; its alert is sent when it begins (and, for
the kinds that have one, a closing alert when it ends). Precisely:

- `trader_paused` / `trader_resumed`: a trader's *own-pause episode* begins with the first state change that finds
  it with an active pause of its own (any source but the account and every-account kill switches: an operator's
  PauseTrading, a loss limit, a breaker, cancel-on-disconnect, the dead-man's switch) after a change that found
  none, and ends with the first change that finds none (ResumeTrading, or its pauses expired: the sidecar notices
  that at the trader's next call). A trader that stays paused and keeps being denied, or gets a second pause on
  top, is still in the same episode: one `trader_paused`, then one `trader_resumed`. Key: trader id and the time
  the episode began (the earliest `since` of its own pauses then).
- `loss_limit_breach`: one per pause a loss limit puts on a trader. The engine applies a breach only when the
  trader has no active pause of that limit (`engine._apply_breaches`), so a breach *is* an episode: it lasts as
  long as that limit's pause. Key: trader, limit code, time.
- `breaker_fired`: one per firing. A breaker fires once per episode (engine.breakers.evaluator: until its
  condition is false again or it is re-armed). Key: the firing's circuit_breaker_events id.
- `kill_switch` / `kill_switch_lifted`: an account's (or every account's) pause: the episode begins with a pause
  of a scope not paused then and ends with its resume; a second pause of a paused scope is the same episode.
  Alerted by the sidecar the kill switch was pressed on only (`ControlPlane.on_scope`), never by the sidecars
  that apply it from the shared control state. The traders it pauses get no `trader_paused` each (one alert
  for the account, not one per bot). Key: the scope and its control-state version.
- `store_unavailable` / `store_recovered`: from the store's health change to NOT_SERVING until the next one to
  SERVING; `control_state_stale` / `control_state_recovered`: from the control state becoming overdue (not heard
  for control_state_max_age_seconds, or the trader leases lapsed: CONTROL_STATE_STALE) until it has stayed fresh
  for control_state_max_age_seconds + trader_lease_seconds without a break (cluster mode; ControlListener.on_overdue
  has that hysteresis: a relapse meanwhile is the same episode; the recovered alert is dated when it was heard
  again). Per sidecar. Key: sidecar and the time it began.

Memory of open episodes lives in this process. After a restart (or a takeover of a trader) the paused traders'
`trader_paused` alerts are derived again with the same key and `only_if_new`: the outbox drops those it already
holds, and delivers those a crash lost before they were stored.

Every method runs on the event loop's thread (the engine's), does no I/O and never blocks: it hands alerts to
`emit` (AlertDispatcher.submit: a bounded in-memory queue).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..engine.engine import SCOPE_SOURCES
from ..engine.events import StateChanged
from ..engine.state import TraderState
from . import alert as a
from .alert import Alert

log = logging.getLogger("tradeguard.alerts")

Emit = Callable[[Alert], None]
SHADOW = " (shadow mode: not enforced)"


def own_pause_start(st: TraderState, now: float) -> float | None:
    """When the trader's own-pause episode began (the earliest `since` of its active own pauses), None when it
    has no active pause of its own."""
    start: float | None = None
    for p in st.pauses:
        if p.source not in SCOPE_SOURCES and p.active(now) and (start is None or p.since < start):
            start = p.since
    return start


def _own_pause(st: TraderState, now: float) -> Any:
    best = None
    for p in st.pauses:
        if p.source not in SCOPE_SOURCES and p.active(now) and (best is None or p.rank() > best.rank()):
            best = p
    return best


class AlertWatcher:
    """The engine listener (call it with each StateChanged) and the health / kill-switch hooks. See the module
    docstring for the episodes."""

    def __init__(self, emit: Emit, sidecar: str, muted: Callable[[], bool] = lambda: False,
                 enforced: Callable[[], bool] = lambda: True) -> None:
        self.emit = emit
        self.sidecar = sidecar
        self.muted = muted  # a journal replay re-runs changes already alerted (persistence.replaying)
        # enable_risk_enforcement: off (shadow mode), a pause is recorded but CanTrade allows: its alerts say so
        # (severity warning, "shadow mode: not enforced", details.shadow), as breaker_fired's do
        self.enforced = enforced
        self.paused: dict[str, float] = {}  # trader id -> start of its own-pause episode in progress
        self.scopes: dict[str, bool] = {}  # account id ("*" = every account) -> its kill switch is on
        self.down: dict[str, float] = {}  # "store" / "control" -> when that episode began

    # ---- the engine listener (hot path: a few comparisons when nothing is paused) ----------------

    def __call__(self, event: StateChanged) -> None:
        if not event.audit and not event.firings:
            return  # order bookkeeping (CanTrade's hot path): it never begins nor ends a pause
        st = event.state
        if not st.pauses and not event.firings and st.trader_id not in self.paused:
            return  # (most changes)
        now = event.at
        if event.breaches or event.firings:
            self._breaches_and_firings(event, st, now)
        tid = st.trader_id
        open_since = self.paused.get(tid)
        if open_since is not None:  # an episode in progress: does the trader still have a pause of its own?
            for p in st.pauses:
                if p.source not in SCOPE_SOURCES and (p.until is None or now < p.until):
                    return  # the same episode
        elif not st.pauses:
            return
        self._pause_episode(st, now, event.reason)

    def _breaches_and_firings(self, event: StateChanged, st: TraderState, now: float) -> None:
        if self.muted():
            return
        shadow = not self.enforced()
        for breach in event.breaches:
            self.emit(Alert(a.LOSS_LIMIT_BREACH, f"{a.LOSS_LIMIT_BREACH}:{st.trader_id}:{breach.code.name}:{now:.6f}",
                            breach.reason + (SHADOW if shadow else ""), now, self.sidecar, st.trader_id,
                            st.account_id, "warning" if shadow else "",
                            details={"rule": breach.rule, "code": breach.code.name, "value": breach.value,
                                     "limit": breach.limit, "state": breach.state.name,
                                     "pause_seconds": breach.duration_s, "shadow": shadow}))
        for f in event.firings:
            key = f.event_id or f"{f.breaker_id}:{f.trader_id or st.trader_id}:{f.at:.6f}"
            severity = "warning" if f.shadow or f.action == "alert" else "critical"
            self.emit(Alert(a.BREAKER_FIRED, f"{a.BREAKER_FIRED}:{key}",
                            f"circuit breaker {f.name or f.breaker_id} fired ({f.condition}; action {f.action}"
                            + (", shadow mode: not enforced" if f.shadow else "") + ")",
                            f.at or now, self.sidecar, f.trader_id or st.trader_id, f.account_id or st.account_id,
                            severity, details={"breaker_id": f.breaker_id, "name": f.name,
                                               "condition": f.condition, "action": f.action,
                                               "triggered_values": dict(f.triggered_values), "shadow": f.shadow,
                                               "event_id": f.event_id}))

    def _pause_episode(self, st: TraderState, now: float, reason: str, only_if_new: bool = False) -> None:
        """Begin or end the trader's pause episode if this change does (alerted unless muted: a journal replay)."""
        start = own_pause_start(st, now) if st.pauses else None
        open_since = self.paused.get(st.trader_id)
        if start is not None and open_since is None:
            self.paused[st.trader_id] = start
            if self.muted():
                return
            pause = _own_pause(st, now)
            shadow = not self.enforced()
            self.emit(Alert(a.TRADER_PAUSED, f"{a.TRADER_PAUSED}:{st.trader_id}:{start:.6f}",
                            pause.reason + (SHADOW if shadow else ""), now, self.sidecar, st.trader_id,
                            st.account_id, "warning" if shadow else "",
                            details={"state": pause.state.name, "source": pause.source, "code": pause.code.name,
                                     "until": None if pause.until is None else a.iso(pause.until),
                                     "since": a.iso(start), "change": reason, "shadow": shadow},
                            only_if_new=only_if_new))
        elif start is None and open_since is not None:
            del self.paused[st.trader_id]
            if self.muted():
                return
            self.emit(Alert(a.TRADER_RESUMED, f"{a.TRADER_RESUMED}:{st.trader_id}:{open_since:.6f}", reason, now,
                            self.sidecar, st.trader_id, st.account_id,
                            details={"paused_since": a.iso(open_since), "paused_seconds": round(now - open_since, 3)}))

    def restored(self, traders: Iterable[TraderState], now: float) -> None:
        """The stored state was installed (start, or traders taken over): the paused traders' episodes are taken
        up, their `trader_paused` alerts derived again `only_if_new` (the outbox keeps the first of each)."""
        for st in traders:
            if st.trader_id not in self.paused and st.pauses:
                self._pause_episode(st, now, "stored state loaded", only_if_new=True)

    # ---- kill switches (ControlPlane.on_scope: called on the sidecar it was pressed on) ---------

    def scope_changed(self, account_id: str, paused: bool, reason: str, by: str, version: int, at: float,
                      details: dict[str, Any], was: bool | None = None) -> None:
        """`was`: whether the scope was paused before this change, as the shared control state says (None: as
        this watcher last saw it pressed here). Pressed on one sidecar and lifted on another, or a timed pause that
        ran out, only the control state knows."""
        if was is None:
            was = self.scopes.get(account_id, False)
        self.scopes[account_id] = paused
        if paused == was:
            return  # the same episode (a second pause of a paused scope), or a resume of what was not paused
        where = "every account" if account_id == "*" else f"account {account_id}"
        event = a.KILL_SWITCH if paused else a.KILL_SWITCH_LIFTED
        text = (f"kill switch: {where} {details.get('state', 'paused')} by {by}" + (f": {reason}" if reason else "")
                if paused else f"kill switch lifted: {where} resumed by {by}")
        self.emit(Alert(event, f"{event}:{account_id}:{version}", text, at, self.sidecar, "", account_id,
                        details={"scope": "all" if account_id == "*" else "account", "by": by, "version": version,
                                 **details}))

    # ---- health: the store and the shared control state -------------------------------------------

    def store_health(self, healthy: bool, at: float, why: str = "") -> None:
        self._health("store", healthy, at, a.STORE_UNAVAILABLE, a.STORE_RECOVERED,
                     "the database does not answer: state changes wait in memory" + (f" ({why})" if why else ""),
                     "the database answers again")

    def control_health(self, fresh: bool, at: float) -> None:
        self._health("control", fresh, at, a.CONTROL_STATE_STALE, a.CONTROL_STATE_RECOVERED,
                     "CONTROL_STATE_STALE: the shared control state was not heard from the database for "
                     "control_state_max_age_seconds (or this sidecar's trader leases lapsed): "
                     "control_state_stale_action applies to new exposure", "the shared control state is heard again")

    def _health(self, what: str, ok: bool, at: float, down_event: str, up_event: str, down_text: str,
                up_text: str) -> None:
        began = self.down.get(what)
        if not ok and began is None:
            self.down[what] = at
            self.emit(Alert(down_event, f"{down_event}:{self.sidecar}:{at:.6f}", down_text, at, self.sidecar))
        elif ok and began is not None:
            del self.down[what]
            self.emit(Alert(up_event, f"{up_event}:{self.sidecar}:{began:.6f}", up_text, at, self.sidecar,
                            details={"down_since": a.iso(began), "down_seconds": round(at - began, 3)}))
