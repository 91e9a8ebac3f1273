"""The seed's risk_state columns, and every scalar risk_state field as a column of risk_state_history (issue 19).

risk_state: `trading_paused` (true when trading_state is not ACTIVE: REDUCING or HALTED) and `last_reset_time`
(the start of the current daily period, = day_start). Existing rows are filled from trading_state and day_start.

risk_state_history: until now a few scalars plus the `state` JSON; it gains, with the names of risk_state,
peak_equity, weekly_pnl, monthly_pnl, pause_code, pause_reason, trading_paused, equity_reported, day_start_equity,
week_start_equity, month_start_equity, day_start, week_start, month_start, last_reset_time, last_equity_at,
consecutive_losses, daily_order_notional, daily_orders, updated_at and version. Existing rows are filled from
their `state` JSON (and trading_state / paused_until); a value the JSON of an old row lacks stays NULL (the
pause's code and reason of a row whose pauses were stored by reference to an earlier row, the daily order sums
of rows older than 0004). The lists and maps (pauses, positions, volatility, symbol_stats, pending_orders) stay
in `state`, as before. The columns are nullable: a TimescaleDB hypertable takes ADD COLUMN without rewriting
its chunks, and a sidecar of an earlier version still writing during a rolling restart is not refused.

Revision ID: 0005_seed_state_columns
Revises: 0004_order_lifecycle
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005_seed_state_columns"
down_revision: str | Sequence[str] | None = "0004_order_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
Kind = Callable[[], sa.types.TypeEngine[Any]]

# (column, type), in the order the writer writes them (store.bulk.HISTORY_COLUMNS, between trace_id and state)
HISTORY_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("peak_equity", sa.Double),
    ("weekly_pnl", sa.Double),
    ("monthly_pnl", sa.Double),
    ("pause_code", lambda: sa.String(40)),
    ("pause_reason", sa.Text),
    ("trading_paused", sa.Boolean),
    ("equity_reported", sa.Boolean),
    ("day_start_equity", sa.Double),
    ("week_start_equity", sa.Double),
    ("month_start_equity", sa.Double),
    ("day_start", lambda: TS),
    ("week_start", lambda: TS),
    ("month_start", lambda: TS),
    ("last_reset_time", lambda: TS),
    ("last_equity_at", lambda: TS),
    ("consecutive_losses", sa.Integer),
    ("daily_order_notional", sa.Double),
    ("daily_orders", sa.BigInteger),
    ("updated_at", lambda: TS),
    ("version", sa.BigInteger),
)
NUMBERS = ("peak_equity", "day_start_equity", "week_start_equity", "month_start_equity", "daily_order_notional")
TIMES = {"day_start": "day_start", "week_start": "week_start", "month_start": "month_start",
         "last_reset_time": "day_start", "last_equity_at": "last_equity_at", "updated_at": "updated_at"}
INTEGERS = {"consecutive_losses": "integer", "daily_orders": "bigint", "version": "bigint"}

# The pause in force: the one of the row's `pauses` with the row's trading_state and paused_until (its end).
PG_PAUSE = (
    "(SELECT p->>'{field}' FROM json_array_elements(CASE WHEN json_typeof(h.state->'pauses') = 'array' "
    "THEN h.state->'pauses' END) AS p WHERE p->>'state' = h.trading_state AND "
    "((p->>'until') IS NULL AND h.paused_until IS NULL OR "
    "abs(extract(epoch FROM h.paused_until) - (p->>'until')::float8) < 0.000001) LIMIT 1)"
)


def _pg_fill_history() -> str:
    sets = [f"{name} = (h.state->>'{name}')::float8" for name in NUMBERS]
    sets += [f"{name} = to_timestamp((h.state->>'{source}')::float8)" for name, source in TIMES.items()]
    sets += [f"{name} = (h.state->>'{name}')::{kind}" for name, kind in INTEGERS.items()]
    sets += [
        "equity_reported = (h.state->>'equity_reported')::boolean",
        "trading_paused = h.trading_state <> 'ACTIVE'",
        # weekly / monthly PnL as the engine derives them: equity against the period's starting equity
        "weekly_pnl = (h.state->>'current_equity')::float8 - (h.state->>'week_start_equity')::float8",
        "monthly_pnl = (h.state->>'current_equity')::float8 - (h.state->>'month_start_equity')::float8",
        f"pause_code = {PG_PAUSE.format(field='code')}",
        f"pause_reason = {PG_PAUSE.format(field='reason')}",
    ]
    return f"UPDATE risk_state_history AS h SET {', '.join(sets)}"  # noqa: S608 - constants only


def _sqlite_fill_history(conn: sa.Connection) -> None:
    """SQLite: the same values, computed in Python (timestamps in exactly the text SQLAlchemy stores)."""
    ts_bind = sa.DateTime(timezone=True).dialect_impl(conn.dialect).bind_processor(conn.dialect)
    assert ts_bind is not None
    paused_read = sa.DateTime(timezone=True).dialect_impl(conn.dialect).result_processor(conn.dialect, None)

    def ts(value: Any) -> Any:
        return None if value is None else ts_bind(datetime.fromtimestamp(float(value), UTC))

    names = [name for name, _kind in HISTORY_COLUMNS]
    update = sa.text(f"UPDATE risk_state_history SET {', '.join(f'{n} = :{n}' for n in names)} "  # noqa: S608
                     "WHERE id = :row_id")
    rows = conn.exec_driver_sql("SELECT id, state, trading_state, paused_until FROM risk_state_history").fetchall()
    batch: list[dict[str, Any]] = []
    for row_id, state_text, trading_state, paused_until in rows:
        state = json.loads(state_text) if isinstance(state_text, str) else (state_text or {})
        until = paused_until if paused_read is None else paused_read(paused_until)
        until_epoch = None if until is None else until.replace(tzinfo=until.tzinfo or UTC).timestamp()
        pause = _pause_in_force(state, trading_state, until_epoch)
        equity = state.get("current_equity")
        values: dict[str, Any] = {name: state.get(name) for name in (*NUMBERS, *INTEGERS, "equity_reported")}
        values.update({name: ts(state.get(source)) for name, source in TIMES.items()})
        values.update(
            row_id=row_id,
            trading_paused=trading_state != "ACTIVE",
            weekly_pnl=_minus(equity, state.get("week_start_equity")),
            monthly_pnl=_minus(equity, state.get("month_start_equity")),
            pause_code=None if pause is None else pause.get("code"),
            pause_reason=None if pause is None else pause.get("reason"),
        )
        batch.append(values)
        if len(batch) >= 1000:
            conn.execute(update, batch)
            batch = []
    if batch:
        conn.execute(update, batch)


def _minus(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _pause_in_force(state: dict[str, Any], trading_state: str, until: float | None) -> dict[str, Any] | None:
    pauses = state.get("pauses")
    if trading_state == "ACTIVE" or not isinstance(pauses, list):
        return None
    for p in pauses:
        p_until = p.get("until")
        same_end = (p_until is None and until is None) or (
            p_until is not None and until is not None and abs(float(p_until) - until) < 1e-6)
        if p.get("state") == trading_state and same_end:
            return dict(p)
    return None


def upgrade() -> None:
    ctx = op.get_context()
    postgres = ctx.dialect.name == "postgresql"
    with op.batch_alter_table("risk_state") as batch:
        batch.add_column(sa.Column("trading_paused", sa.Boolean(), server_default=sa.text("false"), nullable=False))
        batch.add_column(sa.Column("last_reset_time", TS, nullable=True))
    op.execute("UPDATE risk_state SET trading_paused = (trading_state <> 'ACTIVE'), last_reset_time = day_start")
    with op.batch_alter_table("risk_state_history") as batch:
        for name, kind in HISTORY_COLUMNS:
            batch.add_column(sa.Column(name, kind(), nullable=True))
    if postgres:
        op.execute(_pg_fill_history())
    elif not ctx.as_sql:  # SQLite, online (`alembic upgrade --sql` prints the DDL only: the rows stay NULL)
        _sqlite_fill_history(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("risk_state_history") as batch:
        for name, _kind in reversed(HISTORY_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("risk_state") as batch:
        batch.drop_column("last_reset_time")
        batch.drop_column("trading_paused")
