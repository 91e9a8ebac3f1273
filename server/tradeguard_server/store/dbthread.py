"""The database thread: every database call of a RiskStore runs on ONE dedicated thread ("tradeguard-store-db").

One thread = one writer: SQLite never sees two writers, migrations never race with writes, admin writes and
batches are simply ordered. SQLAlchemy's synchronous engine (psycopg 3 / sqlite3) runs there; the event loop
only awaits it.

`Database.call` runs one request-path call (an admin write or read) in a transaction on the thread, bounded
by `call_timeout_s`; `Call` is how the awaiting coroutine and the thread agree on what becomes of a call the
caller gave up on; `settle_commit` asks the database (txid_status) what became of a COMMIT whose answer was
lost. The writer (writer.py) runs its batches on the same thread through `Database.run`.

Every operation on the thread has a deadline (`op_timeout_s`), kept by `Watchdog`: past it the connections the
thread holds are interrupted (PostgreSQL: the socket is shut down, so libpq's wait ends with "server closed the
connection"; SQLite: `sqlite3.Connection.interrupt()`), and the operation ends with a transient error. That
covers what the server-side timeouts cannot (a hung pooler, a frozen server whose kernel still ACKs, a proxy that
holds the bytes). Only a migration (start-up, when the schema is behind) runs without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from . import sql
from .codec import dumps
from .errors import Conflict, InvalidData, StoreError, StoreUnavailable
from .migrate import head_revision, migrate_connection, revision_of
from .url import is_sqlite

log = logging.getLogger("tradeguard.store")

T = TypeVar("T")
P = ParamSpec("P")
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
# How long a request-path call (`Database.call`: admin writes and reads) waits for the database thread before it
# raises StoreUnavailable; also how long a writer batch may stay in the database before health turns
# NOT_SERVING (the writer keeps waiting for it). Covers what the server-side timeouts cannot: a hung pooler,
# a frozen server whose kernel still ACKs. 0 = no bound.
CALL_TIMEOUT_S = 30.0
# How long an admin write whose COMMIT answer was lost keeps asking the database (txid_status) what became of it.
SETTLE_S = 10.0
# The deadline of every operation on the database thread (a writer batch, a request-path call, a txid_status
# lookup): past it the watchdog interrupts the connections the thread holds and the operation fails (transient).
# Above statement_timeout and CALL_TIMEOUT_S: the server-side timeouts and the caller's bound act first; this one
# is for a database that answers nothing at all. 0 = no deadline.
OP_TIMEOUT_S = 60.0
SQLITE_BUSY_S = 15.0  # SQLite busy timeout, seconds
# The start-up load reads every trader's state: a big database may take long (statement_timeout is lifted for it).
LOAD_TIMEOUT_S = 600.0
ROW_ERRORS = {"IntegrityError", "DataError"}  # PEP 249 names: the same in SQLAlchemy, psycopg and sqlite3


class _PgSocket:
    """A psycopg connection's socket, identified by its inode: shut down only while that same socket is open (the
    descriptor number may have been closed and reused meanwhile)."""

    __slots__ = ("fd", "inode")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inode = os.fstat(fd).st_ino

    def interrupt(self) -> None:
        try:
            dup = os.dup(self.fd)
        except OSError:
            return
        try:
            if os.fstat(dup).st_ino != self.inode:
                return
            with socket.socket(fileno=os.dup(dup)) as sock:  # closes its own descriptor only
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            os.close(dup)


class _SqliteConnection:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):  # closed meanwhile
            self.conn.interrupt()


class Watchdog:
    """The deadline of the operation running on the database thread (see the module doc).

    `track(engine)` follows the engine's connections (pool events, on the database thread); `bound(seconds)` runs
    an operation under a deadline: past it every tracked connection is interrupted, and again every `seconds`
    while the operation still runs (its clean-up or a reconnect may hang as well). One thread of its own, asleep
    on a condition; arming and disarming costs two lock round trips per operation (a batch, not a change)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._seconds = 0.0
        self._op = 0  # the operation being bounded
        self._fired_op = -1  # the last operation interrupted
        self._active = False  # an operation is running under `bound`
        self._handles: dict[int, _PgSocket | _SqliteConnection] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.interrupts = 0

    def track(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._on_do_connect)
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "close", self._on_close)

    def _on_do_connect(self, *_args: Any) -> None:
        if self.interrupted():  # e.g. the pool's pre-ping failed because of the interrupt: no new connection
            raise StoreUnavailable(f"the database did not answer within {self._seconds:g} s: the operation was "
                                   "interrupted")

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        handle: _PgSocket | _SqliteConnection | None = None
        pgconn = getattr(dbapi_conn, "pgconn", None)
        if pgconn is not None:
            with contextlib.suppress(Exception):
                handle = _PgSocket(pgconn.socket)
        elif hasattr(dbapi_conn, "interrupt"):
            handle = _SqliteConnection(dbapi_conn)
        with self._cond:
            if handle is None:
                self._handles.pop(id(record), None)
            else:
                self._handles[id(record)] = handle

    def _on_close(self, _dbapi_conn: Any, record: Any) -> None:
        with self._cond:
            self._handles.pop(id(record), None)

    @contextlib.contextmanager
    def bound(self, seconds: float) -> Iterator[Callable[[], bool]]:
        """Run the body under a deadline of `seconds` (0 = none). Yields `interrupted()`: True once the watchdog
        interrupted this operation's connections."""
        if seconds <= 0:
            yield lambda: False
            return
        with self._cond:
            self._op += 1
            op = self._op
            self._seconds = seconds
            self._deadline = time.monotonic() + seconds
            self._active = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="tradeguard-store-watchdog", daemon=True)
                self._thread.start()
            else:
                self._cond.notify()
        try:
            yield lambda: self._fired_op == op
        finally:
            with self._cond:
                self._deadline = None
                self._active = False

    def interrupted(self) -> bool:
        """On the database thread: True while the operation running there was interrupted by its deadline."""
        return self._active and self._fired_op == self._op

    def timed_out(self, exc: BaseException) -> BaseException:
        """`exc` or, when the current operation was interrupted by its deadline, a StoreUnavailable saying so."""
        if not self.interrupted() or isinstance(exc, StoreUnavailable):
            return exc
        error = StoreUnavailable(f"the database did not answer within {self._seconds:g} s: the connection was "
                                 f"interrupted ({describe(exc)})")
        error.__cause__ = exc
        return error

    @contextlib.contextmanager
    def unbounded(self) -> Iterator[None]:
        """Suspend the current operation's deadline for the body (a migration); it starts afresh after."""
        with self._cond:
            saved, self._deadline = self._deadline, None
        try:
            yield
        finally:
            with self._cond:
                if saved is not None:
                    self._deadline = time.monotonic() + self._seconds
                    self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                deadline = self._deadline
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._fired_op = self._op
                self._deadline = time.monotonic() + self._seconds  # again, while the operation still runs
                self.interrupts += 1
                log.warning("store: a database operation has run for %g s: interrupting its connection",
                            self._seconds)
                for handle in list(self._handles.values()):
                    handle.interrupt()


class Worker(Executor):
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


async def run_on(executor: Worker | None, fn: Callable[..., T], *args: Any) -> T:
    """Await `fn(*args)` run on `executor`'s thread."""
    if executor is None:
        raise StoreUnavailable("store is not started")
    return await asyncio.get_running_loop().run_in_executor(executor, partial(fn, *args))


class Call:
    """One request-path call, shared by the coroutine awaiting it and the database thread running it.

    The thread cannot be interrupted, so a call the caller gave up on (its time bound passed, or its RPC was
    cancelled) may still be queued or running. Under a lock both sides agree on what happens to it:
    queued -> it never runs; running -> it runs to its end and then ROLLS BACK instead of committing, so a change
    the client was told failed (UNAVAILABLE) is not written behind its back (memory, which changes only after a
    commit, and the database stay the same); committing -> the COMMIT was already sent: the outcome is unknown,
    and the caller is told so. The thread's result or error is discarded either way.

    A COMMIT whose answer is lost while the caller still waits (the connection broke) is settled by asking the
    database (`Database.settle_commit`): the caller learns whether it committed, and is told "in doubt" only
    when the database cannot say within the bound."""

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


def describe(exc: BaseException | None) -> str:
    """One line for a log or an error message: the driver's error when there is one."""
    if exc is None:
        return "unknown error"
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text[:300]}"


def lift_statement_timeout(conn: Connection) -> None:
    """No statement_timeout for the rest of the current transaction (PostgreSQL; SET LOCAL ends with it)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")


def create_store_engine(url: str) -> Engine:
    """SQLAlchemy engine for `url`: SQLite in WAL mode; PostgreSQL with PG_CONNECT_DEFAULTS and a small pool."""
    if is_sqlite(url):
        # sqlite3's `timeout` is SQLite's busy timeout: a statement waits at most SQLITE_BUSY_S for another
        # process's lock, then fails (transient: the writer retries; admin calls answer UNAVAILABLE).
        engine = create_engine(url, json_serializer=dumps, connect_args={"timeout": SQLITE_BUSY_S},
                               pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    present = {k.lower() for k in make_url(url).query}
    connect_args = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in present}
    return create_engine(url, json_serializer=dumps, connect_args=connect_args, pool_pre_ping=True,
                         pool_size=2, max_overflow=2, pool_recycle=1800)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; fsync at checkpoints
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


class Database:
    """The engine and the thread it is used on. `start()` on the event loop; `prepare()` and the other
    synchronous methods on the database thread; `run()` and `call()` await the thread."""

    def __init__(
        self,
        url: str,
        *,
        migrate_on_start: bool = True,
        call_timeout_s: float = CALL_TIMEOUT_S,
        settle_s: float = SETTLE_S,
        op_timeout_s: float = OP_TIMEOUT_S,
        on_unavailable: Callable[[BaseException], None] = lambda _exc: None,
    ) -> None:
        self.url = url
        self.op_timeout_s = op_timeout_s  # see OP_TIMEOUT_S
        self.watchdog = Watchdog()
        self.migrate_on_start = migrate_on_start
        self.call_timeout_s = call_timeout_s  # see CALL_TIMEOUT_S
        self.settle_s = settle_s  # see SETTLE_S
        self.on_unavailable = on_unavailable  # a request-path call gave up waiting for the thread
        self.closed = False  # no more request-path calls
        self.prepared = False  # set on the database thread
        self.epoch = 0  # set on the database thread before anything is encoded
        self.thread: Worker | None = None
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "Database.start() first"
        return self._engine

    def start(self) -> None:
        self.thread = Worker("tradeguard-store-db")
        self._engine = create_store_engine(self.url)
        self.watchdog.track(self._engine)

    async def close(self, wait_s: float) -> None:
        """Release the connections (queued behind any write still running on the thread), stop the thread."""
        if self.thread is None:
            return
        if self._engine is not None:
            fut = asyncio.get_running_loop().run_in_executor(self.thread, self._engine.dispose)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fut, timeout=wait_s)
        self.thread.shutdown(wait=False)
        self.watchdog.stop()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Await `fn(*args)` run on the database thread (the writer's work; no transaction) under the deadline
        `op_timeout_s`."""
        return await run_on(self.thread, self.bounded, fn, *args)

    def bounded(self, fn: Callable[..., T], *args: Any, seconds: float | None = None) -> T:
        """On the database thread: `fn(*args)` under a deadline (`op_timeout_s` unless `seconds`; 0 = none, and
        `op_timeout_s` 0 turns every deadline off); an error it ends with because the deadline interrupted it
        becomes StoreUnavailable saying so (the original chained)."""
        limit = self.op_timeout_s if seconds is None or self.op_timeout_s <= 0 else seconds
        with self.watchdog.bound(limit) as interrupted:
            try:
                return fn(*args)
            except Exception as exc:
                if interrupted() and not is_row_error(exc):
                    raise StoreUnavailable(f"the database did not answer within {limit:g} s: the connection was "
                                           f"interrupted ({describe(exc)})") from exc
                raise

    # ---- on the database thread ---------------------------------------------------------------------

    def prepare(self) -> BaseException | None:
        """Connect, migrate (once), pick this process's epoch. Returns the error instead of raising."""
        engine = self.engine
        try:
            with engine.connect() as conn:
                if self.migrate_on_start and revision_of(conn) != head_revision():
                    with self.watchdog.unbounded():  # a migration may take long on a big database
                        lift_statement_timeout(conn)  # for the migration's transaction only
                        migrate_connection(conn)
                db_epoch = sql.max_epoch(conn)
                conn.rollback()
        except Exception as exc:
            self.dispose_quietly()
            return exc
        # Snapshots of this process replace those of any earlier one, whatever their versions (see bulk).
        self.epoch = max(time.time_ns() // 1000, db_epoch + 1)
        self.prepared = True
        return None

    def dispose_quietly(self) -> None:
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.dispose()

    def xact_status(self, txid: int) -> str | None:
        """PostgreSQL's txid_status: "committed", "aborted", "in progress", or None when too old to tell."""
        try:
            with self.engine.connect() as conn:
                status = conn.execute(text("SELECT txid_status(:txid)"), {"txid": txid}).scalar_one_or_none()
        except Exception:
            self.dispose_quietly()
            raise
        return None if status is None else str(status)

    def end_session(self, pid: int, txid: int) -> None:
        """End backend `pid` if it still runs transaction `txid` (its rollback then makes the outcome final)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid "
                              "AND backend_xid::text::bigint = :xid"), {"pid": pid, "xid": txid % (1 << 32)})
            conn.rollback()

    def settle_commit(self, session: tuple[int, int] | None, exc: BaseException) -> bool:
        """A write-through call whose COMMIT was sent and whose answer was lost (`exc`): True when it committed.
        Raises StoreUnavailable when it did not (nothing written) or when that cannot be told (`in_doubt`).

        PostgreSQL: the transaction's txid, taken before the write, is looked up with txid_status on a new
        connection, for up to `settle_s` (within the caller's own bound, `call_timeout_s`: past it the caller is
        told the outcome is unknown anyway). While it is still "in progress" (the server has not noticed the
        broken connection; the COMMIT may still be on its way), the old session is ended with
        pg_terminate_backend, only if it still runs that transaction: from then on the answer is final.
        SQLite runs in this process: an error from COMMIT means SQLite did not commit (it rolled back, or left
        the transaction open and closing the connection rolls it back)."""
        cause = describe(exc)
        if session is None:
            raise StoreUnavailable(f"database unavailable: {cause}; the commit failed, nothing was written") from exc
        txid, pid = session
        limit = self.settle_s if self.call_timeout_s <= 0 else min(self.settle_s, self.call_timeout_s)
        deadline = time.monotonic() + limit
        pause = 0.02
        status: str | None = "unknown"
        while True:
            try:
                status = self.xact_status(txid)
                if status == "in progress":
                    self.end_session(pid, txid)
                    status = self.xact_status(txid)
            except Exception as error:  # the database is still out of reach
                status, cause = "unknown", f"{cause}; then {describe(error)}"
            if status == "committed":
                log.warning("store: the connection broke after a COMMIT was sent (%s); the database says it "
                            "committed: answered as saved", describe(exc))
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

    # ---- request-path calls (awaited on the event loop) ---------------------------------------------

    async def call(self, fn: Callable[[Connection], T], *, write: bool, bounded: bool = True,
                   deadline_s: float | None = None) -> T:
        """Run `fn` in a transaction on the database thread; database errors become store errors.

        Bounded (request-path calls): when the thread has not answered within `call_timeout_s` (it may be busy
        with a writer batch stuck on the database, or stuck itself), raise StoreUnavailable and report the store
        unavailable. The call itself cannot be interrupted: see Call for what becomes of it (it never commits
        once given up, unless its COMMIT was already sent). The same holds when the awaiting RPC is cancelled.
        On the thread the call runs under the deadline `deadline_s` (default `op_timeout_s`, see Watchdog): a
        database that answers nothing cannot keep the thread, and the writer behind it, past that."""
        if self.thread is None or self.closed:
            raise StoreUnavailable("store is not running")
        call = Call()

        def run() -> T:
            if not call.start():
                raise StoreUnavailable("the caller gave up before the call started")
            if not self.prepared:
                error = self.prepare()
                if error is not None:
                    raise StoreUnavailable(f"database unavailable: {describe(error)}") from error
            session: tuple[int, int] | None = None  # PostgreSQL: (txid, backend pid) of a write
            committing = False
            try:
                with self.engine.connect() as conn:  # leaving it without a commit rolls back
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
                raise Conflict(describe(exc)) from exc
            except Exception as exc:
                if committing and not is_row_error(exc):  # the COMMIT was sent and its answer lost
                    self.dispose_quietly()
                    if self.settle_commit(session, exc):
                        return result
                if is_row_error(exc):  # DataError, or a value that could not be bound or encoded
                    raise InvalidData(describe(exc)) from exc
                # The connection is gone, or the server cancelled the statement (statement_timeout,
                # lock_timeout): StoreUnavailable, which the API answers UNAVAILABLE.
                self.dispose_quietly()
                raise StoreUnavailable(f"database unavailable: {describe(exc)}") from exc

        fut = asyncio.get_running_loop().run_in_executor(self.thread, partial(self.bounded, run, seconds=deadline_s))
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
        self.on_unavailable(error)
        raise error
