"""loss_streak_in_window {trade_limit, lookback_minutes}: freqtrade's StoplossGuard.

Fires when `trade_limit` or more losing trades (in scope) closed within the last `lookback_minutes`.
Trades are read newest first from the state's recent trades; reading stops at the first trade that
closed before the window, so the cost is bounded by the trades in the window.
"""

from __future__ import annotations

from ...state import RECENT_TRADES_KEPT, TraderState
from ..base import Condition, Param, Params, Scope, Triggered


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    limit = params["trade_limit"]
    trades = st.recent_trades
    if len(trades) < limit:
        return None
    lookback = params["lookback_minutes"]
    cutoff = now - lookback * 60.0
    everything = scope.everything
    losses = 0
    for trade in reversed(trades):
        if trade.closed_at <= cutoff:
            break
        if trade.realized_pnl < 0.0 and (everything or scope.matches(trade.symbol, trade.exchange)):
            losses += 1
    if losses < limit:
        return None
    return Triggered({"losing_trades": float(losses), "trade_limit": limit, "lookback_minutes": lookback})


CONDITION = Condition(
    name="loss_streak_in_window",
    params=(
        Param("trade_limit", kind="integer", min=1, max=RECENT_TRADES_KEPT, help="losing trades in the window"),
        Param("lookback_minutes", min=0.0, min_exclusive=True, max=7 * 24 * 60, help="window length, minutes"),
    ),
    evaluate=evaluate,
    summary="trade_limit or more losing trades (in scope) within lookback_minutes",
)
