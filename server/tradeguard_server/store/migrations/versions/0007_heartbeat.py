"""The dead-man's switch (issue 18).

risk_configurations: heartbeat_timeout_seconds (integer seconds; NULL: no heartbeat required) and
heartbeat_pause_state ("HALTED" or "REDUCING"; NULL: HALTED).

Revision ID: 0007_heartbeat
Revises: 0006_shared_control
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_heartbeat"
down_revision: str | Sequence[str] | None = "0006_shared_control"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("risk_configurations") as batch:
        batch.add_column(sa.Column("heartbeat_timeout_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_pause_state", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("risk_configurations") as batch:
        batch.drop_column("heartbeat_pause_state")
        batch.drop_column("heartbeat_timeout_seconds")
