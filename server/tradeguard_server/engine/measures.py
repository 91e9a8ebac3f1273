"""The account's loss and PnL measures, each defined once: pure functions of a few numbers (no engine types, so
the store and the API may use them too).

- drawdown: loss against the peak equity. The max_drawdown_percentage limit (percent) and the max_drawdown
  breaker (fraction).
- daily / weekly / monthly loss: loss against the period's start equity. The *_max_drawdown_percentage limits
  (percent) and the daily_loss breaker (fraction).
- daily / weekly / monthly PnL: equity change since the period's start. RiskState, metrics, state rows.
- position loss: unrealized loss against the entry price. position_max_drawdown_percentage (percent) and the
  position_drawdown breaker (fraction).
- orders in a window: the max_orders_per_window throttle and the order_rate breaker.

Limits are in percent and breaker parameters in fractions (0.1 = 10%); both read the one fraction below, the
percent being that fraction times 100. A reference of 0 or less is no reference: nothing is lost against it
(engine.state describes how a period picks its reference).

`EquityMeasures` gives every holder of the equity levels (TraderState and its snapshot, StateRecord) the same
derived properties.
"""

from __future__ import annotations

from collections.abc import Sequence


def loss_fraction(reference: float, equity: float) -> float:
    """How much of `reference` has been lost at `equity`: (reference - equity) / reference, e.g. 0.1 for 10%;
    negative for a gain; 0.0 when `reference` is not positive."""
    if reference <= 0.0:
        return 0.0
    return (reference - equity) / reference


def loss_pct(reference: float, equity: float) -> float:
    """loss_fraction in percent, never negative (a gain is no loss)."""
    return percent_lost(loss_fraction(reference, equity))


def percent_lost(fraction: float) -> float:
    """A loss fraction in percent, 0 for a gain (what limits compare and RiskState shows)."""
    loss = fraction * 100.0
    return loss if loss > 0.0 else 0.0


def pnl(reference: float, equity: float) -> float:
    """Equity change since `reference` (quote currency; negative for a loss)."""
    return equity - reference


def pnl_pct(reference: float, equity: float) -> float:
    """pnl as percent of `reference`; 0.0 when `reference` is not positive."""
    return (equity - reference) / reference * 100.0 if reference > 0.0 else 0.0


def position_loss_fraction(is_long: bool, entry_price: float, mark_price: float) -> float:
    """Unrealized loss of a position as a fraction of its entry: (entry - mark) / entry for a long, the opposite
    for a short; negative in profit; 0.0 without an entry price."""
    if entry_price <= 0.0:
        return 0.0
    move = (mark_price - entry_price) / entry_price
    return -move if is_long else move


class EquityMeasures:
    """The derived values of the equity levels, for a class that holds them as attributes (a mixin: no state)."""

    __slots__ = ()

    current_equity: float
    peak_equity: float
    day_start_equity: float
    week_start_equity: float
    month_start_equity: float

    @property
    def drawdown_pct(self) -> float:
        """Loss from the peak equity, percent."""
        return loss_pct(self.peak_equity, self.current_equity)

    @property
    def daily_loss_pct(self) -> float:
        return loss_pct(self.day_start_equity, self.current_equity)

    @property
    def weekly_loss_pct(self) -> float:
        return loss_pct(self.week_start_equity, self.current_equity)

    @property
    def monthly_loss_pct(self) -> float:
        return loss_pct(self.month_start_equity, self.current_equity)

    @property
    def daily_pnl(self) -> float:
        return pnl(self.day_start_equity, self.current_equity)

    @property
    def weekly_pnl(self) -> float:
        return pnl(self.week_start_equity, self.current_equity)

    @property
    def monthly_pnl(self) -> float:
        return pnl(self.month_start_equity, self.current_equity)

    @property
    def daily_pnl_pct(self) -> float:
        return pnl_pct(self.day_start_equity, self.current_equity)

    @property
    def weekly_pnl_pct(self) -> float:
        return pnl_pct(self.week_start_equity, self.current_equity)

    @property
    def monthly_pnl_pct(self) -> float:
        return pnl_pct(self.month_start_equity, self.current_equity)


def orders_since(times: Sequence[float], cutoff: float) -> int:
    """Order times (oldest first) after `cutoff`, counted newest first up to the first one at or before it."""
    orders = 0
    for at in reversed(times):
        if at <= cutoff:
            break
        orders += 1
    return orders
