"""Glue between the in-memory engine and the store: what is written when, and what is restored at start.

- Every engine state change enqueues a snapshot + history row (with the request's trace id); trades and
  breaker events are enqueued by their handlers. None of it waits on the database.
- At start the store is loaded: states, configurations, breakers, flags. A trader paused before the
  restart is still paused after it.
- If the database is down at start, the sidecar serves from memory and, when the database comes back,
  merges what was stored: traders unknown to memory are restored, and every stored pause that is still in
  force is kept (a pause is never lost because the database was late). Configurations and breakers that
  memory does not have are installed.
- `enable_persistence` off at run time: nothing is queued; on again: every trader's state is queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .api.breaker_admin import BreakerAdmin
from .api.config_admin import ConfigAdmin
from .api.config_records import from_record as config_from_record
from .engine.engine import RiskEngine
from .engine.snapshot import from_record, to_record
from .engine.state import Pause, TraderState
from .engine.types import ClosedTrade, Flags
from .store.errors import StoreUnavailable
from .store.protocol import Store
from .store.records import FlagsRecord, LoadedState, TradeRecord

log = logging.getLogger("tradeguard.persistence")

TraceId = Callable[[], str | None]


class Persistence:
    """Owns the store on behalf of the sidecar."""

    def __init__(
        self,
        store: Store,
        engine: RiskEngine,
        configs: ConfigAdmin,
        breakers: BreakerAdmin,
        trace_id: TraceId,
        load_timeout_s: float = 0.0,
    ) -> None:
        self.store = store
        self.load_timeout_s = load_timeout_s  # start-up waits this long for the load (0 = no bound)
        self.engine = engine
        self.configs = configs
        self.breakers = breakers
        self.trace_id = trace_id
        self.loaded = False
        self._starting = False
        self.flags_changed_at_runtime = False
        self._late_load: asyncio.Task[None] | None = None
        store.persistence_enabled = engine.flags.enable_persistence

    # ---- hot path listeners (never await, never raise) ------------------------------------------

    def on_change(self, st: TraderState, reason: str) -> None:
        self.store.enqueue_state(to_record(st), reason, self.trace_id())

    def on_trade(self, trader_id: str, account_id: str, trade: ClosedTrade) -> None:
        self.store.enqueue_trade(TradeRecord(trader_id, account_id, trade.trade_id, trade.symbol, trade.exchange,
                                             trade.side.name, trade.realized_pnl, trade.closed_at))

    # ---- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and load what the store holds; never fails because the database is down."""
        self._starting = True
        try:
            await self.store.start()
            load = asyncio.ensure_future(self.store.load())
            done, _pending = await asyncio.wait({load}, timeout=self.load_timeout_s or None)
            if not done:  # a database that takes the connection but does not answer: do not hold start-up
                log.warning("store load did not finish within %.0f s: serving from memory; stored state is "
                            "merged when the load finishes", self.load_timeout_s)
                self._late_load = asyncio.get_running_loop().create_task(self._finish_load(load))
                return
            loaded = load.result()
        except StoreUnavailable as exc:
            log.warning("store unavailable at start (%s): serving from memory; stored state is merged when "
                        "the database returns", exc)
            return
        finally:
            self._starting = False
        self._install(loaded, merge=False)

    def on_health_change(self, healthy: bool) -> None:
        """Store health listener: on the first recovery after a failed start-up load, merge the store."""
        if healthy and not self.loaded and not self._starting and self._late_load is None:
            self._late_load = asyncio.get_running_loop().create_task(self._load_late())

    async def _finish_load(self, load: asyncio.Future[LoadedState]) -> None:
        try:
            loaded = await load
        except StoreUnavailable as exc:
            log.warning("store load failed after start-up (%s); stored state is merged when the database returns",
                        exc)
            self._late_load = None
            return
        self._install(loaded, merge=True)

    async def _load_late(self) -> None:
        try:
            loaded = await self.store.load()
        except StoreUnavailable as exc:
            log.warning("store recovered but loading failed (%s); will retry on the next recovery", exc)
            self._late_load = None
            return
        self._install(loaded, merge=True)

    def _install(self, loaded: LoadedState, merge: bool) -> None:
        engine = self.engine
        now = engine.clock.now()
        restored = merged = 0
        for rec in loaded.traders:
            current = engine.traders.get(rec.trader_id)
            stored = from_record(rec, loaded.trade_ids.get(rec.trader_id, ()))
            if current is None:
                engine.restore(stored)  # already stored as it is: nothing to write
                restored += 1
                continue
            # Memory is newer (the sidecar ran while the database was down): keep it, but never drop a
            # stored pause that is still in force, and continue the version sequence past the stored one.
            for pause in stored.pauses:
                if pause.active(now) and not any(_same(pause, p) for p in current.pauses):
                    current.pauses.append(pause)
            current.version = max(current.version, stored.version) + 1
            current.updated_at = now
            merged += 1
            engine.on_change(current, "merged with stored state after the database returned")
        self.configs.load([config_from_record(c) for c in loaded.configs
                           if c.config_id not in self.configs.configs.get(c.account_id, {})])
        self.breakers.load([b for b in loaded.breakers if b.id not in self.breakers.records])
        if loaded.flags is not None and not self.flags_changed_at_runtime:
            engine.flags = Flags(loaded.flags.enable_risk_enforcement, loaded.flags.enable_persistence)
            self.store.persistence_enabled = engine.flags.enable_persistence
        self.loaded = True
        paused = sum(1 for st in engine.traders.values() if st.effective_pause(now) is not None)
        log.info("%s from store: %d traders restored (%d merged, %d paused now), %d configurations, "
                 "%d breakers, flags %s", "merged" if merge else "loaded", restored, merged, paused,
                 len(loaded.configs), len(loaded.breakers), "stored" if loaded.flags is not None else "from settings")

    # ---- flags ----------------------------------------------------------------------------------

    async def on_flags(self, old: Flags, new: Flags) -> None:
        """Apply flags at once; persist them best-effort (a database outage must not block a flag)."""
        self.flags_changed_at_runtime = True
        self.store.persistence_enabled = new.enable_persistence
        if new.enable_persistence and not old.enable_persistence:
            for st in self.engine.traders.values():
                self.store.enqueue_state(to_record(st), "persistence enabled: current state", self.trace_id())
        try:
            await self.store.save_flags(FlagsRecord(new.enable_risk_enforcement, new.enable_persistence))
        except StoreUnavailable as exc:
            log.warning("feature flags applied but not stored (store unavailable: %s); they revert to the "
                        "stored or configured values on restart", exc)

    # ---- stop -----------------------------------------------------------------------------------

    async def close(self, drain_timeout: float) -> int:
        if self._late_load is not None and not self._late_load.done():
            self._late_load.cancel()
        left = await self.store.close(drain_timeout)
        if left:
            log.warning("shutdown: %d store rows not written within %.1fs", left, drain_timeout)
        else:
            log.info("shutdown: store queue drained")
        return left


def _same(a: Pause, b: Pause) -> bool:
    return a.code is b.code and a.source == b.source and a.until == b.until and a.state is b.state
