"""max_drawdown {threshold}: drawdown from peak equity above `threshold` (a fraction: 0.1 = 10%).

The drawdown is engine.measures.loss_fraction against the peak equity: the max_drawdown_percentage limit's
measure, as a fraction. Without a reference (peak 0) it is 0 and nothing fires.
"""

from __future__ import annotations

from ...measures import loss_fraction
from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    if not st.equity_reported:
        return None
    threshold = params["threshold"]
    peak, equity = st.peak_equity, st.current_equity
    drawdown = loss_fraction(peak, equity)
    if drawdown <= threshold:
        return None
    return Triggered({"drawdown": drawdown, "threshold": threshold, "equity": equity, "peak_equity": peak})


def quiet(st: TraderState, now: float, threshold: float, scope: Scope) -> bool:
    """No breaker fires when the drawdown is within the group's smallest threshold."""
    return not st.equity_reported or loss_fraction(st.peak_equity, st.current_equity) <= threshold


CONDITION = Condition(
    name="max_drawdown",
    params=(Param("threshold", min=0.0, min_exclusive=True, max=1.0, help="fraction of peak equity"),),
    evaluate=evaluate,
    summary="drawdown from peak equity > threshold (fraction)",
    screen=Screen(smallest("threshold"), quiet),
)
