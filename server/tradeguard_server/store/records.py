"""Plain frozen records the store reads and writes; the API converts protobuf messages to and from them.

Times are float epoch seconds (UTC) everywhere. Optional fields are None where the proto field is
`optional` (None = not set, the server's default applies). Stored with microsecond precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.snapshot import PauseRecord, StateRecord, SymbolStatsRecord

__all__ = [
    "BreakerEventRecord",
    "BreakerRecord",
    "ConfigRecord",
    "FlagsRecord",
    "HistoryRecord",
    "LoadedState",
    "PauseRecord",
    "StateRecord",
    "SymbolConfigRecord",
    "SymbolStatsRecord",
    "TradeRecord",
    "TradingWindowRecord",
]


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One row of the audit trail: the state after a change, and why it changed."""

    trader_id: str
    account_id: str
    # recent_trades, order_times, fill_times, breaker_episodes and finished_orders are not kept in history (empty
    # here); the pending orders are.
    state: StateRecord
    reason: str
    trace_id: str | None
    recorded_at: float
    id: int | None = None  # set by the database; the paging cursor of list_history


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """A closed trade as reported (idempotent by (trader_id, trade_id))."""

    trader_id: str
    account_id: str
    trade_id: str
    symbol: str
    exchange: str
    side: str  # "BUY" or "SELL"
    realized_pnl: float
    closed_at: float


@dataclass(frozen=True, slots=True)
class SymbolConfigRecord:
    """Per-symbol overrides of a configuration (symbol_risk_configurations)."""

    symbol: str
    max_position_size_percentage: float | None = None
    max_leverage: float | None = None
    position_max_drawdown_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None
    created_at: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class TradingWindowRecord:
    """A UTC window in which new exposure is allowed, as given: ISO weekdays (1 = Monday; empty = every day) and
    "HH:MM" start (inclusive) and end (exclusive; "24:00" = the end of the day; at or before the start = past
    midnight)."""

    weekdays: tuple[int, ...]
    start: str
    end: str


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    """One named set of limits for an account (risk_configurations), every field of RiskConfiguration."""

    account_id: str
    config_id: str
    is_active: bool = False
    daily_max_drawdown_percentage: float | None = None
    weekly_max_drawdown_percentage: float | None = None
    monthly_max_drawdown_percentage: float | None = None
    max_drawdown_percentage: float | None = None
    stop_trading_minutes: int | None = None
    consecutive_loss_threshold: int | None = None
    cooling_off_period_minutes: int | None = None
    max_position_size_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_correlated_exposure_percentage: float | None = None
    volatility_adjustment_factor: float | None = None
    market_regime_thresholds: dict[str, float] = field(default_factory=dict)  # {"high": x, "extreme": y}
    position_max_drawdown_percentage: float | None = None
    position_trailing_stop_multiplier: float | None = None
    max_order_notional: float | None = None
    max_orders_per_window: int | None = None
    order_rate_window_seconds: int | None = None
    correlation_groups: dict[str, list[str]] = field(default_factory=dict)  # group name -> symbols, in order
    # Pre-trade controls (issue 16); None / empty = not set.
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None
    reference_price_max_age_seconds: int | None = None
    duplicate_order_window_ms: int | None = None
    allowed_symbols: list[str] = field(default_factory=list)  # empty = every symbol
    blocked_symbols: list[str] = field(default_factory=list)
    trading_windows: list[TradingWindowRecord] = field(default_factory=list)  # empty = at any time
    max_daily_notional: float | None = None
    max_daily_orders: int | None = None
    max_fills_per_window: int | None = None
    fill_window_seconds: int | None = None
    pending_order_ttl_seconds: int | None = None
    # Account-wide limits (issue 17), over every trader of the account on every sidecar; None = not set (off).
    account_daily_loss_percentage: float | None = None
    account_max_drawdown_percentage: float | None = None
    account_max_gross_exposure: float | None = None
    account_max_net_exposure: float | None = None
    heartbeat_timeout_seconds: int | None = None  # dead-man's switch (issue 18); None = not set (off)
    heartbeat_pause_state: str | None = None  # "HALTED" | "REDUCING"; None = HALTED
    symbol_configs: list[SymbolConfigRecord] = field(default_factory=list)
    created_at: float | None = None  # set by the store
    updated_at: float | None = None  # set by the store


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """A circuit breaker definition (circuit_breakers). `id` is empty until the store assigns one."""

    id: str
    name: str
    description: str
    account_id: str
    condition: str
    action: str
    parameters: dict[str, Any] = field(default_factory=dict)
    symbols: list[str] | None = None  # None = all symbols
    exchanges: list[str] | None = None  # None = all exchanges
    enabled: bool = True
    created_at: float | None = None  # set by the store
    updated_at: float | None = None  # set by the store


@dataclass(frozen=True, slots=True)
class BreakerEventRecord:
    """One firing of a breaker (circuit_breaker_events). Kept when the breaker is deleted."""

    id: str  # empty = the store assigns a uuid when enqueued
    breaker_id: str
    trader_id: str
    account_id: str
    timestamp: float
    triggered_values: dict[str, Any] = field(default_factory=dict)
    action_taken: str = ""
    action_result: dict[str, Any] = field(default_factory=dict)
    positions_affected: list[dict[str, Any]] = field(default_factory=list)  # [{"symbol": .., "exchange": ..}]
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class FlagsRecord:
    """The run-time feature flags (feature_flags)."""

    enable_risk_enforcement: bool = True
    enable_persistence: bool = True
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class LoadedState:
    """Everything the sidecar restores at start."""

    traders: list[StateRecord]
    configs: list[ConfigRecord]
    breakers: list[BreakerRecord]
    flags: FlagsRecord | None  # None = never saved: the settings' values apply
    trade_ids: dict[str, list[str]]  # trader_id -> its most recent trade ids, oldest first
    control_version: int = 0  # the newest control_changes version when this was read (cluster.plane)
