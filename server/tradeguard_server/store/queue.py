"""The write queue: what the hot path hands to the store, held until the database takes it.

Shared by RiskStore (its writer takes batches from it) and MemoryStore (it drains it at once while
"available"). Touched only on the event loop thread; nothing here awaits, blocks or does I/O.

- State snapshots coalesce per trader (the highest version wins) in an unbounded map with one entry per
  trader, so the latest state of every trader is always written eventually, whatever overflows.
- History rows go to a bounded backlog: at most `max_rows` rows (HISTORY_BACKLOG_ROWS = 100,000 by default)
  and at most `max_bytes` (HISTORY_BACKLOG_BYTES = 128 MiB) by `history_cost`'s estimate (~0.65 KB for a
  trader without positions, ~5 KB with 500 recent trades). Past either cap the OLDEST rows are dropped,
  counted in `dropped_history`, with one warning per overflow episode and one with the count when it ends.
  `enqueued["history"] == rows_written["history"] + dropped_history + rejected["history"] + what is queued`.
- Trade reports and breaker events are never dropped: their lists are unbounded here (a long outage costs
  memory, a few hundred bytes per item, rather than losing an audit record). On PostgreSQL the writer moves the
  queue to the local spool (spool.py) during an outage and when it holds more than MEMORY_ITEMS, which bounds it.
- Every item gets a sequence number when queued; `done_through` says up to which number everything is
  written (or rejected, or dropped), which is what `flush()` waits for.
- `hold_states`: after a load failed, snapshots wait (history, trades and events do not) until a load
  succeeds, so a late load always reads the stored states before this process replaces them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from .records import BreakerEventRecord, HistoryRecord, StateRecord, TradeRecord

log = logging.getLogger("tradeguard.store")

T = TypeVar("T")

KINDS = ("state", "history", "trade", "event")
# History rows kept in memory while the database does not keep up: at most this many rows and at most this
# many bytes by history_cost's estimate; past either, the oldest are dropped.
HISTORY_BACKLOG_ROWS = 100_000
HISTORY_BACKLOG_BYTES = 128 << 20


@dataclass(eq=False)  # compared and hashed by identity: stores embed it
class StoreCounters:
    """A store's counters, by kind where it applies (state, history, trade, event). Read them; never reset.
    The queue counts what comes in and what it drops; the writer what it writes, rejects and tries."""

    enqueued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # committed
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # bad rows, logged, skipped
    coalesced: int = 0  # snapshots superseded in the queue by a newer one of the same trader
    dropped_history: int = 0
    attempts: int = 0  # transactions the writer tried (one per batch), and connection attempts that failed
    failures: int = 0  # batches that failed (transient) or had a rejected row, and failed connection attempts
    last_persist_latency_ms: float = 0.0  # duration of the last successful batch write


def history_cost(row: HistoryRecord) -> int:
    """Estimated bytes a queued history row holds on to (measured with tracemalloc: ~640 for a trader without
    positions). What it shares with the trader's live state (positions, recent trades, orders) counts as a
    reference."""
    st = row.state
    shared = len(st.positions) + len(st.recent_trades) + len(st.volatility) + len(st.pending_orders) \
        + len(st.finished_orders)
    own = len(st.pauses) + len(st.symbol_stats)
    return 640 + len(row.reason) + 8 * shared + 160 * own


@dataclass(slots=True)
class Batch:
    """Items taken from the queue for one transaction, each with its enqueue sequence number."""

    states: list[tuple[int, StateRecord]] = field(default_factory=list)
    history: list[tuple[int, HistoryRecord]] = field(default_factory=list)
    trades: list[tuple[int, TradeRecord, float]] = field(default_factory=list)  # with the time it was reported
    events: list[tuple[int, BreakerEventRecord]] = field(default_factory=list)
    # Cluster mode: the lease epoch of each trader whose state this batch writes, taken on the event loop when the
    # batch was taken (a trader missing here is no longer this sidecar's: its state is not written). None: every
    # state is written with the process epoch (single mode).
    epochs: dict[str, int] | None = None

    def size(self) -> int:
        return len(self.states) + len(self.history) + len(self.trades) + len(self.events)

    def min_seq(self) -> int | None:
        heads = [items[0][0] for items in (self.states, self.history, self.trades, self.events) if items]
        return min(heads) if heads else None


class WriteQueue:
    """Pending writes of every kind, in the order they came. See the module docstring for the rules."""

    def __init__(
        self,
        counters: StoreCounters,
        max_rows: int = HISTORY_BACKLOG_ROWS,
        max_bytes: int = HISTORY_BACKLOG_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counters = counters
        self.max_rows = max_rows  # history backlog cap, rows
        self.max_bytes = max_bytes  # history backlog cap, bytes (estimated)
        self.clock = clock  # when a trade was reported
        self.hold_states = False
        self.on_history_dropped: Callable[[], None] | None = None  # the writer's encoder restarts history deltas
        self.seq = 0  # the sequence number of the last item queued
        self._states: dict[str, tuple[int, StateRecord]] = {}
        self._history: deque[tuple[int, HistoryRecord]] = deque()
        self._history_bytes = 0  # history_cost of the rows in self._history
        self._trades: deque[tuple[int, TradeRecord, float]] = deque()
        self._events: deque[tuple[int, BreakerEventRecord]] = deque()
        self._last_trade_at = 0.0
        self._overflowing = False
        self._drops_in_episode = 0
        self._drops_since_commit = 0

    def __len__(self) -> int:
        return len(self._states) + len(self._history) + len(self._trades) + len(self._events)

    @property
    def states_queued(self) -> int:
        return len(self._states)

    @property
    def history_queued(self) -> int:
        return len(self._history)

    # ---- intake -----------------------------------------------------------------------------------

    def put_state(self, rec: StateRecord, reason: str, trace_id: str | None, history: bool = True) -> None:
        """A trader's new state (coalesced with the one queued) and, with `history`, its history row."""
        self.seq += 1
        seq = self.seq
        counters = self.counters
        counters.enqueued["state"] += 1
        current = self._states.get(rec.trader_id)
        if current is None:
            self._states[rec.trader_id] = (seq, rec)
        else:
            counters.coalesced += 1
            if rec.version > current[1].version:  # keeps its place (and seq) in the queue, newest state
                self._states[rec.trader_id] = (current[0], rec)
        if not history:
            return
        counters.enqueued["history"] += 1
        row = HistoryRecord(rec.trader_id, rec.account_id, rec, reason, trace_id, rec.updated_at)
        self._history.append((seq, row))
        self._history_bytes += history_cost(row)
        if len(self._history) > self.max_rows or self._history_bytes > self.max_bytes:
            self._trim_history()

    def put_trade(self, rec: TradeRecord) -> None:
        """A closed trade (never dropped), stamped with a strictly increasing time: the order of reports."""
        self.seq += 1
        self.counters.enqueued["trade"] += 1
        at = max(self.clock(), self._last_trade_at + 1e-6)
        self._last_trade_at = at
        self._trades.append((self.seq, rec, at))

    def put_event(self, rec: BreakerEventRecord) -> None:
        """A breaker event (never dropped). An empty id gets a uuid."""
        self.seq += 1
        self.counters.enqueued["event"] += 1
        if not rec.id:
            rec = dataclasses.replace(rec, id=str(uuid.uuid4()))
        self._events.append((self.seq, rec))

    # ---- outflow ----------------------------------------------------------------------------------

    def drop_state(self, trader_id: str) -> None:
        """Forget the queued snapshot of a trader this sidecar no longer owns (cluster mode: taken over)."""
        self._states.pop(trader_id, None)

    def has_work(self) -> bool:
        """Something `take` would return."""
        return bool((self._states and not self.hold_states) or self._history or self._trades or self._events)

    def take(self, n: int | None) -> Batch | None:
        """Up to `n` items of each kind (None: all), oldest first; None when there is nothing to take."""
        if not self.has_work():
            return None
        batch = Batch()
        if self.hold_states:
            pass
        elif n is None or len(self._states) <= n:
            batch.states = list(self._states.values())
            self._states = {}
        else:
            keys = list(islice(self._states, n))
            batch.states = [self._states.pop(k) for k in keys]
        batch.history = _popleft(self._history, n)
        self._history_bytes -= sum(history_cost(row) for _seq, row in batch.history)
        batch.trades = _popleft(self._trades, n)
        batch.events = _popleft(self._events, n)
        return batch

    def requeue(self, batch: Batch) -> None:
        """Put a batch that could not be written back in front of the queue (older items first)."""
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

    def done_through(self, inflight: Iterable[Batch] = ()) -> int:
        """Every item with a sequence number <= this is written, rejected or dropped (items of the batches in
        `inflight`, taken and not yet written, are not)."""
        heads: list[int] = []
        if self._states:
            heads.append(next(iter(self._states.values()))[0])
        if self._history:
            heads.append(self._history[0][0])
        if self._trades:
            heads.append(self._trades[0][0])
        if self._events:
            heads.append(self._events[0][0])
        for batch in inflight:
            first = batch.min_seq()
            if first is not None:
                heads.append(first)
        return min(heads) - 1 if heads else self.seq

    # ---- history overflow -------------------------------------------------------------------------

    def _trim_history(self) -> None:
        """Drop the oldest history rows until the backlog is within both caps (rows and estimated bytes)."""
        dropped = 0
        while self._history and (len(self._history) > self.max_rows or self._history_bytes > self.max_bytes):
            _seq, row = self._history.popleft()
            self._history_bytes -= history_cost(row)
            dropped += 1
        if dropped:
            self._count_drops(dropped)
            if self.on_history_dropped is not None:
                self.on_history_dropped()

    def _count_drops(self, n: int) -> None:
        self.counters.dropped_history += n
        self._drops_in_episode += n
        self._drops_since_commit += n
        if not self._overflowing:
            self._overflowing = True
            log.warning("store history backlog full (queue_size=%d rows, history_backlog_bytes=%d): the database "
                        "does not keep up; dropping the oldest history rows until the writer catches up (latest "
                        "states are kept; see tradeguard_history_rows_dropped_total)", self.max_rows, self.max_bytes)

    def end_overflow(self) -> None:
        """After a commit: an overflow episode is over once a whole batch round trip dropped nothing, or once the
        writer has taken every history row (caught up)."""
        if self._overflowing and (self._drops_since_commit == 0 or not self._history):
            log.warning("store history backlog overflow over: %d history rows were dropped (%d in all)",
                        self._drops_in_episode, self.counters.dropped_history)
            self._overflowing = False
            self._drops_in_episode = 0
        self._drops_since_commit = 0


def _popleft(items: deque[T], n: int | None) -> list[T]:
    if n is None or n >= len(items):
        out = list(items)
        items.clear()
        return out
    return [items.popleft() for _ in range(n)]
