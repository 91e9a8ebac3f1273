"""The order lifecycle and the pre-trade controls (issue 16).

risk_configurations: max_order_quantity, max_position_quantity, max_open_orders, price_collar_percentage,
reference_price_max_age_seconds, duplicate_order_window_ms, allowed_symbols / blocked_symbols (JSON lists of
symbols), trading_windows (JSON [{weekdays, start, end}]), max_daily_notional, max_daily_orders,
max_fills_per_window, fill_window_seconds, pending_order_ttl_seconds. symbol_risk_configurations:
max_order_quantity, max_position_quantity, max_open_orders, price_collar_percentage. All NULL on existing rows:
not set, the defaults apply.

risk_state: pending_orders and finished_orders (JSON lists of orders; NULL on existing rows: none),
daily_order_notional and daily_orders (0 on existing rows).

Revision ID: 0004_order_lifecycle
Revises: 0003_breaker_episodes
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_order_lifecycle"
down_revision: str | Sequence[str] | None = "0003_breaker_episodes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


Kind = Callable[[], sa.types.TypeEngine[Any]]

CONFIG_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("max_order_quantity", sa.Double),
    ("max_position_quantity", sa.Double),
    ("max_open_orders", sa.Integer),
    ("price_collar_percentage", sa.Double),
    ("reference_price_max_age_seconds", sa.Integer),
    ("duplicate_order_window_ms", sa.Integer),
    ("allowed_symbols", _json),
    ("blocked_symbols", _json),
    ("trading_windows", _json),
    ("max_daily_notional", sa.Double),
    ("max_daily_orders", sa.Integer),
    ("max_fills_per_window", sa.Integer),
    ("fill_window_seconds", sa.Integer),
    ("pending_order_ttl_seconds", sa.Integer),
)
SYMBOL_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("max_order_quantity", sa.Double),
    ("max_position_quantity", sa.Double),
    ("max_open_orders", sa.Integer),
    ("price_collar_percentage", sa.Double),
)


def upgrade() -> None:
    with op.batch_alter_table("risk_configurations") as batch:
        for name, kind in CONFIG_COLUMNS:
            batch.add_column(sa.Column(name, kind(), nullable=True))
    with op.batch_alter_table("symbol_risk_configurations") as batch:
        for name, kind in SYMBOL_COLUMNS:
            batch.add_column(sa.Column(name, kind(), nullable=True))
    with op.batch_alter_table("risk_state") as batch:
        batch.add_column(sa.Column("pending_orders", _json(), nullable=True))
        batch.add_column(sa.Column("finished_orders", _json(), nullable=True))
        batch.add_column(sa.Column("daily_order_notional", sa.Double(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("daily_orders", sa.BigInteger(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("risk_state") as batch:
        for name in ("daily_orders", "daily_order_notional", "finished_orders", "pending_orders"):
            batch.drop_column(name)
    with op.batch_alter_table("symbol_risk_configurations") as batch:
        for name, _kind in reversed(SYMBOL_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("risk_configurations") as batch:
        for name, _kind in reversed(CONFIG_COLUMNS):
            batch.drop_column(name)
