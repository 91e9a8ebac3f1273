"""The writer: takes batches from the write queue and writes them, in batched transactions (store.bulk).

A task on the event loop drives two threads: the encoder ("tradeguard-store-encode") turns queued records
into rows, the database thread (dbthread.py) writes them. They form a pipeline: batch N+1 is encoded while
batch N is in the database. Encoding happens off the event loop, so CanTrade latency does not grow with
batch size (the loop still shares the GIL with these threads: at most one switch interval, 5 ms by default,
when both want it; `sys.setswitchinterval(0.001)` at start tightens that).

Transient errors (connection refused or lost, database locked, a statement the server cancelled after
statement_timeout or lock_timeout, ...) keep the batch, mark the store unhealthy, back off exponentially up to
`retry_max_s` and reconnect; one warning per outage and one on recovery (health.py). A batch that fails for a
row's own reason (constraint, bad value) is split until the bad row is alone: the rest is written, the bad row
is logged and counted in `rejected`, never silently lost.

Commit uncertainty: when the connection breaks during a batch's COMMIT (or the batch's deadline interrupts it
there), the batch is neither requeued nor counted until the database says (txid_status) whether it committed:
written again only if it did not. A session the server still holds open in that transaction is ended first
(pg_terminate_backend, only if it still runs that transaction), so the answer comes.

Deadline: every batch runs under the database thread's deadline (`op_timeout_s`, dbthread.Watchdog), so a
database that never answers cannot hold the writer: the batch fails as in an outage and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from .bulk import BulkWriter
from .dbthread import CALL_TIMEOUT_S, Database, Worker, describe, is_row_error, run_on
from .errors import StoreUnavailable
from .health import Health
from .queue import KINDS, Batch, StoreCounters, WriteQueue
from .spool import SPILL_EVERY_S, Spool, SpoolError, decode_rows

log = logging.getLogger("tradeguard.store")

FIRST_BACKOFF_S = 0.05
REPLAY_BATCHES = 4  # a spool replay writes this many batch_max's worth of rows per transaction
PIPELINE = True  # encode the next batch while one is in the database (False: one at a time; for comparison)

Encoded = list[tuple[Any, tuple[Any, ...]]]  # (queue item, row)


@dataclass(slots=True)
class Outcome:
    """What the threads did with a batch."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    parts: dict[str, Encoded] = field(default_factory=dict)  # encoded rows, by kind
    retry: Batch | None = None  # not written because of a transient error: requeue
    error: BaseException | None = None
    in_doubt: int | None = None  # PostgreSQL txid of a batch whose COMMIT may or may not have happened
    backend_pid: int | None = None  # PostgreSQL: the session that ran it (ended if its transaction stays open)
    latency_ms: float = 0.0
    txid: int | None = None  # PostgreSQL: the transaction it was written in


class Writer:
    """Drains a WriteQueue into the database. `start()`, `kick()` when something was queued, `stop()`."""

    def __init__(
        self,
        queue: WriteQueue,
        counters: StoreCounters,
        db: Database,
        health: Health,
        *,
        batch_max: int = 500,
        retry_max_s: float = 5.0,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.queue = queue
        self.counters = counters
        self.db = db
        self.health = health
        self.batch_max = batch_max
        self.retry_max_s = retry_max_s
        self.call_timeout_s = call_timeout_s  # a batch in the database longer than this: health NOT_SERVING
        self.inflight: list[Batch] = []  # taken from the queue, not yet committed (at most two)
        self.first_attempt: asyncio.Future[None] | None = None  # done once the first connect was tried
        self._in_doubt: tuple[Batch, Outcome] | None = None  # connection lost during its COMMIT
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._encoder: Worker | None = None
        self._known_accounts: set[str] = set()  # database thread only
        self._bulk: BulkWriter | None = None  # encoding caches: encoder thread only
        # Cluster mode (cluster.takeover): trader_id -> its lease epoch, None when no longer owned. Each state row
        # is written with its trader's lease epoch (fencing: an earlier owner's late write never replaces a later
        # owner's row). None: every row gets the process epoch (single mode).
        self.epoch_of: Callable[[str], int | None] | None = None
        self.unowned_skipped = 0  # cluster mode: snapshots not written because the trader was no longer owned
        queue.on_history_dropped = self._restart_history
        # The local spool (spool.py; PostgreSQL only): what cannot be written goes there, and is replayed first.
        self.spool: Spool | None = None
        self._spool_min_seq = 0  # the oldest queue sequence number spilled since the spool was last empty
        self._spool_empty = asyncio.Event()
        self._spool_error_logged = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        """Items not yet committed: queued plus the batches being written."""
        return len(self.queue) + sum(b.size() for b in self.inflight)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._encoder = Worker("tradeguard-store-encode")
        self._wake = asyncio.Event()
        self.first_attempt = loop.create_future()
        self._task = asyncio.create_task(self._run(), name="tradeguard-store-writer")
        self._task.add_done_callback(_log_crash)

    async def stop(self, wait_s: float) -> None:
        """Finish the batch in the database (for up to `wait_s` seconds), then stop; release every waiter."""
        task = self._task
        if task is not None and not task.done():
            self._stopping.set()
            self.kick()
            await asyncio.wait({task}, timeout=wait_s)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._encoder is not None:
            self._encoder.shutdown(wait=False)
        if self.first_attempt is not None and not self.first_attempt.done():
            self.first_attempt.set_result(None)
        for _target, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ---- flush --------------------------------------------------------------------------------------

    def _done_through(self) -> int:
        done = self.queue.done_through(self.inflight)
        if self.spool is not None and self.spool.depth:  # spooled is not written yet
            done = min(done, self._spool_min_seq - 1)
        return done

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
        """Wait until everything queued before this call is written (or rejected, or dropped as overflow).
        Event-driven: the writer resolves waiters after each batch. False on timeout or when not running."""
        target = self.queue.seq
        if self._done_through() >= target:
            return True
        if not self.running:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self.kick()
        done, _pending = await asyncio.wait({waiter}, timeout=timeout)
        if not done:
            waiter.cancel()
            return False
        return self._done_through() >= target

    # ---- the loop (event loop side) -----------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Back off, unless stop() asks the writer to stop. With a spool, what is queued meanwhile goes to it
        every SPILL_EVERY_S: memory stays bounded, and a crash during the outage loses nothing spooled."""
        if self.spool is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            await self.spill()
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(remaining, SPILL_EVERY_S))

    def _backoff(self, failures: int) -> float:
        return float(min(self.retry_max_s, FIRST_BACKOFF_S * 2 ** min(failures - 1, 16)))

    async def _run(self) -> None:
        # The batch in the database thread, if any; the next batch is taken and encoded meanwhile.
        writing: list[tuple[Batch, asyncio.Future[Outcome]]] = []
        try:
            await self._write_loop(writing)
        finally:
            for _batch, fut in writing:  # cancelled by stop() at its deadline: stop waiting for it
                fut.cancel()

    async def _write_loop(self, writing: list[tuple[Batch, asyncio.Future[Outcome]]]) -> None:
        assert self._wake is not None
        assert self.first_attempt is not None
        failures = 0
        while True:
            if not writing:
                if self._stopping.is_set():
                    return
                if not self.db.prepared:
                    error = await self.db.run(self.db.prepare)
                    if not self.first_attempt.done():
                        self.first_attempt.set_result(None)
                    if error is not None:  # counted as a failed attempt (risk_persistence_failures_total)
                        self.counters.attempts += 1
                        self.counters.failures += 1
                        self.health.unavailable(error)
                        failures += 1
                        await self._pause(self._backoff(failures))
                        continue
                    failures = 0
                    self.health.available()
                if self._bulk is None:
                    self._bulk = BulkWriter(self.db.engine.dialect)
                if self._in_doubt is not None:
                    if await self._resolve_in_doubt():
                        failures = 0
                        self.health.available()
                    else:
                        failures += 1
                        await self._pause(self._backoff(failures))
                    continue
            spool = self.spool
            if spool is not None and not self._stopping.is_set():
                if len(self.queue) > spool.memory_items:  # behind by more than the bound: to the spool
                    await self.spill()
                if spool.depth:  # the spool is older than anything queued: replayed first
                    if writing:
                        failed = await self._finish(*writing.pop(), unsent=None)
                    else:
                        failed = await self._replay_spool()
                    failures = failures + 1 if failed else 0
                    if failed:
                        await self._pause(self._backoff(failures))
                    continue
            batch = None if self._stopping.is_set() else self.queue.take(self.batch_max)
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
            self.inflight.append(batch)
            epoch_of = self.epoch_of
            if epoch_of is not None:  # on the event loop: the ownership as it is now
                batch.epochs = {rec.trader_id: e for _seq, rec in batch.states
                                if (e := epoch_of(rec.trader_id)) is not None}
            encoded = await self._encode_async(batch)
            if writing:
                failed = await self._finish(*writing.pop(), unsent=batch)
                if failed:  # `batch` went back to the queue behind the failed one
                    failures += 1
                    await self._pause(self._backoff(failures))
                    continue
                failures = 0
            self.counters.attempts += 1
            writing.append((batch, asyncio.ensure_future(self.db.run(self._write, encoded))))
            if not PIPELINE:
                failed = await self._finish(*writing.pop(), unsent=None)
                failures = failures + 1 if failed else 0
                if failed:
                    await self._pause(self._backoff(failures))

    async def _encode_async(self, batch: Batch) -> Outcome:
        try:
            return await run_on(self._encoder, self._encode, batch)
        except Exception as exc:  # a bug: keep the batch, it is retried like an outage
            log.exception("store encoder failed unexpectedly")
            return Outcome(retry=batch, error=exc)

    async def _finish(self, batch: Batch, fut: asyncio.Future[Outcome], unsent: Batch | None) -> bool:
        """Account for a written batch. On failure, requeue it (and `unsent`, the batch taken after it, which
        goes back first so the order stays). Returns True when it failed."""
        try:
            outcome = await self._await_batch(fut)
        except Exception as exc:  # a bug, not the database: keep the batch and retry like an outage
            log.exception("store writer failed unexpectedly")
            outcome = Outcome(retry=batch, error=exc)
        self.inflight.remove(batch)
        counters = self.counters
        for kind in KINDS:
            counters.rows_written[kind] += outcome.written[kind]
            counters.rejected[kind] += outcome.rejected[kind]
        if outcome.retry is not None or any(outcome.rejected.values()):
            counters.failures += 1
            self._restart_history()  # rows it encoded may never be stored: the next ones carry every map
        if outcome.retry is None:
            counters.last_persist_latency_ms = outcome.latency_ms
            self.queue.end_overflow()
            self.health.available()
            self._resolve_waiters()
            return False
        if unsent is not None:
            self.inflight.remove(unsent)
            self.queue.requeue(unsent)
        if outcome.in_doubt is not None:  # neither requeued nor counted until the database says which
            self.inflight.append(batch)
            self._in_doubt = (batch, outcome)
        else:
            self.queue.requeue(outcome.retry)
        self.health.unavailable(outcome.error)
        self._resolve_waiters()
        return True

    async def _await_batch(self, fut: asyncio.Future[Outcome]) -> Outcome:
        """The outcome of a batch in the database. Past `call_timeout_s` the store reports itself unavailable
        (health NOT_SERVING) and keeps waiting: the server-side timeouts end most waits. A batch that gets no
        answer at all (hung pooler, frozen server) ends at the database thread's deadline (`op_timeout_s`, see
        dbthread.Watchdog): its connection is interrupted and the batch is retried; if its COMMIT had been sent,
        the commit-uncertainty check (txid_status) decides first, so it is never written twice."""
        if self.call_timeout_s > 0 and not fut.done():
            done, _pending = await asyncio.wait({fut}, timeout=self.call_timeout_s)
            if not done:
                self.health.unavailable(StoreUnavailable(
                    f"a batch has waited {self.call_timeout_s:g} s for the database; still waiting for it (it is "
                    f"interrupted at {self.db.op_timeout_s:g} s)"))
        return await fut

    async def _resolve_in_doubt(self) -> bool:
        """Ask the database whether the batch whose COMMIT was cut short committed: count it, or requeue it.
        Returns False while that cannot be known yet (database still down, transaction still open)."""
        assert self._in_doubt is not None
        batch, doubtful = self._in_doubt
        assert doubtful.in_doubt is not None
        try:
            status = await self.db.run(self.db.xact_status, doubtful.in_doubt)
            if status == "in progress" and doubtful.backend_pid is not None:
                # The server has not noticed the connection is gone (its COMMIT may be held on the way, or the
                # batch's connection was interrupted at its deadline): end that session if it still runs the
                # transaction; from then on the answer is final.
                await self.db.run(self.db.end_session, doubtful.backend_pid, doubtful.in_doubt)
                status = await self.db.run(self.db.xact_status, doubtful.in_doubt)
        except Exception as exc:
            self.health.unavailable(exc)
            return False
        if status == "in progress":
            return False
        self._in_doubt = None
        self.inflight.remove(batch)
        if status == "committed":
            for kind, items in doubtful.parts.items():
                self.counters.rows_written[kind] += len(items)
            log.info("store: the batch whose commit was interrupted did commit (%d rows); not written again",
                     batch.size())
        else:  # aborted (or too old to tell: then written again, a duplicate beats a loss)
            assert doubtful.retry is not None
            self.queue.requeue(doubtful.retry)
        self._resolve_waiters()
        return True

    # ---- the spool (spool.py) ------------------------------------------------------------------------

    @property
    def spool_failing(self) -> bool:
        """The last write to the spool failed (the backlog stays in memory)."""
        return self._spool_error_logged

    def _spool_changed(self) -> None:
        spool = self.spool
        if spool is None or spool.depth == 0:
            self._spool_min_seq = 0
            self._spool_empty.set()
        else:
            self._spool_empty.clear()

    async def spool_replayed(self, timeout: float | None) -> bool:  # noqa: ASYNC109
        """Wait until the spool is empty (replayed); False after `timeout` seconds."""
        self._spool_changed()
        if self._spool_empty.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._spool_empty.wait(), timeout)
        return self._spool_empty.is_set()

    def _spool_epochs(self, batch: Batch) -> dict[str, int | None]:
        """The epoch each state of `batch` is spooled with: its lease epoch (cluster mode; a trader no longer
        owned is left out, as the writer leaves it out), else this process's epoch (None when not known yet)."""
        epoch_of = self.epoch_of
        if epoch_of is None:
            epoch = self.db.epoch or None
            return {rec.trader_id: epoch for _seq, rec in batch.states}
        epochs: dict[str, int | None] = {}
        for _seq, rec in batch.states:
            if (e := epoch_of(rec.trader_id)) is not None:
                epochs[rec.trader_id] = e
            else:
                self.unowned_skipped += 1
        return epochs

    async def spill(self, batch: Batch | None = None, txid: int | None = None, pid: int | None = None) -> int:
        """Move what is queued (or `batch`) to the spool. Returns the number of records spooled (0 when it
        cannot be written: then the items stay queued in memory, and the error is logged once)."""
        spool = self.spool
        if spool is None:
            return 0
        own = batch is None
        if batch is None:
            batch = self.queue.take(None)
            if batch is None:
                return 0
            self.inflight.append(batch)  # counted as pending (queue_depth, flush) until it is in the spool
        first = batch.min_seq()
        try:
            await spool.append_batch(batch, self._spool_epochs(batch), txid, pid)
        except SpoolError as exc:
            if own:
                self.inflight.remove(batch)
                self.queue.requeue(batch)
            if not self._spool_error_logged:
                self._spool_error_logged = True
                log.error("%s: the backlog stays in memory", exc)
            return 0
        self._spool_error_logged = False
        if own:
            self.inflight.remove(batch)
        if first is not None and (self._spool_min_seq == 0 or first < self._spool_min_seq):
            self._spool_min_seq = first
        self._spool_changed()
        return batch.size()

    async def spill_all(self) -> int:
        """At shutdown, after stop(): everything not committed (queued, taken, a batch whose COMMIT is in doubt,
        marked with its transaction id) to the spool. Returns the number of items spooled."""
        if self.spool is None:
            return 0
        self.queue.hold_states = False
        total = 0
        in_doubt = self._in_doubt
        for batch in list(self.inflight):
            if in_doubt is not None and batch is in_doubt[0]:
                spooled = await self.spill(batch, in_doubt[1].in_doubt, in_doubt[1].backend_pid)
            else:  # cancelled in the database at the deadline: written again (a duplicate beats a loss)
                spooled = await self.spill(batch)
            if spooled or not batch.size():
                self.inflight.remove(batch)
                total += spooled
        self._in_doubt = None
        total += await self.spill()
        return total

    async def _replay_spool(self) -> bool:
        """Write the oldest rows of the spool; True when it failed (the rows stay there)."""
        spool = self.spool
        assert spool is not None
        try:
            rows = await spool.read(self.batch_max * REPLAY_BATCHES)
        except Exception as exc:
            log.exception("spool %s cannot be read", spool.path)
            self.health.unavailable(exc)
            return True
        marked = {row.txid: row.pid for row in rows if row.txid is not None}
        if marked:  # sent in a transaction before a crash: did it commit?
            for txid, pid in marked.items():
                try:
                    status = await self.db.run(self.db.xact_status, txid)
                    if status == "in progress" and pid is not None:
                        await self.db.run(self.db.end_session, pid, txid)
                        status = await self.db.run(self.db.xact_status, txid)
                except Exception as exc:
                    self.health.unavailable(exc)
                    return True
                if status == "in progress":
                    return True
                await spool.settle(txid, committed=status == "committed")
                log.info("spool: a replay batch (transaction %d) sent before a crash %s", txid,
                         "did commit: not written again" if status == "committed" else "did not commit: written again")
            self._spool_changed()
            self._resolve_waiters()
            return False
        if not rows:
            self._spool_changed()
            return False
        batch, epochs = decode_rows(rows)
        batch.epochs = {trader: self.db.epoch if e is None else e for trader, e in epochs.items()}
        self.counters.attempts += 1
        encoded = await self._encode_async(batch)
        seqs = [row.seq for row in rows]
        self.inflight.append(batch)
        try:
            outcome = await self._await_batch(asyncio.ensure_future(self.db.run(self._write, encoded, seqs)))
        except Exception as exc:
            log.exception("store writer failed unexpectedly (spool replay)")
            outcome = Outcome(retry=batch, error=exc)
        finally:
            self.inflight.remove(batch)
        for kind in KINDS:
            self.counters.rows_written[kind] += outcome.written[kind]
            self.counters.rejected[kind] += outcome.rejected[kind]
        if outcome.retry is not None or any(outcome.rejected.values()):
            self.counters.failures += 1
            self._restart_history()
        if outcome.retry is not None:  # the rows stay in the spool (marked: settled by txid_status next time)
            self.health.unavailable(outcome.error)
            return True
        await spool.delete([(row.seq, row.version, row.epoch) for row in rows])
        self.counters.last_persist_latency_ms = outcome.latency_ms
        if spool.depth == 0:
            log.info("spool %s replayed into the database (%s)", spool.path,
                     ", ".join(f"{n} {k}" for k, n in spool.stats.replayed.items() if n))
        self._spool_changed()
        self.health.available()
        self._resolve_waiters()
        return False

    def _restart_history(self) -> None:
        if self._bulk is not None:  # history rows carry every map again: none refers to a row never stored
            self._bulk.restart_history()

    # ---- on the encoder thread ----------------------------------------------------------------------

    def _encode(self, batch: Batch) -> Outcome:
        bulk, epoch = self._bulk, self.db.epoch
        assert bulk is not None
        outcome = Outcome()
        epochs = batch.epochs
        states = batch.states
        if epochs is not None:
            states = [i for i in states if i[1].trader_id in epochs]
            self.unowned_skipped += len(batch.states) - len(states)
        outcome.parts = {
            "state": _rows(states, lambda i: bulk.state_row(i[1], epoch if epochs is None else epochs[i[1].trader_id]),
                           "state", outcome),
            "history": _rows(batch.history, lambda i: bulk.history_row(i[1]), "history", outcome),
            "trade": _rows(batch.trades, lambda i: bulk.trade_row(i[1], i[2]), "trade", outcome),
            "event": _rows(batch.events, lambda i: bulk.event_row(i[1]), "event", outcome),
        }
        return outcome

    # ---- on the database thread ---------------------------------------------------------------------

    def _write(self, encoded: Outcome, spool_seqs: list[int] | None = None) -> Outcome:
        """Write encoded parts in one transaction; isolate bad rows if it fails for a row's reason. With
        `spool_seqs` (a replay of the spool), those spool rows are marked with the transaction's id before its
        COMMIT (spool.py: exactly once across a crash)."""
        if encoded.retry is not None:  # the encoder failed
            return encoded
        started = time.perf_counter()
        outcome = dataclasses.replace(encoded, written=dict.fromkeys(KINDS, 0))
        parts = outcome.parts
        now = time.time()
        assert self._bulk is not None
        txid: int | None = None
        committing = False
        try:
            conn = self.db.engine.connect()
            try:
                if self._bulk.postgres:  # to learn later whether a COMMIT cut short went through
                    txid_pid = conn.exec_driver_sql("SELECT txid_current(), pg_backend_pid()").one()
                    txid, outcome.backend_pid = int(txid_pid[0]), int(txid_pid[1])
                    outcome.txid = txid
                for kind, items in parts.items():
                    self._write_kind(conn, kind, items, now)
                if spool_seqs and txid is not None and self.spool is not None:
                    self.spool.mark_blocking(spool_seqs, txid, outcome.backend_pid)
                committing = True
                conn.commit()
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        except Exception as exc:
            if not is_row_error(exc):
                self.db.dispose_quietly()
                outcome.retry, outcome.error = batch_of(parts.items()), self.db.watchdog.timed_out(exc)
                if committing:  # the server may have committed before the connection broke
                    outcome.in_doubt = txid
                return outcome
            size = sum(len(items) for items in parts.values())
            log.warning("store batch of %d rows failed (%s): isolating the bad rows", size, describe(exc))
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

    def _isolate(self, parts: dict[str, Encoded], outcome: Outcome, now: float) -> None:
        """Write each kind in its own transactions, halving a failing part until the bad row is alone."""
        stack: list[tuple[str, Encoded]] = [(k, v) for k, v in parts.items() if v]
        stack.reverse()
        while stack:
            kind, part = stack.pop()
            try:
                with self.db.engine.begin() as conn:
                    self._write_kind(conn, kind, part, now)
            except Exception as exc:
                if not is_row_error(exc):  # the database went away meanwhile: the rest waits for it
                    self.db.dispose_quietly()
                    outcome.retry, outcome.error = batch_of([(kind, part), *stack]), self.db.watchdog.timed_out(exc)
                    return
                if len(part) == 1:
                    item, _row = part[0]
                    outcome.rejected[kind] += 1
                    log.error("store rejected a %s row (%s): %r", kind, describe(exc), item[1])
                else:
                    mid = len(part) // 2
                    stack.append((kind, part[mid:]))
                    stack.append((kind, part[:mid]))
            else:
                outcome.written[kind] += len(part)
                if kind == "state":
                    self._known_accounts.update(item[1].account_id for item, _row in part)


def _rows(items: list[Any], build: Callable[[Any], tuple[Any, ...]], kind: str, outcome: Outcome) -> Encoded:
    out: Encoded = []
    for item in items:
        try:
            out.append((item, build(item)))
        except Exception as exc:
            outcome.rejected[kind] += 1
            log.error("store rejected a %s row it cannot encode (%s): %r", kind, describe(exc), item[1])
    return out


def batch_of(parts: Iterable[tuple[str, Encoded]]) -> Batch:
    """The queue items of (kind, [(item, row)]) parts, back in sequence order."""
    batch = Batch()
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


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
        log.error("store writer stopped", exc_info=task.exception())
