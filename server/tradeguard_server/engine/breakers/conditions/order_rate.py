"""order_rate {max_orders, window_seconds}: more than `max_orders` orders within the last `window_seconds`.

Counts the order times the engine records in `state.order_times` (orders CanTrade allowed; during a CanTrade
with an order, that order too, so the order that would exceed `max_orders` is the one denied), newest first,
stopping at the first one outside the window (engine.measures.orders_since, as the max_orders_per_window
throttle counts). Orders carry no scope in the state, so a scope only decides when the breaker is evaluated
(see the evaluator), not which orders count.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...measures import orders_since
from ...state import TraderState
from ..base import Condition, Param, Params, Scope, Screen, Triggered

MAX_ORDERS = 10_000  # the engine keeps at most this many recent order times per trader


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    times = st.order_times
    limit = params["max_orders"]
    if len(times) <= limit:
        return None
    window = params["window_seconds"]
    orders = orders_since(times, now - window)
    if orders <= limit:
        return None
    return Triggered({"orders": float(orders), "max_orders": limit, "window_seconds": window})


def widest(group: Sequence[Params]) -> tuple[float, float]:
    """(smallest max_orders, longest window_seconds) of the group."""
    return min(p["max_orders"] for p in group), max(p["window_seconds"] for p in group)


def quiet(st: TraderState, now: float, bound: tuple[float, float], scope: Scope) -> bool:
    """No breaker fires when the orders of the longest window are no more than the smallest max_orders."""
    limit, window = bound
    times = st.order_times
    return len(times) <= limit or orders_since(times, now - window) <= limit


CONDITION = Condition(
    name="order_rate",
    params=(
        Param("max_orders", kind="integer", min=1, max=MAX_ORDERS, help="orders allowed in the window"),
        Param("window_seconds", min=0.0, min_exclusive=True, max=86_400, help="window length, seconds"),
    ),
    evaluate=evaluate,
    summary="more than max_orders orders within window_seconds",
    screen=Screen(widest, quiet),
)
