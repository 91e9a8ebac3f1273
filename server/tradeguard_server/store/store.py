"""RiskStore: durable risk state behind a queue that never blocks the hot path.

Threads, not an async driver. Every database call runs on ONE dedicated thread ("tradeguard-store-db") with
SQLAlchemy's synchronous engine (psycopg 3 / sqlite3); a second thread ("tradeguard-store-encode") turns
queued records into rows; the event loop only moves records between in-memory queues and awaits the
threads. Why:
- no extra dependencies (SQLAlchemy's async engine needs greenlet, and SQLite would need aiosqlite, itself
  a thread around sqlite3);
- encoding (JSON, timestamps) happens off the event loop, so CanTrade latency does not grow with batch
  size (the loop still shares the GIL with these threads: at most one switch interval, 5 ms by default,
  when both want it; `sys.setswitchinterval(0.001)` at start tightens that);
- one database thread = one writer: SQLite never sees two writers, migrations never race with writes,
  admin writes and batches are simply ordered;
- the two threads form a pipeline: batch N+1 is encoded while batch N is in the database.

What is queued (`enqueue_*` never await and never raise; call them on the event loop thread):
- state snapshots coalesce per trader (the highest version wins) in an unbounded map with one entry per
  trader, so the latest state of every trader is always written eventually, whatever overflows;
- history rows go to a bounded backlog: at most `queue_size` rows (HISTORY_BACKLOG_ROWS = 100,000 by default)
  and at most `history_backlog_bytes` (128 MiB) by `history_cost`'s estimate (~0.65 KB for a trader without
  positions, ~5 KB with 500 recent trades). A
  healthy database keeps the backlog near empty at thousands of changes per second (measured 2.4k/s with 0
  drops on PostgreSQL and SQLite); only when it cannot keep up (slow or down) for longer than the backlog
  lasts (~40 s at 2.4k/s) is the OLDEST row dropped, counted in `dropped_history`, with one warning per
  overflow episode and one with the count when it ends. `enqueued["history"] == rows_written["history"] +
  dropped_history + rejected["history"] + what is still queued`;
- trade reports and breaker events are never dropped: their pending lists are unbounded (a long outage
  costs memory, a few hundred bytes per item, rather than losing an audit record).

The writer drains everything in batched transactions (store.bulk). Transient errors (connection refused
or lost, database locked, a statement the server cancelled after statement_timeout or lock_timeout, ...) keep
the batch, mark the store unhealthy, back off exponentially up to `retry_max_s` and reconnect; one warning per
outage and one on recovery. A batch that fails for a row's
own reason (constraint, bad value) is split until the bad row is alone: the rest is written, the bad row
is logged and counted in `rejected`, never silently lost.

A database that does not answer: PostgreSQL sessions carry server-side timeouts (PG_CONNECT_DEFAULTS), and
request-path calls wait at most `call_timeout_s` for the database thread (see `_call` and `_Call`).

Loss bound on SIGKILL: what is queued and not yet committed: under load the changes of the last one or
two batch round trips (milliseconds), during an outage the whole backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from . import sql
from .bulk import BulkWriter
from .codec import dumps
from .errors import Conflict, InvalidData, StoreError, StoreUnavailable
from .migrate import migrate_connection
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
from .url import is_sqlite, normalize_url, redact

log = logging.getLogger("tradeguard.store")

T = TypeVar("T")
P = ParamSpec("P")
KINDS = ("state", "history", "trade", "event")
PG_CONNECT_DEFAULTS = {  # unless the URL says otherwise
    "connect_timeout": "5",  # seconds to wait for a connection
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",  # ms: a black-holed connection fails instead of hanging the writer
    "application_name": "tradeguard",
    # Server-side bounds for a database that answers the connection but not the statement (a table locked by
    # another session, a long-running query): the server cancels the statement (SQLSTATE 57014 / 55P03, an
    # OperationalError: transient, the writer keeps its batch and retries; admin calls get StoreUnavailable) or
    # ends a session left idle in a transaction. libpq passes `options` to the server at connection start, like
    # PGOPTIONS. A URL with its own `options` replaces this whole string (`?options=` disables it, e.g. behind a
    # PgBouncer that rejects it). Start-up work (migrations, the first load) lifts statement_timeout: on a big
    # database it may take longer, and a silent database is what the client-side bound below is for.
    "options": "-c statement_timeout=15000 -c lock_timeout=5000 -c idle_in_transaction_session_timeout=60000",
}
# How long a request-path call (`_call`: admin writes and reads) waits for the database thread before it
# raises StoreUnavailable; also how long a writer batch may stay in the database before health turns
# NOT_SERVING (the writer keeps waiting for it). Covers what the server-side timeouts cannot: a hung pooler,
# a frozen server whose kernel still ACKs. 0 = no bound.
CALL_TIMEOUT_S = 30.0
# How long an admin write whose COMMIT answer was lost keeps asking the database (txid_status) what became of it.
SETTLE_S = 10.0
FIRST_BACKOFF_S = 0.05
# History rows kept in memory while the database does not keep up: at most `queue_size` rows (this default) and
# at most `history_backlog_bytes` (this default) by history_cost's estimate; past either, the oldest are dropped.
HISTORY_BACKLOG_ROWS = 100_000
HISTORY_BACKLOG_BYTES = 128 << 20
PIPELINE = True  # encode the next batch while one is in the database (False: one at a time; for comparison)
ROW_ERRORS = {"IntegrityError", "DataError"}  # PEP 249 names: the same in SQLAlchemy, psycopg and sqlite3

Encoded = list[tuple[Any, tuple[Any, ...]]]  # (queue item, row)


class _Worker(Executor):
    """One daemon thread running submitted calls in order. Unlike ThreadPoolExecutor's threads, it is not
    joined at interpreter exit: a call stuck on a black-holed connection cannot hold up the process after
    close() gave up on it."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._stopped:
            raise RuntimeError("worker is shut down")
        future: Future[T] = Future()
        self._calls.put((future, partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting side
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stopped = True
        self._calls.put(None)
        if wait:
            self._thread.join()


class _Call:
    """One request-path call, shared by the coroutine awaiting it and the database thread running it.

    The thread cannot be interrupted, so a call the caller gave up on (its time bound passed, or its RPC was
    cancelled) may still be queued or running. Under a lock both sides agree on what happens to it:
    queued -> it never runs; running -> it runs to its end and then ROLLS BACK instead of committing, so a change
    the client was told failed (UNAVAILABLE) is not written behind its back (memory, which changes only after a
    commit, and the database stay the same); committing -> the COMMIT was already sent: the outcome is unknown,
    and the caller is told so. The thread's result or error is discarded either way.

    A COMMIT whose answer is lost while the caller still waits (the connection broke) is settled by asking the
    database (`_settle_commit`): the caller learns whether it committed, and is told "in doubt" only when the
    database cannot say within the bound."""

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "queued"

    def start(self) -> bool:
        """Database thread, before anything else: False when the caller already gave up."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "running"
            return True

    def may_commit(self) -> bool:
        """Database thread, just before COMMIT: False when the caller gave up (roll back instead)."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "committing"
            return True

    def abandon(self) -> str:
        """Event loop, when the caller stops waiting: returns the state the call was in."""
        with self._lock:
            was = self._state
            if was != "committing":
                self._state = "abandoned"
            return was


def is_row_error(exc: BaseException) -> bool:
    """True when `exc` is about the rows written (retrying the same rows fails again); False when it is
    about the database or the connection (transient: retry later)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & ROW_ERRORS:
        return True
    if isinstance(exc, DBAPIError) or "DatabaseError" in names or "InterfaceError" in names:
        return False
    # A value the driver or a type could not bind (StatementError wrapping it), or a row we could not encode.
    return isinstance(exc, StatementError | ValueError | TypeError | KeyError | OverflowError)


@dataclass(slots=True)
class _Batch:
    """Items taken from the queues for one transaction, each with its enqueue sequence number."""

    states: list[tuple[int, StateRecord]] = field(default_factory=list)
    history: list[tuple[int, HistoryRecord]] = field(default_factory=list)
    trades: list[tuple[int, TradeRecord, float]] = field(default_factory=list)
    events: list[tuple[int, BreakerEventRecord]] = field(default_factory=list)

    def size(self) -> int:
        return len(self.states) + len(self.history) + len(self.trades) + len(self.events)

    def min_seq(self) -> int | None:
        heads = [items[0][0] for items in (self.states, self.history, self.trades, self.events) if items]
        return min(heads) if heads else None


@dataclass(slots=True)
class _Outcome:
    """What the threads did with a batch."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    parts: dict[str, Encoded] = field(default_factory=dict)  # encoded rows, by kind
    retry: _Batch | None = None  # not written because of a transient error: requeue
    error: BaseException | None = None
    in_doubt: int | None = None  # PostgreSQL txid of a batch whose COMMIT may or may not have happened
    latency_ms: float = 0.0


class RiskStore:
    """The SQLAlchemy store. `start()`, then `load()`, `enqueue_*`, write-through calls; `close()` at the end."""

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
    ) -> None:
        if queue_size < 1 or batch_max < 1:
            raise ValueError("queue_size and batch_max must be >= 1")
        if call_timeout_s < 0:
            raise ValueError("call_timeout_s must be >= 0 (0 = no bound)")
        self.url = normalize_url(url)
        self.queue_size = queue_size  # history backlog cap, rows
        self.history_backlog_bytes = history_backlog_bytes  # history backlog cap, bytes (estimated)
        self.batch_max = batch_max
        self.retry_max_s = retry_max_s
        self.migrate_on_start = migrate_on_start
        self.clock = clock  # timestamps of admin writes (created_at, updated_at) and trade reports
        self.call_timeout_s = call_timeout_s  # see CALL_TIMEOUT_S
        self.persistence_enabled = True  # False: enqueue_* do nothing (memory only); write-through still writes
        self.on_health_change: Callable[[bool], None] | None = None  # called on the event loop thread

        # Counters, by kind where it applies (state, history, trade, event). Read them; never reset.
        self.enqueued: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.rows_written: dict[str, int] = dict.fromkeys(KINDS, 0)  # committed (state: upserts sent)
        self.rejected: dict[str, int] = dict.fromkeys(KINDS, 0)  # bad rows, logged and skipped
        self.coalesced = 0  # snapshots superseded in the queue by a newer one of the same trader
        self.dropped_history = 0
        self.attempts = 0  # transactions the writer tried (one per batch)
        self.failures = 0  # batches that failed (transient) or had a rejected row
        self.last_persist_latency_ms = 0.0  # duration of the last successful batch write

        # Queues; touched only on the event loop thread.
        self._seq = 0
        self._states: dict[str, tuple[int, StateRecord]] = {}
        self._history: deque[tuple[int, HistoryRecord]] = deque()
        self._history_bytes = 0  # history_cost of the rows in self._history
        self._trades: deque[tuple[int, TradeRecord, float]] = deque()
        self._events: deque[tuple[int, BreakerEventRecord]] = deque()
        self._inflight: list[_Batch] = []  # taken from the queues, not yet committed (at most two)
        self._in_doubt: tuple[_Batch, _Outcome] | None = None  # connection lost during its COMMIT
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_trade_at = 0.0
        self._overflowing = False
        self._drops_in_episode = 0
        self._drops_since_commit = 0

        # After a load() failed, snapshots wait (history, trades and events do not) until a load() succeeds,
        # so a late load always reads the stored states before this process replaces them.
        self._hold_states = False
        self._healthy = False
        self._outage_since: float | None = None
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._db: _Worker | None = None
        self._encoder: _Worker | None = None
        self._engine: Engine | None = None

        self._prepared = False  # set on the database thread
        self._epoch = 0  # set on the database thread before anything is encoded
        self._known_accounts: set[str] = set()  # database thread only
        self._bulk: BulkWriter | None = None  # encoding caches: encoder thread only

    # ---- lifecycle --------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True when the last connect or write succeeded."""
        return self._healthy

    @property
    def queue_depth(self) -> int:
        """Items not yet committed: queued plus the batches being written."""
        pending = len(self._states) + len(self._history) + len(self._trades) + len(self._events)
        return pending + sum(b.size() for b in self._inflight)

    async def start(self) -> None:
        """Start the writer. Never raises because the database is down: it connects (and migrates, unless
        migrate_on_start is off) in the background and keeps retrying with backoff."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._db = _Worker("tradeguard-store-db")
        self._encoder = _Worker("tradeguard-store-encode")
        self._engine = self._create_engine()
        self._wake = asyncio.Event()
        self._first_attempt = loop.create_future()
        self._task = asyncio.create_task(self._run(), name="tradeguard-store-writer")
        self._task.add_done_callback(_log_crash)
        log.info("store %s: writer started (queue_size=%d batch_max=%d)", redact(self.url), self.queue_size,
                 self.batch_max)

    async def close(self, drain_timeout: float) -> int:
        """Write what is queued within `drain_timeout` seconds, stop the writer, release connections.
        Returns the number of items left unwritten (0 = everything landed)."""
        if self._closed:
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        self._hold_states = False  # the last states this process has are better than none
        drained = await self.flush(timeout=drain_timeout)
        self._closed = True  # no more intake, no more write-through calls
        task = self._task
        if task is not None and not task.done():
            self._stopping.set()  # the writer finishes the batch in the database, then stops
            self._kick()
            await asyncio.wait({task}, timeout=max(deadline - loop.time(), 0.0) + 1.0)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.queue_depth
        if self._db is not None:
            if self._engine is not None:  # queued behind any write still running on the thread
                fut = loop.run_in_executor(self._db, self._engine.dispose)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fut, timeout=max(deadline - loop.time(), 0.0) + 1.0)
            self._db.shutdown(wait=False)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False)
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        for _target, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        if left:
            log.warning("store closed with %d items unwritten (drain timeout %.1fs)", left, drain_timeout)
        else:
            log.info("store closed, queue drained (%s)", "flushed" if drained else "nothing pending")
        return left

    # ---- the hot path: enqueue (never awaits, never raises) -----------------------------------------

    def enqueue_state(self, rec: StateRecord, reason: str, trace_id: str | None) -> None:
        """Queue a trader's new state and its history row."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self._seq += 1
            seq = self._seq
            self.enqueued["state"] += 1
            self.enqueued["history"] += 1
            current = self._states.get(rec.trader_id)
            if current is None:
                self._states[rec.trader_id] = (seq, rec)
            else:
                self.coalesced += 1
                if rec.version > current[1].version:  # keeps its place (and seq) in the queue, newest state
                    self._states[rec.trader_id] = (current[0], rec)
            row = HistoryRecord(rec.trader_id, rec.account_id, rec, reason, trace_id, rec.updated_at)
            self._history.append((seq, row))
            self._history_bytes += history_cost(row)
            if len(self._history) > self.queue_size or self._history_bytes > self.history_backlog_bytes:
                self._trim_history()
            self._kick()
        except Exception:  # pragma: no cover - the hot path must never fail because of the store
            log.exception("enqueue_state failed")

    def enqueue_trade(self, rec: TradeRecord) -> None:
        """Queue a closed trade (never dropped)."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self._seq += 1
            self.enqueued["trade"] += 1
            at = max(self.clock(), self._last_trade_at + 1e-6)  # strictly increasing: the order of reports
            self._last_trade_at = at
            self._trades.append((self._seq, rec, at))
            self._kick()
        except Exception:  # pragma: no cover
            log.exception("enqueue_trade failed")

    def enqueue_event(self, rec: BreakerEventRecord) -> None:
        """Queue a breaker event (never dropped). An empty id gets a uuid."""
        if not self.persistence_enabled or self._closed:
            return
        try:
            self._seq += 1
            self.enqueued["event"] += 1
            if not rec.id:
                rec = dataclasses.replace(rec, id=str(uuid.uuid4()))
            self._events.append((self._seq, rec))
            self._kick()
        except Exception:  # pragma: no cover
            log.exception("enqueue_event failed")

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _trim_history(self) -> None:
        """Drop the oldest history rows until the backlog is within both caps (rows and estimated bytes)."""
        dropped = 0
        while self._history and (len(self._history) > self.queue_size
                                 or self._history_bytes > self.history_backlog_bytes):
            _seq, row = self._history.popleft()
            self._history_bytes -= history_cost(row)
            dropped += 1
        if dropped:
            self._count_drops(dropped)
            if self._bulk is not None:  # history rows carry every map again: none refers to a dropped one
                self._bulk.restart_history()

    def _count_drops(self, n: int) -> None:
        self.dropped_history += n
        self._drops_in_episode += n
        self._drops_since_commit += n
        if not self._overflowing:
            self._overflowing = True
            log.warning("store history backlog full (queue_size=%d rows, history_backlog_bytes=%d): the database "
                        "does not keep up; dropping the oldest history rows until the writer catches up (latest "
                        "states are kept; see tradeguard_history_rows_dropped_total)", self.queue_size,
                        self.history_backlog_bytes)

    def _end_overflow(self) -> None:
        """After a commit: an overflow episode is over once a whole batch round trip dropped nothing, or once the
        writer has taken every history row (caught up)."""
        if self._overflowing and (self._drops_since_commit == 0 or not self._history):
            log.warning("store history backlog overflow over: %d history rows were dropped (%d in all)",
                        self._drops_in_episode, self.dropped_history)
            self._overflowing = False
            self._drops_in_episode = 0
        self._drops_since_commit = 0

    # ---- flush --------------------------------------------------------------------------------------

    def _done_through(self) -> int:
        """Every item with a sequence number <= this is written, rejected or dropped."""
        heads: list[int] = []
        if self._states:
            heads.append(next(iter(self._states.values()))[0])
        if self._history:
            heads.append(self._history[0][0])
        if self._trades:
            heads.append(self._trades[0][0])
        if self._events:
            heads.append(self._events[0][0])
        for batch in self._inflight:
            first = batch.min_seq()
            if first is not None:
                heads.append(first)
        return min(heads) - 1 if heads else self._seq

    def _resolve_waiters(self) -> None:
        if not self._waiters:
            return
        done = self._done_through()
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= done:
                waiter.set_result(None)
            else:
                keep.append((target, waiter))
        self._waiters = keep

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the store's interface
        """Wait until everything enqueued before this call is written (or rejected, or dropped as overflow).
        Event-driven: the writer resolves waiters after each batch. False on timeout or when not running."""
        target = self._seq
        if self._done_through() >= target:
            return True
        if self._task is None or self._task.done():
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._kick()
        done, _pending = await asyncio.wait({waiter}, timeout=timeout)
        if not done:
            waiter.cancel()
            return False
        return self._done_through() >= target

    # ---- the writer (event loop side) ---------------------------------------------------------------

    def _create_engine(self) -> Engine:
        if is_sqlite(self.url):
            engine = create_engine(self.url, json_serializer=dumps, connect_args={"timeout": 15.0},
                                   pool_pre_ping=True)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        present = {k.lower() for k in make_url(self.url).query}
        connect_args = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in present}
        return create_engine(self.url, json_serializer=dumps, connect_args=connect_args, pool_pre_ping=True,
                             pool_size=2, max_overflow=2, pool_recycle=1800)

    async def _on(self, executor: _Worker | None, fn: Callable[..., T], *args: Any) -> T:
        if executor is None:
            raise StoreUnavailable("store is not started")
        return await asyncio.get_running_loop().run_in_executor(executor, partial(fn, *args))

    async def _pause(self, seconds: float) -> None:
        """Back off, unless close() asks the writer to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run(self) -> None:
        # The batch in the database thread, if any; the next batch is taken and encoded meanwhile.
        writing: list[tuple[_Batch, asyncio.Future[_Outcome]]] = []
        try:
            await self._write_loop(writing)
        finally:
            for _batch, fut in writing:  # cancelled by close() at its deadline: stop waiting for it
                fut.cancel()

    async def _write_loop(self, writing: list[tuple[_Batch, asyncio.Future[_Outcome]]]) -> None:
        assert self._wake is not None
        assert self._first_attempt is not None
        failures = 0
        while True:
            if not writing:
                if self._stopping.is_set():
                    return
                if not self._prepared:
                    error = await self._on(self._db, self._prepare)
                    if not self._first_attempt.done():
                        self._first_attempt.set_result(None)
                    if error is not None:
                        self._unavailable(error)
                        failures += 1
                        await self._pause(self._backoff(failures))
                        continue
                    failures = 0
                    self._available()
                if self._in_doubt is not None:
                    if await self._resolve_in_doubt():
                        failures = 0
                        self._available()
                    else:
                        failures += 1
                        await self._pause(self._backoff(failures))
                    continue
            batch = None if self._stopping.is_set() else self._take()
            if batch is None:
                if writing:
                    failed = await self._finish(*writing.pop(), unsent=None)
                    failures = failures + 1 if failed else 0
                    if failed:
                        await self._pause(self._backoff(failures))
                    continue
                self._resolve_waiters()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._inflight.append(batch)
            encoded = await self._encode_async(batch)
            if writing:
                failed = await self._finish(*writing.pop(), unsent=batch)
                if failed:  # `batch` went back to the queues behind the failed one
                    failures += 1
                    await self._pause(self._backoff(failures))
                    continue
                failures = 0
            self.attempts += 1
            writing.append((batch, asyncio.ensure_future(self._on(self._db, self._write, encoded))))
            if not PIPELINE:
                failed = await self._finish(*writing.pop(), unsent=None)
                failures = failures + 1 if failed else 0
                if failed:
                    await self._pause(self._backoff(failures))

    async def _encode_async(self, batch: _Batch) -> _Outcome:
        try:
            return await self._on(self._encoder, self._encode, batch)
        except Exception as exc:  # a bug: keep the batch, it is retried like an outage
            log.exception("store encoder failed unexpectedly")
            return _Outcome(retry=batch, error=exc)

    async def _finish(self, batch: _Batch, fut: asyncio.Future[_Outcome], unsent: _Batch | None) -> bool:
        """Account for a written batch. On failure, requeue it (and `unsent`, the batch taken after it, which
        goes back first so the order stays). Returns True when it failed."""
        try:
            outcome = await self._await_batch(fut)
        except Exception as exc:  # a bug, not the database: keep the batch and retry like an outage
            log.exception("store writer failed unexpectedly")
            outcome = _Outcome(retry=batch, error=exc)
        self._inflight.remove(batch)
        for kind in KINDS:
            self.rows_written[kind] += outcome.written[kind]
            self.rejected[kind] += outcome.rejected[kind]
        if outcome.retry is not None or any(outcome.rejected.values()):
            self.failures += 1
            if self._bulk is not None:  # rows it encoded may never be stored: the next ones carry every map
                self._bulk.restart_history()
        if outcome.retry is None:
            self.last_persist_latency_ms = outcome.latency_ms
            self._end_overflow()
            self._available()
            self._resolve_waiters()
            return False
        if unsent is not None:
            self._inflight.remove(unsent)
            self._requeue(unsent)
        if outcome.in_doubt is not None:  # neither requeued nor counted until the database says which
            self._inflight.append(batch)
            self._in_doubt = (batch, outcome)
        else:
            self._requeue(outcome.retry)
        self._unavailable(outcome.error)
        self._resolve_waiters()
        return True

    async def _await_batch(self, fut: asyncio.Future[_Outcome]) -> _Outcome:
        """The outcome of a batch in the database. Past `call_timeout_s` the store reports itself unavailable
        (health NOT_SERVING) but keeps waiting: abandoning a batch that may still commit would write it twice,
        and the thread is busy with it anyway. The server-side timeouts end most waits; a batch that never
        returns (hung pooler, frozen server) keeps the writer there, with its queue growing as in an outage."""
        if self.call_timeout_s > 0 and not fut.done():
            done, _pending = await asyncio.wait({fut}, timeout=self.call_timeout_s)
            if not done:
                self._unavailable(StoreUnavailable(f"a batch has waited {self.call_timeout_s:g} s for the "
                                                   "database; still waiting for it"))
        return await fut

    async def _resolve_in_doubt(self) -> bool:
        """Ask the database whether the batch whose COMMIT was cut short committed: count it, or requeue it.
        Returns False while that cannot be known yet (database still down, transaction still open)."""
        assert self._in_doubt is not None
        batch, doubtful = self._in_doubt
        assert doubtful.in_doubt is not None
        try:
            status = await self._on(self._db, self._xact_status, doubtful.in_doubt)
        except Exception as exc:
            self._unavailable(exc)
            return False
        if status == "in progress":
            return False
        self._in_doubt = None
        self._inflight.remove(batch)
        if status == "committed":
            for kind, items in doubtful.parts.items():
                self.rows_written[kind] += len(items)
            log.info("store: the batch whose commit was interrupted did commit (%d rows); not written again",
                     batch.size())
        else:  # aborted (or too old to tell: then written again, a duplicate beats a loss)
            assert doubtful.retry is not None
            self._requeue(doubtful.retry)
        self._resolve_waiters()
        return True

    def _backoff(self, failures: int) -> float:
        return float(min(self.retry_max_s, FIRST_BACKOFF_S * 2 ** min(failures - 1, 16)))

    def _take(self) -> _Batch | None:
        if not ((self._states and not self._hold_states) or self._history or self._trades or self._events):
            return None
        n = self.batch_max
        batch = _Batch()
        if self._hold_states:
            pass
        elif len(self._states) <= n:
            batch.states = list(self._states.values())
            self._states = {}
        else:
            keys = list(islice(self._states, n))
            batch.states = [self._states.pop(k) for k in keys]
        batch.history = [self._history.popleft() for _ in range(min(n, len(self._history)))]
        self._history_bytes -= sum(history_cost(row) for _seq, row in batch.history)
        batch.trades = [self._trades.popleft() for _ in range(min(n, len(self._trades)))]
        batch.events = [self._events.popleft() for _ in range(min(n, len(self._events)))]
        return batch

    def _requeue(self, batch: _Batch) -> None:
        """Put a batch that could not be written back in front of the queues (older items first)."""
        if batch.states:
            merged: dict[str, tuple[int, StateRecord]] = {}
            for seq, rec in batch.states:
                newer = self._states.pop(rec.trader_id, None)
                keep = newer[1] if newer is not None and newer[1].version > rec.version else rec
                merged[rec.trader_id] = (seq, keep)
            merged.update(self._states)
            self._states = merged
        self._history.extendleft(reversed(batch.history))
        self._history_bytes += sum(history_cost(row) for _seq, row in batch.history)
        self._trim_history()
        self._trades.extendleft(reversed(batch.trades))
        self._events.extendleft(reversed(batch.events))

    def _available(self) -> None:
        if self._outage_since is not None:
            log.warning("store available again after %.1fs: writing a backlog of %d items",
                        time.monotonic() - self._outage_since, self.queue_depth)
            self._outage_since = None
        self._set_health(True)

    def _unavailable(self, error: BaseException | None) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("store unavailable (%s): %s; will retry with backoff up to %.1fs, the sidecar keeps "
                        "answering from memory (backlog %d items)", redact(self.url), _describe(error),
                        self.retry_max_s, self.queue_depth)
        else:
            log.debug("store still unavailable: %s", _describe(error))
        self._set_health(False)

    def _set_health(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        callback = self.on_health_change
        if callback is not None:
            try:
                callback(healthy)
            except Exception:
                log.exception("on_health_change callback failed")

    # ---- on the database thread ---------------------------------------------------------------------

    def _prepare(self) -> BaseException | None:
        """Connect, migrate (once), pick this process's epoch. Returns the error instead of raising."""
        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                if self.migrate_on_start:
                    _lift_statement_timeout(conn)  # for the migration's transaction only
                    migrate_connection(conn)
                db_epoch = sql.max_epoch(conn)
                conn.rollback()
        except Exception as exc:
            self._dispose_quietly()
            return exc
        # Snapshots of this process replace those of any earlier one, whatever their versions (see bulk).
        self._epoch = max(time.time_ns() // 1000, db_epoch + 1)
        self._bulk = BulkWriter(self._engine.dialect)
        self._prepared = True
        return None

    def _settle_commit(self, session: tuple[int, int] | None, exc: BaseException) -> bool:
        """A write-through call whose COMMIT was sent and whose answer was lost (`exc`): True when it committed.
        Raises StoreUnavailable when it did not (nothing written) or when that cannot be told (`in_doubt`).

        PostgreSQL: the transaction's txid, taken before the write, is looked up with txid_status on a new
        connection, for up to SETTLE_S (within the caller's own bound, `call_timeout_s`: past it the caller is
        told the outcome is unknown anyway). While it is still "in progress" (the server has not noticed the
        broken connection; the COMMIT may still be on its way), the old session is ended with
        pg_terminate_backend, only if it still runs that transaction: from then on the answer is final.
        SQLite runs in this process: an error from COMMIT means SQLite did not commit (it rolled back, or left
        the transaction open and closing the connection rolls it back)."""
        cause = _describe(exc)
        if session is None:
            raise StoreUnavailable(f"database unavailable: {cause}; the commit failed, nothing was written") from exc
        txid, pid = session
        limit = SETTLE_S if self.call_timeout_s <= 0 else min(SETTLE_S, self.call_timeout_s)
        deadline = time.monotonic() + limit
        pause = 0.02
        status: str | None = "unknown"
        while True:
            try:
                status = self._xact_status(txid)
                if status == "in progress":
                    self._end_session(pid, txid)
                    status = self._xact_status(txid)
            except Exception as error:  # the database is still out of reach
                status, cause = "unknown", f"{cause}; then {_describe(error)}"
            if status == "committed":
                log.warning("store: the connection broke after a COMMIT was sent (%s); the database says it "
                            "committed: answered as saved", _describe(exc))
                return True
            if status == "aborted":
                raise StoreUnavailable(f"database unavailable: {cause}; the database says the transaction did "
                                       "not commit, nothing was written") from exc
            if status is None:  # too old for the server to tell
                break
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)  # "in progress": the server has not finished with the broken session yet
            pause = min(pause * 2, 0.5)
        raise StoreUnavailable(f"database unavailable after the COMMIT was sent ({cause}); whether it committed "
                               f"could not be learned within {limit:g} s", in_doubt=True) from exc

    def _end_session(self, pid: int, txid: int) -> None:
        """End backend `pid` if it still runs transaction `txid` (its rollback then makes the outcome final)."""
        assert self._engine is not None
        with self._engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid "
                              "AND backend_xid::text::bigint = :xid"), {"pid": pid, "xid": txid % (1 << 32)})
            conn.rollback()

    def _xact_status(self, txid: int) -> str | None:
        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                status = conn.execute(text("SELECT txid_status(:txid)"), {"txid": txid}).scalar_one_or_none()
        except Exception:
            self._dispose_quietly()
            raise
        return None if status is None else str(status)

    def _dispose_quietly(self) -> None:
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.dispose()

    def _write(self, encoded: _Outcome) -> _Outcome:
        """Write encoded parts in one transaction; isolate bad rows if it fails for a row's reason."""
        if encoded.retry is not None:  # the encoder failed
            return encoded
        started = time.perf_counter()
        outcome = dataclasses.replace(encoded, written=dict.fromkeys(KINDS, 0))
        parts = outcome.parts
        now = time.time()
        assert self._engine is not None
        assert self._bulk is not None
        txid: int | None = None
        committing = False
        try:
            conn = self._engine.connect()
            try:
                if self._bulk.postgres:  # to learn later whether a COMMIT cut short went through
                    txid = int(conn.exec_driver_sql("SELECT txid_current()").scalar_one())
                for kind, items in parts.items():
                    self._write_kind(conn, kind, items, now)
                committing = True
                conn.commit()
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        except Exception as exc:
            if not is_row_error(exc):
                self._dispose_quietly()
                outcome.retry, outcome.error = _batch_of(parts.items()), exc
                if committing:  # the server may have committed before the connection broke
                    outcome.in_doubt = txid
                return outcome
            size = sum(len(items) for items in parts.values())
            log.warning("store batch of %d rows failed (%s): isolating the bad rows", size, _describe(exc))
            self._isolate(parts, outcome, now)
        else:
            for kind, items in parts.items():
                outcome.written[kind] += len(items)
            self._known_accounts.update(item[1].account_id for item, _row in parts["state"])
        outcome.latency_ms = (time.perf_counter() - started) * 1000.0
        return outcome

    def _write_kind(self, conn: Connection, kind: str, items: Encoded, now: float) -> None:
        bulk = self._bulk
        assert bulk is not None
        rows = [row for _item, row in items]
        if kind == "state":
            accounts = {item[1].account_id for item, _row in items} - self._known_accounts
            if accounts:
                bulk.write_accounts(conn, sorted(accounts), now)
            bulk.write_states(conn, rows)
        elif kind == "history":
            bulk.write_history(conn, rows)
        elif kind == "trade":
            bulk.write_trades(conn, rows)
        else:
            bulk.write_events(conn, rows)

    def _isolate(self, parts: dict[str, Encoded], outcome: _Outcome, now: float) -> None:
        """Write each kind in its own transactions, halving a failing part until the bad row is alone."""
        assert self._engine is not None
        stack: list[tuple[str, Encoded]] = [(k, v) for k, v in parts.items() if v]
        stack.reverse()
        while stack:
            kind, part = stack.pop()
            try:
                with self._engine.begin() as conn:
                    self._write_kind(conn, kind, part, now)
            except Exception as exc:
                if not is_row_error(exc):  # the database went away meanwhile: the rest waits for it
                    self._dispose_quietly()
                    outcome.retry, outcome.error = _batch_of([(kind, part), *stack]), exc
                    return
                if len(part) == 1:
                    item, _row = part[0]
                    outcome.rejected[kind] += 1
                    log.error("store rejected a %s row (%s): %r", kind, _describe(exc), item[1])
                else:
                    mid = len(part) // 2
                    stack.append((kind, part[mid:]))
                    stack.append((kind, part[:mid]))
            else:
                outcome.written[kind] += len(part)
                if kind == "state":
                    self._known_accounts.update(item[1].account_id for item, _row in part)

    # ---- on the encoder thread ----------------------------------------------------------------------

    def _encode(self, batch: _Batch) -> _Outcome:
        bulk, epoch = self._bulk, self._epoch
        assert bulk is not None
        outcome = _Outcome()
        outcome.parts = {
            "state": self._rows(batch.states, lambda i: bulk.state_row(i[1], epoch), "state", outcome),
            "history": self._rows(batch.history, lambda i: bulk.history_row(i[1]), "history", outcome),
            "trade": self._rows(batch.trades, lambda i: bulk.trade_row(i[1], i[2]), "trade", outcome),
            "event": self._rows(batch.events, lambda i: bulk.event_row(i[1]), "event", outcome),
        }
        return outcome

    @staticmethod
    def _rows(items: list[Any], build: Callable[[Any], tuple[Any, ...]], kind: str, outcome: _Outcome) -> Encoded:
        out: Encoded = []
        for item in items:
            try:
                out.append((item, build(item)))
            except Exception as exc:
                outcome.rejected[kind] += 1
                log.error("store rejected a %s row it cannot encode (%s): %r", kind, _describe(exc), item[1])
        return out

    # ---- load and write-through (awaited by the callers) --------------------------------------------

    async def _call(self, fn: Callable[[Connection], T], *, write: bool, bounded: bool = True) -> T:
        """Run `fn` in a transaction on the database thread; database errors become store errors.

        Bounded (request-path calls): when the thread has not answered within `call_timeout_s` (it may be busy
        with a writer batch stuck on the database, or stuck itself), raise StoreUnavailable and mark the store
        unavailable. The call itself cannot be interrupted: see _Call for what becomes of it (it never commits
        once given up, unless its COMMIT was already sent). The same holds when the awaiting RPC is cancelled."""
        if self._db is None or self._closed:
            raise StoreUnavailable("store is not running")
        call = _Call()

        def run() -> T:
            if not call.start():
                raise StoreUnavailable("the caller gave up before the call started")
            if not self._prepared:
                error = self._prepare()
                if error is not None:
                    raise StoreUnavailable(f"database unavailable: {_describe(error)}") from error
            assert self._engine is not None
            session: tuple[int, int] | None = None  # PostgreSQL: (txid, backend pid) of a write
            committing = False
            try:
                with self._engine.connect() as conn:  # leaving it without a commit rolls back
                    if write and conn.dialect.name == "postgresql":  # to ask later whether a lost COMMIT went through
                        txid, pid = conn.exec_driver_sql("SELECT txid_current(), pg_backend_pid()").one()
                        session = int(txid), int(pid)
                    result = fn(conn)
                    if write:
                        if not call.may_commit():
                            raise StoreUnavailable("the caller gave up: rolled back")
                        committing = True
                        conn.commit()
                    return result
            except StoreError:
                raise
            except IntegrityError as exc:
                raise Conflict(_describe(exc)) from exc
            except Exception as exc:
                if committing and not is_row_error(exc):  # the COMMIT was sent and its answer lost
                    self._dispose_quietly()
                    if self._settle_commit(session, exc):
                        return result
                if is_row_error(exc):  # DataError, or a value that could not be bound or encoded
                    raise InvalidData(_describe(exc)) from exc
                # The connection is gone, or the server cancelled the statement (statement_timeout,
                # lock_timeout): StoreUnavailable, which the API answers UNAVAILABLE.
                self._dispose_quietly()
                raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from exc

        fut = asyncio.get_running_loop().run_in_executor(self._db, run)
        limit = self.call_timeout_s if bounded and self.call_timeout_s > 0 else None
        try:
            done, _pending = await asyncio.wait({fut}, timeout=limit)
        except asyncio.CancelledError:  # the RPC was cancelled (client deadline, disconnect)
            call.abandon()
            fut.cancel()  # a call still queued never runs
            raise
        if done:
            return fut.result()
        was = call.abandon()
        fut.cancel()
        if was == "committing":
            outcome = "its COMMIT was sent and may have gone through"
        elif write:
            outcome = "nothing was written" if was == "queued" else "it will be rolled back, nothing is written"
        else:
            outcome = "the read is abandoned"
        error = StoreUnavailable(f"database did not answer within {limit:g} s ({outcome})",
                                 in_doubt=write and was == "committing")
        log.warning("store call abandoned: %s", error)
        self._unavailable(error)
        raise error

    async def load(self) -> LoadedState:
        """Everything the sidecar restores at start. Raises StoreUnavailable when the database cannot be
        reached (then serve from memory; the writer keeps retrying and writes the backlog later)."""
        if self._first_attempt is None:
            raise StoreUnavailable("store is not started")
        await asyncio.shield(self._first_attempt)

        def load(conn: Connection) -> LoadedState:
            _lift_statement_timeout(conn)  # a big database may take longer; lock_timeout still applies
            return LoadedState(
                traders=sql.load_states(conn),
                configs=sql.get_configs(conn),
                breakers=sql.list_breakers(conn),
                flags=sql.load_flags(conn),
                trade_ids=sql.load_trade_ids(conn),
            )

        try:
            if not self._prepared:
                raise StoreUnavailable("database unavailable at start")
            loaded = await self._call(load, write=False, bounded=False)  # start-up and recovery, not a request
        except StoreUnavailable:
            if not self._hold_states and self._states:
                log.info("store: holding %d state snapshots until a load succeeds", len(self._states))
            self._hold_states = True
            raise
        if self._hold_states:
            self._hold_states = False
            self._kick()
        return loaded

    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]:
        """Which of `trade_ids` are in trade_reports for the trader (ids older than those kept in memory)."""
        return await self._call(lambda conn: sql.known_trade_ids(conn, trader_id, trade_ids), write=False)

    async def save_config(self, cfg: ConfigRecord) -> tuple[ConfigRecord, bool]:
        """Insert or replace a configuration and its symbol configs (created_at is kept). Saving an active
        one deactivates the account's others in the same transaction. Returns (stored, created)."""
        now = self.clock()
        return await self._call(lambda conn: sql.save_config(conn, cfg, now), write=True)

    async def delete_config(self, account_id: str, config_id: str) -> None:
        """Raises NotFound when there is no such configuration."""
        await self._call(lambda conn: sql.delete_config(conn, account_id, config_id), write=True)

    async def get_configs(self, account_id: str) -> list[ConfigRecord]:
        """The account's configurations, by config_id."""
        return await self._call(lambda conn: sql.get_configs(conn, account_id), write=False)

    async def save_breaker(self, breaker: BreakerRecord) -> BreakerRecord:
        """Create a breaker; an empty id gets a uuid. Conflict when the name is taken in the account."""
        now = self.clock()
        return await self._call(lambda conn: sql.create_breaker(conn, breaker, now), write=True)

    async def update_breaker(self, breaker: BreakerRecord) -> BreakerRecord:
        """Replace the definition of breaker `breaker.id` (account and created_at stay). NotFound, Conflict."""
        now = self.clock()
        return await self._call(lambda conn: sql.update_breaker(conn, breaker, now), write=True)

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool) -> BreakerRecord:
        """Enable or disable a breaker. NotFound."""
        now = self.clock()
        return await self._call(lambda conn: sql.set_breaker_enabled(conn, breaker_id, enabled, now), write=True)

    async def delete_breaker(self, breaker_id: str) -> None:
        """Delete a breaker (its events stay). NotFound."""
        await self._call(lambda conn: sql.delete_breaker(conn, breaker_id), write=True)

    async def get_breaker(self, breaker_id: str) -> BreakerRecord:
        """NotFound when there is no such breaker."""
        return await self._call(lambda conn: sql.get_breaker(conn, breaker_id), write=False)

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]:
        """The account's breakers, by name."""
        return await self._call(lambda conn: sql.list_breakers(conn, account_id), write=False)

    async def save_flags(self, flags: FlagsRecord) -> FlagsRecord:
        """Store both flags; returns them with updated_at."""
        now = self.clock()
        return await self._call(lambda conn: sql.save_flags(conn, flags, now), write=True)

    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]:
        """A trader's history in the order recorded, start <= recorded_at < end; next_cursor is None on the
        last page. Queued rows are flushed first (for up to a second), so a change just made is listed."""
        await self.flush(timeout=1.0)
        return await self._call(lambda conn: sql.list_history(conn, trader_id, start, end, limit, after_id),
                                write=False)

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        """Breaker events, newest first; next_cursor is None on the last page. Raises BadCursor for a cursor
        it did not hand out. Queued events are flushed first (for up to a second)."""
        await self.flush(timeout=1.0)
        return await self._call(lambda conn: sql.list_events(conn, account_id, breaker_id, limit, before_cursor),
                                write=False)


def history_cost(row: HistoryRecord) -> int:
    """Estimated bytes a queued history row holds on to (measured with tracemalloc: ~640 for a trader without
    positions). What it shares with the trader's live state (positions, recent trades) counts as a reference."""
    st = row.state
    shared = len(st.positions) + len(st.recent_trades) + len(st.volatility)
    own = len(st.pauses) + len(st.symbol_stats)
    return 640 + len(row.reason) + 8 * shared + 160 * own


def _batch_of(parts: Iterable[tuple[str, Encoded]]) -> _Batch:
    """The queue items of (kind, [(item, row)]) parts, back in sequence order."""
    batch = _Batch()
    for kind, part in parts:
        items = [item for item, _row in part]
        if kind == "state":
            batch.states.extend(items)
        elif kind == "history":
            batch.history.extend(items)
        elif kind == "trade":
            batch.trades.extend(items)
        else:
            batch.events.extend(items)
    for items in (batch.states, batch.history, batch.trades, batch.events):
        items.sort(key=lambda item: item[0])
    return batch


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text[:300]}"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
        log.error("store writer stopped", exc_info=task.exception())


def _lift_statement_timeout(conn: Connection) -> None:
    """No statement_timeout for the rest of the current transaction (PostgreSQL; SET LOCAL ends with it)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; fsync at checkpoints
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
