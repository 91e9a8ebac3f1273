"""consecutive_losses {count}: `count` or more losing closed trades in a row.

Unscoped, this is the trader's streak (a win resets it). Scoped, only in-scope trades count: the streak is
the run of in-scope losing trades since the last in-scope win, read from the recent trades the state keeps
(so a scoped streak is bounded by RECENT_TRADES_KEPT). Break-even trades neither extend nor reset it.
"""

from __future__ import annotations

from ...state import RECENT_TRADES_KEPT, TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    count = params["count"]
    if scope.everything:
        losses = st.consecutive_losses
        if losses < count:
            return None
        return Triggered({"consecutive_losses": float(losses), "count": count})
    trades = st.recent_trades
    if len(trades) < count:
        return None
    losses = 0
    for trade in reversed(trades):
        if not scope.matches(trade.symbol, trade.exchange):
            continue
        if trade.realized_pnl > 0.0:
            break
        if trade.realized_pnl < 0.0:
            losses += 1
    if losses < count:
        return None
    return Triggered({"consecutive_losses": float(losses), "count": count})


def quiet(st: TraderState, now: float, count: float, scope: Scope) -> bool:
    """No breaker fires while the streak (scoped: the trades kept) is shorter than the smallest count."""
    if scope.everything:
        return st.consecutive_losses < count
    return len(st.recent_trades) < count


CONDITION = Condition(
    name="consecutive_losses",
    params=(Param("count", kind="integer", min=1, max=RECENT_TRADES_KEPT, help="losing trades in a row"),),
    evaluate=evaluate,
    summary="count or more losing trades in a row (in scope)",
    screen=Screen(smallest("count"), quiet),
)
