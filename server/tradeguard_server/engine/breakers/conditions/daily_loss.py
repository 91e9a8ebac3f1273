"""daily_loss {threshold}: loss since the start of the day above `threshold` of day-start equity (fraction)."""

from __future__ import annotations

from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    start = st.day_start_equity
    if not st.equity_reported or start <= 0.0:
        return None
    threshold = params["threshold"]
    loss = (start - st.current_equity) / start
    if loss <= threshold:
        return None
    return Triggered({"daily_loss": loss, "threshold": threshold, "equity": st.current_equity,
                      "day_start_equity": start})


def quiet(st: TraderState, now: float, threshold: float, scope: Scope) -> bool:
    """No breaker fires when the day's loss is within the group's smallest threshold."""
    start = st.day_start_equity
    return not st.equity_reported or start <= 0.0 or (start - st.current_equity) / start <= threshold


CONDITION = Condition(
    name="daily_loss",
    params=(Param("threshold", min=0.0, min_exclusive=True, max=1.0, help="fraction of day-start equity"),),
    evaluate=evaluate,
    summary="loss since the start of the UTC day > threshold of day-start equity (fraction)",
    screen=Screen(smallest("threshold"), quiet),
)
