"""History retention: rows of risk_state_history, trade_reports and circuit_breaker_events older than their
retention are pruned in the background, in small batches, never on the hot path (README "History retention and
restore").

How:
- every `interval_s` (and once shortly after start) a run deletes, table by table, per trader (per account for
  breaker events), `batch_size` rows per short transaction along the (trader_id, recorded_at) / (account_id,
  timestamp) index, with a pause between batches of PAUSE_FACTOR times what the batch took (at least PAUSE_MIN_S):
  the pruner keeps its connection busy a quarter of the time at most, and each transaction holds its row locks for
  one batch only (bench/retention.py measures CanTrade while it runs; bench/README.md has the numbers).
  risk_state (the latest state of every trader) is never touched.
- SQLite: the batches run on the store's database thread (one writer: SQLite never sees two), between the writer's
  batches. PostgreSQL: on a connection and thread of the pruner's own, so the store's writer never waits behind a
  batch; with several sidecars on one database only one prunes at a time: the run holds a session-level
  `pg_try_advisory_lock(RETENTION_LOCK)` on that connection, and a sidecar that does not get it skips the run.
- TimescaleDB: when the extension is installed and risk_state_history is a hypertable, its retention is a
  TimescaleDB policy (`add_retention_policy`, whole chunks dropped by TimescaleDB's own job) set at start, instead
  of deletes (trade reports and breaker events are still pruned here). A policy drops whole chunks by time: the
  per-trader rules below do not hold there.

What is never pruned from risk_state_history (so that a restore point always exists and every kept row reads whole):
a history row stores each map (pauses, positions, volatility, symbol statistics, pending orders) only when it
changed, else a reference to the earlier row that holds it (store.bulk.history_row); the writer repeats every map
in a trader's first row of each process and every FULL_HISTORY_EVERY rows. So per trader, the newest *full* row
(one that holds every map itself) recorded before the cutoff and every row after it are kept: rows after it refer
only to it or to later rows, and each trader keeps at least its newest row (the newest full row before the cutoff,
when nothing newer exists). A trader keeps at most FULL_HISTORY_EVERY rows older than the retention.

Metrics (observability.metrics): tradeguard_retention_rows_pruned_total{table},
tradeguard_retention_last_run_timestamp_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, and_, create_engine, delete, literal_column, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from .codec import dumps
from .dbthread import PG_CONNECT_DEFAULTS, Worker, describe, is_row_error, run_on
from .errors import StoreError, StoreUnavailable
from .models import AlertOutbox, CircuitBreakerEvent, RiskStateHistory, TradeReport

log = logging.getLogger("tradeguard.retention")

T = TypeVar("T")
HISTORY: Table = RiskStateHistory.__table__  # type: ignore[assignment]
TRADES: Table = TradeReport.__table__  # type: ignore[assignment]
EVENTS: Table = CircuitBreakerEvent.__table__  # type: ignore[assignment]
OUTBOX: Table = AlertOutbox.__table__  # type: ignore[assignment]
# alert_outbox follows breaker_event_retention_days (an alert older than that is neither pending nor a duplicate to
# stop: an episode open that long is not derived again)
TABLES = ("risk_state_history", "trade_reports", "circuit_breaker_events", "alert_outbox")
DAY_S = 86_400.0
PAUSE_MIN_S = 0.02  # between two batches at least this long...
# ...and at least PAUSE_FACTOR times as long as the batch took: the pruner keeps its connection busy a quarter of the
# time at most, so the database's CPU and disk (on a small machine, the sidecar's CPU too) stay mostly free.
PAUSE_FACTOR = 3.0
FIRST_RUN_DELAY_S = 5.0  # the first run waits this long after start (the start-up load goes first)
# a run the database's absence cut short is tried again after this long (or the interval, when shorter), not an
# interval (an hour by default) later
RETRY_UNAVAILABLE_S = 60.0
RETENTION_LOCK = 0x7467_7274  # pg_try_advisory_lock key: "tgrt" (cluster.changes uses "tgct")

Run = Callable[[Callable[[Connection], T]], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each table keeps (0 = forever) and how the pruner works (Settings' retention block)."""

    history_days: float = 90.0
    trade_days: float = 365.0
    event_days: float = 365.0
    interval_s: float = 3600.0
    batch_size: int = 1000

    @property
    def active(self) -> bool:
        return any(d > 0 for d in (self.history_days, self.trade_days, self.event_days))


# ---- TimescaleDB ------------------------------------------------------------------------------------

def history_is_hypertable(conn: Connection) -> bool:
    """True when TimescaleDB is installed in this database and risk_state_history is one of its hypertables."""
    if conn.dialect.name != "postgresql":
        return False
    if conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return False
    return conn.execute(text("SELECT 1 FROM timescaledb_information.hypertables "
                             "WHERE hypertable_name = 'risk_state_history'")).first() is not None


def set_timescale_policy(conn: Connection, days: float) -> None:
    """Replace risk_state_history's TimescaleDB retention policy by one of `days` (0: none, keep forever)."""
    conn.execute(text("SELECT remove_retention_policy('risk_state_history', if_exists => true)"))
    if days > 0:
        conn.execute(text("SELECT add_retention_policy('risk_state_history', "
                          "drop_after => make_interval(secs => :seconds))"), {"seconds": days * DAY_S})


# ---- the statements (each batch its own transaction, committed by the caller) ------------------------

def _row_key(conn: Connection) -> Any:
    """The physical row id a batch deletes by: ctid (PostgreSQL), rowid (SQLite)."""
    return literal_column("ctid" if conn.dialect.name == "postgresql" else "rowid")


def history_traders(conn: Connection, cutoff: float) -> list[str]:
    """The traders with history rows older than `cutoff`."""
    return [r[0] for r in conn.execute(select(HISTORY.c.trader_id).where(HISTORY.c.recorded_at < cutoff).distinct())]


def _full_row(conn: Connection) -> Any:
    """A history row that holds every map itself (no "unchanged" references)."""
    if conn.dialect.name == "postgresql":
        return text("(risk_state_history.state -> 'unchanged') IS NULL")
    return text("json_extract(risk_state_history.state, '$.unchanged') IS NULL")


def history_keep_from(conn: Connection, trader_id: str, cutoff: float) -> tuple[int, float] | None:
    """(id, recorded_at) of the trader's newest full row recorded before `cutoff`: it and every later row are kept.
    None: no such row (nothing of the trader may be pruned)."""
    row = conn.execute(
        select(HISTORY.c.id, HISTORY.c.recorded_at)
        .where(HISTORY.c.trader_id == trader_id, HISTORY.c.recorded_at < cutoff, _full_row(conn))
        .order_by(HISTORY.c.recorded_at.desc(), HISTORY.c.id.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), float(row[1]))


def delete_history_batch(conn: Connection, trader_id: str, keep: tuple[int, float], n: int) -> int:
    """Delete up to `n` of the trader's rows before `keep` (id, recorded_at). Returns how many."""
    keep_id, keep_at = keep
    ids = (select(HISTORY.c.id)
           .where(HISTORY.c.trader_id == trader_id, HISTORY.c.recorded_at <= keep_at, HISTORY.c.id < keep_id)
           .limit(n).scalar_subquery())
    return int(conn.execute(delete(HISTORY).where(HISTORY.c.id.in_(ids))).rowcount or 0)


def trade_traders(conn: Connection, cutoff: float) -> list[str]:
    return [r[0] for r in conn.execute(select(TRADES.c.trader_id).where(TRADES.c.recorded_at < cutoff).distinct())]


def delete_trades_batch(conn: Connection, trader_id: str, cutoff: float, n: int) -> int:
    key = _row_key(conn)
    rows = (select(key).select_from(TRADES)
            .where(and_(TRADES.c.trader_id == trader_id, TRADES.c.recorded_at < cutoff)).limit(n).scalar_subquery())
    return int(conn.execute(delete(TRADES).where(key.in_(rows))).rowcount or 0)


def event_accounts(conn: Connection, cutoff: float) -> list[str]:
    return [r[0] for r in conn.execute(select(EVENTS.c.account_id).where(EVENTS.c.timestamp < cutoff).distinct())]


def delete_events_batch(conn: Connection, account_id: str, cutoff: float, n: int) -> int:
    ids = (select(EVENTS.c.id).where(EVENTS.c.account_id == account_id, EVENTS.c.timestamp < cutoff)
           .limit(n).scalar_subquery())
    return int(conn.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids))).rowcount or 0)


def delete_outbox_batch(conn: Connection, cutoff: float, n: int) -> int:
    ids = select(OUTBOX.c.id).where(OUTBOX.c.created_at < cutoff).order_by(OUTBOX.c.id).limit(n).scalar_subquery()
    return int(conn.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(ids))).rowcount or 0)


# ---- where the batches run --------------------------------------------------------------------------

class StoreThread:
    """SQLite (one writer): every batch on the store's database thread, in a transaction of its own."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call  # dbthread.Database.call

    async def lock(self) -> bool:
        return True

    async def unlock(self) -> None:
        return None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        result: T = await self.call(fn, write=True)
        return result

    async def close(self) -> None:
        return None


def _unavailable(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, with a lost or unreachable database (connect refused or timed out, connection broken) raised as
    StoreUnavailable: the pruner's run then says "database unavailable" and is tried again soon, instead of an
    ERROR with a traceback and the next run an interval later."""

    def call() -> T:
        try:
            return fn()
        except DBAPIError as exc:  # as the store's calls judge it (dbthread): the rows' fault, or the database's
            if is_row_error(exc):
                raise
            raise StoreUnavailable(describe(exc)) from exc

    return call


class OwnConnection:
    """PostgreSQL: a connection and thread of the pruner's own, holding the cluster-wide advisory lock for a run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worker: Worker | None = None
        self.engine: Engine | None = None
        self.conn: Connection | None = None

    def _connect(self) -> Connection:
        if self.engine is None:
            # The store's connection options (server-side timeouts, keepalives), no pool: the connection is closed at
            # the end of each run, so an idle pruner holds none.
            present = {k.lower() for k in make_url(self.url).query}
            self.engine = create_engine(self.url, poolclass=NullPool, json_serializer=dumps, connect_args={
                k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in present})
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            self.conn = self.engine.connect()
        return self.conn

    def _thread(self) -> Worker:
        if self.worker is None:
            self.worker = Worker("tradeguard-retention")
        return self.worker

    async def lock(self) -> bool:
        """Take the pruning lock (one sidecar at a time); False when another sidecar holds it."""

        def take() -> bool:
            conn = self._connect()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RETENTION_LOCK}).scalar())
            conn.commit()  # a session-level lock outlives the transaction
            if not got:
                self.conn = None
                conn.close()
            return got

        return await run_on(self._thread(), _unavailable(take))

    async def unlock(self) -> None:
        """Release the lock and close the connection (until the next run)."""

        def release() -> None:
            conn, self.conn = self.conn, None
            if conn is not None and not conn.closed:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETENTION_LOCK})
                    conn.commit()
                finally:
                    conn.close()

        with contextlib.suppress(Exception):  # a broken connection released it with the session
            await run_on(self.worker, release)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        def batch() -> T:
            conn = self._connect()
            try:
                result = fn(conn)
                conn.commit()
                return result
            except Exception:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise

        return await run_on(self._thread(), _unavailable(batch))

    async def close(self) -> None:
        def dispose() -> None:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
            if self.engine is not None:
                self.engine.dispose()

        if self.worker is not None:
            with contextlib.suppress(Exception):
                await run_on(self.worker, dispose)
            self.worker.shutdown(wait=False)
            self.worker = None


# ---- the pruner -----------------------------------------------------------------------------------

class Pruner:
    """Runs the retention in the background (`start`, `close`); `run_once` for one run (tests, bench)."""

    def __init__(self, policy: RetentionPolicy, runner: StoreThread | OwnConnection,
                 clock: Callable[[], float] = time.time, *, hypertable: Run[bool] | None = None) -> None:
        self.policy = policy
        self.runner = runner
        self.clock = clock
        self.hypertable = hypertable  # runs history_is_hypertable (None: SQLite, never)
        self.pruned: dict[str, int] = dict.fromkeys(TABLES, 0)  # rows deleted since start, by table
        self.batches: dict[str, int] = dict.fromkeys(TABLES, 0)  # delete transactions, by table
        self.last_run_at = 0.0  # epoch seconds of the last run that finished (0: none yet)
        self.skipped = 0  # runs skipped: another sidecar held the lock
        self.timescale = False  # risk_state_history's retention is a TimescaleDB policy
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._running = asyncio.Lock()  # one run at a time in this process (the background one, or a caller's)

    # ---- background ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.policy.active and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.runner.close()

    async def _wait(self, seconds: float) -> bool:
        """Wait `seconds` unless closed meanwhile; True when closed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _loop(self) -> None:
        if await self._wait(FIRST_RUN_DELAY_S):
            return
        while True:
            wait = self.policy.interval_s
            try:
                await self.run_once()
            except StoreUnavailable as exc:
                wait = min(wait, RETRY_UNAVAILABLE_S)
                log.warning("retention: run not finished (database unavailable: %s); next try in %gs", exc, wait)
            except StoreError as exc:
                log.warning("retention: run not finished (%s); next run in %gs", exc, wait)
            except Exception:
                log.exception("retention: run failed; next run in %gs", wait)
            if await self._wait(wait):
                return

    # ---- one run --------------------------------------------------------------------------------------

    async def run_once(self) -> dict[str, int] | None:
        """Prune every table once; the rows deleted by table, None when another sidecar holds the lock."""
        async with self._running:
            if not await self.runner.lock():
                self.skipped += 1
                log.debug("retention: another sidecar is pruning; run skipped")
                return None
            try:
                return await self._prune()
            finally:
                await self.runner.unlock()

    async def _prune(self) -> dict[str, int]:
        p, now = self.policy, self.clock()
        done = dict.fromkeys(TABLES, 0)
        started = time.monotonic()
        if p.history_days > 0 or self.timescale:
            if self.hypertable is not None and await self.hypertable(history_is_hypertable):
                if not self.timescale:
                    await self.runner.run(lambda conn: set_timescale_policy(conn, p.history_days))
                    log.info("retention: risk_state_history is a TimescaleDB hypertable: its retention is a "
                             "TimescaleDB policy of %g days (whole chunks dropped by TimescaleDB)", p.history_days)
                    self.timescale = True
            elif p.history_days > 0:
                cutoff = now - p.history_days * DAY_S
                for trader_id in await self.runner.run(partial(history_traders, cutoff=cutoff)):
                    if self._stop.is_set():
                        break
                    keep = await self.runner.run(partial(history_keep_from, trader_id=trader_id, cutoff=cutoff))
                    if keep is not None:
                        done["risk_state_history"] += await self._batches("risk_state_history", partial(
                            delete_history_batch, trader_id=trader_id, keep=keep, n=p.batch_size))
        if p.trade_days > 0:
            cutoff = now - p.trade_days * DAY_S
            for trader_id in await self.runner.run(partial(trade_traders, cutoff=cutoff)):
                if self._stop.is_set():
                    break
                done["trade_reports"] += await self._batches("trade_reports", partial(
                    delete_trades_batch, trader_id=trader_id, cutoff=cutoff, n=p.batch_size))
        if p.event_days > 0:
            cutoff = now - p.event_days * DAY_S
            for account_id in await self.runner.run(partial(event_accounts, cutoff=cutoff)):
                if self._stop.is_set():
                    break
                done["circuit_breaker_events"] += await self._batches("circuit_breaker_events", partial(
                    delete_events_batch, account_id=account_id, cutoff=cutoff, n=p.batch_size))
            if not self._stop.is_set():
                done["alert_outbox"] += await self._batches("alert_outbox", partial(
                    delete_outbox_batch, cutoff=cutoff, n=p.batch_size))
        self.last_run_at = self.clock()
        if any(done.values()):
            log.info("retention: pruned %s in %.1fs (batches of %d)",
                     ", ".join(f"{n} {table} rows" for table, n in done.items() if n), time.monotonic() - started,
                     p.batch_size)
        return done

    async def _batches(self, table: str, batch: Callable[[Connection], int]) -> int:
        """Run `batch` until it deletes fewer rows than a batch, pausing between batches; the rows deleted."""
        total = 0
        while True:
            began = time.monotonic()
            n = await self.runner.run(batch)
            took = time.monotonic() - began
            self.batches[table] += 1
            self.pruned[table] += n
            total += n
            if n < self.policy.batch_size:
                return total
            if await self._wait(max(PAUSE_MIN_S, PAUSE_FACTOR * took)):
                return total
