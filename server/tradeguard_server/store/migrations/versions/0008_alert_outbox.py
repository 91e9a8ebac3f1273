"""Alerts that reach people (issue 20).

alert_outbox: one row per (alert, notifier) to deliver: written before the first attempt, `delivered_at` set once
the receiver took it, so a restart delivers what was pending. Unique (key, notifier): `key` names the alert's
episode, so the same alert derived twice is stored once; (trader_id, notifier, id) finds a trader's last pause
episode alert. See tradeguard_server/alerts/outbox.py.

Revision ID: 0008_alert_outbox
Revises: 0007_heartbeat
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_alert_outbox"
down_revision: str | Sequence[str] | None = "0007_heartbeat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 128
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("notifier", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("sidecar", sa.String(ID), nullable=False),
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_outbox")),
        sa.UniqueConstraint("key", "notifier", name=op.f("uq_alert_outbox_key_notifier")),
    )
    op.create_index(op.f("ix_alert_outbox_sidecar_delivered_at"), "alert_outbox", ["sidecar", "delivered_at"])
    op.create_index(op.f("ix_alert_outbox_trader_id_notifier_id"), "alert_outbox", ["trader_id", "notifier", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_outbox_trader_id_notifier_id"), table_name="alert_outbox")
    op.drop_index(op.f("ix_alert_outbox_sidecar_delivered_at"), table_name="alert_outbox")
    op.drop_table("alert_outbox")
