"""Value types of the engine. Enum values equal the proto enum numbers, so the API maps them 1:1.

OrderIntent, CheckResult, RequiredAction and Decision are built on every CanTrade, so they are plain
slotted dataclasses rather than frozen ones (a frozen dataclass sets each field through
object.__setattr__: about 1 µs more per object, measured). Treat them as immutable all the same: nothing
changes one after it is built, and engine.checks shares constant CheckResult instances between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .measures import percent_lost, position_loss_fraction


class TradingState(IntEnum):
    ACTIVE = 1
    REDUCING = 2
    HALTED = 3


class Side(IntEnum):
    BUY = 1
    SELL = 2


class CheckStatus(IntEnum):
    PASS = 1
    FAIL = 2
    SKIPPED = 3


class ActionType(IntEnum):
    CLOSE_POSITION = 1
    PAUSE_TRADING = 2
    REDUCE_ONLY = 3
    ALERT = 4
    CANCEL_ALL_ORDERS = 5


class DecisionCode(IntEnum):
    UNSPECIFIED = 0
    ALLOWED = 1
    NO_EQUITY_REPORTED = 2
    KILL_SWITCH = 3
    DAILY_LOSS_LIMIT = 4
    WEEKLY_LOSS_LIMIT = 5
    MONTHLY_LOSS_LIMIT = 6
    MAX_DRAWDOWN = 7
    CONSECUTIVE_LOSSES = 8
    POSITION_SIZE_LIMIT = 9
    LEVERAGE_LIMIT = 10
    RISK_PER_TRADE_LIMIT = 11
    CORRELATED_EXPOSURE_LIMIT = 12
    ORDER_NOTIONAL_LIMIT = 13
    ORDER_RATE_LIMIT = 14
    VOLATILITY_REGIME = 15
    CIRCUIT_BREAKER = 16
    SIDECAR_UNAVAILABLE = 17
    STATE_NOT_LOADED = 18
    INVALID_RESPONSE = 19
    ORDER_QUANTITY_LIMIT = 20
    POSITION_QUANTITY_LIMIT = 21
    OPEN_ORDERS_LIMIT = 22
    PRICE_COLLAR = 23
    NO_REFERENCE_PRICE = 24
    DUPLICATE_ORDER = 25
    SYMBOL_NOT_ALLOWED = 26
    OUTSIDE_TRADING_WINDOW = 27
    DAILY_NOTIONAL_LIMIT = 28
    DAILY_ORDERS_LIMIT = 29
    FILL_RATE_LIMIT = 30
    CONTROL_STATE_STALE = 32


class OrderStatus(IntEnum):
    """Where an allowed order stands (proto OrderStatus). ALLOWED: nothing reported yet (server only)."""

    ALLOWED = 1
    ACCEPTED = 2
    PARTIALLY_FILLED = 3
    FILLED = 4
    CANCELLED = 5
    REJECTED = 6
    EXPIRED = 7

    @property
    def final(self) -> bool:
        return self >= OrderStatus.FILLED


@dataclass(slots=True)
class OrderIntent:
    """The order a bot is about to place (already validated)."""

    symbol: str
    side: Side
    quantity: float
    price: float
    exchange: str = ""
    leverage: float = 0.0
    reduce_only: bool = False
    stop_price: float = 0.0
    volatility: float = 0.0

    @property
    def notional(self) -> float:
        return self.quantity * self.price


@dataclass(slots=True)
class OrderSplit:
    """An order split against the one known position it can shrink (engine.checks.split_order).

    `position`: the trader's position in the order's symbol on the order's venue, or None. `reducing`: the
    quantity that shrinks it (0 unless it is on the opposite side); `adding`: the rest, which opens or grows
    exposure and is what the exposure checks judge. `adding == 0.0` means the order only reduces.
    """

    position: Position | None
    reducing: float
    adding: float
    # The position on the venue in the order's direction (+quantity on the same side, -quantity on the opposite
    # one, 0 without a position), and the unfilled quantity of the trader's pending orders on the venue in the
    # order's direction: they count as filled, so they use up the position the order could reduce and add to what
    # it holds after.
    held: float = 0.0
    pending_same: float = 0.0
    exchange: str = ""  # the venue's exchange: the position's, else the order's

    @property
    def venue_after(self) -> float:
        """Quantity held on the order's venue in the order's direction after the order and every pending order
        on it in that direction have filled (the worst case)."""
        return max(0.0, self.held + self.pending_same + self.reducing + self.adding)


@dataclass(frozen=True, slots=True)
class Position:
    """One open position (SIDE_BUY = long)."""

    symbol: str
    side: Side
    quantity: float
    entry_price: float
    mark_price: float
    exchange: str = ""
    leverage: float = 0.0
    volatility: float = 0.0
    # Unrealized loss as a fraction of the entry (measures.position_loss_fraction; negative in profit), computed
    # once when the position is reported: the position_drawdown breakers read it on every CanTrade.
    loss_fraction: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        loss = position_loss_fraction(self.side is Side.BUY, self.entry_price, self.mark_price)
        object.__setattr__(self, "loss_fraction", loss)

    @property
    def notional(self) -> float:
        return self.quantity * self.mark_price

    @property
    def signed_notional(self) -> float:
        return self.notional if self.side is Side.BUY else -self.notional

    @property
    def loss_pct(self) -> float:
        """Unrealized loss as percent of entry notional (0 when in profit)."""
        return percent_lost(self.loss_fraction)


@dataclass(slots=True)
class PendingOrder:
    """An order CanTrade allowed that may still fill (engine.orders). Immutable by convention, like OrderIntent
    (one is built on every allowed CanTrade: a frozen dataclass costs ~1 µs more): a report replaces it, and the
    API caches each one's message by identity.

    `quantity` and `price` are the order's; `filled` is the cumulative quantity filled (ReportOrder) and `avg_price`
    its average price. `reducing`: the order only shrank a known position when it was allowed, so it adds no
    exposure (it still uses up the position it reduces). `expires_at`: released when nothing more is reported
    by then (pending_order_ttl_seconds after the last report).
    """

    client_order_id: str
    symbol: str
    exchange: str
    side: Side
    quantity: float
    price: float
    allowed_at: float
    expires_at: float
    filled: float = 0.0
    avg_price: float = 0.0
    status: OrderStatus = OrderStatus.ALLOWED
    reducing: bool = False
    # A ReportPositions came after the order was allowed: fills reported from then on may be in those positions.
    reported: bool = False
    # Filled quantity kept apart from the positions (engine.orders.report): it counts like pending quantity until
    # a ReportPositions holds it.
    unreconciled: float = 0.0
    last_fill_at: float = 0.0  # when its latest fill was reported (0: none)
    released: bool = False  # EXPIRED by its TTL (nothing reported), not by the bot: a live report revives it

    @property
    def remaining(self) -> float:
        """Quantity that may still fill (0 once final)."""
        return 0.0 if self.status.final else max(0.0, self.quantity - self.filled)


@dataclass(frozen=True, slots=True)
class PriceMark:
    """A reference price for a symbol (price collars), observed at `at` (epoch seconds)."""

    symbol: str
    price: float
    at: float
    exchange: str = ""


@dataclass(frozen=True, slots=True)
class TradingWindow:
    """A UTC window of the week in which new exposure is allowed: ISO `weekdays` (empty = every day), minutes of
    the day [start, end); an end at or before the start runs past midnight into the next day."""

    weekdays: frozenset[int]
    start_minute: int
    end_minute: int


@dataclass(slots=True)
class CheckResult:
    """One rule evaluated for a decision."""

    name: str
    status: CheckStatus
    code: DecisionCode
    detail: str = ""
    value: float = 0.0
    limit: float = 0.0


@dataclass(slots=True)
class RequiredAction:
    """Something the bot must do now."""

    type: ActionType
    symbol: str = ""
    exchange: str = ""
    reason: str = ""
    breaker_id: str = ""
    client_order_ids: tuple[str, ...] = ()  # CANCEL_ALL_ORDERS: the trader's pending orders


@dataclass(slots=True)
class Decision:
    """The answer to CanTrade."""

    allowed: bool
    code: DecisionCode
    reason: str
    trading_state: TradingState
    paused_until: float | None
    checks: tuple[CheckResult, ...] = ()
    actions: tuple[RequiredAction, ...] = ()
    would_deny: bool = False
    # The leading checks that depend only on the trader's state (the same tuple object for every decision at
    # one state version, so a caller may cache what it derives from them); None when not applicable.
    state_checks: tuple[CheckResult, ...] | None = None


@dataclass(frozen=True, slots=True)
class Flags:
    """Run-time feature flags."""

    enable_risk_enforcement: bool = True
    enable_persistence: bool = True


@dataclass(slots=True)
class ClosedTrade:
    """A closed trade as the engine remembers it (for streaks and breaker windows)."""

    trade_id: str
    symbol: str
    exchange: str
    side: Side
    realized_pnl: float
    closed_at: float


@dataclass(slots=True)
class SymbolStats:
    """Per-symbol statistics from trade reports."""

    trades: int = 0
    wins: int = 0
    losses: int = 0
    realized_pnl: float = 0.0


@dataclass(slots=True)
class Breach:
    """A limit breach found when evaluating a trader's state."""

    code: DecisionCode
    rule: str
    value: float
    limit: float
    reason: str
    state: TradingState
    duration_s: float | None
    extra: dict[str, float] = field(default_factory=dict)
