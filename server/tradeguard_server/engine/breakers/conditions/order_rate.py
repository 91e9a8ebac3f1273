"""order_rate {max_orders, window_seconds}: more than `max_orders` orders within the last `window_seconds`.

Counts the order times the engine records in `state.order_times` (orders CanTrade allowed), newest first,
stopping at the first one outside the window. Orders carry no scope in the state, so a scope only decides
when the breaker is evaluated (see the evaluator), not which orders count.
"""

from __future__ import annotations

from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Triggered

MAX_ORDERS = 10_000  # the engine keeps at most this many recent order times per trader


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    times = st.order_times
    limit = params["max_orders"]
    if len(times) <= limit:
        return None
    window = params["window_seconds"]
    cutoff = now - window
    orders = 0
    for at in reversed(times):
        if at <= cutoff:
            break
        orders += 1
    if orders <= limit:
        return None
    return Triggered({"orders": float(orders), "max_orders": limit, "window_seconds": window})


CONDITION = Condition(
    name="order_rate",
    params=(
        Param("max_orders", kind="integer", min=1, max=MAX_ORDERS, help="orders allowed in the window"),
        Param("window_seconds", min=0.0, min_exclusive=True, max=86_400, help="window length, seconds"),
    ),
    evaluate=evaluate,
    summary="more than max_orders orders within window_seconds",
)
