"""The seed's schema (issue 19): risk_state.trading_paused and last_reset_time, and every scalar of risk_state as a
column of risk_state_history, written by the store on every write and filled for existing rows by migration 0005.

Against the real PostgreSQL (and SQLite where the behaviour applies to both); the seed's own troubleshooting command
is run with the real `psql`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.support.databases import T0, make_state, open_store, paused, postgres_database_fixture, store_url_fixture
from tests.support.pg import fresh_database
from tradeguard_server.engine.snapshot import StateRecord
from tradeguard_server.store.bulk import HISTORY_COLUMNS, STATE_COLUMNS, BulkWriter
from tradeguard_server.store.migrate import migrate
from tradeguard_server.store.records import HistoryRecord

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

# The scalars of risk_state that risk_state_history has under the same name (all of them but the writer's epoch).
SHARED_SCALARS = (
    "trader_id", "account_id", "current_equity", "peak_equity", "drawdown_pct", "daily_pnl", "trading_state",
    "paused_until", "pause_code", "pause_reason", "weekly_pnl", "monthly_pnl", "equity_reported", "day_start_equity",
    "week_start_equity", "month_start_equity", "day_start", "week_start", "month_start", "last_equity_at",
    "consecutive_losses", "updated_at", "version", "daily_order_notional", "daily_orders", "trading_paused",
    "last_reset_time",
)
NEW_HISTORY_COLUMNS = HISTORY_COLUMNS[HISTORY_COLUMNS.index("trace_id") + 1:-1]  # those of 0005
OLD_HISTORY_COLUMNS = (*HISTORY_COLUMNS[:HISTORY_COLUMNS.index("trace_id") + 1], "state")
OLD_STATE_COLUMNS = STATE_COLUMNS[:STATE_COLUMNS.index("trading_paused")]


@pytest.fixture
def empty_pg() -> Iterator[str]:
    with fresh_database("tradeguard_schema") as url:
        yield url


def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


def normal(value: Any) -> Any:
    """A column value comparable across the two tables and both dialects (SQLite: timestamps as text, 0/1)."""
    if hasattr(value, "timestamp"):
        return round(value.timestamp(), 6) if value.tzinfo else value.isoformat()
    return value


def states() -> list[StateRecord]:
    """An active trader, a paused one (with a reason), one paused until resumed, on a later day."""
    active = make_state("t-active", 3, consecutive_losses=2, daily_orders=4, daily_order_notional=1234.5)
    reduced = paused(make_state("t-paused", 5), T0 + 3600, reason="DAILY_LOSS_LIMIT: loss=5.4% limit=5.0%")
    day2 = T0 + 86_400
    halted = paused(make_state("t-halted", 7, day_start=day2, updated_at=day2 + 60, last_equity_at=day2 + 60),
                    None, reason="manual kill switch")
    return [active, reduced, halted]


# ---- the writer ---------------------------------------------------------------------------------------------

async def test_every_write_fills_trading_paused_last_reset_time_and_the_history_columns(db_url: str) -> None:
    async with open_store(db_url) as store:
        for rec in states():
            store.enqueue_state(rec, "a change", "0af7651916cd43dd8448eb211c80319c")
        assert await store.flush(timeout=10)

    current = {r["trader_id"]: r for r in query(db_url, "SELECT * FROM risk_state")}
    history = {r["trader_id"]: r for r in query(db_url, "SELECT * FROM risk_state_history")}
    assert {t: (bool(r["trading_paused"]), r["trading_state"]) for t, r in current.items()} == {
        "t-active": (False, "ACTIVE"), "t-paused": (True, "REDUCING"), "t-halted": (True, "REDUCING")}
    for trader, row in current.items():
        assert row["last_reset_time"] == row["day_start"]
        for column in SHARED_SCALARS:  # the history row has the same value under the same name
            assert normal(history[trader][column]) == normal(row[column]), (trader, column)
    assert history["t-paused"]["pause_reason"] == "DAILY_LOSS_LIMIT: loss=5.4% limit=5.0%"
    assert history["t-paused"]["pause_code"] == "DAILY_LOSS_LIMIT"
    assert history["t-active"]["daily_orders"] == 4 and history["t-active"]["consecutive_losses"] == 2
    assert history["t-active"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


async def test_history_reads_back_whole_with_the_new_columns(db_url: str) -> None:
    rec = states()[1]
    async with open_store(db_url) as store:
        store.enqueue_state(rec, "paused", None)
        assert await store.flush(timeout=10)
        rows, _cursor = await store.list_history("t-paused", None, None, 10)
    assert [r.state for r in rows] == [rec]


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
async def test_psql_select_trading_paused_paused_until_from_risk_state_answers_as_in_the_seed(pg_url: str) -> None:
    """NOFX's troubleshooting command, letter for letter (but for the connection options)."""
    async with open_store(pg_url) as store:
        for rec in states():
            store.enqueue_state(rec, "a change", None)
        assert await store.flush(timeout=10)
    url = make_url(pg_url)
    out = subprocess.run(
        ["psql", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
         "-d", url.database or "", "-At", "-c", "SELECT trading_paused, paused_until FROM risk_state"],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.splitlines())
    assert lines == sorted(["f|", "t|2026-01-01 01:00:00+00", "t|"]), out.stdout


# ---- migration 0005 on rows written before it ---------------------------------------------------------------

def write_rows_of_revision_0004(url: str, records: list[tuple[StateRecord, HistoryRecord]]) -> list[Any]:
    """risk_state and risk_state_history rows as a 0004 sidecar wrote them (the columns it had); returns the new
    columns' values the current writer gives the same history records."""
    engine = create_engine(url, poolclass=pool.NullPool)
    expected = []
    try:
        bulk = BulkWriter(engine.dialect)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO accounts (account_id, created_at) VALUES ('a-1', :at)"),
                         {"at": bulk.ts(T0)})
            for rec, hist in records:
                state_row = bulk.state_row(rec, epoch=1)[:len(OLD_STATE_COLUMNS)]
                history_row = dict(zip(HISTORY_COLUMNS, bulk.history_row(hist), strict=True))
                expected.append(tuple(history_row[c] for c in NEW_HISTORY_COLUMNS))
                old_history = tuple(history_row[c] for c in OLD_HISTORY_COLUMNS)
                for table, columns, row in (("risk_state", OLD_STATE_COLUMNS, state_row),
                                            ("risk_state_history", OLD_HISTORY_COLUMNS, old_history)):
                    if table == "risk_state" and rec is not hist.state:
                        continue
                    names = ",".join(columns)
                    marks = ",".join(f":p{i}" for i in range(len(columns)))
                    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"),  # noqa: S608
                                 {f"p{i}": v for i, v in enumerate(row)})
    finally:
        engine.dispose()
    return expected


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migration_0005_fills_the_new_columns_of_existing_rows_as_the_writer_would(
        backend: str, empty_pg: str, tmp_path: Any) -> None:
    url = empty_pg if backend == "postgresql" else f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0004_order_lifecycle")
    recs = states()
    # Each trader's risk_state row, and two history rows each: the second carries its maps by reference
    # ("unchanged"): the fill takes the pause's code and reason from a row's own pauses only.
    history = []
    for rec in recs:
        history.append((rec, HistoryRecord(rec.trader_id, rec.account_id, rec, "first", None, rec.updated_at)))
        later = replace(rec, version=rec.version + 1, current_equity=rec.current_equity - 1,
                        updated_at=rec.updated_at + 1)
        history.append((rec, HistoryRecord(rec.trader_id, rec.account_id, later, "second", None, later.updated_at)))
    expected = write_rows_of_revision_0004(url, history)

    migrate(url)

    current = {r["trader_id"]: r for r in query(url, "SELECT * FROM risk_state")}
    assert {t: bool(r["trading_paused"]) for t, r in current.items()} == {
        "t-active": False, "t-paused": True, "t-halted": True}
    assert all(r["last_reset_time"] == r["day_start"] for r in current.values())
    rows = query(url, f"SELECT {','.join(NEW_HISTORY_COLUMNS)} FROM risk_state_history ORDER BY id")  # noqa: S608
    assert len(rows) == len(expected)
    assert [(r["pause_code"], bool(r["trading_paused"])) for r in rows] == [
        (None, False), (None, False), ("DAILY_LOSS_LIMIT", True), (None, True),
        ("DAILY_LOSS_LIMIT", True), (None, True)]
    writer = BulkWriter(create_engine(url, poolclass=pool.NullPool).dialect)
    for got, want, (_rec, hist) in zip(rows, expected, history, strict=True):
        pause_by_reference = hist.reason == "second" and hist.state.pauses
        for i, column in enumerate(NEW_HISTORY_COLUMNS):
            if column in ("pause_code", "pause_reason") and pause_by_reference:
                assert got[column] is None  # the row's pauses are in an earlier row: not looked up
                continue
            value = want[i]
            if column in ("day_start", "week_start", "month_start", "last_reset_time", "last_equity_at",
                          "updated_at") and value is not None and writer.postgres:
                value = round(value.timestamp(), 6)
                assert round(got[column].timestamp(), 6) == value, (hist.trader_id, hist.reason, column)
                continue
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, abs=1e-9), (hist.trader_id, hist.reason, column)
            else:
                assert normal(got[column]) == normal(value), (hist.trader_id, hist.reason, column)


def test_migration_0005_downgrades_and_upgrades_again(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'down.db'}"
    migrate(url)
    from alembic import command

    from tradeguard_server.store.migrate import alembic_config

    command.downgrade(alembic_config(url), "0004_order_lifecycle")
    assert "trading_paused" not in {r["name"] for r in query(url, "PRAGMA table_info(risk_state)")}
    migrate(url)
    assert "trading_paused" in {r["name"] for r in query(url, "PRAGMA table_info(risk_state)")}
