"""risk_state.breaker_episodes: the circuit-breaker episodes in progress, so a restart does not fire one again.

JSON object {breaker id: rule}; NULL (rows written before this revision) reads as no episode.

Revision ID: 0003_breaker_episodes
Revises: 0002_history_hypertable
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_breaker_episodes"
down_revision: str | Sequence[str] | None = "0002_history_hypertable"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("risk_state") as batch:
        batch.add_column(sa.Column("breaker_episodes", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("risk_state") as batch:
        batch.drop_column("breaker_episodes")
