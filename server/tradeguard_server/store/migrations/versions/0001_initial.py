"""The seed's tables: accounts, configurations, breakers, events, risk state, history; trade reports, flags.

Revision ID: 0001_initial
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 128
TS = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True)
STATES = "trading_state IN ('ACTIVE', 'REDUCING', 'HALTED')"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_accounts")),
    )

    op.create_table(
        "risk_configurations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("config_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("daily_max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("weekly_max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("monthly_max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("stop_trading_minutes", sa.Integer(), nullable=True),
        sa.Column("consecutive_loss_threshold", sa.Integer(), nullable=True),
        sa.Column("cooling_off_period_minutes", sa.Integer(), nullable=True),
        sa.Column("max_position_size_percentage", sa.Double(), nullable=True),
        sa.Column("risk_per_trade_percentage", sa.Double(), nullable=True),
        sa.Column("max_correlated_exposure_percentage", sa.Double(), nullable=True),
        sa.Column("volatility_adjustment_factor", sa.Double(), nullable=True),
        sa.Column("market_regime_thresholds", JSON, nullable=False),
        sa.Column("position_max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("position_trailing_stop_multiplier", sa.Double(), nullable=True),
        sa.Column("max_order_notional", sa.Double(), nullable=True),
        sa.Column("max_orders_per_window", sa.Integer(), nullable=True),
        sa.Column("order_rate_window_seconds", sa.Integer(), nullable=True),
        sa.Column("correlation_groups", JSON, nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE",
                                name=op.f("fk_risk_configurations_account_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_configurations")),
        sa.UniqueConstraint("account_id", "config_id", name=op.f("uq_risk_configurations_account_id_config_id")),
    )
    op.create_index(op.f("uq_risk_configurations_one_active"), "risk_configurations", ["account_id"], unique=True,
                    postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active"))

    op.create_table(
        "symbol_risk_configurations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("risk_config_id", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(ID), nullable=False),
        sa.Column("max_position_size_percentage", sa.Double(), nullable=True),
        sa.Column("max_leverage", sa.Double(), nullable=True),
        sa.Column("position_max_drawdown_percentage", sa.Double(), nullable=True),
        sa.Column("risk_per_trade_percentage", sa.Double(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["risk_config_id"], ["risk_configurations.id"], ondelete="CASCADE",
                                name=op.f("fk_symbol_risk_configurations_risk_config_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_symbol_risk_configurations")),
        sa.UniqueConstraint("risk_config_id", "symbol",
                            name=op.f("uq_symbol_risk_configurations_risk_config_id_symbol")),
    )

    op.create_table(
        "circuit_breakers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(ID), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("condition", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("symbols", JSON, nullable=True),
        sa.Column("exchanges", JSON, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE",
                                name=op.f("fk_circuit_breakers_account_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_circuit_breakers")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_circuit_breakers_account_id_name")),
    )

    op.create_table(
        "circuit_breaker_events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("circuit_breaker_id", sa.String(36), nullable=False),
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("triggered_values", JSON, nullable=False),
        sa.Column("action_taken", sa.String(32), nullable=False),
        sa.Column("action_result", JSON, nullable=False),
        sa.Column("positions_affected", JSON, nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_circuit_breaker_events")),
    )
    op.create_index(op.f("ix_circuit_breaker_events_circuit_breaker_id_timestamp"), "circuit_breaker_events",
                    ["circuit_breaker_id", "timestamp"])
    op.create_index(op.f("ix_circuit_breaker_events_account_id_timestamp"), "circuit_breaker_events",
                    ["account_id", "timestamp"])

    op.create_table(
        "risk_state",
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("current_equity", sa.Double(), nullable=False),
        sa.Column("peak_equity", sa.Double(), nullable=False),
        sa.Column("drawdown_pct", sa.Double(), nullable=False),
        sa.Column("daily_pnl", sa.Double(), nullable=False),
        sa.Column("trading_state", sa.String(16), nullable=False),
        sa.Column("paused_until", TS, nullable=True),
        sa.Column("pause_code", sa.String(40), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("weekly_pnl", sa.Double(), nullable=False),
        sa.Column("monthly_pnl", sa.Double(), nullable=False),
        sa.Column("equity_reported", sa.Boolean(), nullable=False),
        sa.Column("day_start_equity", sa.Double(), nullable=False),
        sa.Column("week_start_equity", sa.Double(), nullable=False),
        sa.Column("month_start_equity", sa.Double(), nullable=False),
        sa.Column("day_start", TS, nullable=False),
        sa.Column("week_start", TS, nullable=False),
        sa.Column("month_start", TS, nullable=False),
        sa.Column("last_equity_at", TS, nullable=True),
        sa.Column("consecutive_losses", sa.Integer(), nullable=False),
        sa.Column("pauses", JSON, nullable=False),
        sa.Column("positions", JSON, nullable=False),
        sa.Column("volatility", JSON, nullable=False),
        sa.Column("symbol_stats", JSON, nullable=False),
        sa.Column("recent_trades", JSON, nullable=False),
        sa.Column("order_times", JSON, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(STATES, name=op.f("ck_risk_state_trading_state")),
        sa.PrimaryKeyConstraint("trader_id", name=op.f("pk_risk_state")),
    )
    op.create_index(op.f("ix_risk_state_account_id"), "risk_state", ["account_id"])

    history_key: list[sa.schema.SchemaItem]
    if sqlite:  # SQLite autoincrements only a single-column INTEGER PRIMARY KEY
        history_key = [sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                       sa.Column("recorded_at", TS, nullable=False)]
    else:  # (id, recorded_at): TimescaleDB needs the time column in every unique key
        history_key = [sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
                       sa.Column("recorded_at", TS, nullable=False),
                       sa.PrimaryKeyConstraint("id", "recorded_at", name=op.f("pk_risk_state_history"))]
    op.create_table(
        "risk_state_history",
        *history_key,
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("trading_state", sa.String(16), nullable=False),
        sa.Column("current_equity", sa.Double(), nullable=False),
        sa.Column("drawdown_pct", sa.Double(), nullable=False),
        sa.Column("daily_pnl", sa.Double(), nullable=False),
        sa.Column("paused_until", TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("state", JSON, nullable=False),
        sa.CheckConstraint(STATES, name=op.f("ck_risk_state_history_trading_state")),
    )
    op.create_index(op.f("ix_risk_state_history_trader_id_recorded_at"), "risk_state_history",
                    ["trader_id", "recorded_at"])

    op.create_table(
        "trade_reports",
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("trade_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("symbol", sa.String(ID), nullable=False),
        sa.Column("exchange", sa.String(ID), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("realized_pnl", sa.Double(), nullable=False),
        sa.Column("closed_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_trade_reports_side")),
        sa.PrimaryKeyConstraint("trader_id", "trade_id", name=op.f("pk_trade_reports")),
    )
    op.create_index(op.f("ix_trade_reports_trader_id_recorded_at"), "trade_reports", ["trader_id", "recorded_at"])

    op.create_table(
        "feature_flags",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_feature_flags")),
    )


def downgrade() -> None:
    for table in ("feature_flags", "trade_reports", "risk_state_history", "risk_state", "circuit_breaker_events",
                  "circuit_breakers", "symbol_risk_configurations", "risk_configurations", "accounts"):
        op.drop_table(table)
