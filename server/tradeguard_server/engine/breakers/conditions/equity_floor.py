"""equity_floor {value}: equity below an absolute amount (quote currency)."""

from __future__ import annotations

from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Triggered


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    if not st.equity_reported:
        return None
    floor = params["value"]
    equity = st.current_equity
    if equity >= floor:
        return None
    return Triggered({"equity": equity, "floor": floor})


CONDITION = Condition(
    name="equity_floor",
    params=(Param("value", min=0.0, min_exclusive=True, max=1e15, help="equity floor, quote currency"),),
    evaluate=evaluate,
    summary="equity < value",
)
