"""RiskStore: durable risk state behind a queue that never blocks the hot path.

A thin composition of the store's rooms:
- queue.py: the write queue (snapshots coalesced per trader, the bounded history backlog, trades and events
  never dropped) and the counters; `enqueue_*` only touch it and never await nor raise;
- writer.py: the task that drains the queue in batched transactions, with backoff, bad-row isolation and
  commit-uncertainty (txid_status), and the encoder thread it pipelines with;
- dbthread.py: the database thread every database call runs on, and the bounded request-path calls;
- repository.py: the write-through and read calls (configurations, breakers, events, history, trades, flags);
- health.py: healthy or not, the outage log lines and the `on_health_change` callback.

Threads, not an async driver. Every database call runs on ONE dedicated thread ("tradeguard-store-db") with
SQLAlchemy's synchronous engine (psycopg 3 / sqlite3); a second thread ("tradeguard-store-encode") turns
queued records into rows; the event loop only moves records between in-memory queues and awaits the
threads. Why:
- no extra dependencies (SQLAlchemy's async engine needs greenlet, and SQLite would need aiosqlite, itself
  a thread around sqlite3);
- encoding (JSON, timestamps) happens off the event loop, so CanTrade latency does not grow with batch size;
- one database thread = one writer: SQLite never sees two writers, migrations never race with writes,
  admin writes and batches are simply ordered;
- the two threads form a pipeline: batch N+1 is encoded while batch N is in the database.

A healthy database keeps the history backlog near empty at thousands of changes per second (measured 2.4k/s
with 0 drops on PostgreSQL and SQLite); only when it cannot keep up (slow or down) for longer than the backlog
lasts (~40 s at 2.4k/s) are the oldest history rows dropped (queue.py).

A database that does not answer: PostgreSQL sessions carry server-side timeouts (PG_CONNECT_DEFAULTS), SQLite
connections a busy timeout (15 s), request-path calls wait at most `call_timeout_s` for the database thread
(dbthread.Database.call), and every operation on that thread (writer batches included) ends at `op_timeout_s`
(dbthread.Watchdog interrupts its connection; a batch whose COMMIT was sent is settled by txid_status first).

Loss bound on SIGKILL: what is queued and not yet committed: under load the changes of the last one or
two batch round trips (milliseconds). During an outage: with the local spool (spool.py, PostgreSQL, `spool_path`)
the backlog is in the spool, fsynced every SPILL_EVERY_S (50 ms), and what is lost is at most that window; without
it (SQLite, memory, or spool_path off) the whole backlog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from ..cluster.changes import ControlChange
from .dbthread import CALL_TIMEOUT_S, OP_TIMEOUT_S, PG_CONNECT_DEFAULTS, SETTLE_S, Database, is_row_error
from .errors import StoreUnavailable
from .health import Health
from .queue import HISTORY_BACKLOG_BYTES, HISTORY_BACKLOG_ROWS, KINDS, StoreCounters, WriteQueue, history_cost
from .records import (
    BreakerEventRecord,
    BreakerRecord,
    ConfigRecord,
    FlagsRecord,
    HistoryRecord,
    LoadedState,
    StateRecord,
    TradeRecord,
)
from .repository import Repository
from .spool import SPOOL_MAX_BYTES, Spool
from .url import normalize_url, redact
from .writer import Writer

__all__ = [
    "CALL_TIMEOUT_S",
    "HISTORY_BACKLOG_BYTES",
    "HISTORY_BACKLOG_ROWS",
    "KINDS",
    "OP_TIMEOUT_S",
    "PG_CONNECT_DEFAULTS",
    "SETTLE_S",
    "RiskStore",
    "history_cost",
    "is_row_error",
]

log = logging.getLogger("tradeguard.store")


def database_name(url: str) -> str:
    """The database a URL names (what a spool's records belong to)."""
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


class RiskStore(StoreCounters):
    """The SQLAlchemy store. `start()`, then `load()`, `enqueue_*`, write-through calls; `close()` at the end.
    Its counters (StoreCounters) are its own attributes: read them, never reset them."""

    def __init__(
        self,
        url: str,
        queue_size: int = HISTORY_BACKLOG_ROWS,
        batch_max: int = 500,
        retry_max_s: float = 5.0,
        migrate_on_start: bool = True,
        *,
        clock: Callable[[], float] = time.time,
        call_timeout_s: float = CALL_TIMEOUT_S,
        history_backlog_bytes: int = HISTORY_BACKLOG_BYTES,
        settle_s: float = SETTLE_S,
        op_timeout_s: float = OP_TIMEOUT_S,
        on_health_change: Callable[[bool], None] | None = None,
        spool_path: str | None = None,
        spool_max_bytes: int = SPOOL_MAX_BYTES,
    ) -> None:
        if queue_size < 1 or batch_max < 1:
            raise ValueError("queue_size and batch_max must be >= 1")
        if call_timeout_s < 0 or op_timeout_s < 0:
            raise ValueError("call_timeout_s and op_timeout_s must be >= 0 (0 = no bound)")
        super().__init__()
        self.url = normalize_url(url)
        self.clock = clock  # timestamps of admin writes (created_at, updated_at) and trade reports
        self.persistence_enabled = True  # False: enqueue_* do nothing (memory only); write-through still writes
        self.on_health_change = on_health_change  # called on the event loop thread
        self._closed = False
        self.queue = WriteQueue(self, queue_size, history_backlog_bytes, clock)
        self.health = Health(self.url, retry_max_s, lambda: self.queue_depth, self._notify_health)
        self.db = Database(self.url, migrate_on_start=migrate_on_start, call_timeout_s=call_timeout_s,
                           settle_s=settle_s, op_timeout_s=op_timeout_s, on_unavailable=self.health.unavailable)
        self.writer = Writer(self.queue, self, self.db, self.health, batch_max=batch_max, retry_max_s=retry_max_s,
                             call_timeout_s=call_timeout_s)
        self.repository = Repository(self.db, clock, self.flush)
        # The local spool (spool.py): PostgreSQL only; None = off (SQLite is already a local file).
        self.spool: Spool | None = Spool(spool_path, spool_max_bytes, database=database_name(self.url)) \
            if spool_path else None

    # ---- settings (read by the parts on each use) -----------------------------------------------------

    @property
    def queue_size(self) -> int:
        """History backlog cap, rows."""
        return self.queue.max_rows

    @queue_size.setter
    def queue_size(self, rows: int) -> None:
        self.queue.max_rows = rows

    @property
    def history_backlog_bytes(self) -> int:
        """History backlog cap, bytes (estimated by history_cost)."""
        return self.queue.max_bytes

    @history_backlog_bytes.setter
    def history_backlog_bytes(self, size: int) -> None:
        self.queue.max_bytes = size

    @property
    def batch_max(self) -> int:
        return self.writer.batch_max

    @batch_max.setter
    def batch_max(self, n: int) -> None:
        self.writer.batch_max = n

    @property
    def retry_max_s(self) -> float:
        """The writer's longest backoff between reconnection attempts."""
        return self.writer.retry_max_s

    @retry_max_s.setter
    def retry_max_s(self, seconds: float) -> None:
        self.writer.retry_max_s = self.health.retry_max_s = seconds

    @property
    def call_timeout_s(self) -> float:
        """See dbthread.CALL_TIMEOUT_S."""
        return self.db.call_timeout_s

    @call_timeout_s.setter
    def call_timeout_s(self, seconds: float) -> None:
        self.db.call_timeout_s = self.writer.call_timeout_s = seconds

    @property
    def op_timeout_s(self) -> float:
        """See dbthread.OP_TIMEOUT_S."""
        return self.db.op_timeout_s

    @op_timeout_s.setter
    def op_timeout_s(self, seconds: float) -> None:
        self.db.op_timeout_s = seconds

    @property
    def migrate_on_start(self) -> bool:
        return self.db.migrate_on_start

    # ---- lifecycle ------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True when the last connect or write succeeded."""
        return self.health.healthy

    @property
    def queue_depth(self) -> int:
        """Items not yet committed: queued plus the batches being written."""
        return self.writer.queue_depth

    def _notify_health(self, healthy: bool) -> None:
        if self.on_health_change is not None:
            self.on_health_change(healthy)

    async def start(self) -> None:
        """Start the writer. Never raises because the database is down: it connects (and migrates, unless
        migrate_on_start is off) in the background and keeps retrying with backoff."""
        if self.db.thread is not None:
            return
        if self.spool is not None:
            await self.spool.open()  # SpoolError (naming spool_path) when it cannot be opened
            self.writer.spool = self.spool
        self.db.start()
        self.writer.start()
        log.info("store %s: writer started (queue_size=%d batch_max=%d)", redact(self.url), self.queue_size,
                 self.batch_max)

    async def close(self, drain_timeout: float) -> int:
        """Write what is queued within `drain_timeout` seconds, stop the writer, release connections.
        Returns the number of items left unwritten (0 = everything landed)."""
        if self._closed:
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        self.queue.hold_states = False  # the last states this process has are better than none
        drained = await self.flush(timeout=drain_timeout)
        self._closed = self.db.closed = True  # no more intake, no more write-through calls
        await self.writer.stop(wait_s=max(deadline - loop.time(), 0.0) + 1.0)  # finishes the batch in the database
        spooled = await self.writer.spill_all() if self.spool is not None else 0
        left = self.queue_depth
        await self.db.close(wait_s=max(deadline - loop.time(), 0.0) + 1.0)
        if self.spool is not None:
            if self.spool.depth:
                log.warning("store closed: %d items spooled to %s (%d bytes; %d moved there at shutdown): written "
                            "to the database at the next start or when it answers", self.spool.depth, self.spool.path,
                            self.spool.stats.bytes, spooled)
            await self.spool.close()
        if left:
            log.warning("store closed with %d items unwritten (drain timeout %.1fs)", left, drain_timeout)
        else:
            log.info("store closed, queue drained (%s)", "flushed" if drained else "nothing pending")
        return left

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the store's interface
        """Wait until everything enqueued before this call is written (or rejected, or dropped as overflow).
        Event-driven: the writer resolves waiters after each batch. False on timeout or when not running."""
        return await self.writer.flush(timeout)

    # ---- the hot path: enqueue (never awaits, never raises; call on the event loop thread) -------------

    def enqueue_state(self, rec: StateRecord, reason: str, trace_id: str | None, history: bool = True) -> None:
        """Queue a trader's new state and its history row."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self.queue.put_state(rec, reason, trace_id, history)
            self.writer.kick()
        except Exception:  # pragma: no cover - the hot path must never fail because of the store
            log.exception("enqueue_state failed")

    def enqueue_trade(self, rec: TradeRecord) -> None:
        """Queue a closed trade (never dropped)."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self.queue.put_trade(rec)
            self.writer.kick()
        except Exception:  # pragma: no cover
            log.exception("enqueue_trade failed")

    def enqueue_event(self, rec: BreakerEventRecord) -> None:
        """Queue a breaker event (never dropped). An empty id gets a uuid."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self.queue.put_event(rec)
            self.writer.kick()
        except Exception:  # pragma: no cover
            log.exception("enqueue_event failed")

    # ---- load and write-through (awaited by the callers; see repository.py) ----------------------------

    async def load(self) -> LoadedState:
        """Everything the sidecar restores at start. Raises StoreUnavailable when the database cannot be
        reached (then serve from memory; the writer keeps retrying and writes the backlog later). After a
        failed load, snapshots wait in the queue until a load succeeds."""
        first_attempt = self.writer.first_attempt
        if first_attempt is None:
            raise StoreUnavailable("store is not started")
        await asyncio.shield(first_attempt)
        try:
            if not self.db.prepared:
                raise StoreUnavailable("database unavailable at start")
            await self.spool_replayed()
            loaded = await self.repository.load()
        except StoreUnavailable:
            if not self.queue.hold_states and self.queue.states_queued:
                log.info("store: holding %d state snapshots until a load succeeds", self.queue.states_queued)
            self.queue.hold_states = True
            raise
        if self.queue.hold_states:
            self.queue.hold_states = False
            self.writer.kick()
        return loaded

    async def spool_replayed(self) -> None:
        """Wait until the local spool is replayed into the database (at most call_timeout_s). What it holds is
        older than anything stored after it: replayed before the stored state is read (or leases are taken back).
        Raises StoreUnavailable when the database cannot be reached or the replay is not done in time."""
        if self.spool is None or not self.spool.depth:
            return
        first_attempt = self.writer.first_attempt
        if first_attempt is None:
            raise StoreUnavailable("store is not started")
        await asyncio.shield(first_attempt)
        if not self.db.prepared:
            raise StoreUnavailable("database unavailable (the local spool waits for it)")
        if not await self.writer.spool_replayed(self.call_timeout_s or None):
            raise StoreUnavailable(f"the local spool {self.spool.path} is not replayed yet ({self.spool.depth} "
                                   "records left)")

    async def spooled_states(self) -> tuple[list[StateRecord], dict[str, list[str]]]:
        """The latest states in the spool and each trader's spooled trade ids (empty without a spool): what this
        sidecar had when the database was last unreachable, for a start while it still is."""
        if self.spool is None or not self.spool.depth:
            return [], {}
        try:
            return await self.spool.latest_states()
        except Exception:
            log.exception("spool %s: the latest states cannot be read", self.spool.path)
            return [], {}

    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]:
        return await self.repository.known_trade_ids(trader_id, trade_ids)

    async def save_config(self, cfg: ConfigRecord, change: ControlChange | None = None) -> tuple[ConfigRecord, bool]:
        return await self.repository.save_config(cfg, change)

    async def delete_config(self, account_id: str, config_id: str, change: ControlChange | None = None) -> None:
        await self.repository.delete_config(account_id, config_id, change)

    async def get_configs(self, account_id: str) -> list[ConfigRecord]:
        return await self.repository.get_configs(account_id)

    async def save_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        return await self.repository.save_breaker(breaker, change)

    async def update_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        return await self.repository.update_breaker(breaker, change)

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool,
                                  change: ControlChange | None = None) -> BreakerRecord:
        return await self.repository.set_breaker_enabled(breaker_id, enabled, change)

    async def delete_breaker(self, breaker_id: str, change: ControlChange | None = None) -> None:
        await self.repository.delete_breaker(breaker_id, change)

    async def get_breaker(self, breaker_id: str) -> BreakerRecord:
        return await self.repository.get_breaker(breaker_id)

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]:
        return await self.repository.list_breakers(account_id)

    async def save_flags(self, flags: FlagsRecord, change: ControlChange | None = None) -> FlagsRecord:
        return await self.repository.save_flags(flags, change)

    async def get_flags(self) -> FlagsRecord | None:
        return await self.repository.get_flags()

    # ---- the control-state log (cluster.changes; see Repository) ---------------------------------------

    async def append_change(self, change: ControlChange) -> int:
        return await self.repository.append_change(change)

    async def changes_since(self, version: int, limit: int = 1000) -> list[ControlChange]:
        return await self.repository.changes_since(version, limit)

    async def trader_changes(self, trader_id: str) -> list[ControlChange]:
        return await self.repository.trader_changes(trader_id)

    async def scope_changes(self) -> list[ControlChange]:
        return await self.repository.scope_changes()

    async def trader_stored(self, trader_id: str) -> bool:
        return await self.repository.trader_stored(trader_id)

    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]:
        return await self.repository.list_history(trader_id, start, end, limit, after_id)

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        return await self.repository.list_events(account_id, breaker_id, limit, before_cursor)

    async def history_at(self, trader_id: str, at: float) -> tuple[HistoryRecord, list[str]] | None:
        """The trader's newest history row at or before `at` (see sql.history_at); queued rows are flushed first
        (for up to a second), so a change just made counts."""
        from . import sql

        await self.flush(1.0)
        return await self.db.call(lambda conn: sql.history_at(conn, trader_id, at), write=False)

    # ---- bounded traders (issue 21, residency.py): write progress, and one trader read back --------------------

    def queued_seq(self) -> int:
        """The sequence number of the last item queued."""
        return self.queue.seq

    def written_through(self) -> int:
        """Every item queued with a sequence number up to this one is written (or rejected, or dropped history)."""
        return self.writer._done_through()

    def forget_trader(self, trader_id: str) -> None:
        """An evicted trader: the writer's per-trader encoding cache lets it go."""
        bulk = self.writer._bulk
        if bulk is not None:
            bulk.forget(trader_id)

    async def read_trader(self, trader_id: str) -> tuple[StateRecord | None, list[str]]:
        """One trader's stored state (None: no row) and its recent trade ids, oldest first (an evicted trader's
        reload: one primary-key read and one indexed one)."""
        from sqlalchemy import select

        from ..cluster import leases
        from . import codec
        from .sql import STATE

        def read(conn: Connection) -> tuple[StateRecord | None, list[str]]:
            row = conn.execute(select(STATE).where(STATE.c.trader_id == trader_id)).mappings().first()
            if row is None:
                return None, []
            return codec.state_from_row(row), leases.trade_ids(conn, trader_id)

        return await self.db.call(read, write=False)
