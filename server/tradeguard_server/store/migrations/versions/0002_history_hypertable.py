"""risk_state_history becomes a TimescaleDB hypertable when PostgreSQL has the extension.

Anywhere else (SQLite, PostgreSQL without TimescaleDB) it stays the plain table of 0001, indexed on
(trader_id, recorded_at). If the extension is listed but cannot be created (not in
shared_preload_libraries, no privilege), the table also stays plain and a warning says why.

Revision ID: 0002_history_hypertable
Revises: 0001_initial
Create Date: 2026-01-01
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

revision: str = "0002_history_hypertable"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("tradeguard.store.migrations")

AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
CREATE_EXTENSION = "CREATE EXTENSION IF NOT EXISTS timescaledb"
CREATE_HYPERTABLE = (
    "SELECT create_hypertable('risk_state_history', 'recorded_at', migrate_data => true, if_not_exists => true)"
)


def timescaledb_available(conn: sa.Connection) -> bool:
    return conn.execute(sa.text(AVAILABLE)).first() is not None


def make_hypertable(conn: sa.Connection) -> bool:
    """Create the extension and the hypertable in a savepoint; False (table left plain) when that fails."""
    try:
        with conn.begin_nested():
            conn.execute(sa.text(CREATE_EXTENSION))
            conn.execute(sa.text(CREATE_HYPERTABLE))
    except DBAPIError as exc:
        log.warning("TimescaleDB is available but could not be enabled, risk_state_history stays a plain "
                    "indexed table: %s", str(exc.orig).strip())
        return False
    log.info("risk_state_history is a TimescaleDB hypertable")
    return True


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    if timescaledb_available(conn):
        make_hypertable(conn)
    else:
        log.info("TimescaleDB is not available: risk_state_history is a plain indexed table")


def downgrade() -> None:
    # A hypertable cannot be turned back into a plain table in place; it keeps working as one.
    pass
