"""Risk limits in force for an account: the active configuration resolved over the settings' defaults.

All percentages are percent (5.0 = 5%). A limit of None is not configured and its check is SKIPPED.
Limits are immutable and precomputed once per configuration change, never per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .types import TradingState, TradingWindow


@dataclass(frozen=True, slots=True)
class SymbolLimits:
    """Per-symbol overrides; None falls back to the account limit."""

    symbol: str
    max_position_size_percentage: float | None = None
    max_leverage: float | None = None
    position_max_drawdown_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything the engine enforces for one account."""

    config_id: str = ""
    daily_max_drawdown_percentage: float | None = 5.0
    weekly_max_drawdown_percentage: float | None = None
    monthly_max_drawdown_percentage: float | None = None
    max_drawdown_percentage: float | None = 20.0
    stop_trading_minutes: int = 30
    breach_state: TradingState = TradingState.REDUCING
    consecutive_loss_threshold: int = 0
    cooling_off_period_minutes: int = 0
    max_position_size_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_correlated_exposure_percentage: float | None = None
    volatility_adjustment_factor: float = 1.0
    volatility_high: float | None = None
    volatility_extreme: float | None = None
    position_max_drawdown_percentage: float | None = None
    position_trailing_stop_multiplier: float | None = None
    max_order_notional: float | None = None
    max_orders_per_window: int | None = None
    order_rate_window_seconds: int = 60
    correlation_groups: tuple[tuple[str, frozenset[str]], ...] = ()
    # Pre-trade controls (issue 16): each None / empty = not configured (its check is SKIPPED).
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None
    reference_price_max_age_seconds: int = 60
    duplicate_order_window_ms: int | None = None
    allowed_symbols: frozenset[str] = frozenset()
    blocked_symbols: frozenset[str] = frozenset()
    trading_windows: tuple[TradingWindow, ...] = ()
    max_daily_notional: float | None = None
    max_daily_orders: int | None = None
    max_fills_per_window: int | None = None
    fill_window_seconds: int = 60
    pending_order_ttl_seconds: int = 60
    # Account-wide limits (issue 17; engine.account_limits): over every trader of the account, on every sidecar.
    # None = off. Percentages as above; exposures in the account's quote currency (notional).
    account_daily_loss_percentage: float | None = None
    account_max_drawdown_percentage: float | None = None
    account_max_gross_exposure: float | None = None
    account_max_net_exposure: float | None = None
    # Dead-man's switch (issue 18): no call or session message of a trader for this long pauses it
    # (heartbeat_pause_state) until resumed; None = no heartbeat required.
    heartbeat_timeout_seconds: int | None = None
    heartbeat_pause_state: TradingState = TradingState.HALTED
    symbols: dict[str, SymbolLimits] = field(default_factory=dict)
    # Derived: any account-wide limit set (CanTrade calls the engine's account_checks hook only then).
    account_limited: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limited = (self.account_daily_loss_percentage is not None or self.account_max_drawdown_percentage is not None
                   or self.account_max_gross_exposure is not None or self.account_max_net_exposure is not None)
        object.__setattr__(self, "account_limited", limited)

    def for_symbol(self, symbol: str) -> SymbolLimits | None:
        return self.symbols.get(symbol)

    def with_changes(self, **changes: object) -> Limits:
        return replace(self, **changes)  # type: ignore[arg-type]

    def group_of(self, symbol: str) -> frozenset[str] | None:
        """The correlation group of a symbol; None means all of the account's symbols."""
        for _name, members in self.correlation_groups:
            if symbol in members:
                return members
        if self.correlation_groups:
            return frozenset((symbol,))
        return None
