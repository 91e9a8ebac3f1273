"""Bounded traders (issue 21): at most `max_traders` in memory, idle ones evicted, loaded again on their next call.

Every trader in memory costs ~2.9 KB (measured: 20,000 ids took RSS from 74 to 129 MiB). A bot that uses a fresh
trader_id per order, or a hostile client, would otherwise grow the sidecar until the kernel kills it, pauses and all.

- **The bound.** A call that would add a trader to memory (the first CanTrade or report of a trader_id that is
  neither in memory nor evicted, and a declared Session of one) while `len(engine.traders) >= max_traders` is
  answered RESOURCE_EXHAUSTED (HTTP 429, a Session request's `error`) naming the setting. Traders in memory and
  evicted ones (their reload) are never refused: they existed before the bound was reached. 0 = no bound.
- **Eviction.** Every EVICT_ROUND_S a task (off the hot path; EVICT_BATCH traders per turn of the event loop, then
  it yields) evicts the traders idle for `trader_idle_evict_seconds` (no call, no report, no state change; 0 = never)
  that nothing pins (`pin_reason`): an active pause of any kind (own, limit, breaker, kill switch, account or
  every-account), a pending order, a breaker episode in progress, an order or fill within the last RATE_WINDOW_S
  (the memory-only rate windows: max_orders_per_window, max_fills_per_window, duplicate orders), a declared
  Session open on it, a WatchRiskState watcher, a heartbeat (dead-man's switch) configured for its account, an
  account-wide limit on its account (the account sums are taken over the traders in memory), order bookkeeping not
  yet queued for the store.
- **Stored first.** A trader is evicted only once its latest version is written: a round marks a candidate with
  (its version, the store queue's sequence number); a later round evicts it when the version is unchanged and the
  writer has written everything up to that sequence number (a database down keeps everyone in memory). With the
  `memory` store nothing is ever evicted (it would lose the state).
- **Reload.** Single mode (SQLite): the evicted ids are kept (a set, ~140 bytes a
  trader against ~2.9 KB); the next call of one awaits the read of that trader's row and its recent trade ids (one
  primary-key read; concurrent first calls share it; no other trader's call waits) and installs it with
  engine.restore, so equity, peak, period starts, daily PnL, positions, pauses and trade ids are the stored ones. A
  failed read answers UNAVAILABLE "state of trader X not loaded" (fail closed; the client's can_trade denies with
  SIDECAR_UNAVAILABLE) and the trader stays evicted. A heartbeat configured for its account while it was evicted
  counts its silence from the first dead-man's switch scan that found it (engine.heartbeat): past the timeout, the
  reload pauses it before the call is answered. Cluster mode (PostgreSQL): eviction drops the trader from
  the owned set and releases its lease (expires now, by epoch); its next call claims it like any trader not in
  memory (cluster.takeover), which reads its stored row.
- Forgotten with the trader: its per-trader metrics gauges, its CanTrade answer template (api/convert), its
  dead-man's switch entry, its queued-snapshot mark.

At start (single mode) the load installs only the stored traders that are pinned or were active within
trader_idle_evict_seconds (and at most max_traders of those unpinned); the others stay in the store as evicted
(`admit`). The load itself still reads every stored row once (its transient memory); in cluster mode the load
installs the traders whose leases name this sidecar. Admin listings (ListBindings, risk states) show the traders
in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from .api.errors import ApiError, Unavailable
from .engine.engine import RiskEngine
from .engine.snapshot import from_record
from .engine.state import TraderState
from .store.records import StateRecord

log = logging.getLogger("tradeguard.residency")

EVICT_ROUND_S = 1.0  # the eviction task's period (at most; a round over many traders yields every EVICT_BATCH)
EVICT_BATCH = 2_000  # traders looked at per turn of the event loop
RATE_WINDOW_S = 3_600.0  # memory-only rate windows (orders, fills, duplicates) last at most this long
# (state record or None, the trader's recent trade ids) of one trader, read from the store
Reader = Callable[[str], Awaitable[tuple[StateRecord | None, Sequence[str]]]]


class TraderLimitReached(ApiError):
    """RESOURCE_EXHAUSTED: memory holds max_traders traders; a new one is refused."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Written(Protocol):
    """The store's write progress (store.store.RiskStore): the last sequence number queued, and up to which
    everything queued is written."""

    def queued_seq(self) -> int: ...

    def written_through(self) -> int: ...


class Owners(Protocol):
    """Cluster mode's ownership (cluster.takeover.Takeover), as eviction uses it."""

    owned: dict[str, int]

    async def release_some(self, owned: dict[str, int]) -> None: ...


class Residency:
    """Which traders are in memory (see the module docstring). `start()` the eviction task; `close()` it."""

    def __init__(
        self,
        engine: RiskEngine,
        *,
        max_traders: int,
        idle_s: float,
        written: Written | None,
        read: Reader | None,
        owners: Owners | None = None,
        trader_stored: Callable[[str], Awaitable[bool]] | None = None,
        pins: Sequence[Callable[[TraderState, float], str | None]] = (),
        last_heard: Callable[[str], float | None] = lambda _t: None,
        touch: Callable[[str], None] = lambda _t: None,
    ) -> None:
        self.engine = engine
        self.max_traders = max_traders  # 0 = no bound
        # 0 = never; never without a durable store (`written` None: the memory store would lose the state)
        self.idle_s = idle_s if written is not None else 0.0
        self.written = written
        self.read = read  # single mode's reload of one trader (None in cluster mode: the claim reads it)
        self.owners = owners
        self.trader_stored = trader_stored  # cluster mode, memory full: is a trader not in memory a stored one?
        self.pins = list(pins)  # more pins (sessions, watchers, ...): a reason string pins the trader
        self.last_heard = last_heard  # engine-clock time of the trader's last call (dead-man's switch's record)
        # A reloaded trader was just heard (its loading call came before it was in memory); told while its id is
        # still in `evicted` (the dead-man's switch judges its silence then).
        self.touch = touch
        # Cluster mode: a trader evicted here and claimed back with the next epoch (nobody owned it meanwhile) is
        # told here, before its call is answered (the dead-man's switch judges its silence: DeadMansSwitch.returned).
        self.rejoined: Callable[[TraderState], None] = lambda _st: None
        # Cluster mode: a trader taken over from an ended lease, with the seconds nobody owned it (claimed())
        self.taken_over: Callable[[TraderState, float], None] = lambda _st, _unowned_s: None
        self.forgets: list[Callable[[str], None]] = []  # told of every evicted trader id (metrics, caches)
        self.evicted: set[str] = set()  # single mode: ids in the store, not in memory
        self._released: dict[str, int] = {}  # cluster mode: ids evicted here -> the lease epoch released
        # cluster mode: ids evicted here whose call is claiming them back -> the epoch released (claimed())
        self.returning: dict[str, int] = {}
        engine.evicted = self.evicted  # the engine refuses to make a fresh state over one of them
        self.evicted_total = 0
        self.loaded_total = 0
        self.rejected_total = 0
        self.load_failures = 0
        self.release_failures = 0
        self.left_at_start = 0  # stored traders the start-up load left in the store (idle; loaded on their next call)
        self._marks: dict[str, tuple[int, int]] = {}  # candidate -> (its version, the queue's seq) when marked
        self._loads: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._cursor: list[str] = []

    @property
    def in_memory(self) -> int:
        return len(self.engine.traders)

    # ---- the call path --------------------------------------------------------------------------

    async def ensure(self, trader_id: str, account_id: str, creates: bool = True) -> None:
        """Before a call for a trader not in memory: an evicted one is loaded (awaits its own read only); a new
        one (`creates`) is refused when memory holds max_traders. Raises Unavailable or TraderLimitReached."""
        engine = self.engine
        if trader_id in engine.traders or engine.journal is not None:  # (unloaded: the start-up load decides)
            return
        if trader_id in self.evicted:
            await self._reload(trader_id)
            return
        if trader_id in self._released:  # cluster mode: evicted here; the claim that follows reads it back
            self.returning[trader_id] = self._released.pop(trader_id)
            self.loaded_total += 1
            return
        if not creates or not self.max_traders or len(engine.traders) < self.max_traders:
            return
        if self.owners is not None and self.trader_stored is not None:
            # Cluster mode: an evicted trader is not remembered here (its lease is released); the store tells.
            try:
                stored = await self.trader_stored(trader_id)
            except Exception as exc:
                raise Unavailable(f"state of trader_id {trader_id} not loaded: memory is full (max_traders="
                                  f"{self.max_traders}) and the store cannot say whether it is a known trader "
                                  f"({exc}); retry") from None
            if stored:
                return
        self.rejected_total += 1
        raise TraderLimitReached(
            f"max_traders ({self.max_traders}) reached: trader_id {trader_id} is not in memory and "
            f"{len(engine.traders)} traders are; a new trader is refused until idle ones are evicted "
            f"(trader_idle_evict_seconds={self.idle_s:g}) or max_traders is raised")

    async def _reload(self, trader_id: str) -> None:
        fut = self._loads.get(trader_id)
        if fut is None:
            fut = asyncio.ensure_future(self._load(trader_id))
            self._loads[trader_id] = fut
            fut.add_done_callback(lambda f: self._loads.pop(trader_id, None) if self._loads.get(trader_id) is f
                                  else None)
        await asyncio.shield(fut)

    async def _load(self, trader_id: str) -> None:
        assert self.read is not None
        try:
            rec, trade_ids = await self.read(trader_id)
        except Exception as exc:
            self.load_failures += 1
            log.warning("trader %s: its stored state could not be read back after its eviction (%s): its calls "
                        "answer UNAVAILABLE until it can", trader_id, exc)
            raise Unavailable(f"state of trader_id {trader_id} not loaded: it was evicted from memory (idle) and the "
                              f"store cannot be read now ({exc}); retry") from None
        engine = self.engine
        if trader_id not in self.evicted or trader_id in engine.traders:  # (loaded meanwhile: nothing to do)
            return
        try:
            if rec is not None:
                engine.restore(from_record(rec, list(trade_ids)))
                # Heard, while the id is still in engine.evicted: the dead-man's switch first judges its silence
                # while evicted (engine.heartbeat; a heartbeat configured meanwhile may pause it before the call).
                self.touch(trader_id)
        finally:
            self.evicted.discard(trader_id)
            self.loaded_total += 1

    def admit(self, st: TraderState) -> bool:
        """At the start-up load (single mode): install a stored trader, or leave it in the store as evicted when it
        is idle and unpinned, or when memory already holds max_traders (it is loaded on its next call)."""
        engine = self.engine
        if self.idle_s <= 0 or self.read is None:
            return True
        now = engine.clock.now()
        full = bool(self.max_traders) and len(engine.traders) >= self.max_traders
        if not full and (now - st.updated_at < self.idle_s or self.pin_reason(st, now) is not None):
            return True
        if full and self.pin_reason(st, now) is not None:
            return True  # (a pinned trader is never left out: the bound only refuses new traders)
        self.evicted.add(st.trader_id)
        self.left_at_start += 1
        return False

    # ---- eviction -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.idle_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tradeguard-eviction")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.evict_round()
            except Exception:  # a bug here must not stop the next rounds
                log.exception("eviction round failed")
            await asyncio.sleep(max(0.05, EVICT_ROUND_S - (time.monotonic() - started)))

    def pin_reason(self, st: TraderState, now: float) -> str | None:
        """Why the trader must stay in memory (None: it may be evicted once idle and stored)."""
        if st.pauses and st.effective_pause(now) is not None:
            return "paused"
        if st.orders:
            return "pending orders"
        if st.breaker_episodes:
            return "breaker episode"
        last = max(st.order_times[-1] if st.order_times else 0.0, st.fill_times[-1] if st.fill_times else 0.0,
                   next(reversed(st.recent_orders.values())) if st.recent_orders else 0.0)
        if last > now - RATE_WINDOW_S:
            return "rate windows open"
        limits = self.engine.limits_for(st.account_id)
        if limits.heartbeat_timeout_seconds is not None:
            return "heartbeat"
        if limits.account_limited:
            return "account-wide limits"
        for pin in self.pins:
            why = pin(st, now)
            if why is not None:
                return why
        return None

    def claimed(self, st: TraderState, epoch: int, unowned_s: float | None = None) -> None:
        """Cluster mode (cluster.takeover, on each claim's install): `st` was installed with lease `epoch`. A trader
        this sidecar evicted, claimed back with the epoch right after the one it released (no other sidecar owned it
        meanwhile, so none heard the bot), is a reload: `rejoined` (the dead-man's switch) judges it. Any other
        claim that replaced an ended lease (its owner died or stopped, or evicted it) is a takeover after
        `unowned_s` seconds without an owner: `taken_over` judges it."""
        released = self.returning.pop(st.trader_id, None)
        if released is not None and released >= 0 and epoch == released + 1:
            self.rejoined(st)
        elif unowned_s is not None:
            self.taken_over(st, unowned_s)

    async def evict_round(self) -> int:
        """One pass over every trader in memory, EVICT_BATCH per turn of the loop. Returns how many it evicted."""
        engine, written = self.engine, self.written
        self.returning.clear()  # (claims still pending from the last round: a claim takes milliseconds)
        if self.idle_s <= 0 or written is None or engine.journal is not None or not engine.flags.enable_persistence:
            return 0  # (persistence off: nothing is queued, so nothing could be known stored)
        ids = list(engine.traders)
        evicted = 0
        released: dict[str, int] = {}
        for start in range(0, len(ids), EVICT_BATCH):
            if start:
                await asyncio.sleep(0)  # other calls run between batches
                if engine.journal is not None:
                    break
            now = engine.clock.now()
            done = written.written_through()
            seq = written.queued_seq()
            for trader_id in ids[start:start + EVICT_BATCH]:
                st = engine.traders.get(trader_id)
                if st is None:
                    self._marks.pop(trader_id, None)
                    continue
                heard = self.last_heard(trader_id) or 0.0
                if now - max(heard, st.updated_at) < self.idle_s or self.pin_reason(st, now) is not None:
                    self._marks.pop(trader_id, None)
                    continue
                mark = self._marks.get(trader_id)
                if mark is None or mark[0] != st.version:
                    self._marks[trader_id] = (st.version, seq)  # everything of it queued so far has seq <= this
                    continue
                if mark[1] > done:
                    continue  # not written yet: looked at again next round
                epoch = self._evict(st)
                if epoch is not None:
                    released[trader_id] = epoch
                evicted += 1
        if released and self.owners is not None:
            try:
                await self.owners.release_some(released)
            except Exception as exc:  # they lapse within trader_lease_seconds: nothing is lost
                self.release_failures += 1
                log.warning("eviction: leases of %d traders not released (%s): they lapse", len(released), exc)
        if evicted:
            log.info("eviction: %d idle traders left memory (stored; loaded again on their next call); %d in memory",
                     evicted, len(engine.traders))
        return evicted

    def _evict(self, st: TraderState) -> int | None:
        """Drop the trader from memory (its state is stored). Cluster mode: the lease epoch to release."""
        trader_id = st.trader_id
        del self.engine.traders[trader_id]
        self._marks.pop(trader_id, None)
        epoch = None
        if self.owners is not None:
            epoch = self.owners.owned.pop(trader_id, None)  # its next call claims it (and reads its stored row)
            self._released[trader_id] = -1 if epoch is None else epoch
        else:
            self.evicted.add(trader_id)
        for forget in self.forgets:
            try:
                forget(trader_id)
            except Exception:
                log.exception("eviction of trader %s: forgetting it in %r failed", trader_id, forget)
        self.evicted_total += 1
        return epoch

    def stats(self) -> dict[str, Any]:
        return {"in_memory": len(self.engine.traders), "evicted_known": len(self.evicted) + len(self._released),
                "evicted_total": self.evicted_total, "loaded_total": self.loaded_total,
                "rejected_total": self.rejected_total}
