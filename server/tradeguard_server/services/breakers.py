"""Circuit breakers: the definitions being enforced, and the events they fired.

Write-through: every change is awaited in the store first; only when it committed do the in-memory copy
and the evaluator change, so a failed write never leaves the sidecar enforcing what the store does not hold.
Reads of definitions answer from the in-memory copy (what is being enforced); events come from the store, or
from the latest ones kept in memory while persistence is off. Writes are serialized by a lock, so the store and
memory see them in the same order.

Errors: `NotFound` (no such breaker), `Conflict` (name taken in the account), `StoreUnavailable`, `BadCursor`
(store/errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..cluster.changes import ControlChange
from ..engine.breakers import Evaluator
from ..engine.clock import Clock, SystemClock
from ..engine.events import Firing, StateChanged
from ..store.errors import BadCursor, Conflict, NotFound
from ..store.protocol import BreakerStore
from ..store.records import BreakerEventRecord, BreakerRecord

log = logging.getLogger("tradeguard.admin")
events_log = logging.getLogger("tradeguard.breakers")

RECENT_EVENTS_KEPT = 1000  # listed from memory while persistence is off (memory only)
MEMORY_CURSOR = "mem:"
LOGGED_EVENT_FLUSH_SECONDS = 5.0  # LogBreakerEvent waits this long for the commit; the row stays queued after



@dataclass(slots=True)
class Definition:
    """A validated breaker definition: what a client gives (not id, enabled or timestamps)."""

    name: str
    description: str
    account_id: str
    condition: str
    action: str
    parameters: dict[str, Any]
    symbols: list[str] | None
    exchanges: list[str] | None


def event_record(f: Firing) -> BreakerEventRecord:
    """The circuit_breaker_events row of a firing."""
    return BreakerEventRecord(
        id=f.event_id, breaker_id=f.breaker_id, trader_id=f.trader_id, account_id=f.account_id, timestamp=f.at,
        triggered_values=dict(f.triggered_values), action_taken=f.action, action_result=dict(f.action_result),
        positions_affected=[{"symbol": s, "exchange": e} for s, e in f.positions_affected], shadow=f.shadow,
    )


class BreakerService:
    """Breaker records: held, unique by name per account, written through the store, installed in the evaluator."""

    def __init__(self, evaluator: Evaluator, store: BreakerStore, *, clock: Clock | None = None) -> None:
        self.evaluator = evaluator
        self.store = store
        self.clock = clock or SystemClock()
        self.records: dict[str, BreakerRecord] = {}
        self._lock = asyncio.Lock()
        self._recent: deque[tuple[int, BreakerEventRecord]] = deque(maxlen=RECENT_EVENTS_KEPT)
        self._seq = 0
        # (kind, account_id, payload) -> the control_changes row appended with each write (cluster.plane); None:
        # none is.
        self.record: Callable[[str, str, dict[str, Any]], ControlChange] | None = None

    def _change(self, account_id: str, breaker_id: str, op: str) -> ControlChange | None:
        if self.record is None:
            return None
        return self.record("breaker", account_id, {"breaker_id": breaker_id, "op": op})

    async def replace_account(self, account_id: str, records: Iterable[BreakerRecord], by: str) -> int:
        """Enforce exactly `records` as the account's breakers (re-read from the store after another sidecar
        changed them): new and changed ones installed, missing ones removed (their episodes end, as for a local
        change). Returns how many changed."""
        wanted = {r.id: r for r in records if r.account_id == account_id}
        changed = 0
        async with self._lock:
            for record in wanted.values():
                if self.records.get(record.id) != record:
                    self._install(record)
                    changed += 1
            for breaker_id in [i for i, r in self.records.items() if r.account_id == account_id and i not in wanted]:
                self.records.pop(breaker_id, None)
                self.evaluator.remove(breaker_id)
                changed += 1
        if changed:
            log.warning("circuit breakers of account %s re-read (%d changed): %s", account_id, changed, by)
        return changed

    def load(self, records: Iterable[BreakerRecord]) -> None:
        """Install the breakers loaded from the store at start (invalid ones are logged and not enforced); a
        breaker already held is kept as it is."""
        records = [replace(r, symbols=r.symbols and [s.upper() for s in r.symbols],  # stored before names
                           exchanges=r.exchanges and [e.lower() for e in r.exchanges])  # were normalized
                   for r in records if r.id not in self.records]
        for r in records:
            self.records[r.id] = r
        self.evaluator.load(records)

    # ---- events ---------------------------------------------------------------------------------

    def on_state_changed(self, event: StateChanged) -> None:
        """Engine listener: record every breaker firing of the change. A row that cannot be queued is logged and
        the others are still recorded: a firing's pause is in force either way."""
        for firing in event.firings:
            try:
                self.record_event(firing)
            except Exception:
                events_log.exception("recording the event of breaker %s failed", firing.breaker_id)

    def record_event(self, firing: Firing) -> None:
        """Queue the circuit_breaker_events row (never dropped), and keep the latest events in memory for
        `list_events` while persistence is off."""
        record = event_record(firing)
        self._seq += 1
        self._recent.append((self._seq, record))
        self.store.enqueue_event(record)

    async def log_event(self, breaker_id: str, trader_id: str, at: float | None, triggered_values: dict[str, Any],
                        action_taken: str, action_result: dict[str, Any], positions_affected: list[dict[str, Any]],
                        by: str) -> BreakerEventRecord:
        """An event of an existing breaker raised by another system (ETRMS `log_event`): recorded and listed like a
        firing, nothing enforced. Waits (up to LOGGED_EVENT_FLUSH_SECONDS) until the store committed it; during
        an outage it stays queued (never dropped). `at` None = now. NotFound for an unknown breaker."""
        breaker = self.get(breaker_id)
        record = BreakerEventRecord(
            id=str(uuid.uuid4()), breaker_id=breaker.id, trader_id=trader_id, account_id=breaker.account_id,
            timestamp=self.clock.now() if at is None else at, triggered_values=triggered_values,
            action_taken=action_taken, action_result=action_result, positions_affected=positions_affected,
        )
        self._seq += 1
        self._recent.append((self._seq, record))
        self.store.enqueue_event(record)
        committed = True
        flush = getattr(self.store, "flush", None)  # the stores have it; BreakerStore does not promise it
        if flush is not None and getattr(self.store, "persistence_enabled", True):
            committed = await flush(LOGGED_EVENT_FLUSH_SECONDS)
        log.warning("circuit breaker %s %r event %s logged by %s: trader=%s action=%s triggered=%s result=%s%s",
                    breaker.id, breaker.name, record.id, by, trader_id or "-", action_taken, triggered_values,
                    action_result, "" if committed else " (queued: not committed yet)")
        return record

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        """Events newest first, and the cursor of the next page (None: no more). BadCursor for a cursor not
        handed out here."""
        if not getattr(self.store, "persistence_enabled", True) or (cursor or "").startswith(MEMORY_CURSOR):
            return self._recent_events(account_id, breaker_id, limit, cursor)
        return await self.store.list_events(account_id, breaker_id, limit, cursor)

    def _recent_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        """Memory only: page over the latest RECENT_EVENTS_KEPT events, newest first."""
        before: int | None = None
        if cursor:
            seq = cursor.removeprefix(MEMORY_CURSOR)
            if not cursor.startswith(MEMORY_CURSOR) or not (seq.isascii() and seq.isdigit() and len(seq) <= 18):
                raise BadCursor(f"not a cursor of the events kept in memory: {cursor!r}")
            before = int(seq)
        page: list[tuple[int, BreakerEventRecord]] = []
        for seq_no, r in reversed(self._recent):
            if before is not None and seq_no >= before:
                continue
            if account_id is not None and r.account_id != account_id:
                continue
            if breaker_id is not None and r.breaker_id != breaker_id:
                continue
            if len(page) == limit:
                return [r for _, r in page], f"{MEMORY_CURSOR}{page[-1][0]}"
            page.append((seq_no, r))
        return [r for _, r in page], None

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, breaker_id: str) -> BreakerRecord:
        record = self.records.get(breaker_id)
        if record is None:
            raise NotFound(f"no circuit breaker {breaker_id!r}")
        return record

    def by_name(self, account_id: str, name: str) -> BreakerRecord:
        """The account's breaker of this name (ETRMS `get_by_name`); NotFound when none."""
        for record in self.records.values():
            if record.account_id == account_id and record.name == name:
                return record
        raise NotFound(f"account {account_id!r} has no circuit breaker named {name!r}")

    def in_account(self, account_id: str) -> list[BreakerRecord]:
        """The account's breakers by name."""
        return sorted((r for r in self.records.values() if r.account_id == account_id), key=lambda r: (r.name, r.id))

    # ---- writes ---------------------------------------------------------------------------------

    def _check_name(self, account_id: str, name: str, breaker_id: str = "") -> None:
        for other in self.records.values():
            if other.account_id == account_id and other.name == name and other.id != breaker_id:
                raise Conflict(f"account {account_id!r} already has a circuit breaker named {name!r} (id {other.id})")

    def _install(self, record: BreakerRecord) -> None:
        self.records[record.id] = record
        self.evaluator.install(record)

    async def create(self, d: Definition, enabled: bool | None, by: str) -> BreakerRecord:
        """A new breaker (the store assigns its id); `enabled` None = enabled."""
        async with self._lock:
            self._check_name(d.account_id, d.name)
            now = self.clock.now()
            record = BreakerRecord(
                id="", name=d.name, description=d.description, account_id=d.account_id, condition=d.condition,
                action=d.action, parameters=d.parameters, symbols=d.symbols, exchanges=d.exchanges,
                enabled=True if enabled is None else enabled, created_at=now, updated_at=now,
            )
            record = await self.store.save_breaker(record, self._change(d.account_id, "", "created"))
            self._install(record)
        log.warning("circuit breaker %s %r created for account %s by %s: %s %s -> %s", record.id, record.name,
                    record.account_id, by, record.condition, record.parameters, record.action)
        return record

    async def update(self, breaker_id: str, d: Definition, enabled: bool | None, by: str) -> BreakerRecord:
        """Replace a breaker's definition (its account stays); `enabled` None = as it is."""
        async with self._lock:
            existing = self.get(breaker_id)
            self._check_name(existing.account_id, d.name, existing.id)
            record = replace(
                existing, name=d.name, description=d.description, condition=d.condition, action=d.action,
                parameters=d.parameters, symbols=d.symbols, exchanges=d.exchanges,
                enabled=existing.enabled if enabled is None else enabled, updated_at=self.clock.now(),
            )
            record = await self.store.update_breaker(record, self._change(existing.account_id, existing.id, "updated"))
            self._install(record)
        log.warning("circuit breaker %s %r updated by %s: %s %s -> %s", record.id, record.name, by,
                    record.condition, record.parameters, record.action)
        return record

    async def delete(self, breaker_id: str, by: str) -> None:
        async with self._lock:
            existing = self.get(breaker_id)
            await self.store.delete_breaker(existing.id, self._change(existing.account_id, existing.id, "deleted"))
            self.records.pop(existing.id, None)
            self.evaluator.remove(existing.id)
        log.warning("circuit breaker %s %r deleted by %s", existing.id, existing.name, by)

    async def set_enabled(self, breaker_id: str, enabled: bool, by: str) -> BreakerRecord:
        """Enable or disable a breaker; enabling an enabled one re-arms it (its episodes end)."""
        async with self._lock:
            existing = self.get(breaker_id)
            if existing.enabled == enabled:
                if enabled:
                    self.evaluator.rearm(existing.id)
                return existing
            change = self._change(existing.account_id, existing.id, "enabled" if enabled else "disabled")
            record = await self.store.set_breaker_enabled(existing.id, enabled, change)
            self._install(record)
        log.warning("circuit breaker %s %r %s by %s", record.id, record.name, "enabled" if enabled else "disabled",
                    by)
        return record
