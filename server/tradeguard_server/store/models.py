"""SQLAlchemy 2 models of the seed's tables, plus what idempotent trade reports and flags need.

Types, chosen once for every table:
- Amounts and percentages are `Double` (DOUBLE PRECISION / REAL), not Numeric: the engine computes in
  binary floats, a double stores them bit for bit (a save/load round trip is exact), and it is several times
  faster to bind and compare than a decimal.
- Times are `UtcTimestamp`: TIMESTAMP WITH TIME ZONE in PostgreSQL (microsecond precision), an ISO UTC
  string in SQLite; in Python they are float epoch seconds, as everywhere in the store's records.
- Structured parts (pauses, positions, breaker parameters, ...) are JSON.
- Identifiers are at most 128 characters (the API's limit).

The migrations in `store/migrations` create exactly this schema; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID = 128  # max length of trader, account, config, symbol and exchange ids

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcTimestamp(TypeDecorator[float]):
    """A float epoch-seconds value stored as a timezone-aware timestamp (microsecond precision)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite's DATETIME drops the offset, so every value is stored in UTC.
        return datetime.fromtimestamp(value, UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - every dialect we use returns datetime
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())


Json = JSON(none_as_null=True)  # Python None -> SQL NULL (e.g. symbols NULL = all symbols)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    """An account; owns configurations and breakers."""

    __tablename__ = "accounts"

    account_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())


class RiskConfiguration(Base):
    """One named set of limits of an account; at most one active per account."""

    __tablename__ = "risk_configurations"
    __table_args__ = (
        UniqueConstraint("account_id", "config_id"),
        Index(
            "uq_risk_configurations_one_active", "account_id", unique=True,
            postgresql_where=text("is_active"), sqlite_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    config_id: Mapped[str] = mapped_column(String(ID))
    account_id: Mapped[str] = mapped_column(String(ID), ForeignKey("accounts.account_id", ondelete="CASCADE"))
    daily_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    weekly_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    monthly_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    stop_trading_minutes: Mapped[int | None] = mapped_column(Integer)
    consecutive_loss_threshold: Mapped[int | None] = mapped_column(Integer)
    cooling_off_period_minutes: Mapped[int | None] = mapped_column(Integer)
    max_position_size_percentage: Mapped[float | None] = mapped_column(Double)
    risk_per_trade_percentage: Mapped[float | None] = mapped_column(Double)
    max_correlated_exposure_percentage: Mapped[float | None] = mapped_column(Double)
    volatility_adjustment_factor: Mapped[float | None] = mapped_column(Double)
    market_regime_thresholds: Mapped[Any] = mapped_column(Json)
    position_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    position_trailing_stop_multiplier: Mapped[float | None] = mapped_column(Double)
    max_order_notional: Mapped[float | None] = mapped_column(Double)
    max_orders_per_window: Mapped[int | None] = mapped_column(Integer)
    order_rate_window_seconds: Mapped[int | None] = mapped_column(Integer)
    correlation_groups: Mapped[Any] = mapped_column(Json)
    is_active: Mapped[bool] = mapped_column(Boolean)
    # Pre-trade controls (0004); NULL = not set (the JSON lists: none).
    max_order_quantity: Mapped[float | None] = mapped_column(Double)
    max_position_quantity: Mapped[float | None] = mapped_column(Double)
    max_open_orders: Mapped[int | None] = mapped_column(Integer)
    price_collar_percentage: Mapped[float | None] = mapped_column(Double)
    reference_price_max_age_seconds: Mapped[int | None] = mapped_column(Integer)
    duplicate_order_window_ms: Mapped[int | None] = mapped_column(Integer)
    allowed_symbols: Mapped[Any | None] = mapped_column(Json, nullable=True)  # ["BTCUSDT", ...]
    blocked_symbols: Mapped[Any | None] = mapped_column(Json, nullable=True)
    trading_windows: Mapped[Any | None] = mapped_column(Json, nullable=True)  # [{weekdays, start, end}]
    max_daily_notional: Mapped[float | None] = mapped_column(Double)
    max_daily_orders: Mapped[int | None] = mapped_column(Integer)
    max_fills_per_window: Mapped[int | None] = mapped_column(Integer)
    fill_window_seconds: Mapped[int | None] = mapped_column(Integer)
    pending_order_ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    # Dead-man's switch (0007); NULL = not set.
    heartbeat_timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_pause_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())
    # Account-wide limits (0006): across every trader and sidecar of the account. NULL: not set.
    account_daily_loss_percentage: Mapped[float | None] = mapped_column(Double, nullable=True)
    account_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double, nullable=True)
    account_max_gross_exposure: Mapped[float | None] = mapped_column(Double, nullable=True)
    account_max_net_exposure: Mapped[float | None] = mapped_column(Double, nullable=True)


class SymbolRiskConfiguration(Base):
    """Per-symbol overrides of a configuration; deleted with it."""

    __tablename__ = "symbol_risk_configurations"
    __table_args__ = (UniqueConstraint("risk_config_id", "symbol"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    risk_config_id: Mapped[int] = mapped_column(ForeignKey("risk_configurations.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(ID))
    max_position_size_percentage: Mapped[float | None] = mapped_column(Double)
    max_leverage: Mapped[float | None] = mapped_column(Double)
    position_max_drawdown_percentage: Mapped[float | None] = mapped_column(Double)
    risk_per_trade_percentage: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())
    max_order_quantity: Mapped[float | None] = mapped_column(Double)  # 0004
    max_position_quantity: Mapped[float | None] = mapped_column(Double)
    max_open_orders: Mapped[int | None] = mapped_column(Integer)
    price_collar_percentage: Mapped[float | None] = mapped_column(Double)


class CircuitBreaker(Base):
    """A user-defined rule: condition, action and scope."""

    __tablename__ = "circuit_breakers"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid assigned by the server
    name: Mapped[str] = mapped_column(String(ID))
    description: Mapped[str] = mapped_column(Text)
    account_id: Mapped[str] = mapped_column(String(ID), ForeignKey("accounts.account_id", ondelete="CASCADE"))
    condition: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[Any] = mapped_column(Json)
    symbols: Mapped[Any] = mapped_column(Json, nullable=True)  # NULL = all symbols
    exchanges: Mapped[Any] = mapped_column(Json, nullable=True)  # NULL = all exchanges
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())


class CircuitBreakerEvent(Base):
    """One firing of a breaker. No foreign key: events outlive a deleted breaker."""

    __tablename__ = "circuit_breaker_events"
    __table_args__ = (
        Index(None, "circuit_breaker_id", "timestamp"),
        Index(None, "account_id", "timestamp"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    circuit_breaker_id: Mapped[str] = mapped_column(String(36))
    trader_id: Mapped[str] = mapped_column(String(ID))
    account_id: Mapped[str] = mapped_column(String(ID))
    timestamp: Mapped[float] = mapped_column(UtcTimestamp())
    triggered_values: Mapped[Any] = mapped_column(Json)
    action_taken: Mapped[str] = mapped_column(String(32))
    action_result: Mapped[Any] = mapped_column(Json)
    positions_affected: Mapped[Any] = mapped_column(Json)
    shadow: Mapped[bool] = mapped_column(Boolean)


class RiskState(Base):
    """The latest state of one trader. Scalars are columns (the seed's first); lists and maps are JSON.

    `version` counts the trader's changes; `epoch` identifies the writing process (larger for a later
    process). An upsert never replaces a row with an older (epoch, version): within a process the highest
    version wins; a later process wins over an earlier one whatever the versions (see store.bulk).
    """

    __tablename__ = "risk_state"
    __table_args__ = (CheckConstraint("trading_state IN ('ACTIVE', 'REDUCING', 'HALTED')", name="trading_state"),)

    trader_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ID), index=True)
    current_equity: Mapped[float] = mapped_column(Double)
    peak_equity: Mapped[float] = mapped_column(Double)
    drawdown_pct: Mapped[float] = mapped_column(Double)
    daily_pnl: Mapped[float] = mapped_column(Double)
    trading_state: Mapped[str] = mapped_column(String(16))  # ACTIVE, REDUCING or HALTED at updated_at
    paused_until: Mapped[float | None] = mapped_column(UtcTimestamp())  # NULL: not paused or until resumed
    pause_code: Mapped[str | None] = mapped_column(String(40))
    pause_reason: Mapped[str | None] = mapped_column(Text)
    weekly_pnl: Mapped[float] = mapped_column(Double)
    monthly_pnl: Mapped[float] = mapped_column(Double)
    equity_reported: Mapped[bool] = mapped_column(Boolean)
    day_start_equity: Mapped[float] = mapped_column(Double)
    week_start_equity: Mapped[float] = mapped_column(Double)
    month_start_equity: Mapped[float] = mapped_column(Double)
    day_start: Mapped[float] = mapped_column(UtcTimestamp())
    week_start: Mapped[float] = mapped_column(UtcTimestamp())
    month_start: Mapped[float] = mapped_column(UtcTimestamp())
    last_equity_at: Mapped[float | None] = mapped_column(UtcTimestamp())
    consecutive_losses: Mapped[int] = mapped_column(Integer)
    pauses: Mapped[Any] = mapped_column(Json)
    positions: Mapped[Any] = mapped_column(Json)
    volatility: Mapped[Any] = mapped_column(Json)
    symbol_stats: Mapped[Any] = mapped_column(Json)
    recent_trades: Mapped[Any] = mapped_column(Json)
    order_times: Mapped[Any] = mapped_column(Json)
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())
    version: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[int] = mapped_column(BigInteger)
    breaker_episodes: Mapped[Any | None] = mapped_column(Json, nullable=True)  # {breaker id: rule}, 0003
    # The order lifecycle (0004): the pending orders (allowed, not finished; oldest first) and the latest finished
    # ones (oldest first), each [{client_order_id, symbol, exchange, side, quantity, price, allowed_at, expires_at,
    # filled, avg_price, status, reducing}] with side and status by name; NULL (rows of earlier revisions): none.
    pending_orders: Mapped[Any | None] = mapped_column(Json, nullable=True)
    finished_orders: Mapped[Any | None] = mapped_column(Json, nullable=True)
    # Sums of the orders allowed since day_start (max_daily_notional, max_daily_orders).
    daily_order_notional: Mapped[float] = mapped_column(Double, server_default=text("0"))
    daily_orders: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The seed's columns (0005): trading_paused = trading_state is not ACTIVE; last_reset_time = day_start (the
    # start of the current daily period). NULL last_reset_time only in a row a sidecar older than 0005 wrote.
    trading_paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    last_reset_time: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)


class RiskStateHistory(Base):
    """The audit trail, append-only. In PostgreSQL the key is (id, recorded_at) so that TimescaleDB can
    partition it by recorded_at (a hypertable's unique keys must include the time column); SQLite can only
    autoincrement a single-column INTEGER key, so there the migration makes `id` alone the key.
    """

    __tablename__ = "risk_state_history"
    __table_args__ = (
        Index(None, "trader_id", "recorded_at"),
        CheckConstraint("trading_state IN ('ACTIVE', 'REDUCING', 'HALTED')", name="trading_state"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    recorded_at: Mapped[float] = mapped_column(UtcTimestamp(), primary_key=True)
    trader_id: Mapped[str] = mapped_column(String(ID))
    account_id: Mapped[str] = mapped_column(String(ID))
    trading_state: Mapped[str] = mapped_column(String(16))
    current_equity: Mapped[float] = mapped_column(Double)
    drawdown_pct: Mapped[float] = mapped_column(Double)
    daily_pnl: Mapped[float] = mapped_column(Double)
    paused_until: Mapped[float | None] = mapped_column(UtcTimestamp())
    reason: Mapped[str] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[Any] = mapped_column(Json)
    # Every other scalar of risk_state, by its name there (0005; NULL only where a row older than 0005 lacked it).
    # The lists and maps (pauses, positions, volatility, symbol_stats, pending_orders) are in `state`.
    peak_equity: Mapped[float | None] = mapped_column(Double, nullable=True)
    weekly_pnl: Mapped[float | None] = mapped_column(Double, nullable=True)
    monthly_pnl: Mapped[float | None] = mapped_column(Double, nullable=True)
    pause_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    pause_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    trading_paused: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    equity_reported: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    day_start_equity: Mapped[float | None] = mapped_column(Double, nullable=True)
    week_start_equity: Mapped[float | None] = mapped_column(Double, nullable=True)
    month_start_equity: Mapped[float | None] = mapped_column(Double, nullable=True)
    day_start: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    week_start: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    month_start: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    last_reset_time: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    last_equity_at: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    consecutive_losses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_order_notional: Mapped[float | None] = mapped_column(Double, nullable=True)
    daily_orders: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TradeReport(Base):
    """Closed trades already applied, so a retried report is recognised after a restart."""

    __tablename__ = "trade_reports"
    __table_args__ = (
        Index(None, "trader_id", "recorded_at"),
        CheckConstraint("side IN ('BUY', 'SELL')", name="side"),
    )

    trader_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    trade_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ID))
    symbol: Mapped[str] = mapped_column(String(ID))
    exchange: Mapped[str] = mapped_column(String(ID))
    side: Mapped[str] = mapped_column(String(4))
    realized_pnl: Mapped[float] = mapped_column(Double)
    closed_at: Mapped[float] = mapped_column(UtcTimestamp())
    recorded_at: Mapped[float] = mapped_column(UtcTimestamp())


class FeatureFlag(Base):
    """One run-time flag: enable_risk_enforcement, enable_persistence."""

    __tablename__ = "feature_flags"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())


class ControlChange(Base):
    """One committed change to the control state people set (0006): kind "config", "breaker", "flags", "pause" or
    "resume"; account_id and trader_id say what it is about ("" where it is not about one: an account's pause has
    trader_id "", the every-account pause account_id "*"). `version` is the control-state version."""

    __tablename__ = "control_changes"
    __table_args__ = (Index(None, "account_id", "trader_id", "version"),)

    version: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                         autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(ID))
    trader_id: Mapped[str] = mapped_column(String(ID))
    payload: Mapped[Any | None] = mapped_column(Json, nullable=True)
    origin: Mapped[str] = mapped_column(String(ID))  # the sidecar the change was made through
    actor: Mapped[str] = mapped_column(String(256))  # the caller
    trace_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())


class TraderLease(Base):
    """Which sidecar owns a trader's live state (0006), until `expires_at`; `epoch` fences earlier owners' writes."""

    __tablename__ = "trader_leases"

    trader_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ID), index=True)
    owner: Mapped[str] = mapped_column(String(ID))
    epoch: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[float] = mapped_column(UtcTimestamp())
    expires_at: Mapped[float] = mapped_column(UtcTimestamp())


class AccountMark(Base):
    """The peak of an account's summed equity (0006), for the account-wide drawdown limit."""

    __tablename__ = "account_marks"

    account_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    peak_equity: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(UtcTimestamp())


class AlertOutbox(Base):
    """One alert to deliver to one notifier (0008, alerts/outbox.py): written before the first attempt, marked
    `delivered_at` once the receiver answered 2xx, so a restart delivers what was pending. One row per (alert,
    notifier): each notifier succeeds and retries on its own. `key` names the alert's episode: unique with
    `notifier`, so an alert derived twice (a restart, a takeover, another sidecar) is stored, and sent, once.
    `sidecar`: the sidecar that delivers it (after a restart it takes up its own rows only). `trader_id` /
    `account_id`: whom it is about ("" when nobody): a trader's pause episode is recorded once whichever sidecar
    derives it (see outbox.py)."""

    __tablename__ = "alert_outbox"
    __table_args__ = (UniqueConstraint("key", "notifier"), Index(None, "sidecar", "delivered_at"),
                      Index(None, "trader_id", "notifier", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(512))
    notifier: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(64))
    sidecar: Mapped[str] = mapped_column(String(ID))
    trader_id: Mapped[str] = mapped_column(String(ID))
    account_id: Mapped[str] = mapped_column(String(ID))
    payload: Mapped[Any] = mapped_column(Json)
    created_at: Mapped[float] = mapped_column(UtcTimestamp())
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[float] = mapped_column(UtcTimestamp())
    delivered_at: Mapped[float | None] = mapped_column(UtcTimestamp(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
