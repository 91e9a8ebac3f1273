"""MemoryStore: the in-memory twin of RiskStore for unit tests of the layers above (httpx's MockTransport).

Same interface and the same observable rules (it uses RiskStore's write queue, store.queue): the latest
version of a trader wins, history keeps the newest `queue_size` rows while the "database" is down, trades
are idempotent, events are never dropped, admin writes raise Conflict / NotFound / StoreUnavailable. Writes
land at once while `available`; set `available = False` to simulate an outage (the backlog lands when it is
set back to True).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence

from ..cluster.changes import ControlChange
from .errors import Conflict, NotFound, StoreUnavailable
from .queue import HISTORY_BACKLOG_BYTES, HISTORY_BACKLOG_ROWS, StoreCounters, WriteQueue
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
from .sql import event_cursor, parse_event_cursor


class MemoryStore(StoreCounters):
    """Implements store.protocol.Store in memory. Its queue is RiskStore's (queue.WriteQueue): the same
    coalescing, history backlog caps and drop counting; it drains at once while `available`."""

    def __init__(self, queue_size: int = HISTORY_BACKLOG_ROWS, *, clock: Callable[[], float] = time.time,
                 history_backlog_bytes: int = HISTORY_BACKLOG_BYTES,
                 on_health_change: Callable[[bool], None] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.persistence_enabled = True
        self.on_health_change = on_health_change
        self.queue = WriteQueue(self, queue_size, history_backlog_bytes, clock)
        # The "database".
        self.states: dict[str, StateRecord] = {}
        self.history: list[HistoryRecord] = []
        self.trades: dict[tuple[str, str], TradeRecord] = {}
        self.events: list[BreakerEventRecord] = []
        self.configs: dict[tuple[str, str], ConfigRecord] = {}
        self.breakers: dict[str, BreakerRecord] = {}
        self.flags: FlagsRecord | None = None
        self.changes: list[ControlChange] = []  # control_changes, version = index + 1
        self._available = True
        self._started = False
        self._closed = False

    @property
    def queue_size(self) -> int:
        return self.queue.max_rows

    @queue_size.setter
    def queue_size(self, rows: int) -> None:
        self.queue.max_rows = rows

    # ---- health -----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        changed = value != self._available
        self._available = value
        if value:
            self._drain()
        if changed and self._started and self.on_health_change is not None:
            self.on_health_change(value)

    @property
    def healthy(self) -> bool:
        return self._started and self._available

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    async def start(self) -> None:
        self._started = True
        if self.on_health_change is not None and self._available:
            self.on_health_change(True)

    async def close(self, drain_timeout: float) -> int:
        self._closed = True
        self.queue.hold_states = False
        if self._available:
            self._drain()
        return self.queue_depth

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the store's interface
        if self._available:
            self._drain()
        return self.queue_depth == 0

    def _check(self) -> None:
        if not self._available or self._closed:
            raise StoreUnavailable("memory store is unavailable")

    async def load(self) -> LoadedState:
        try:
            self._check()
        except StoreUnavailable:
            self.queue.hold_states = True
            raise
        trade_ids: dict[str, list[str]] = {}
        for trader_id, trade_id in self.trades:
            trade_ids.setdefault(trader_id, []).append(trade_id)
        loaded = LoadedState(
            traders=[self.states[k] for k in sorted(self.states)],
            configs=[self.configs[k] for k in sorted(self.configs)],
            breakers=sorted(self.breakers.values(), key=lambda b: (b.account_id, b.name)),
            flags=self.flags,
            trade_ids=trade_ids,
            control_version=len(self.changes),
        )
        if self.queue.hold_states:
            self.queue.hold_states = False
            self._drain()
        return loaded

    # ---- queue ------------------------------------------------------------------------------------

    def enqueue_state(self, rec: StateRecord, reason: str, trace_id: str | None, history: bool = True) -> None:
        if not self.persistence_enabled or self._closed:
            return
        self.queue.put_state(rec, reason, trace_id, history)
        if self._available:
            self._drain()

    def enqueue_trade(self, rec: TradeRecord) -> None:
        if not self.persistence_enabled or self._closed:
            return
        self.queue.put_trade(rec)
        if self._available:
            self._drain()

    def enqueue_event(self, rec: BreakerEventRecord) -> None:
        if not self.persistence_enabled or self._closed:
            return
        self.queue.put_event(rec)
        if self._available:
            self._drain()

    def _drain(self) -> None:
        """Write everything queued (snapshots wait while held), as one "transaction"."""
        if not len(self.queue):
            return
        self.attempts += 1
        batch = self.queue.take(None)
        if batch is None:  # only held snapshots
            return
        for _seq, rec in batch.states:
            stored = self.states.get(rec.trader_id)
            if stored is None or rec.version > stored.version:
                self.states[rec.trader_id] = rec
        for _seq, h in batch.history:
            state = dataclasses.replace(h.state, recent_trades=(), order_times=(), fill_times=(),
                                        finished_orders=())
            self.history.append(dataclasses.replace(h, state=state, id=len(self.history) + 1))
        for _seq, t, _at in batch.trades:
            self.trades.setdefault((t.trader_id, t.trade_id), t)
        known = {e.id for e in self.events}
        self.events.extend(e for _seq, e in batch.events if e.id not in known)
        for kind, items in (("state", batch.states), ("history", batch.history), ("trade", batch.trades),
                            ("event", batch.events)):
            self.rows_written[kind] += len(items)
        self.queue.end_overflow()

    # ---- write-through ----------------------------------------------------------------------------

    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]:
        self._check()
        return {tid for tid in trade_ids if (trader_id, tid) in self.trades}

    def _append(self, change: ControlChange | None) -> None:
        if change is not None:
            self.changes.append(change)
            change.version = len(self.changes)

    async def save_config(self, cfg: ConfigRecord, change: ControlChange | None = None) -> tuple[ConfigRecord, bool]:
        self._check()
        now = self.clock()
        key = (cfg.account_id, cfg.config_id)
        existing = self.configs.get(key)
        if cfg.is_active:
            for other_key, other in self.configs.items():
                if other_key[0] == cfg.account_id and other_key != key and other.is_active:
                    self.configs[other_key] = dataclasses.replace(other, is_active=False, updated_at=now)
        old_symbols = {s.symbol: s.created_at for s in existing.symbol_configs} if existing else {}
        symbols = [dataclasses.replace(s, created_at=old_symbols.get(s.symbol) or now, updated_at=now)
                   for s in cfg.symbol_configs]
        saved = dataclasses.replace(
            cfg, symbol_configs=symbols, created_at=existing.created_at if existing else now, updated_at=now
        )
        self.configs[key] = saved
        self._append(change)
        return saved, existing is None

    async def delete_config(self, account_id: str, config_id: str, change: ControlChange | None = None) -> None:
        self._check()
        if self.configs.pop((account_id, config_id), None) is None:
            raise NotFound(f"configuration {config_id!r} of account {account_id!r} not found")
        self._append(change)

    async def get_configs(self, account_id: str) -> list[ConfigRecord]:
        self._check()
        return [self.configs[k] for k in sorted(self.configs) if k[0] == account_id]

    def _name_taken(self, b: BreakerRecord) -> bool:
        return any(o.account_id == b.account_id and o.name == b.name and o.id != b.id for o in self.breakers.values())

    async def save_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        self._check()
        b = breaker if breaker.id else dataclasses.replace(breaker, id=str(uuid.uuid4()))
        if b.id in self.breakers or self._name_taken(b):
            raise Conflict(f"breaker {b.name!r} already exists in account {b.account_id!r}")
        now = self.clock()
        saved = dataclasses.replace(b, created_at=now, updated_at=now)
        self.breakers[saved.id] = saved
        self._append(change)
        return saved

    async def update_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        self._check()
        old = self.breakers.get(breaker.id)
        if old is None:
            raise NotFound(f"breaker {breaker.id!r} not found")
        if self._name_taken(dataclasses.replace(breaker, account_id=old.account_id)):
            raise Conflict(f"breaker {breaker.name!r} already exists in account {old.account_id!r}")
        saved = dataclasses.replace(breaker, account_id=old.account_id, created_at=old.created_at,
                                    updated_at=self.clock())
        self.breakers[saved.id] = saved
        self._append(change)
        return saved

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool,
                                  change: ControlChange | None = None) -> BreakerRecord:
        old = await self.get_breaker(breaker_id)
        saved = dataclasses.replace(old, enabled=enabled, updated_at=self.clock())
        self.breakers[breaker_id] = saved
        self._append(change)
        return saved

    async def delete_breaker(self, breaker_id: str, change: ControlChange | None = None) -> None:
        self._check()
        if self.breakers.pop(breaker_id, None) is None:
            raise NotFound(f"breaker {breaker_id!r} not found")
        self._append(change)

    async def get_breaker(self, breaker_id: str) -> BreakerRecord:
        self._check()
        b = self.breakers.get(breaker_id)
        if b is None:
            raise NotFound(f"breaker {breaker_id!r} not found")
        return b

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]:
        self._check()
        return sorted((b for b in self.breakers.values() if b.account_id == account_id), key=lambda b: b.name)

    async def save_flags(self, flags: FlagsRecord, change: ControlChange | None = None) -> FlagsRecord:
        self._check()
        self.flags = dataclasses.replace(flags, updated_at=self.clock())
        self._append(change)
        return self.flags

    async def get_flags(self) -> FlagsRecord | None:
        self._check()
        return self.flags

    # ---- the control-state log --------------------------------------------------------------------

    async def append_change(self, change: ControlChange) -> int:
        self._check()
        self._append(change)
        return change.version

    async def changes_since(self, version: int, limit: int = 1000) -> list[ControlChange]:
        self._check()
        return self.changes[version:version + limit]

    async def trader_changes(self, trader_id: str) -> list[ControlChange]:
        self._check()
        return [c for c in self.changes if c.trader_id == trader_id and c.kind in ("pause", "resume", "restore")]

    async def trader_stored(self, trader_id: str) -> bool:
        self._check()
        return trader_id in self.states

    async def scope_changes(self) -> list[ControlChange]:
        self._check()
        latest: dict[str, ControlChange] = {}
        for c in self.changes:
            if c.scope:
                latest[c.account_id] = c
        return sorted(latest.values(), key=lambda c: c.version)

    # ---- paging -----------------------------------------------------------------------------------

    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]:
        self._check()
        rows = [
            h for h in self.history
            if h.trader_id == trader_id and (start is None or h.recorded_at >= start)
            and (end is None or h.recorded_at < end) and (after_id is None or (h.id or 0) > after_id)
        ]
        if len(rows) > limit:
            rows = rows[:limit]
            return rows, rows[-1].id
        return rows, None

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        self._check()
        rows = sorted(
            (e for e in self.events
             if (account_id is None or e.account_id == account_id)
             and (breaker_id is None or e.breaker_id == breaker_id)),
            key=lambda e: (e.timestamp, e.id), reverse=True,
        )
        if before_cursor is not None:
            key = parse_event_cursor(before_cursor)
            rows = [e for e in rows if (e.timestamp, e.id) < key]
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            return rows, event_cursor(last)
        return rows, None
