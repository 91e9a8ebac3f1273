"""position_drawdown {threshold}: an in-scope open position losing more than `threshold` of its entry.

The loss is unrealized, as a fraction of the entry notional (Position.loss_fraction, the
position_max_drawdown_percentage limit's measure): (entry - mark) / entry for a long, (mark - entry) / entry
for a short. Every position over the threshold is named in `Triggered.positions`, so close_position closes
exactly those.
"""

from __future__ import annotations

from ...state import TraderState
from ..base import Condition, Param, Params, PositionKey, Scope, Screen, Triggered, smallest


def evaluate(st: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
    if not st.positions:
        return None
    threshold = params["threshold"]
    everything = scope.everything
    hit: list[PositionKey] | None = None
    worst = 0.0
    for key, pos in st.positions.items():
        if pos.quantity <= 0.0:
            continue
        loss = pos.loss_fraction  # 0 without an entry price
        if loss <= threshold or not (everything or scope.matches(key[0], key[1])):
            continue
        if hit is None:
            hit = []
        hit.append(key)
        worst = max(worst, loss)
    if hit is None:
        return None
    return Triggered({"position_loss": worst, "threshold": threshold, "positions": float(len(hit))}, tuple(hit))


def quiet(st: TraderState, now: float, threshold: float, scope: Scope) -> bool:
    """No breaker fires when no open position (in any scope) loses more than the smallest threshold."""
    for pos in st.positions.values():  # noqa: SIM110 (a loop: all() over a generator costs more on every CanTrade)
        if pos.loss_fraction > threshold and pos.quantity > 0.0:
            return False
    return True


CONDITION = Condition(
    name="position_drawdown",
    params=(Param("threshold", min=0.0, min_exclusive=True, max=1.0, help="fraction of entry notional"),),
    evaluate=evaluate,
    summary="an in-scope open position losing more than threshold of its entry (fraction)",
    screen=Screen(smallest("threshold"), quiet),
)
