"""Glue between the in-memory engine and the store: what is written when, and what is restored at start.

- Every engine state change (events.StateChanged, `on_state_changed` is one of the engine's listeners) enqueues
  a snapshot + history row (with the request's trace id); trades are enqueued by their handler, breaker events
  by the breaker event recorder (another listener). None of it waits on the database.
- Nothing is answered from a state the store has not been merged into. Until the stored state is installed
  the engine runs *unloaded*: CanTrade's verdict passes through the `unloaded_state_policy` gate
  (engine/unloaded.py), and every state-changing call is journaled. Nothing of this run is written meanwhile but
  the journal itself, to the local spool when there is one (store/spooled_journal.py): a stop before the database
  returns keeps those calls, replayed by the next start (on the spooled states at once, on the stored state when
  it loads).
- At start the store is loaded (states, trade ids, configurations, breakers, flags) before the server
  answers. When that fails (database down) or takes longer than the bound (database slow), the sidecar
  answers under the policy and keeps loading; when the load succeeds, the stored state is the base and the
  journal is replayed on it through the engine's own functions, at the times the calls arrived: peak,
  period-start equities, pauses, trade ids and breakers are the stored ones, and a report that arrived
  meanwhile is judged against them (and against the stored configurations and breakers).
- Feature flags: a flag given at start (CLI, environment, settings file) beats the stored one; otherwise the stored one;
  otherwise the default. A late load never changes a flag. SetFeatureFlags during an outage is applied at
  once and written when the database returns.
- `enable_persistence` off at run time: nothing is queued; on again: every trader's state is queued (not loaded:
  the calls journaled meanwhile go to the local spool).
- Cluster mode (PostgreSQL; `owners`, cluster.takeover): before each load attempt the sidecar takes back the leases
  naming it and claims the traders that called meanwhile (when free); the load installs only the traders it owns
  (the others stay in the store until their first call here claims them), their pause/resume changes are replayed,
  and the journal is replayed for those traders only. At a clean shutdown the leases are released after the final
  flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from .cluster.changes import ControlChange
from .engine.engine import AccountMismatchError, JournalEntry, Outcome, RiskEngine
from .engine.events import StateChanged
from .engine.orders import count_held_orders
from .engine.snapshot import from_record, to_record
from .engine.state import SEEN_TRADE_IDS_KEPT, TraderState
from .engine.types import ClosedTrade, Flags, PendingOrder, TradingState
from .engine.unloaded import UnloadedGate
from .services.breakers import BreakerService
from .services.configs import ConfigService
from .store.errors import StoreUnavailable
from .store.protocol import PersistenceStore
from .store.records import FlagsRecord, LoadedState, TradeRecord
from .store.spooled_journal import REPLAYED, SpooledJournal

log = logging.getLogger("tradeguard.persistence")

TraceId = Callable[[], str | None]
StateLoaded = Callable[[], Awaitable[None]]
FLAG_NAMES = ("enable_risk_enforcement", "enable_persistence")
TRADE_LOOKUP_TIMEOUT_S = 2.0  # ReportTrade waits at most this long for an old trade id's lookup
LOAD_RETRY_MAX_S = 5.0
JOURNAL_MAX = 100_000  # calls kept for the replay while the stored state is not loaded (~20 MB)


async def _nothing() -> None:
    return None


class Owners(Protocol):
    """Cluster mode's ownership of traders (cluster.takeover.Takeover), as the load and the shutdown use it."""

    async def start_claims(self, journaled: Collection[str]) -> None: ...

    def owns(self, trader_id: str) -> bool: ...

    def after_install(self) -> None: ...

    async def release(self) -> None: ...


class _At:
    """The clock of a replayed call: the time the call arrived."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class Journal(list[JournalEntry]):
    """The calls received while the stored state is not loaded, at most JOURNAL_MAX. Beyond it the older half of
    the equity and position reports is dropped, each trader's newest kept (they are levels and snapshots: the
    newest carry the trader's state) and so are its lowest and highest equity (a breach and a peak must still be
    judged on the stored state when it loads); trades and kill-switch calls are kept, so with nothing left to thin the
    journal grows past the bound. Counted and logged."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0
        self._thin_at = JOURNAL_MAX
        self.sink: Callable[[JournalEntry], None] | None = None  # the durable copy (SpooledJournal.add)
        self.thinned: Callable[[list[JournalEntry]], None] | None = None  # ... rewritten (SpooledJournal.replace)

    def append(self, entry: JournalEntry) -> None:
        super().append(entry)
        if self.sink is not None:
            self.sink(entry)
        if len(self) > self._thin_at:
            self._thin()
            # Nothing left to thin (trades, kill switches, each trader's newest level): grow a tenth before the
            # next scan rather than scanning on every call.
            self._thin_at = len(self) + JOURNAL_MAX // 10 if len(self) > JOURNAL_MAX else JOURNAL_MAX

    def _thin(self) -> None:
        newest: set[int] = set()  # kept: each trader's newest report of each kind, and its extreme equities
        seen: set[tuple[str, object]] = set()
        lowest: dict[object, tuple[float, int]] = {}
        highest: dict[object, tuple[float, int]] = {}
        for i in range(len(self) - 1, -1, -1):
            _at, op, args = self[i]
            if (op, args[0]) not in seen:
                seen.add((op, args[0]))
                newest.add(i)
            if op == "report_equity":
                equity = float(args[2])  # type: ignore[arg-type]
                if args[0] not in lowest or equity < lowest[args[0]][0]:
                    lowest[args[0]] = (equity, i)
                if args[0] not in highest or equity > highest[args[0]][0]:
                    highest[args[0]] = (equity, i)
        # A breach (the lowest level) and the peak (the highest) must still be judged on the stored state.
        newest.update(i for _e, i in lowest.values())
        newest.update(i for _e, i in highest.values())
        levels = [i for i, (_at, op, _args) in enumerate(self)
                  if op in ("report_equity", "report_positions") and i not in newest]
        drop = set(levels[: max(1, len(levels) // 2)])  # never a trade or a kill switch
        if not drop:
            return
        self[:] = [e for i, e in enumerate(self) if i not in drop]
        if self.thinned is not None:
            self.thinned(list(self))
        if not self.dropped:
            log.warning("stored state still not loaded after %d calls: dropping the oldest equity and position "
                        "reports from the replay journal (each trader's newest, lowest and highest are kept)",
                        JOURNAL_MAX)
        self.dropped += len(drop)


class Persistence:
    """Owns the store on behalf of the sidecar."""

    def __init__(
        self,
        store: PersistenceStore,
        engine: RiskEngine,
        configs: ConfigService,
        breakers: BreakerService,
        trace_id: TraceId,
        load_timeout_s: float = 0.0,
        unloaded_policy: str = "reduce_only",
        flags_given: frozenset[str] = frozenset(),
        on_loaded: StateLoaded = _nothing,
        owners: Owners | None = None,
    ) -> None:
        self.store = store
        self.load_timeout_s = load_timeout_s  # start-up waits this long for the load (0 = no bound)
        self.engine = engine
        self.configs = configs
        self.breakers = breakers
        self.trace_id = trace_id
        self.flags_given = flags_given  # flags given at start: they beat the stored ones
        self.on_loaded = on_loaded  # awaited once the stored state is installed (health says so)
        self.owners = owners  # cluster mode: only the traders this sidecar owns are installed and replayed
        self.not_owned_skipped = 0  # journaled calls of traders another sidecar owns, not replayed
        # Cluster mode: a kill switch journaled for a trader another sidecar owns is not replayed here: its net
        # pause (the trader's last journaled pause or resume, when a pause still in force) goes to the owner as a
        # control change through this (account_id, trader_id, state, until, reason) -> appended; set by the sidecar.
        self.forward_pause: Callable[[str, str, TradingState, float | None, str], Awaitable[object]] | None = None
        self._foreign_kill: dict[str, JournalEntry] = {}  # trader -> its last journaled pause/resume, not owned
        # trader -> (version, until) from the spool's REPLAYED markers: its calls journaled up to `until` are held by
        # a state at `version` or newer (replayed by a run that stopped before the spool forgot them)
        self._covered: dict[str, tuple[int, float]] = {}
        # trader -> the order times a state restored from the spool rebuilt from its orders (until the load)
        self._spooled_times: dict[str, tuple[float, ...]] = {}
        self.already_replayed = 0  # journaled calls skipped: the state they were replayed on holds them
        self.gate = UnloadedGate(unloaded_policy, lambda: engine.flags.enable_risk_enforcement)
        self.loaded = False
        self.replaying = False  # True while the calls received before the load are replayed on the stored state
        self.replayed = 0  # journaled calls replayed on the stored state by a late load
        self._loader: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()
        self._pending_flags: FlagsRecord | None = None  # set during an outage, written when the database returns
        self._pending_change: ControlChange | None = None  # the control_changes row written with them
        # (kind, account_id, payload) -> the control_changes row of a flags write (cluster.plane); None: none.
        self.record: Callable[[str, str, dict[str, Any]], ControlChange] | None = None
        self.control_version = 0  # the newest control_changes version when the stored state was read
        self._flag_writer: asyncio.Task[None] | None = None
        self._flags_wake = asyncio.Event()
        store.persistence_enabled = engine.flags.enable_persistence
        self._unsnapped: dict[str, TraderState] = {}  # order bookkeeping not yet snapshotted (flush_bookkeeping)
        # Bounded traders (residency.py), single mode: whether a stored trader is installed at the load (False: it
        # stays in the store, evicted, until its next call). None: every one is installed.
        self.admit: Callable[[TraderState], bool] | None = None
        self._snap_scheduled = False
        self.spooled: SpooledJournal | None = None  # the journal's durable copy (a store with a local spool)

    # ---- hot path listeners (never await, never raise) ------------------------------------------

    def on_state_changed(self, event: StateChanged) -> None:
        """The engine listener: the new state and its history row to the store queue.

        Order bookkeeping (`event.audit` False: an order allowed, accepted, cancelled, released) gets no history
        row, and its snapshot is taken once per turn of the event loop for all such changes of a trader (at the
        latest before the store drains at shutdown): a busy bot's every allowed order would otherwise copy its
        whole state (~10-20 µs) on the CanTrade path and write a history row holding every pending order.
        """
        if self.engine.journal is not None:  # unloaded: the replay on the stored state writes it
            return
        st = event.state
        if event.audit:
            self._unsnapped.pop(st.trader_id, None)
            self.store.enqueue_state(to_record(st), event.reason, self.trace_id())
            return
        self._unsnapped[st.trader_id] = st
        if not self._snap_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush_bookkeeping)
            except RuntimeError:  # no event loop (a test driving the engine directly): now
                self.flush_bookkeeping()
                return
            self._snap_scheduled = True

    def flush_bookkeeping(self) -> None:
        """Queue the snapshots of the traders whose order bookkeeping changed since the last flush."""
        self._snap_scheduled = False
        pending, self._unsnapped = self._unsnapped, {}
        if self.engine.journal is not None:
            return
        for st in pending.values():
            if self.engine.traders.get(st.trader_id) is st:  # not rebound meanwhile
                self.store.enqueue_state(to_record(st), "order bookkeeping", None, history=False)

    def on_trade(self, trader_id: str, account_id: str, trade: ClosedTrade) -> None:
        if self.engine.journal is not None:  # unloaded: written by the replay unless it is a stored one
            return
        self.store.enqueue_trade(TradeRecord(trader_id, account_id, trade.trade_id, trade.symbol, trade.exchange,
                                             trade.side.name, trade.realized_pnl, trade.closed_at))

    async def trade_known(self, trader_id: str, trade_id: str) -> bool:
        """Whether an id no longer kept in memory is in trade_reports (False when the store cannot tell)."""
        try:
            known = await asyncio.wait_for(self.store.known_trade_ids(trader_id, [trade_id]),
                                           TRADE_LOOKUP_TIMEOUT_S)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("trade %s of trader %s: not among the %d ids kept in memory and the store cannot be "
                        "asked (%s); counted as new", trade_id, trader_id, SEEN_TRADE_IDS_KEPT, exc or "timeout")
            return False
        return trade_id in known

    # ---- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and load the stored state, waiting at most `load_timeout_s`. Never fails because
        the database is down: the engine then answers under the unloaded-state policy until the load succeeds."""
        engine = self.engine
        journal = Journal()
        engine.gate, engine.journal = self.gate, journal
        await self.store.start()
        previous = await self._spooled_journal(journal)
        load = asyncio.ensure_future(self._load())
        done, _pending = await asyncio.wait({load}, timeout=self.load_timeout_s or None)
        if done and load.exception() is None:
            await self._install(load.result(), late=False)
            return
        why = f"the load did not finish within {self.load_timeout_s:.0f} s" if not done else str(load.exception())
        log.warning("stored state NOT LOADED at start (%s): health tradeguard.state NOT_SERVING; CanTrade answers "
                    "STATE_NOT_LOADED under unloaded_state_policy=%s until the load succeeds; the reports received "
                    "meanwhile are replayed on the stored state", why, self.gate.policy)
        await self._restore_spooled(previous)
        self._loader = asyncio.get_running_loop().create_task(self._load_until_done(None if done else load))

    async def _spooled_journal(self, journal: Journal) -> list[JournalEntry]:
        """With a local spool: the calls an earlier run journaled and never saw loaded (they lead this run's
        journal, replayed on the stored state at the load), and this run's journaled calls go to the spool too."""
        spool = getattr(self.store, "spool", None)
        if spool is None:
            return []
        self.spooled = spooled = SpooledJournal(spool)
        previous = []
        for entry in await spooled.previous():
            if entry[1] != REPLAYED:
                previous.append(entry)
                journal.append(entry)
                continue
            spooled.markers.append(entry)
            versions = entry[2][0]
            assert isinstance(versions, dict)
            for trader_id, (version, until) in versions.items():
                if version > self._covered.get(trader_id, (-1, 0.0))[0]:
                    self._covered[trader_id] = (int(version), float(until))
        journal.sink = self._journal_call
        journal.thinned = self._journal_thinned
        if previous:
            log.warning("%d calls received by an earlier run before its stored state was loaded (from the local "
                        "spool %s): replayed on the stored state when it loads", len(previous), spool.path)
        return previous

    def _journal_call(self, entry: JournalEntry) -> None:
        if self.spooled is not None and self.engine.flags.enable_persistence:  # (off: on_flags spools them once on)
            self.spooled.add(entry)

    def _journal_thinned(self, entries: list[JournalEntry]) -> None:
        if self.spooled is not None and self.engine.flags.enable_persistence:
            self.spooled.replace(entries)

    async def journal_committed(self, timeout: float) -> bool:  # noqa: ASYNC109 - the kill switch's bound
        """Not loaded: whether every call journaled so far is committed to the local spool, waited for at most
        `timeout` s (a kill switch answers after it: a SIGKILL right after the answer keeps it). False without one."""
        spooled = self.spooled
        if spooled is None or not self.engine.flags.enable_persistence:
            return False
        try:
            await asyncio.wait_for(spooled.drain(), timeout)
        except TimeoutError:
            return False
        return not spooled.failed

    async def _restore_spooled(self, previous: list[JournalEntry]) -> None:
        """Database unreachable at start: the latest states the spool holds (store.spool: what this sidecar had
        when the database was last unreachable, e.g. before a SIGKILL) are the engine's until the load succeeds,
        so a trader paused then is still paused; the calls an earlier run journaled (`previous`: an operator's
        HALT made on a sidecar that itself started from the spool) are replayed on them. The unloaded gate still
        applies on top; the late load replaces them with the stored state (the spool is replayed into the database
        first) and replays the journal on it."""
        spooled = getattr(self.store, "spooled_states", None)
        states, trade_ids = await spooled() if spooled is not None else ([], {})
        if not states and not previous:
            return
        engine = self.engine
        for rec in states:
            if rec.trader_id not in engine.traders:
                st = from_record(rec, trade_ids.get(rec.trader_id, ()))
                engine.restore(st)
                self._spooled_times[rec.trader_id] = tuple(st.order_times)  # (rebuilt: the load rebuilds them too)
        if previous:
            journal, engine.journal = engine.journal, []  # (not None: nothing written; they are in the journal)
            try:
                self._replay(previous, frozenset(), owned_only=False)
            finally:
                engine.journal = journal
            _count_replayed_orders(engine, previous)
        now = engine.clock.now()
        paused = sum(1 for st in engine.traders.values() if st.effective_pause(now) is not None)
        log.warning("database unreachable at start: %d traders answered from the local spool's latest states and "
                    "%d calls of an earlier run (%d paused now) until the stored state is loaded", len(engine.traders),
                    len(previous), paused)

    def on_health_change(self, healthy: bool) -> None:
        """Store health listener: a recovery retries the load and writes flags set during the outage."""
        if not healthy:
            return
        self._recovered.set()
        self._flags_wake.set()

    async def _load_until_done(self, pending: asyncio.Future[LoadedState] | None) -> None:
        delay = 0.2
        while True:
            try:
                loaded = await (pending if pending is not None else self._load())
            except Exception as exc:  # StoreUnavailable, or a row the load could not read: keep trying
                log.info("stored state still not loaded (%s); retrying", exc)
                pending = None
                self._recovered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recovered.wait(), delay)
                delay = min(delay * 2, LOAD_RETRY_MAX_S)
                continue
            await self._install(loaded, late=True, stored_trades=await self._stored_trades(loaded))
            return

    async def _load(self) -> LoadedState:
        """The store's load; in cluster mode the leases are taken first (see the module docstring). The local spool
        (store.spool) is replayed before either: a restart of this sidecar takes its leases back with a new epoch,
        which would fence out the states it spooled before the restart."""
        replayed = getattr(self.store, "spool_replayed", None)
        if replayed is not None:
            await replayed()
        if self.owners is not None:
            await self.owners.start_claims({str(args[0]) for _at, _op, args in self.engine.journal or ()})
        return await self.store.load()

    async def _stored_trades(self, loaded: LoadedState) -> set[tuple[str, str]]:
        """(trader, trade id) of journaled trades that are stored but older than the ids the load brought (a
        trader with a full set): the replay counts them as the duplicates they are."""
        full = {t: set(ids) for t, ids in loaded.trade_ids.items() if len(ids) >= SEEN_TRADE_IDS_KEPT}
        ask: dict[str, list[str]] = {}
        for _at, op, args in self.engine.journal or ():
            trade = args[2] if op == "report_trade" else None
            if isinstance(trade, ClosedTrade) and args[0] in full and trade.trade_id not in full[str(args[0])]:
                ask.setdefault(str(args[0]), []).append(trade.trade_id)
        stored: set[tuple[str, str]] = set()
        for trader_id, ids in ask.items():
            try:
                stored.update((trader_id, tid) for tid in await self.store.known_trade_ids(trader_id, ids))
            except StoreUnavailable as exc:
                log.warning("trades of trader %s received before the load: cannot check %d old ids (%s); counted",
                            trader_id, len(ids), exc)
        return stored

    async def _install(self, loaded: LoadedState, late: bool,
                       stored_trades: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> None:
        """Install the stored state as the base, replay the journal on it, leave the unloaded mode. No awaits
        until the engine is out of it: nothing can interleave with the replay."""
        engine = self.engine
        journal = engine.journal or []
        memory = dict(engine.traders)
        engine.traders.clear()
        self.configs.load(loaded.configs)  # each service skips what it already holds (saved while not loaded)
        self.breakers.load(loaded.breakers)
        self._install_flags(loaded.flags, late)
        owners = self.owners
        admit = self.admit if owners is None else None
        journaled = {str(args[0]) for _at, _op, args in journal} if admit is not None else set()
        for rec in loaded.traders:
            if owners is None or owners.owns(rec.trader_id):  # cluster mode: the others stay in the store
                stored = from_record(rec, loaded.trade_ids.get(rec.trader_id, ()))
                if admit is None or rec.trader_id in journaled or admit(stored):  # (idle: left in the store)
                    engine.restore(stored)
        engine.gate, engine.journal = None, None  # from here on, changes are written
        if owners is not None:
            owners.after_install()
        self.replayed = self._replay(journal, stored_trades)
        if self.spooled is not None and journal:
            self._mark_replayed(journal)
        forwarded = self._forward_foreign_pauses()
        if self.spooled is not None and (journal or self.spooled.spool.stats.journal):
            # forgotten in the spool once what the replay changed is written and the pauses forwarded are stored
            self.spooled.settle(asyncio.ensure_future(self._written_and_forwarded(forwarded)))
        # Orders allowed meanwhile still count in the order-rate windows (CanTrade is not journaled; the replayed
        # reserve_order / report_order put the duplicate and fill windows back). The times a state restored from
        # the spool held (its stored times and its orders) are not added: the stored state holds the same ones
        # (engine.orders.rebuild_windows), and an order counts once.
        spooled_times, self._spooled_times = self._spooled_times, {}
        for trader_id, old in memory.items():
            st = engine.traders.get(trader_id)
            if st is not None and old.order_times:
                added = Counter(old.order_times) - Counter(spooled_times.get(trader_id, ()))
                if added:
                    merged = sorted((*st.order_times, *added.elements()))
                    st.order_times.clear()
                    st.order_times.extend(merged)
            if st is not None and st.account_id == old.account_id:  # and a retry of one answers its first decision
                for order_id, answer in old.order_answers.items():  # (a denied one, never placed, is asked afresh)
                    if answer[1]:
                        st.order_answers.setdefault(order_id, answer)
        _count_replayed_orders(engine, journal)
        self.loaded = True
        self.control_version = loaded.control_version
        now = engine.clock.now()
        paused = sum(1 for st in engine.traders.values() if st.effective_pause(now) is not None)
        log.info("stored state %s: %d traders restored, %d calls received before the load replayed on it "
                 "(%d traders; %d dropped from a full journal), %d paused now; %d configurations, %d breakers",
                 "loaded late" if late else "loaded", len(loaded.traders), self.replayed,
                 len({e[2][0] for e in journal}), getattr(journal, "dropped", 0), paused, len(loaded.configs),
                 len(loaded.breakers))
        await self.on_loaded()
        if self._pending_flags is not None:
            self._flags_wake.set()  # the database answers: write them now, not after the backoff
            self._schedule_flag_write()

    def _mark_replayed(self, journal: list[JournalEntry]) -> None:
        """After the replay: each journaled trader's version now, and its last call's time, to the spool (REPLAYED)."""
        assert self.spooled is not None
        traders = self.engine.traders
        versions: dict[str, tuple[int, float]] = {}
        for when, _op, args in journal:
            st = traders.get(str(args[0]))
            if st is not None:
                versions[st.trader_id] = (st.version, max(when, versions.get(st.trader_id, (0, when))[1]))
        if versions:
            self.spooled.mark_replayed(versions, self.engine.clock.now())

    def _forward_foreign_pauses(self) -> asyncio.Future[bool]:
        """Cluster mode: the pauses journaled here for traders other sidecars own (an operator's HALT made here while
        the stored state was not loaded), as control changes their owners apply. Only a trader's net kill switch:
        its last journaled call, when a pause still in force (a resume after it here undid it; a resume alone is not
        forwarded, as a resume made now would also lift the owner's newer pauses). Retried until stored."""
        pending, self._foreign_kill = self._foreign_kill, {}
        now = self.engine.clock.now()
        pauses: list[tuple[str, str, TradingState, float | None, str]] = []
        for trader_id, (when, op, args) in pending.items():
            if op != "pause":
                log.warning("a resume of trader %s made here before the stored state was loaded is not forwarded to "
                            "the sidecar that owns it (it would lift that sidecar's newer pauses too); resume it "
                            "there if it is still paused", trader_id)
                continue
            _trader, account_id, state, duration_s, reason = args
            until = None if duration_s is None else when + float(duration_s)  # type: ignore[arg-type]
            if (until is None or until > now) and isinstance(state, TradingState):
                pauses.append((str(account_id), trader_id, state, until, str(reason)))
        forward = self.forward_pause
        if not pauses or forward is None:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            done.set_result(not pauses)
            if pauses:
                log.error("%d kill switches journaled for traders other sidecars own cannot be forwarded (no control "
                          "plane): press them again", len(pauses))
            return done
        return asyncio.ensure_future(self._forward(forward, pauses))

    async def _forward(self, forward: Callable[[str, str, TradingState, float | None, str], Awaitable[object]],
                       pauses: list[tuple[str, str, TradingState, float | None, str]]) -> bool:
        delay = 0.2
        for account_id, trader_id, state, until, reason in pauses:
            while True:
                try:
                    await forward(account_id, trader_id, state, until, reason)
                    break
                except Exception as exc:  # the database went away again: retried (the journal is kept meanwhile)
                    log.warning("kill switch of trader %s (owned by another sidecar) not forwarded yet (%s); retrying",
                                trader_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOAD_RETRY_MAX_S)
            log.warning("kill switch %s of trader %s made here before the stored state was loaded: forwarded to the "
                        "sidecar that owns it (a control change)", state.name, trader_id)
        return True

    async def _written_and_forwarded(self, forwarded: asyncio.Future[bool]) -> bool:
        return await forwarded and await self.store.flush(None)

    def _replay(self, journal: list[JournalEntry], stored_trades: set[tuple[str, str]] | frozenset[tuple[str, str]],
                owned_only: bool = True) -> int:
        """Apply the journaled calls, in the order and at the times they arrived, to the installed state (cluster
        mode, `owned_only`: to the traders this sidecar owns)."""
        engine = self.engine
        real, at = engine.clock, _At()
        engine.clock = at
        self.replaying = True
        replayed = 0
        covered = self._covered
        traders = engine.traders
        base = {t: traders[t].version for t in covered if t in traders}  # (the state before this replay)
        try:
            owners = self.owners if owned_only else None
            for when, op, args in journal:
                at.t = when
                cover = covered.get(str(args[0])) if covered else None
                if cover is not None and when <= cover[1] and base.get(str(args[0]), -1) >= cover[0]:
                    self.already_replayed += 1  # replayed before on this state's lineage: held by it
                    continue
                if owners is not None and not owners.owns(str(args[0])):
                    self.not_owned_skipped += 1  # another sidecar owns it (logged by start_claims)
                    if op in ("pause", "resume"):
                        self._foreign_kill[str(args[0])] = (when, op, args)
                    continue
                if op == "report_trade" and isinstance(args[2], ClosedTrade) and (
                        (str(args[0]), args[2].trade_id) in stored_trades):
                    continue  # a retry of a trade stored long ago
                if op == "reserve_order" and self._finished_already(args):
                    continue  # replayed twice (a stop before the spool forgot it): counted, and finished since
                try:
                    outcome = getattr(engine, op)(*args)
                except AccountMismatchError as exc:  # the stored trader belongs to another account
                    log.error("replay of %s for trader %s skipped: %s", op, args[0], exc)
                    continue
                except Exception:  # one bad call must not keep the stored state out
                    log.exception("replay of %s for trader %s failed; skipped", op, args[0])
                    continue
                replayed += 1
                if op == "report_trade" and isinstance(outcome, Outcome) and not outcome.duplicate:
                    trade = args[2]
                    assert isinstance(trade, ClosedTrade)
                    self.on_trade(str(args[0]), str(args[1]), trade)
        finally:
            engine.clock = real
            self.replaying = False
        return replayed

    def _finished_already(self, args: tuple[object, ...]) -> bool:
        """A journaled allowed order the installed state holds as finished, the very order (allowed at the same
        time): a second replay of the journal (a stop between the load's flush and the spool forgetting it) after
        the loaded run saw it filled or cancelled. Reserved again it would count twice (daily orders, notional)
        and its replayed fill would move the position a second time. A new order under a reused id is allowed
        later than the finished one: it still counts."""
        order = args[2]
        st = self.engine.traders.get(str(args[0]))
        if st is None or not isinstance(order, PendingOrder):
            return False
        done = st.finished_orders.get(order.client_order_id)
        return done is not None and abs(done.allowed_at - order.allowed_at) < 1e-6

    # ---- flags ----------------------------------------------------------------------------------

    def _install_flags(self, stored: FlagsRecord | None, late: bool) -> None:
        """One precedence: given at start (CLI, environment, file) > stored > default. A late load changes nothing."""
        current = self.engine.flags
        if stored is None:
            return
        if late:
            if (stored.enable_risk_enforcement, stored.enable_persistence) != (
                    current.enable_risk_enforcement, current.enable_persistence):
                log.warning("stored feature flags (enforcement=%s, persistence=%s) not applied: they were loaded "
                            "after the start and a late load never changes a flag; in force: %s (SetFeatureFlags "
                            "changes them)", stored.enable_risk_enforcement, stored.enable_persistence, current)
            return
        values = {}
        for name in FLAG_NAMES:
            mine, theirs = getattr(current, name), getattr(stored, name)
            if name in self.flags_given:
                if mine != theirs:
                    log.warning("feature flag %s=%s given at start overrides the stored value %s", name, mine, theirs)
                values[name] = mine
            else:
                if mine != theirs:  # the start-up log's settings line names the other sources; this one is here
                    log.info("feature flag %s=%s from the store (set at run time by SetFeatureFlags; a flag, "
                             "variable or settings-file value given at start would win)", name, theirs)
                values[name] = theirs
        self.engine.flags = Flags(**values)
        self.store.persistence_enabled = self.engine.flags.enable_persistence

    async def on_flags(self, old: Flags, new: Flags) -> bool:
        """Apply flags at once and store them. Returns False when they are not stored yet: they are written
        when the database returns (never dropped), and a late load does not undo them."""
        self.store.persistence_enabled = new.enable_persistence
        if new.enable_persistence and not old.enable_persistence and self.engine.journal is None:
            trace_id = self.trace_id()
            for st in self.engine.traders.values():
                self.store.enqueue_state(to_record(st), "persistence enabled: current state", trace_id)
        journal = self.engine.journal
        if new.enable_persistence and not old.enable_persistence and journal is not None and self.spooled is not None:
            # Not loaded: the spool's journal is rewritten as the journal in memory, with the calls made while
            # persistence was off (in their order), so a stop before the database returns keeps them, as the loaded
            # case's states.
            self.spooled.replace(list(journal))
        self._pending_flags = FlagsRecord(new.enable_risk_enforcement, new.enable_persistence)
        self._pending_change = None if self.record is None else self.record(
            "flags", "", {"enable_risk_enforcement": new.enable_risk_enforcement,
                          "enable_persistence": new.enable_persistence})
        if not self.loaded:
            log.warning("feature flags %s applied; not stored yet (the stored state is not loaded): written when "
                        "the database returns", new)
            return False
        if await self._write_pending_flags():
            return True
        self._schedule_flag_write()
        return False

    async def flags_stored(self) -> bool:
        """Wait for the writer of flags set while they could not be stored, if one runs; True when none are
        pending any more."""
        if self._flag_writer is not None:
            await self._flag_writer
        return self._pending_flags is None

    def _schedule_flag_write(self) -> None:
        if self._flag_writer is None or self._flag_writer.done():
            self._flag_writer = asyncio.get_running_loop().create_task(self._flag_write_loop())

    async def _flag_write_loop(self) -> None:
        """Retry the pending flags until stored: on each store recovery, and at least every few seconds."""
        delay = 0.5
        while self._pending_flags is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flags_wake.wait(), delay)
            self._flags_wake.clear()
            delay = min(delay * 2, LOAD_RETRY_MAX_S)
            await self._write_pending_flags()

    async def _write_pending_flags(self) -> bool:
        pending = self._pending_flags
        if pending is None:
            return True
        try:
            await self.store.save_flags(pending, self._pending_change)
        except StoreUnavailable as exc:
            log.warning("feature flags %s applied; not stored yet (store unavailable: %s): written when the "
                        "database returns", pending, exc)
            return False
        if self._pending_flags is pending:
            self._pending_flags = None
        log.info("feature flags stored: enforcement=%s persistence=%s", pending.enable_risk_enforcement,
                 pending.enable_persistence)
        return True

    def install_flags(self, stored: FlagsRecord | None, by: str) -> bool:
        """Flags another sidecar stored (re-read from the store): applied as SetFeatureFlags would apply them here.
        A local change not stored yet wins (it is written after, so it is the newer one). True if they changed."""
        if stored is None or self._pending_flags is not None:
            return False
        old = self.engine.flags
        new = Flags(stored.enable_risk_enforcement, stored.enable_persistence)
        if new == old:
            return False
        self.store.persistence_enabled = new.enable_persistence
        if new.enable_persistence and not old.enable_persistence and self.engine.journal is None:
            for st in self.engine.traders.values():
                self.store.enqueue_state(to_record(st), f"persistence enabled by {by}: current state", None)
        self.engine.flags = new
        log.warning("feature flags changed by %s: %s -> %s", by, old, new)
        return True

    # ---- stop -----------------------------------------------------------------------------------

    async def close(self, drain_timeout: float) -> int:
        for task in (self._loader, self._flag_writer):
            if task is not None and not task.done():
                task.cancel()
        spooled = self.spooled
        if spooled is not None:
            await spooled.close(drain_timeout)
        if not self.loaded and spooled is not None and not spooled.failed:
            log.warning("shutdown before the stored state was loaded: the %d calls received meanwhile are in the local "
                        "spool %s, replayed on the stored state by the next start", len(self.engine.journal or ()),
                        spooled.spool.path)
        elif not self.loaded:
            log.warning("shutdown before the stored state was loaded: %d calls received meanwhile are not stored",
                        len(self.engine.journal or ()))
        if self._pending_flags is not None and self.loaded:  # the writer may have been waiting out its backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._write_pending_flags(), drain_timeout)
        if self._pending_flags is not None:
            log.error("shutdown: feature flags %s were applied but never stored (database unavailable)",
                      self._pending_flags)
        self.flush_bookkeeping()
        if self.owners is not None and self.loaded:
            # The leases end only once every state is written: the next owner reads what this one wrote last.
            if await self.store.flush(drain_timeout):
                await self.owners.release()
            else:
                log.warning("shutdown: the store did not drain within %.1fs: leases kept (they lapse)", drain_timeout)
        left = await self.store.close(drain_timeout)
        if left:
            log.warning("shutdown: %d store rows not written within %.1fs", left, drain_timeout)
        else:
            log.info("shutdown: store queue drained")
        return left


def _count_replayed_orders(engine: RiskEngine, journal: Collection[JournalEntry]) -> None:
    """The orders a replayed journal reserved count in their traders' order-rate windows. reserve_order does not
    add to `order_times` (CanTrade does, and CanTrade is not journaled): the orders this run allowed are merged in
    from memory, but those an earlier run allowed before it stopped unloaded (the spool's journal) are nowhere else.
    Merged as a restore merges them (engine.orders.count_held_orders: an order in both counts once, times after now
    counted as now)."""
    traders = {str(args[0]) for _at, op, args in journal if op == "reserve_order"}
    if not traders:
        return
    now = engine.clock.now()
    for trader_id in traders:
        st = engine.traders.get(trader_id)
        if st is not None:
            count_held_orders(st, now)
