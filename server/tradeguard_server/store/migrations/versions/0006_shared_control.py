"""Many sidecars sharing one database (issue 17).

control_changes: the log of every change to the control state that people make (configurations, breakers, feature
flags, pauses of a trader, an account or every account), one row per committed change, numbered by `version`
(the control-state version). Written in the changing transaction, with a NOTIFY on channel `tradeguard_control`
(PostgreSQL) as the wake-up; each sidecar re-reads the rows above the version it has seen.

trader_leases: which sidecar owns a trader's live state, until when (`expires_at`), and the fencing `epoch` (grows
with every change of owner; the owner writes the trader's risk_state row with it, so a late write of an earlier
owner never replaces the new owner's).

account_marks: the peak of an account's summed equity (the account-wide drawdown limit), shared by its sidecars.

risk_configurations: the account-wide limits account_daily_loss_percentage, account_max_drawdown_percentage,
account_max_gross_exposure, account_max_net_exposure (NULL: not set).

Revision ID: 0006_shared_control
Revises: 0005_seed_state_columns
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_shared_control"
down_revision: str | Sequence[str] | None = "0005_seed_state_columns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 128
TS = sa.DateTime(timezone=True)
ACCOUNT_LIMITS = ("account_daily_loss_percentage", "account_max_drawdown_percentage", "account_max_gross_exposure",
                  "account_max_net_exposure")


def upgrade() -> None:
    op.create_table(
        "control_changes",
        sa.Column("version", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("origin", sa.String(ID), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_control_changes")),
    )
    op.create_index(op.f("ix_control_changes_account_id_trader_id_version"), "control_changes",
                    ["account_id", "trader_id", "version"])
    op.create_table(
        "trader_leases",
        sa.Column("trader_id", sa.String(ID), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("owner", sa.String(ID), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("trader_id", name=op.f("pk_trader_leases")),
    )
    op.create_index(op.f("ix_trader_leases_account_id"), "trader_leases", ["account_id"])
    op.create_table(
        "account_marks",
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("peak_equity", sa.Double(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_marks")),
    )
    with op.batch_alter_table("risk_configurations") as batch:
        for name in ACCOUNT_LIMITS:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("risk_configurations") as batch:
        for name in reversed(ACCOUNT_LIMITS):
            batch.drop_column(name)
    op.drop_table("account_marks")
    op.drop_index(op.f("ix_trader_leases_account_id"), table_name="trader_leases")
    op.drop_table("trader_leases")
    op.drop_index(op.f("ix_control_changes_account_id_trader_id_version"), table_name="control_changes")
    op.drop_table("control_changes")
