"""Databases for the store's tests.

- `temporary_postgres_database()`: CREATE a uniquely named database on the test server, DROP it (WITH (FORCE))
  afterwards. The server is TRADEGUARD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
- `postgres_database_fixture()`: a session fixture made from it (migrated), skipped when no server answers.
- `store_url_fixture()`: a per-test fixture parametrized over PostgreSQL (the session database, emptied) and
  SQLite (a file in tmp_path), for tests that apply to both.
- `TcpProxy`: an asyncio TCP proxy between the store and PostgreSQL that a test can cut and restore.

Use the factories in a test module:  `pg_url = postgres_database_fixture()`, `db_url = store_url_fixture()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from tradeguard_server.engine.snapshot import PauseRecord, StateRecord
from tradeguard_server.engine.types import DecisionCode, TradingState
from tradeguard_server.store import sql as store_sql
from tradeguard_server.store.migrate import migrate
from tradeguard_server.store.records import BreakerEventRecord, TradeRecord
from tradeguard_server.store.store import RiskStore

ADMIN_URL = os.environ.get("TRADEGUARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_unavailable: list[str | None] = []


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_unavailable() -> str | None:
    """None when the test server answers, else why not (checked once)."""
    if not _unavailable:
        try:
            with psycopg.connect(_libpq(ADMIN_URL), connect_timeout=3):
                _unavailable.append(None)
        except psycopg.Error as exc:
            _unavailable.append(f"no PostgreSQL at {make_url(ADMIN_URL).render_as_string()}: {exc}")
    return _unavailable[0]


def require_postgres() -> None:
    """Skip the test when PostgreSQL is not reachable, except under CI=true, where that is a failure."""
    reason = postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def database_url(name: str) -> str:
    """The SQLAlchemy URL of database `name` on the test server."""
    return make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)


@contextlib.contextmanager
def temporary_postgres_database(prefix: str = "tg_test") -> Iterator[str]:
    """A fresh, empty database; dropped (WITH (FORCE)) on exit. Yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


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


class TcpProxy:
    """127.0.0.1:<port> -> target, on the running event loop. `cut()` resets every connection and refuses
    new ones until `restore()`. `trap_commit(deliver)` breaks the connection at the next COMMIT: after the
    server got it (deliver=True: it commits, the client never hears so) or before (deliver=False).
    `hold_commit()` holds the next COMMIT (the client waits, the server has not got it) until
    `release_commit()` forwards it."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted and forwarded
        self.refused = 0
        self._cut = False
        self._commit_trap: bool | None = None
        self.commits_trapped = 0
        self._hold_commit = False
        self._commits_to_pass = 0
        self._commit_released = asyncio.Event()
        self._commit_answered = asyncio.Event()
        self._awaiting_answer = False
        self.commit_held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url_for(self, url: str) -> str:
        """`url` with host and port replaced by the proxy's."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._transports.update((writer, up_writer))
        for src, dst, client in ((reader, up_writer, writer), (up_reader, writer, None)):
            task = asyncio.create_task(self._pump(src, dst, client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def trap_commit(self, deliver: bool) -> None:
        self._commit_trap = deliver

    def hold_commit(self, after: int = 0) -> None:
        """Hold the COMMIT that comes after `after` others (forwarded)."""
        self._hold_commit = True
        self._commits_to_pass = after
        self._commit_released.clear()
        self.commit_held.clear()

    def release_commit(self) -> None:
        self._commit_released.set()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    client: asyncio.StreamWriter | None) -> None:
        """Copy src -> dst. `client` is set on the client -> server direction (where COMMIT travels)."""
        try:
            while data := await src.read(65536):
                if client is not None and self._hold_commit and b"COMMIT\x00" in data:
                    if self._commits_to_pass > 0:
                        self._commits_to_pass -= 1
                    else:
                        self._hold_commit = False
                        self.commit_held.set()
                        await self._commit_released.wait()
                if client is None and self._awaiting_answer and (b"COMMIT\x00" in data or b"ROLLBACK\x00" in data):
                    self._commit_answered.set()  # the server's CommandComplete for the trapped COMMIT
                trap = self._commit_trap
                if client is not None and trap is not None and b"COMMIT\x00" in data:
                    self._commit_trap = None
                    self.commits_trapped += 1
                    client.transport.abort()  # the client never hears back
                    if trap:  # the server gets the COMMIT and commits: wait for its answer, then break
                        self._commit_answered.clear()
                        self._awaiting_answer = True
                        dst.write(data)
                        await dst.drain()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._commit_answered.wait(), 10.0)
                        self._awaiting_answer = False
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
            self._transports.discard(dst)

    def cut(self) -> None:
        """Reset every open connection; refuse new ones."""
        self._cut = True
        for writer in list(self._transports):
            writer.transport.abort()
        self._transports.clear()

    def restore(self) -> None:
        self._cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


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
