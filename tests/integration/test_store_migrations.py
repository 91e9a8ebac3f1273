"""Migrations: from an empty database to head on PostgreSQL and SQLite; models == migrations; TimescaleDB."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, pool, text

import tradeguard_server
from tests.support.databases import postgres_database_fixture, postgres_unavailable, temporary_postgres_database
from tradeguard_server.store.migrate import alembic_config, current_revision, head_revision, migrate
from tradeguard_server.store.models import Base

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()

TABLES = {
    "accounts", "risk_configurations", "symbol_risk_configurations", "circuit_breakers", "circuit_breaker_events",
    "risk_state", "risk_state_history", "trade_reports", "feature_flags", "control_changes", "trader_leases",
    "account_marks", "alert_outbox",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with temporary_postgres_database("tg_migrate") as url:
        yield url


def inspected(url: str) -> tuple[set[str], dict[str, list[dict[str, Any]]]]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            tables = set(insp.get_table_names())
            indexes = {t: insp.get_indexes(t) for t in tables}
            return tables, indexes
    finally:
        engine.dispose()


def revision_module(revision: str) -> ModuleType:
    script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    assert script is not None
    return script.module


def test_migrate_builds_every_table_from_an_empty_database(empty_url: str) -> None:
    assert current_revision(empty_url) is None

    revision = migrate(empty_url)

    assert revision == head_revision() == current_revision(empty_url)
    tables, indexes = inspected(empty_url)
    assert tables == TABLES | {"alembic_version"}
    assert {"trader_id", "recorded_at"} <= {c for i in indexes["risk_state_history"] for c in i["column_names"]}


def test_migrate_twice_is_a_no_op(empty_url: str) -> None:
    migrate(empty_url)

    assert migrate(empty_url) == head_revision()


def test_migrations_ship_inside_the_package() -> None:
    script = ScriptDirectory.from_config(alembic_config())

    assert Path(script.dir).resolve().is_relative_to(Path(tradeguard_server.__file__).resolve().parent)
    assert [r.revision for r in script.walk_revisions()] == [
        "0008_alert_outbox", "0007_heartbeat", "0006_shared_control", "0005_seed_state_columns", "0004_order_lifecycle",
        "0003_breaker_episodes",
        "0002_history_hypertable", "0001_initial"]


def compare(url: str) -> list[Any]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_models_and_migrations_describe_the_same_schema_on_postgres(pg_url: str) -> None:
    assert compare(pg_url) == []


def test_models_and_migrations_differ_on_sqlite_only_in_the_history_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cmp.db'}"
    migrate(url)

    diffs = compare(url)

    # SQLite autoincrements only a single INTEGER primary key: history's id is INTEGER there.
    assert [(d[0][0], d[0][2], d[0][3]) for d in diffs] == [("modify_type", "risk_state_history", "id")]


# ---- TimescaleDB ---------------------------------------------------------------------------------------------

class FakeConnection:
    """Records statements; answers the availability check with `available`."""

    def __init__(self, available: bool) -> None:
        self.available = available
        self.statements: list[str] = []

    def execute(self, statement: Any) -> Any:
        sql = str(statement)
        self.statements.append(sql)
        rows = [(1,)] if "pg_available_extensions" in sql and self.available else []

        class Result:
            def first(self) -> Any:
                return rows[0] if rows else None

        return Result()

    def begin_nested(self) -> AbstractContextManager[None]:
        return nullcontext()


@pytest.mark.parametrize("available", [True, False])
def test_timescaledb_detection_asks_pg_available_extensions(available: bool) -> None:
    module = revision_module("0002_history_hypertable")
    conn = FakeConnection(available)

    assert module.timescaledb_available(conn) is available
    assert conn.statements == ["SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"]


def test_hypertable_step_creates_the_extension_and_the_hypertable_when_available() -> None:
    module = revision_module("0002_history_hypertable")
    conn = FakeConnection(available=True)

    assert module.make_hypertable(conn) is True

    assert conn.statements == [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        "SELECT create_hypertable('risk_state_history', 'recorded_at', migrate_data => true, if_not_exists => true)",
    ]


def test_without_timescaledb_history_is_a_plain_indexed_table(pg_url: str) -> None:
    engine = create_engine(pg_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if revision_module("0002_history_hypertable").timescaledb_available(conn):
                pytest.skip("this server has TimescaleDB")
            extensions = set(conn.execute(text("SELECT extname FROM pg_extension")).scalars())
            primary_key = inspect(conn).get_pk_constraint("risk_state_history")["constrained_columns"]
    finally:
        engine.dispose()

    assert "timescaledb" not in extensions
    assert primary_key == ["id", "recorded_at"]  # ready to become a hypertable: the time column is in the key


def test_hypertable_step_leaves_the_table_plain_and_the_migration_going_when_the_extension_fails(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = revision_module("0002_history_hypertable")
    engine = create_engine(pg_url, poolclass=pool.NullPool)
    caplog.set_level(logging.WARNING, "tradeguard.store.migrations")
    try:
        with engine.connect() as conn:
            made = module.make_hypertable(conn)  # CREATE EXTENSION fails: not installed here

            still_usable = conn.execute(text("SELECT count(*) FROM risk_state_history")).scalar_one()
            conn.rollback()
    finally:
        engine.dispose()

    assert made is False
    assert still_usable >= 0  # the failure was contained in a savepoint
    assert "could not be enabled" in caplog.text


def test_concurrent_migrations_of_one_postgres_database_both_succeed() -> None:
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with temporary_postgres_database("tg_race") as url, ThreadPoolExecutor(max_workers=3) as pool_:
        revisions = list(pool_.map(lambda _: migrate(url), range(3)))

    assert revisions == [head_revision()] * 3
