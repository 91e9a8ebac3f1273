"""loss_streak_in_window {trade_limit, lookback_minutes}: freqtrade's StoplossGuard.

Fires when `trade_limit` or more losing trades (in scope) closed within the last `lookback_minutes`.
Trades are read newest first from the state's recent trades; reading stops at the first trade that
closed before the window, so the cost is bounded by the trades in the window.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...state import RECENT_TRADES_KEPT, TraderState
from ...types import ClosedTrade
from ..base import ALL, Condition, Param, Params, Scope, Screen, Triggered


def losses_since(trades: Sequence[ClosedTrade], cutoff: float, scope: Scope) -> int:
    """Losing trades in `scope` closed after `cutoff`, read newest first up to the first one at or before it."""
    everything = scope.everything
    losses = 0
    for trade in reversed(trades):
        if trade.closed_at <= cutoff:
            break
        if trade.realized_pnl < 0.0 and (everything or scope.matches(trade.symbol, trade.exchange)):
            losses += 1
    return losses


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    limit = params["trade_limit"]
    trades = st.recent_trades
    if len(trades) < limit:
        return None
    lookback = params["lookback_minutes"]
    losses = losses_since(trades, now - lookback * 60.0, scope)
    if losses < limit:
        return None
    return Triggered({"losing_trades": float(losses), "trade_limit": limit, "lookback_minutes": lookback})


def widest(group: Sequence[Params]) -> tuple[float, float]:
    """(smallest trade_limit, longest lookback_minutes) of the group."""
    return min(p["trade_limit"] for p in group), max(p["lookback_minutes"] for p in group)


def quiet(st: TraderState, now: float, bound: tuple[float, float], scope: Scope) -> bool:
    """No breaker fires when the losing trades of the longest window, in any scope, are fewer than the
    smallest trade_limit (a shorter window or a narrower scope counts no more of them)."""
    limit, lookback = bound
    trades = st.recent_trades
    return len(trades) < limit or losses_since(trades, now - lookback * 60.0, ALL) < limit


CONDITION = Condition(
    name="loss_streak_in_window",
    params=(
        Param("trade_limit", kind="integer", min=1, max=RECENT_TRADES_KEPT, help="losing trades in the window"),
        Param("lookback_minutes", min=0.0, min_exclusive=True, max=7 * 24 * 60, help="window length, minutes"),
    ),
    evaluate=evaluate,
    summary="trade_limit or more losing trades (in scope) within lookback_minutes",
    screen=Screen(widest, quiet),
)
