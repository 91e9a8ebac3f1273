"""equity_floor {value}: equity below an absolute amount (quote currency)."""

from __future__ import annotations

from collections.abc import Sequence

from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    if not st.equity_reported:
        return None
    floor = params["value"]
    equity = st.current_equity
    if equity >= floor:
        return None
    return Triggered({"equity": equity, "floor": floor})


def highest_floor(group: Sequence[Params]) -> float:
    return max(p["value"] for p in group)


def quiet(st: TraderState, now: float, floor: float, scope: Scope) -> bool:
    """No breaker fires when equity is at or above the group's highest floor."""
    return not st.equity_reported or st.current_equity >= floor


CONDITION = Condition(
    name="equity_floor",
    params=(Param("value", min=0.0, min_exclusive=True, max=1e15, help="equity floor, quote currency"),),
    evaluate=evaluate,
    summary="equity < value",
    screen=Screen(highest_floor, quiet),
)
