"""The local spool: what the store cannot write to PostgreSQL goes to a durable file next to the sidecar.

Why: during a PostgreSQL outage the write queue (queue.py) holds the backlog in memory; a SIGKILL, an OOM kill or a
node loss during the outage used to lose all of it, and trades and events grew without bound. With the spool, the
writer (writer.py) moves everything it cannot write into this file every SPILL_EVERY_S (50 ms) while the database
is unreachable, and whenever the queue holds more than `memory_items` items (the writer is behind); the file is
replayed into PostgreSQL, oldest first, before anything newer and before the stored state is loaded, then emptied.

The file: an SQLite database (stdlib sqlite3) in WAL mode, one table `spool`: a monotonically increasing `seq`, a
`kind` (state, history, trade, event), the record pickled, and for a state its trader as a unique `key` (one row
per trader: the newest state wins, by lease epoch then version, as in risk_state). Chosen over an append-only file
with checksums because SQLite already gives atomic, checksummed-by-design commits, crash recovery of a torn tail
(the WAL), in-place coalescing of states and deletes of replayed rows, with nothing to write ourselves.

A second table, `journal`, holds the calls a sidecar received while its stored state was not loaded (persistence.py
journals them to replay on the stored state; spooled_journal.py keeps them here so that a stop before the database
returns does not lose them). They are not written to PostgreSQL as such: the next load replays them through the
engine, and they are deleted once what they changed is written.

A third table, `alerts`, holds the alert deliveries (alerts/delivery.py) that are not in the alert_outbox table
yet: one row per (key, notifier), unique, with `seq` (oldest first), `attempts` and `delivered` as plain columns
(what the reads filter and the upsert compares) and the whole `Delivery` pickled (payload, attempts, next attempt,
delivered_at, last_error: a dataclass of this package, so the restricted unpickler builds it). Each is committed
before its first attempt; an outcome replaces the row only when newer (delivered beats undelivered, then more
attempts), so a duplicate changes nothing. Deleted once the outbox holds it. The counts of `journal` and `alerts`
rows are read once at open and then kept by the spool thread (metrics read them, no COUNT per scrape). A spool
file from before this table gets it at open (CREATE IF NOT EXISTS; the format is unchanged).

Durability: `synchronous=FULL`, and one transaction per spill (every 50 ms or so, however many records): each
commit is fsynced before the writer forgets the records in memory. So a SIGKILL (or an OOM kill) loses nothing
committed to the spool; a power loss or kernel crash loses nothing committed either; what neither survives is what
was acknowledged to a client and not yet spilled: at most the last spill window (~50 ms of changes), the same
order as the batch in flight when the database is up (README "Persistence"). NORMAL would save an fsync per
commit but let a power loss take the last commits; FULL costs at most 20 fsyncs a second, during outages only
(not measured on its own).

Replay exactly once: rows are read in seq order and written in the writer's normal batches. Before a replay batch
commits in PostgreSQL, its spool rows are marked with the batch's transaction id (txid_current(), committed to the
spool first); after the commit they are deleted. A crash between the two leaves marked rows: the next replay asks
PostgreSQL (txid_status) whether that transaction committed and deletes them, or writes them again if it did not.
Besides, what is replayed twice is harmless for every kind but history: states are upserts guarded by (epoch,
version) (an older epoch loses: a trader taken over by another sidecar during the outage keeps the new owner's
row), trades are keyed by (trader_id, trade_id), events by their id (given when queued).

Bounds: `max_bytes` (default 256 MiB of payload; the file is a little larger) is hard for history: past it the
oldest history rows are dropped, counted (`dropped`) and logged. States (one per trader), trades, events and pending
orders (they are part of a trader's state) are never dropped: if they alone exceed the limit, the limit is soft for
them (the file grows, `over_limit` is set, and health says so). Memory stays bounded by what arrives in a spill
window plus one row per trader.

Threads: one dedicated thread ("tradeguard-spool") owns the connection; the event loop only awaits it. The writer
marks replay batches from the database thread through the same thread (blocking that thread only).

Trust: the file holds pickles, created owner-only (0600). It is read back with an unpickler that only builds
TradeGuard's own record types and their plain fields, not arbitrary objects; still, treat the file as the
sidecar's own memory (who can write it can change what is replayed). A spool written by another version that does
not load is moved aside (`<path>.unreadable-<time>`) and logged, never deleted.

SQLite and memory stores have no spool: SQLite is already a local file written by the same process (an outage of
it is a full disk, which a second local file would not survive), and the memory store keeps nothing anyway.
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import dataclasses
import enum
import functools
import importlib
import io
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .dbthread import Worker, run_on
from .queue import KINDS, Batch
from .records import HistoryRecord, StateRecord, TradeRecord

log = logging.getLogger("tradeguard.store")

SPOOL_MAX_BYTES = 256 << 20
SPILL_EVERY_S = 0.05  # while the database is unreachable, the queue is moved to the spool this often
MEMORY_ITEMS = 20_000  # queued items beyond which the writer spills even while the database answers (it is behind)
FORMAT = "1"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT UNIQUE, "
    "version INTEGER NOT NULL DEFAULT 0, epoch INTEGER, at REAL NOT NULL, txid INTEGER, pid INTEGER, "
    "size INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS spool_kind ON spool (kind, seq)",
    "CREATE TABLE IF NOT EXISTS spool_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # The calls received while the stored state is not loaded (persistence.py's journal; spooled_journal.py)
    "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, data BLOB NOT NULL)",
    # Alert deliveries not yet in the alert_outbox table (alerts/delivery.py): one row per (key, notifier). A spool
    # file from before this table is given it here (CREATE IF NOT EXISTS at every open; the format stays "1").
    "CREATE TABLE IF NOT EXISTS alerts (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, notifier TEXT "
    "NOT NULL, at REAL NOT NULL, attempts INTEGER NOT NULL, delivered INTEGER NOT NULL, data BLOB NOT NULL, "
    "UNIQUE (key, notifier))",
    "CREATE INDEX IF NOT EXISTS alerts_delivered ON alerts (delivered, seq)",
)
# A delivery new to the spool is inserted; one already there takes the given outcome only when it is newer
# (delivered beats undelivered, then more attempts): a duplicate of a spooled delivery changes nothing.
_UPSERT_ALERT = (
    "INSERT INTO alerts (key, notifier, at, attempts, delivered, data) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key, notifier) DO UPDATE SET attempts = excluded.attempts, delivered = excluded.delivered, "
    "data = excluded.data WHERE excluded.delivered > alerts.delivered OR "
    "(excluded.delivered = alerts.delivered AND excluded.attempts > alerts.attempts)"
)
_UPSERT = (
    "INSERT INTO spool (kind, key, version, epoch, at, txid, pid, size, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET version = excluded.version, epoch = excluded.epoch, txid = excluded.txid, "
    "pid = excluded.pid, size = excluded.size, data = excluded.data "
    "WHERE coalesce(excluded.epoch, 0) > coalesce(spool.epoch, 0) OR "
    "(coalesce(excluded.epoch, 0) = coalesce(spool.epoch, 0) AND excluded.version > spool.version)"
)


@dataclass(slots=True)
class SpoolRow:
    """One spooled record: a StateRecord (with the lease epoch it is written with), a HistoryRecord, a
    (TradeRecord, reported_at) pair or a BreakerEventRecord."""

    seq: int
    kind: str
    version: int
    epoch: int | None
    txid: int | None
    pid: int | None
    item: Any


@dataclass(slots=True)
class SpoolStats:
    """What the spool holds, as the event loop last saw it (metrics and health read this)."""

    depth: int = 0  # records
    bytes: int = 0  # payload bytes
    oldest_at: float | None = None  # when the oldest record still there was spooled
    spooled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    replayed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    over_limit: bool = False  # states, trades and events alone exceed max_bytes (the limit is soft for them)
    journal: int = 0  # calls journaled while the stored state was not loaded (table journal), replayed at the load
    alerts: int = 0  # alert deliveries not yet in the alert_outbox table (table alerts)
    alerts_undelivered: int = 0  # ...of which not delivered yet


class SpoolError(Exception):
    """The spool file cannot be opened or written (disk full, permissions, a corrupt file)."""


# ---- (de)serialization ---------------------------------------------------------------------------------------

_ALLOWED_BUILTINS = {"frozenset", "set", "tuple", "list", "dict", "float", "int", "str", "bool", "complex"}


class _RecordUnpickler(pickle.Unpickler):
    """Builds TradeGuard's own dataclasses and enums (and plain builtins) only: never an arbitrary callable."""

    def find_class(self, module: str, name: str) -> Any:
        return _allowed_class(module, name)


@functools.cache
def _allowed_class(module: str, name: str) -> Any:
    if module == "builtins" and name in _ALLOWED_BUILTINS:
        return getattr(builtins, name)
    if module == "copyreg" and name == "_reconstructor":
        return copyreg._reconstructor  # type: ignore[attr-defined]
    if module.startswith("tradeguard_server."):
        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
            return obj
    raise pickle.UnpicklingError(f"spool: {module}.{name} is not a record type")


def dumps(item: Any) -> bytes:
    return pickle.dumps(item, protocol=5)


def loads(data: bytes) -> Any:
    return _RecordUnpickler(io.BytesIO(data)).load()


def _slim(rec: HistoryRecord) -> HistoryRecord:
    """A history row as the database keeps it: without what history never stores (see HistoryRecord)."""
    st = rec.state
    if not (st.recent_trades or st.order_times or st.fill_times or st.breaker_episodes or st.finished_orders):
        return rec
    return dataclasses.replace(rec, state=dataclasses.replace(st, recent_trades=(), order_times=(), fill_times=(),
                                                              breaker_episodes=(), finished_orders=()))


def encode_batch(batch: Batch, epoch_of_state: dict[str, int | None], txid: int | None = None,
                 pid: int | None = None) -> list[tuple[Any, ...]]:
    """Spool rows (kind, key, version, epoch, txid, pid, data) for a batch taken from the queue. States of traders
    missing from `epoch_of_state` are left out (cluster mode: no longer this sidecar's)."""
    rows: list[tuple[Any, ...]] = []
    for _seq, rec in batch.states:
        if rec.trader_id in epoch_of_state:
            rows.append(("state", rec.trader_id, rec.version, epoch_of_state[rec.trader_id], txid, pid, dumps(rec)))
    for _seq, hist in batch.history:
        rows.append(("history", None, 0, None, txid, pid, dumps(_slim(hist))))
    for _seq, trade, at in batch.trades:
        rows.append(("trade", None, 0, None, txid, pid, dumps((trade, at))))
    for _seq, event in batch.events:
        rows.append(("event", None, 0, None, txid, pid, dumps(event)))
    return rows


def decode_rows(rows: Iterable[SpoolRow]) -> tuple[Batch, dict[str, int | None]]:
    """A writer Batch (sequence numbers are the spool's) and the epoch of each state in it."""
    batch = Batch()
    epochs: dict[str, int | None] = {}
    for row in rows:
        if row.kind == "state":
            rec: StateRecord = row.item
            batch.states.append((row.seq, rec))
            epochs[rec.trader_id] = row.epoch
        elif row.kind == "history":
            batch.history.append((row.seq, row.item))
        elif row.kind == "trade":
            trade, at = row.item
            assert isinstance(trade, TradeRecord)
            batch.trades.append((row.seq, trade, float(at)))
        else:
            batch.events.append((row.seq, row.item))
    return batch, epochs


# ---- the spool ------------------------------------------------------------------------------------------------


class Spool:
    """The spool file (see the module docstring). `await open()`, then append / read / delete; `close()`."""

    def __init__(self, path: str, max_bytes: int = SPOOL_MAX_BYTES, memory_items: int = MEMORY_ITEMS,
                 database: str = "") -> None:
        if max_bytes < 1 << 20:
            raise ValueError("spool_max_bytes: must be >= 1 MiB (1048576)")
        if memory_items < 1:
            raise ValueError("memory_items: must be >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.memory_items = memory_items
        # The database the records are for (its name): a spool left by a sidecar of another database is moved
        # aside, never replayed into this one.
        self.database = database
        self.stats = SpoolStats()
        self._worker: Worker | None = None
        self._conn: sqlite3.Connection | None = None  # spool thread only
        self._lock_fd: int | None = None  # flock on <path>.lock while open: one sidecar per spool file
        self._opened = False  # open() finished (the worker exists from the start of open())

    @property
    def depth(self) -> int:
        return self.stats.depth

    @property
    def is_open(self) -> bool:
        """Opened (and not closed): its tables can be read and written."""
        return self._opened

    @property
    def journal_depth(self) -> int:
        """Journaled calls in the spool (table journal; counted by the spool thread, not per read)."""
        return self.stats.journal

    @property
    def alerts_depth(self) -> int:
        """Alert deliveries in the spool (table alerts; counted by the spool thread, not per read)."""
        return self.stats.alerts

    @property
    def alerts_undelivered(self) -> int:
        """...of which not delivered yet."""
        return self.stats.alerts_undelivered

    def oldest_age_s(self, now: float | None = None) -> float:
        oldest = self.stats.oldest_at
        return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)

    async def open(self) -> None:
        if self._worker is not None:
            return
        self._worker = Worker("tradeguard-spool")
        try:
            await run_on(self._worker, self._lock)
            await run_on(self._worker, self._open)
        except Exception as exc:
            self._worker.shutdown(wait=False)
            self._worker = None
            self._unlock()
            raise SpoolError(f"spool_path {self.path}: cannot open the spool ({exc})") from exc
        self._opened = True
        if self.stats.journal:
            log.warning("spool %s holds %d calls received by a sidecar that stopped before the stored state was "
                        "loaded: replayed on the stored state when it loads", self.path, self.stats.journal)
        if self.stats.alerts:
            log.warning("spool %s holds %d alert deliveries not yet in the alert_outbox table: attempted again and "
                        "stored when the database answers", self.path, self.stats.alerts)
        if self.stats.depth:
            log.warning("spool %s holds %d records (%d bytes, the oldest from %.0f s ago) not yet in the database: "
                        "replayed when the database answers, before the stored state is loaded", self.path,
                        self.stats.depth, self.stats.bytes, self.oldest_age_s())

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        self._opened = False
        if worker is None:
            return
        with contextlib.suppress(Exception):
            await run_on(worker, self._close)
        worker.shutdown(wait=False)
        self._unlock()

    def _lock(self) -> None:
        """Hold an exclusive flock on `<path>.lock` while open. Two sidecars given one spool_path (each replaying
        and deleting the other's rows) wrote every spooled history row twice, and each one's spool depth went
        wrong (one negative), so its writer never counted as caught up (flush, eviction, store_now); now the second
        one does not start. (flock: a second open in the same process conflicts too.)"""
        import fcntl

        fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError("in use by another running sidecar (it holds the lock on "
                             f"{self.path}.lock): every sidecar needs a spool_path of its own") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # (releases the flock)

    async def append_batch(self, batch: Batch, epochs: dict[str, int | None], txid: int | None = None,
                           pid: int | None = None) -> None:
        """Commit a batch taken from the queue to the file (pickled on the spool thread; one transaction, fsynced).
        States of traders missing from `epochs` are left out. Raises SpoolError."""
        try:
            await run_on(self._worker, lambda: self._append(encode_batch(batch, epochs, txid, pid)))
        except Exception as exc:
            raise SpoolError(f"spool_path {self.path}: write failed ({exc})") from exc

    async def read(self, n: int) -> list[SpoolRow]:
        """Up to `n` rows, oldest first (rows that do not unpickle are logged, moved aside and skipped)."""
        return await run_on(self._worker, self._read, n)

    def mark_blocking(self, seqs: list[int], txid: int, pid: int | None) -> None:
        """From the database thread, before a replay batch's COMMIT: its rows were sent in transaction `txid`."""
        if self._worker is None:
            raise SpoolError("spool closed")
        self._worker.submit(self._mark, seqs, txid, pid).result()

    async def settle(self, txid: int, committed: bool) -> None:
        """Rows marked with `txid`: deleted (it committed) or unmarked (it did not: they are written again)."""
        await run_on(self._worker, self._settle, txid, committed)

    async def delete(self, rows: list[tuple[int, int, int | None]]) -> None:
        """Rows (seq, version, epoch) written to the database. A state replaced meanwhile by a newer one (another
        version or epoch under the same seq) stays, to be written in turn."""
        await run_on(self._worker, self._delete, rows)

    async def append_journal(self, entries: list[tuple[float, str, tuple[object, ...]]]) -> None:
        """Commit calls journaled while the stored state is not loaded (one transaction, fsynced). Raises
        SpoolError."""
        try:
            await run_on(self._worker, self._append_journal, entries)
        except Exception as exc:
            raise SpoolError(f"spool_path {self.path}: journal write failed ({exc})") from exc

    async def replace_journal(self, entries: list[tuple[float, str, tuple[object, ...]]]) -> None:
        """The journal is thinned in memory (persistence.Journal): the same, in one fsynced transaction. Raises
        SpoolError."""
        try:
            await run_on(self._worker, self._append_journal, entries, True)
        except Exception as exc:
            raise SpoolError(f"spool_path {self.path}: journal write failed ({exc})") from exc

    async def read_journal(self) -> list[tuple[float, str, tuple[object, ...]]]:
        """The journaled calls, oldest first (one that does not unpickle is logged and skipped)."""
        return await run_on(self._worker, self._read_journal)

    async def clear_journal(self) -> None:
        """The journaled calls are replayed on the stored state and what they changed is written: forget them."""
        await run_on(self._worker, self._clear_journal)

    async def upsert_alerts(self, deliveries: Sequence[Any]) -> list[tuple[int, bool]]:
        """Commit alert deliveries (alerts.outbox.Delivery; one transaction, fsynced): a new (key, notifier) is
        inserted, one already spooled takes the given outcome if it is newer (a duplicate leaves it as it is).
        Returns each one's (seq, inserted). Raises SpoolError."""
        try:
            return await run_on(self._worker, self._upsert_alerts, list(deliveries))
        except Exception as exc:
            raise SpoolError(f"spool_path {self.path}: alert write failed ({exc})") from exc

    async def read_alerts(self, after_seq: int, n: int, delivered: bool) -> list[tuple[int, Any]]:
        """Up to `n` spooled deliveries (seq, Delivery) after `after_seq`, oldest first: the delivered ones or the
        undelivered ones (one that does not unpickle is logged, moved to <path>.unreadable and deleted). Raises
        SpoolError."""
        try:
            return await run_on(self._worker, self._read_alerts, after_seq, n, delivered)
        except Exception as exc:
            raise SpoolError(f"spool_path {self.path}: alert read failed ({exc})") from exc

    async def delete_alerts(self, keys: Sequence[tuple[str, str]]) -> None:
        """The deliveries (key, notifier) are in the alert_outbox table: forget them. Raises SpoolError."""
        if keys:
            try:
                await run_on(self._worker, self._delete_alerts, list(keys))
            except Exception as exc:
                raise SpoolError(f"spool_path {self.path}: alert delete failed ({exc})") from exc

    async def latest_states(self) -> tuple[list[StateRecord], dict[str, list[str]]]:
        """Every spooled state, and each trader's spooled trade ids (oldest first): the latest state this
        sidecar had, for a start while the database is unreachable."""
        return await run_on(self._worker, self._latest_states)

    # ---- on the spool thread -------------------------------------------------------------------------

    def _open(self) -> None:
        self._connect()
        assert self._conn is not None
        row = self._conn.execute("SELECT value FROM spool_meta WHERE name = 'database'").fetchone()
        if row is not None and row[0] != self.database and (self.stats.depth or self.stats.journal):
            aside = f"{self.path}.{row[0]}-{int(time.time())}"
            log.error("spool %s holds %d records for database %r, not %r (this sidecar's database_url): moved to %s "
                      "and not replayed (start a sidecar of that database with --spool-path %s to replay it)",
                      self.path, self.stats.depth, row[0], self.database, aside, aside)
            self._close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path + suffix, aside + suffix)
            self._connect()
            assert self._conn is not None
        self._conn.execute("INSERT INTO spool_meta VALUES ('database', ?) ON CONFLICT (name) DO UPDATE SET "
                           "value = excluded.value", (self.database,))

    def _connect(self) -> None:
        fresh = not os.path.exists(self.path)
        if fresh:  # owner-only, whatever the umask
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            row = conn.execute("SELECT value FROM spool_meta WHERE name = 'format'").fetchone()
            if row is None:
                conn.execute("INSERT INTO spool_meta VALUES ('format', ?)", (FORMAT,))
            elif row[0] != FORMAT:
                raise SpoolError(f"spool format {row[0]}, this version reads {FORMAT}")
        except Exception:
            conn.close()
            raise
        self._conn = conn
        self._refresh()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    def _refresh(self) -> None:
        """Count everything (at open, and after a rolled-back spill); otherwise the counts move with each change."""
        assert self._conn is not None
        depth, size = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        self.stats.depth, self.stats.bytes = int(depth), int(size)
        self.stats.journal = int(self._conn.execute("SELECT count(*) FROM journal").fetchone()[0])
        alerts, undelivered = self._conn.execute("SELECT count(*), count(*) - coalesce(sum(delivered), 0) "
                                                 "FROM alerts").fetchone()
        self.stats.alerts, self.stats.alerts_undelivered = int(alerts), int(undelivered)
        self._oldest()

    def _oldest(self) -> None:
        """The oldest record's time: the lowest seq's (a state replaced in place keeps its seq and its time)."""
        assert self._conn is not None
        row = self._conn.execute("SELECT at FROM spool ORDER BY seq LIMIT 1").fetchone()
        self.stats.oldest_at = None if row is None else float(row[0])

    def _removed(self, size: int) -> None:
        self.stats.depth -= 1
        self.stats.bytes -= size

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (committed, so fsynced: synchronous=FULL); on failure rolled back and the counts
        read again."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            self._refresh()
            raise

    def _append(self, rows: list[tuple[Any, ...]]) -> None:
        now = time.time()
        with self._writing() as conn:
            stats = self.stats
            for kind, key, version, epoch, txid, pid, data in rows:
                old = None if key is None else conn.execute("SELECT size FROM spool WHERE key = ?", (key,)).fetchone()
                cur = conn.execute(_UPSERT, (kind, key, version, epoch, now, txid, pid, len(data), data))
                stats.spooled[kind] += 1
                if old is None:
                    stats.depth += 1
                    stats.bytes += len(data)
                elif cur.rowcount == 1:  # replaced a state (an older one stays put: rowcount 0)
                    stats.bytes += len(data) - int(old[0])
            if stats.oldest_at is None:
                self._oldest()
            if self.stats.bytes > self.max_bytes:
                self._drop_history()

    def _drop_history(self) -> None:
        """Past max_bytes: the oldest history rows (not in a replay's transaction) go until it fits."""
        conn = self._conn
        assert conn is not None
        excess = self.stats.bytes - self.max_bytes
        dropped = freed = 0
        for seq, size in conn.execute("SELECT seq, size FROM spool WHERE kind = 'history' AND txid IS NULL "
                                      "ORDER BY seq").fetchall():
            if freed >= excess:
                break
            conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            self._removed(size)
            dropped += 1
            freed += size
        if dropped:
            first = self.stats.dropped["history"] == 0
            self.stats.dropped["history"] += dropped
            log_fn = log.warning if first or dropped >= 1000 else log.info
            log_fn("spool %s full (spool_max_bytes=%d): dropped the %d oldest history rows (%d in all; states, "
                   "trades, events and pending orders are never dropped)", self.path, self.max_bytes, dropped,
                   self.stats.dropped["history"])
        self._oldest()
        over = self.stats.bytes > self.max_bytes
        if over and not self.stats.over_limit:
            log.error("spool %s: states, trades and events alone exceed spool_max_bytes=%d (%d bytes): they are "
                      "kept (never dropped), the file grows past the limit; health tradeguard.spool NOT_SERVING",
                      self.path, self.max_bytes, self.stats.bytes)
        self.stats.over_limit = over

    def _set_aside(self, bad: list[tuple[Any, bytes]]) -> None:
        """Append rows that cannot be read to <path>.unreadable (length-prefixed, fsynced): kept, never deleted."""
        with open(self.path + ".unreadable", "ab") as f:
            for _seq, data in bad:
                f.write(len(data).to_bytes(8, "big") + data)
            os.fsync(f.fileno())

    def _read(self, n: int) -> list[SpoolRow]:
        conn = self._conn
        assert conn is not None
        out: list[SpoolRow] = []
        bad: list[tuple[int, bytes]] = []
        for seq, kind, version, epoch, txid, pid, data in conn.execute(
                "SELECT seq, kind, version, epoch, txid, pid, data FROM spool ORDER BY seq LIMIT ?", (n,)):
            try:
                out.append(SpoolRow(seq, kind, version, epoch, txid, pid, loads(data)))
            except Exception as exc:
                log.error("spool %s: record %d (%s) cannot be read (%s): moved to %s.unreadable", self.path, seq,
                          kind, exc, self.path)
                bad.append((seq, data))
        if bad:
            self._set_aside(bad)
            conn.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq, _ in bad])
            for _seq, data in bad:
                self._removed(len(data))
            self._oldest()
        return out

    def _mark(self, seqs: list[int], txid: int, pid: int | None) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE spool SET txid = ?, pid = ? WHERE seq = ?", [(txid, pid, s) for s in seqs])
        conn.execute("COMMIT")

    def _settle(self, txid: int, committed: bool) -> None:
        conn = self._conn
        assert conn is not None
        if committed:
            for kind, size in conn.execute("DELETE FROM spool WHERE txid = ? RETURNING kind, size", (txid,)
                                           ).fetchall():
                self.stats.replayed[kind] += 1
                self._removed(int(size))
        else:
            conn.execute("UPDATE spool SET txid = NULL, pid = NULL WHERE txid = ?", (txid,))
        self._after_delete()

    def _delete(self, rows: list[tuple[int, int, int | None]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        for seq, version, epoch in rows:
            gone = conn.execute("DELETE FROM spool WHERE seq = ? AND version = ? AND epoch IS ? RETURNING kind, size",
                                (seq, version, epoch)).fetchone()
            if gone is not None:
                self.stats.replayed[gone[0]] += 1
                self._removed(int(gone[1]))
        conn.execute("COMMIT")
        self._after_delete()

    def _after_delete(self) -> None:
        self._oldest()
        if self.stats.bytes <= self.max_bytes:
            self.stats.over_limit = False
        if self.stats.depth == 0:  # replayed in full: give the space back
            assert self._conn is not None
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if os.path.getsize(self.path) > 8 << 20:
                self._conn.execute("VACUUM")

    def _append_journal(self, entries: list[tuple[float, str, tuple[object, ...]]], replace: bool = False) -> None:
        rows = [(entry[0], dumps(entry)) for entry in entries]
        with self._writing() as conn:
            if replace:
                conn.execute("DELETE FROM journal")
                self.stats.journal = 0
            conn.executemany("INSERT INTO journal (at, data) VALUES (?, ?)", rows)
        self.stats.journal += len(rows)

    def _read_journal(self) -> list[tuple[float, str, tuple[object, ...]]]:
        conn = self._conn
        assert conn is not None
        out: list[tuple[float, str, tuple[object, ...]]] = []
        for seq, data in conn.execute("SELECT seq, data FROM journal ORDER BY seq"):
            try:
                entry = loads(data)
                at, op, args = entry
                out.append((float(at), str(op), tuple(args)))
            except Exception as exc:
                log.error("spool %s: journaled call %d cannot be read (%s): not replayed", self.path, seq, exc)
        return out

    def _clear_journal(self) -> None:
        assert self._conn is not None
        self._conn.execute("DELETE FROM journal")
        self.stats.journal = 0

    def _upsert_alerts(self, deliveries: list[Any]) -> list[tuple[int, bool]]:
        now = time.time()
        out: list[tuple[int, bool]] = []
        undelivered = 0  # the change in undelivered rows
        with self._writing() as conn:
            for d in deliveries:
                k = (d.key, d.notifier)
                delivered = int(d.delivered_at is not None)
                old = conn.execute("SELECT seq, delivered FROM alerts WHERE key = ? AND notifier = ?", k).fetchone()
                cur = conn.execute(_UPSERT_ALERT, (*k, now, d.attempts, delivered, dumps(d)))
                if old is None:
                    seq = int(conn.execute("SELECT seq FROM alerts WHERE key = ? AND notifier = ?", k).fetchone()[0])
                    out.append((seq, True))
                    undelivered += 1 - delivered
                else:
                    out.append((int(old[0]), False))
                    if cur.rowcount == 1:  # the newer outcome replaced the row's
                        undelivered += int(old[1]) - delivered
        self.stats.alerts += sum(1 for _seq, inserted in out if inserted)
        self.stats.alerts_undelivered += undelivered
        return out

    def _read_alerts(self, after_seq: int, n: int, delivered: bool) -> list[tuple[int, Any]]:
        conn = self._conn
        assert conn is not None
        out: list[tuple[int, Any]] = []
        bad: list[tuple[int, bytes]] = []
        for seq, data in conn.execute("SELECT seq, data FROM alerts WHERE seq > ? AND delivered = ? ORDER BY seq "
                                      "LIMIT ?", (after_seq, int(delivered), n)):
            try:
                out.append((int(seq), loads(data)))
            except Exception as exc:
                log.error("spool %s: alert delivery %d cannot be read (%s): moved to %s.unreadable", self.path, seq,
                          exc, self.path)
                bad.append((seq, data))
        if bad:
            self._set_aside(bad)
            with self._writing() as conn:
                conn.executemany("DELETE FROM alerts WHERE seq = ?", [(seq,) for seq, _ in bad])
            self.stats.alerts -= len(bad)
            self.stats.alerts_undelivered -= 0 if delivered else len(bad)
        return out

    def _delete_alerts(self, keys: list[tuple[str, str]]) -> None:
        gone = undelivered = 0
        with self._writing() as conn:
            for k in keys:
                row = conn.execute("DELETE FROM alerts WHERE key = ? AND notifier = ? RETURNING delivered",
                                   k).fetchone()
                if row is not None:
                    gone += 1
                    undelivered += 1 - int(row[0])
        self.stats.alerts -= gone
        self.stats.alerts_undelivered -= undelivered

    def _latest_states(self) -> tuple[list[StateRecord], dict[str, list[str]]]:
        conn = self._conn
        assert conn is not None
        states: list[StateRecord] = []
        trades: dict[str, list[str]] = {}
        for kind, data in conn.execute("SELECT kind, data FROM spool WHERE kind IN ('state', 'trade') ORDER BY seq"):
            try:
                item = loads(data)
            except Exception as exc:  # moved aside by the replay's read
                log.warning("spool %s: a %s record cannot be read (%s): not used", self.path, kind, exc)
                continue
            if kind == "state":
                states.append(item)
            else:
                trades.setdefault(item[0].trader_id, []).append(item[0].trade_id)
        return states, trades
