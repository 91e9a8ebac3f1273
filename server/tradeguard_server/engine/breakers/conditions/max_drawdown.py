"""max_drawdown {threshold}: drawdown from peak equity above `threshold` (a fraction: 0.1 = 10%)."""

from __future__ import annotations

from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    peak = st.peak_equity
    if not st.equity_reported or peak <= 0.0:
        return None
    threshold = params["threshold"]
    drawdown = (peak - st.current_equity) / peak
    if drawdown <= threshold:
        return None
    return Triggered({"drawdown": drawdown, "threshold": threshold, "equity": st.current_equity,
                      "peak_equity": peak})


def quiet(st: TraderState, now: float, threshold: float, scope: Scope) -> bool:
    """No breaker fires when the drawdown is within the group's smallest threshold."""
    peak = st.peak_equity
    return not st.equity_reported or peak <= 0.0 or (peak - st.current_equity) / peak <= threshold


CONDITION = Condition(
    name="max_drawdown",
    params=(Param("threshold", min=0.0, min_exclusive=True, max=1.0, help="fraction of peak equity"),),
    evaluate=evaluate,
    summary="drawdown from peak equity > threshold (fraction)",
    screen=Screen(smallest("threshold"), quiet),
)
