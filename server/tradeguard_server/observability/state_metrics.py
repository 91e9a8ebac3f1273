"""The engine listener that keeps the state metrics: per-trader gauges, limit breaches and breaker firings.

Wired in `sidecar.py` only when metrics are on (with metrics off the engine has one listener fewer). It moves:
- `risk_daily_pnl`, `risk_drawdown`, `risk_trading_paused` for the trader of every state change;
- `risk_limit_breaches_total{trader_id, rule}` once per loss limit newly breached, and once per breaker firing
  with rule `breaker:<name>` (the rule its `RISK LIMIT BREACHED` log line names);
- `tradeguard_breaker_firings_total{breaker_id}` once per breaker firing.
`restore()` sets the per-trader gauges of the traders loaded at start (they would otherwise appear only with each
trader's next change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from ..engine.events import StateChanged
from ..engine.state import TraderState
from ..engine.types import TradingState


class StateSink(Protocol):
    """The part of the metrics sink this listener moves."""

    def state_changed(self, trader_id: str, daily_pnl: float, drawdown_pct: float, paused: bool) -> None: ...
    def breach(self, rule: str, trader_id: str = "") -> None: ...
    def breaker_fired(self, breaker_id: str) -> None: ...


class StateMetrics:
    """A Listener (`events.Listener`): call it with every StateChanged."""

    __slots__ = ("_breach", "_fired", "_moved", "now")

    def __init__(self, sink: StateSink, now: Callable[[], float]) -> None:
        self.now = now  # the sidecar's clock: paused or not is judged now (a replayed change carries its past time)
        self._moved = sink.state_changed
        self._breach = sink.breach
        self._fired = sink.breaker_fired

    def __call__(self, event: StateChanged) -> None:
        if event.cause == "order_allowed":  # a pending order moves none of these (and it is the hot path)
            return
        st = event.state
        paused = st.trading_state(self.now()) is not TradingState.ACTIVE
        self._moved(st.trader_id, st.daily_pnl, st.drawdown_pct, paused)
        for breach in event.breaches:
            self._breach(breach.rule, st.trader_id)
        for firing in event.firings:
            self._fired(firing.breaker_id)
            self._breach(f"breaker:{firing.name}", st.trader_id)

    def restore(self, states: Iterable[TraderState]) -> None:
        """Set the per-trader gauges from states loaded at start (no breach is counted again)."""
        now = self.now()
        for st in states:
            self._moved(st.trader_id, st.daily_pnl, st.drawdown_pct, st.trading_state(now) is not TradingState.ACTIVE)
