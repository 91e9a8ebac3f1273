"""daily_loss {threshold}: loss since the start of the day above `threshold` of day-start equity (fraction).

The loss is engine.measures.loss_fraction against the day-start equity: the daily_max_drawdown_percentage
limit's measure, as a fraction. Without a reference (day-start equity 0) the loss is 0 and nothing fires.
"""

from __future__ import annotations

from ...measures import loss_fraction
from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    if not st.equity_reported:
        return None
    threshold = params["threshold"]
    start, equity = st.day_start_equity, st.current_equity
    loss = loss_fraction(start, equity)
    if loss <= threshold:
        return None
    return Triggered({"daily_loss": loss, "threshold": threshold, "equity": equity, "day_start_equity": start})


def quiet(st: TraderState, now: float, threshold: float, scope: Scope) -> bool:
    """No breaker fires when the day's loss is within the group's smallest threshold."""
    return not st.equity_reported or loss_fraction(st.day_start_equity, st.current_equity) <= threshold


CONDITION = Condition(
    name="daily_loss",
    params=(Param("threshold", min=0.0, min_exclusive=True, max=1.0, help="fraction of day-start equity"),),
    evaluate=evaluate,
    summary="loss since the start of the UTC day > threshold of day-start equity (fraction)",
    screen=Screen(smallest("threshold"), quiet),
)
