"""What every order check sees of one order (OrderContext), and the one comparison they all use (`within`)."""

from __future__ import annotations

from dataclasses import dataclass

from .limits import Limits, SymbolLimits
from .state import TraderState
from .types import CheckResult, OrderIntent, OrderSplit, PriceMark

TOLERANCE = 1e-9  # relative: a value within 1e-9 of its limit is equal to it (floating-point error, not risk)


def within(value: float, limit: float) -> bool:
    """value <= limit, up to a relative TOLERANCE of the limit: the one comparison every order check uses,
    so that 3 x 0.1 passes a limit of 0.3 and 0.07 x 50,000 passes 3,500."""
    return value <= limit + abs(limit) * TOLERANCE



@dataclass(slots=True)
class OrderContext:
    """One order as every order check sees it: the inputs and what several checks share, computed once.

    Built on every CanTrade with an order, so a plain slotted dataclass (a frozen one costs ~0.6 µs more per
    call); like the other engine values, nothing changes it after it is built.
    """

    st: TraderState
    order: OrderIntent
    limits: Limits
    now: float
    split: OrderSplit
    reducing: bool  # the order only shrinks a known position (no adding part)
    sym: SymbolLimits | None  # the order symbol's overrides
    equity: float
    added: float  # notional of the adding part, at the order's price
    venue_after: float  # quantity on the order's venue after the order when it adds (split.venue_after)
    scale: float  # size-limit scale of the volatility regime (1.0 in a normal one)
    regime: CheckResult  # the volatility regime check, as volatility_scale answers it
    ref: PriceMark | None = None  # the reference price of the order's symbol (price collars), None if none known
