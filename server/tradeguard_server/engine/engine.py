"""RiskEngine: the in-memory risk state of every trader and the decisions over it.

Pure and synchronous: no I/O, time from the injected clock. Every state change is announced as one
`events.StateChanged` value (the new state, the reason, the breaker firings, the new breaches, the actions) to
the listeners the engine is built with (the sidecar wires the store queue, the watch hub, metrics and the
breaker event recorder); the engine never waits for them. Callers serialize access (one event loop thread), so
per-trader updates are linearizable.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from . import checks, orders
from .clock import Clock
from .events import Firing as Firing  # re-exported: the API converts firings from here
from .events import Listener, StateChanged
from .limits import Limits
from .snapshot import StateRecord
from .state import (
    ORDER_ID_TTL_S,
    ORDER_IDS_KEPT,
    SEVERITY,
    ChecksCache,
    Pause,
    TraderState,
    add_pause,
    add_trade,
    apply_equity,
    expire_pauses,
    prune_symbols,
    remember_trade_id,
    roll_periods,
)
from .types import (
    ActionType,
    Breach,
    CheckResult,
    CheckStatus,
    ClosedTrade,
    Decision,
    DecisionCode,
    Flags,
    OrderIntent,
    OrderSplit,
    OrderStatus,
    PendingOrder,
    Position,
    PriceMark,
    RequiredAction,
    SymbolStats,
    TradingState,
)

INF = float("inf")
# Enum members read on every CanTrade are module constants: `CheckStatus.FAIL` costs ~50 ns a read on Python 3.11.
_FAIL, _ACTIVE, _ALLOWED = CheckStatus.FAIL, TradingState.ACTIVE, DecisionCode.ALLOWED
_HALTED = TradingState.HALTED
DUPLICATE_WINDOW_MAX_S = 3600.0  # the longest duplicate_order_window_ms a configuration may set
TTL_LOG_EVERY_S = 10.0  # one "released after their TTL" warning per trader this often at most

log = logging.getLogger("tradeguard.engine")

# (decision, state, order, reducing) -> the decision answered: set while the stored state is not loaded
DecisionGate = Callable[[Decision, TraderState, OrderIntent | None, bool], Decision]
# (state, order, its split, limits, now) -> the account-wide checks (issue 17; cluster.account_view): called by
# CanTrade only when set and the account has an account-wide limit (Limits.account_limited)
AccountChecks = Callable[[TraderState, OrderIntent | None, OrderSplit | None, Limits, float], tuple[CheckResult, ...]]
# (time, method name, arguments) of every state-changing call, kept while the stored state is not loaded
JournalEntry = tuple[float, str, tuple[object, ...]]
# Pause sources of the account and every-account kill switches (cluster.plane keeps them in sync); a trader's own
# resume does not lift them.
SCOPE_SOURCES = frozenset({"account", "all"})


def iso_utc(t: float) -> str:
    """An epoch time as log lines show it: ISO-8601 UTC to the second (2026-12-01T05:23:51Z)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AccountMismatchError(ValueError):
    """A trader id was used with a different account than the one it is bound to."""


class OrderIdReusedError(ValueError):
    """A client_order_id already answered for a different order."""


class StateNotLoadedError(RuntimeError):
    """The call needs the stored state, which is not loaded yet (retry)."""


class BreakerEvaluator(Protocol):
    """Evaluates an account's circuit breakers over a trader's state (see engine.breakers)."""

    def evaluate(
        self, st: TraderState, limits: Limits, now: float, enforce: bool, symbols: Iterable[tuple[str, str]]
    ) -> list[Firing]: ...


@dataclass(slots=True)
class Outcome:
    """What a report did."""

    state: TraderState
    actions: list[RequiredAction] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)
    stale: bool = False
    duplicate: bool = False
    changed: bool = True  # False: nothing changed (a stale report that moved nothing, a duplicate trade)
    order: PendingOrder | None = None  # report_order: the order after the report


def _uncount(times: deque[float], dropped: float | None) -> None:
    """Take back the order time counted last, and the oldest one its append pushed out of a full deque."""
    times.pop()
    if dropped is not None:
        times.appendleft(dropped)


class RiskEngine:
    """Holds every trader's state in memory and answers CanTrade from it."""

    def __init__(
        self,
        clock: Clock,
        defaults: Limits | None = None,
        flags: Flags | None = None,
        reset_offset_s: float = 0.0,
        breakers: BreakerEvaluator | None = None,
        listeners: Sequence[Listener] = (),
    ) -> None:
        """`listeners` hear every state change (events.StateChanged), in order. The engine holds the sequence it
        is given, not a copy: the composition root hands it a list and adds each listener once its owner is
        built (the owners need the engine). `breakers` evaluates the accounts' circuit breakers on every report
        and CanTrade (None: no breakers)."""
        self.clock = clock
        self.defaults = defaults or Limits()
        self.flags = flags or Flags()
        self.reset_offset_s = reset_offset_s
        self.breakers = breakers
        self._listeners = listeners
        # the trader whose changes `replayed` is applying: not announced one by one (see `replayed`)
        self._muted: str | None = None
        self.traders: dict[str, TraderState] = {}
        self.symbols_pruned = 0  # per-symbol entries dropped by prune_symbols (state.SYMBOLS_KEPT)
        self.orders_expired = 0  # pending orders released after pending_order_ttl_seconds with nothing reported
        self._released_logged: dict[str, tuple[float | None, int]] = {}  # trader -> (last line at, released since)
        # Reference prices by symbol (price collars): the newest of ReportPrices and ReportPositions marks.
        # Reference prices by (account, symbol): one account's bots cannot move another account's collars.
        self.prices: dict[tuple[str, str], PriceMark] = {}
        self.account_limits: dict[str, Limits] = {}
        # While the stored state is not loaded (sidecar.persistence): CanTrade's verdict passes through `gate`,
        # and every state-changing call is appended to `journal`, to be replayed on the stored state.
        self.gate: DecisionGate | None = None
        self.journal: list[JournalEntry] | None = None
        # While the shared control state is stale (cluster.listener): a second gate, after `gate`.
        self.control_gate: DecisionGate | None = None
        # Called with every trader state made (first seen, rebound) or restored (loaded, taken over), before the
        # change that made it is announced: cluster.plane puts the account and every-account pauses in it.
        self.on_new_trader: Callable[[TraderState], None] | None = None
        # Account-wide limits (issue 17): the hook adding their checks to CanTrade (None: nothing is called).
        self.account_checks: AccountChecks | None = None
        # Bounded traders (issue 21, residency.py): ids evicted from memory, their state in the store. The engine never
        # makes a fresh state over one of them (StateNotLoadedError): the API loads it first (Residency.ensure).
        self.evicted: Container[str] = frozenset()

    # ---- lookup ---------------------------------------------------------------------------------

    def pending_orders(self) -> int:
        """Pending orders over every trader that still count (a metric, read at scrape time, from the scrape
        thread: it only reads). An order past its TTL that the once-a-second release has not reached yet counts as
        released already (see orders_released)."""
        now = self.clock.now()
        return sum(1 for st in list(self.traders.values()) for o in list(st.orders.values()) if o.expires_at > now)

    def orders_released(self) -> int:
        """Pending orders released by their TTL so far, those past it and not yet released included (a counter)."""
        now = self.clock.now()
        waiting = sum(1 for st in list(self.traders.values()) if st.orders and now >= st.next_order_expiry
                      for o in list(st.orders.values()) if o.expires_at <= now)
        return self.orders_expired + waiting

    def limits_for(self, account_id: str) -> Limits:
        return self.account_limits.get(account_id, self.defaults)

    def set_account_limits(self, account_id: str, limits: Limits | None) -> None:
        """Install (or with None, remove) an account's active configuration; takes effect at once."""
        if limits is None:
            self.account_limits.pop(account_id, None)
        else:
            self.account_limits[account_id] = limits

    def apply_limits(self, account_id: str, limits: Limits | None, reason: str) -> list[TraderState]:
        """Install an account's new limits and re-check its traders against them at once.

        Every trader of the account gets a history entry with `reason` (who/why of the change).
        """
        self.set_account_limits(account_id, limits)
        now = self.clock.now()
        effective = self.limits_for(account_id)
        changed: list[TraderState] = []
        for st in self.traders.values():
            if st.account_id != account_id:
                continue
            self._tick(st, now)
            reasons = [reason]
            breaches = self._apply_breaches(st, checks.loss_breaches(st, effective), now, reasons)
            self._changed(st, now, "; ".join(reasons), reason, breaches=breaches)
            changed.append(st)
        return changed

    def peek(self, trader_id: str, account_id: str) -> TraderState:
        """The trader's state, or a fresh one that is not stored (for reads of unknown traders)."""
        st = self.traders.get(trader_id)
        if st is None:
            if trader_id in self.evicted:
                raise self._evicted_error(trader_id)
            return TraderState(trader_id, account_id)
        if st.account_id != account_id:
            raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id {st.account_id!r}")
        self._tick(st, self.clock.now())
        return st

    @staticmethod
    def _evicted_error(trader_id: str) -> StateNotLoadedError:
        return StateNotLoadedError(f"state of trader_id {trader_id} not loaded: it was evicted from memory (idle) and "
                                   "is loaded again on its next call; retry")

    def _get(self, trader_id: str, account_id: str) -> TraderState:
        st = self.traders.get(trader_id)
        if st is None:
            if trader_id in self.evicted:
                raise self._evicted_error(trader_id)
            st = self.traders[trader_id] = TraderState(trader_id, account_id)
            if self.on_new_trader is not None:
                self.on_new_trader(st)
        elif st.account_id != account_id:
            raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id {st.account_id!r}")
        return st

    def rebind(self, trader_id: str, account_id: str, reason: str) -> tuple[str, TraderState]:
        """Bind `trader_id` to `account_id` with a fresh state (operator); the previous account ("" if none)."""
        old = self.traders.get(trader_id)
        if old is None and trader_id in self.evicted:
            raise self._evicted_error(trader_id)
        st = self.traders[trader_id] = TraderState(trader_id, account_id)
        if old is not None:
            st.version = old.version  # the store keeps the newest version: continue the sequence
            # The orders are still at the venue: they keep counting (and can be reported) under the new binding, and
            # so do the orders and fills the bot sent (order-rate, fill-rate and duplicate-order windows), as after
            # a restart.
            st.orders, st.finished_orders = old.orders, old.finished_orders
            st.order_times, st.fill_times, st.recent_orders = old.order_times, old.fill_times, old.recent_orders
            orders.rebuild_pending(st)
        if self.on_new_trader is not None:
            self.on_new_trader(st)
        self._changed(st, self.clock.now(), reason)
        return ("" if old is None else old.account_id), st

    def restore(self, st: TraderState) -> None:
        """Put a state loaded from the store back (at start, or a trader taken over). Its order windows (rebuilt by
        snapshot.from_record) count a time after now as now: a clock stepped back across the restart must not keep
        an order in a window, or an equal order a duplicate, for as long as the step."""
        orders.clamp_windows(st, self.clock.now())
        self.traders[st.trader_id] = st
        if self.on_new_trader is not None:
            self.on_new_trader(st)

    def restore_to(self, rec: StateRecord, reason: str) -> TraderState:
        """Operator point-in-time restore (AdminService.RestoreRiskState): put what a history record holds back
        into the live state of `rec.trader_id` (engine.restore.restore_point says what stays as it is), announced
        like every change (history row with `reason`, watchers, metrics). A trader not here is made first."""
        from .restore import restore_point

        now = self.clock.now()
        st = self._get(rec.trader_id, rec.account_id)
        restore_point(st, rec)
        self._tick(st, now)  # pauses that ended since, a new period: before the change is announced
        self._changed(st, now, reason, "restored by operator")
        return st

    def set_scope_pauses(self, st: TraderState, pauses: Sequence[Pause], reason: str) -> bool:
        """Replace the trader's account and every-account pauses (sources SCOPE_SOURCES) with `pauses`; announced
        (history, watchers, metrics; cancel_all_orders when it halts) when that changed anything. True if so."""
        now = self.clock.now()
        self._tick(st, now)
        live = [p for p in pauses if p.active(now)]
        old = [p for p in st.pauses if p.source in SCOPE_SOURCES]
        if old == live:
            return False
        st.pauses = [p for p in st.pauses if p.source not in SCOPE_SOURCES] + live
        self._changed(st, now, reason, "scope pause")
        return True

    def end_breaker_episodes(self, breaker_id: str) -> None:
        """Every episode of a breaker ended (re-armed, changed, disabled, deleted): drop it from the traders'
        states and store those, so a restart does not bring the episode back."""
        now = self.clock.now()
        for st in self.traders.values():
            if st.breaker_episodes and st.breaker_episodes.pop(breaker_id, None) is not None:
                self._changed(st, now, f"breaker {breaker_id} re-armed")

    # ---- state changes --------------------------------------------------------------------------

    def replayed(self, st: TraderState, apply: Callable[[], None], reason: str) -> bool:
        """Apply changes that may already be reflected in `st` (a takeover replaying the trader's pause and resume
        rows on its stored state): each is made as if live, but only their net effect on the pauses and the fill
        window is a change, announced once with `reason`. Rows the stored state already reflects change nothing, so
        they neither write the old pause and resume into the history again nor make the trader look heard from now
        (its updated_at is left). Returns whether anything changed."""
        def key() -> tuple[object, ...]:
            return (tuple((p.state, p.until, p.code, p.reason, p.source, p.since) for p in st.pauses),
                    tuple(st.fill_times))

        before = key()
        self._muted = st.trader_id
        try:
            apply()
        finally:  # (also when a change failed half-way: what it did apply is announced, never left unwritten)
            self._muted = None
            changed = key() != before
            if changed:
                self._changed(st, self.clock.now(), reason)
        return changed

    def _changed(
        self,
        st: TraderState,
        now: float,
        reason: str,
        cause: str = "",
        firings: Sequence[Firing] = (),
        breaches: Sequence[Breach] = (),
        actions: Sequence[RequiredAction] = (),
        audit: bool = True,
    ) -> None:
        """Every change of a trader's state ends here: a new version, announced to every listener (`audit`
        False: order bookkeeping, which the history does not record row by row; see events.StateChanged)."""
        if st.trader_id == self._muted:  # (`replayed` announces the net change once, if there is one)
            return
        st.updated_at = now
        cache = st.checks_cache
        # (never a cache whose actions list the pending orders to cancel: the list moves with the bookkeeping)
        carry = not audit and cache is not None and cache.version == st.version and not any(
            a.type is ActionType.CANCEL_ALL_ORDERS for a in cache.actions) and not (
            st.pauses and st.trading_state(now) is _HALTED)
        st.version += 1
        if carry and cache is not None:
            # Order bookkeeping changes none of the state checks nor the position actions: the cached ones stay
            # valid.
            cache.version = st.version
        st.episodes_changed = False
        halted = bool(st.pauses) and st.trading_state(now) is _HALTED
        if halted and st.orders and (not st.halted_announced or cause == "order_allowed") and not any(
                a.type is ActionType.CANCEL_ALL_ORDERS for a in actions):
            actions = (*actions, self._cancel_action(st))
        st.halted_announced = halted
        if self._listeners:
            event = StateChanged(st, reason, now, tuple(firings), tuple(breaches), tuple(actions), cause or reason,
                                 audit)
            failed: Exception | None = None
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception as exc:  # the others still hear the change; then the call fails (see below)
                    log.exception("state change listener %r failed on %r of trader %s", listener, reason,
                                  st.trader_id)
                    failed = failed or exc
            if failed is not None:
                # A change a listener could not take (e.g. not queued for the store) must not be answered as done:
                # the RPC fails (INTERNAL) and the caller retries, as when the store queue was called directly.
                raise failed

    def _tick(self, st: TraderState, now: float) -> None:
        """Time-driven changes: pauses that ended, new day / week / month."""
        if st.orders and now >= st.next_order_expiry:
            self._release(st, now)
        expired = expire_pauses(st, now)
        rolled = st.equity_reported and roll_periods(st, now, self.reset_offset_s)
        if expired:
            self._changed(st, now, "pause_expired")
        elif rolled:
            self._changed(st, now, "period_rollover")

    def _apply_breaches(
        self, st: TraderState, breaches: Iterable[Breach], now: float, reasons: list[str]
    ) -> list[Breach]:
        """Pause the trader for each breach not already paused for; the ones applied (each named in `reasons`)."""
        applied: list[Breach] = []
        for breach in breaches:
            if st.active_pause_for(breach.code, now) is None and self._apply_breach(st, breach, now, "limit"):
                reasons.append(f"breach {breach.code.name}")
                applied.append(breach)
        return applied

    def _apply_breach(self, st: TraderState, breach: Breach, now: float, source: str) -> bool:
        # A pause of 0 minutes (stop_trading_minutes or cooling_off_period_minutes 0) lasts until resumed, as a
        # breaker's does: a breach always stops trading.
        duration = breach.duration_s
        until = None if duration is None or duration <= 0.0 else now + duration
        pause = Pause(breach.state, until, breach.code, breach.reason, source, since=now)
        if not add_pause(st, pause):
            return False
        enforced = "" if self.flags.enable_risk_enforcement else " (shadow mode: not enforced)"
        log.warning(
            "RISK LIMIT BREACHED trader=%s account=%s rule=%s value=%.4f limit=%.4f state=%s until=%s%s: %s",
            st.trader_id, st.account_id, breach.rule, breach.value, breach.limit, breach.state.name,
            "resume" if until is None else iso_utc(until), enforced, breach.reason,
            extra={"trader_id": st.trader_id, "rule": breach.rule, "value": breach.value, "limit": breach.limit},
        )
        return True

    def _run_breakers(
        self, st: TraderState, limits: Limits, now: float, symbols: Iterable[tuple[str, str]]
    ) -> list[Firing]:
        if self.breakers is None:
            return []
        return self.breakers.evaluate(st, limits, now, self.flags.enable_risk_enforcement, symbols)

    def report_equity(self, trader_id: str, account_id: str, equity: float, observed_at: float | None) -> Outcome:
        """`observed_at` after now (the API bounds it by the allowed clock skew) counts as now: a clock a little
        ahead never makes the next report without a time look stale."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            self.journal.append((now, "report_equity", (trader_id, account_id, equity, observed_at)))
        self._tick(st, now)
        peak = st.peak_equity
        at = now if observed_at is None or observed_at > now else observed_at
        fresh = apply_equity(st, equity, at, self.reset_offset_s)
        if not fresh and st.peak_equity == peak:
            return Outcome(st, stale=True, changed=False)
        limits = self.limits_for(account_id)
        reasons = ["equity_report" if fresh else "equity_report (late: raised the peak)"]
        breaches = checks.loss_breaches(st, limits)
        if breaches:  # (most reports breach nothing)
            breaches = self._apply_breaches(st, breaches, now, reasons)
        firings = self._run_breakers(st, limits, now, st.positions.keys())
        actions = checks.position_actions(st, limits)
        for firing in firings:
            actions.extend(firing.actions)
        actions.extend(self.cancel_actions(st, now))
        self._changed(st, now, "; ".join(reasons), "equity_report", firings, breaches, actions)
        return Outcome(st, actions=actions, firings=firings, stale=not fresh)

    def report_trade(self, trader_id: str, account_id: str, trade: ClosedTrade) -> Outcome:
        """Trades count by `closed_at` (a time after now counts as now), whatever order they are reported in."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            self.journal.append((now, "report_trade", (trader_id, account_id, trade)))
        self._tick(st, now)
        if not remember_trade_id(st, trade.trade_id):
            return Outcome(st, duplicate=True, changed=False)
        if trade.closed_at > now:
            trade.closed_at = now
        add_trade(st, trade)
        stats = st.symbol_stats.setdefault(trade.symbol, SymbolStats())
        stats.trades += 1
        stats.realized_pnl += trade.realized_pnl
        if trade.realized_pnl < 0:
            stats.losses += 1
        elif trade.realized_pnl > 0:
            stats.wins += 1
        self.symbols_pruned += prune_symbols(st)
        limits = self.limits_for(account_id)
        reasons = [f"trade_report {trade.trade_id}"]
        streak = checks.streak_breach(st, limits)
        breaches = self._apply_breaches(st, () if streak is None else (streak,), now, reasons)
        firings = self._run_breakers(st, limits, now, [(trade.symbol, trade.exchange)])
        actions = [a for f in firings for a in f.actions]
        actions.extend(self.cancel_actions(st, now))
        self._changed(st, now, "; ".join(reasons), "trade_report", firings, breaches, actions)
        return Outcome(st, actions=actions, firings=firings)

    def report_positions(
        self, trader_id: str, account_id: str, positions: list[Position], observed_at: float | None = None
    ) -> Outcome:
        """A snapshot of every open position, taken at `observed_at` (None or later than now: now); fills reported
        after it keep counting apart (engine.orders.positions_reported)."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            self.journal.append((now, "report_positions", (trader_id, account_id, positions, observed_at)))
        self._tick(st, now)
        taken = now if observed_at is None or observed_at > now else observed_at
        st.positions = {(p.symbol, p.exchange): p for p in positions if p.quantity > 0.0}
        if st.orders or st.finished_orders:
            orders.positions_reported(st, taken)  # every fill reported by `taken` is in these positions
        prices = self.prices
        for p in positions:
            if p.volatility > 0.0:
                st.volatility[p.symbol] = p.volatility
            key = (account_id, p.symbol)
            known = prices.get(key)
            if known is None or known.at <= taken:
                prices[key] = PriceMark(p.symbol, p.mark_price, taken, p.exchange)
        self.symbols_pruned += prune_symbols(st)
        limits = self.limits_for(account_id)
        firings = self._run_breakers(st, limits, now, [(p.symbol, p.exchange) for p in positions])
        actions = checks.position_actions(st, limits)
        for firing in firings:
            actions.extend(firing.actions)
        actions.extend(self.cancel_actions(st, now))
        self._changed(st, now, "positions_report", firings=firings, actions=actions)
        return Outcome(st, actions=actions, firings=firings)

    def report_prices(self, account_id: str, marks: Iterable[PriceMark]) -> int:
        """Reference prices for the account's price collars. A mark older than the one known for its symbol is
        ignored; a time after now counts as now. Returns how many became the reference."""
        now = self.clock.now()
        prices = self.prices
        taken = 0
        for mark in marks:
            if mark.at > now:
                mark = PriceMark(mark.symbol, mark.price, now, mark.exchange)
            key = (account_id, mark.symbol)
            known = prices.get(key)
            if known is None or mark.at >= known.at:
                prices[key] = mark
                taken += 1
        return taken

    def release_expired(self) -> int:
        """Release, in every trader, the pending orders whose TTL passed (a timer calls it, so metrics and watchers
        see a release without waiting for the trader's next call). Returns how many traders changed."""
        now = self.clock.now()
        changed = 0
        for st in list(self.traders.values()):
            if st.orders and now >= st.next_order_expiry:
                before = st.version
                self._release(st, now)
                changed += st.version != before
        return changed

    def report_order(
        self, trader_id: str, account_id: str, client_order_id: str, status: OrderStatus, filled: float,
        avg_price: float,
    ) -> Outcome:
        """What happened to an order CanTrade allowed (engine.orders.report): fills move from pending into the
        position; a final status releases the rest. Raises orders.UnknownOrderError for an id the trader has no
        order under (no trader is made for it), and StateNotLoadedError when that may only be because the stored
        state is not loaded yet. A fill may start the max_fills_per_window halt."""
        now = self.clock.now()
        st = self.traders.get(trader_id)
        if st is not None and st.account_id != account_id:
            raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id {st.account_id!r}")
        if st is None and trader_id in self.evicted:
            raise self._evicted_error(trader_id)
        if st is None or orders.find(st, client_order_id) is None:
            if self.journal is not None:
                raise StateNotLoadedError(
                    f"client_order_id {client_order_id!r} is not known yet: the stored state is still loading; retry")
            raise orders.UnknownOrderError(
                f"client_order_id {client_order_id!r} names no order CanTrade allowed for trader {trader_id!r} (or one "
                "finished long ago): report the position with ReportPositions instead")
        if self.journal is not None:
            self.journal.append((now, "report_order", (trader_id, account_id, client_order_id, status, filled,
                                                       avg_price)))
        self._tick(st, now)
        limits = self.limits_for(account_id)
        order, new_fill, changed, refreshed = orders.report(st, client_order_id, status, filled, avg_price, now,
                                                            limits.pending_order_ttl_seconds)
        if not changed:
            if refreshed:  # the order counts for another TTL: the stored state must say so (a restart keeps it)
                self._changed(st, now, f"order_report {client_order_id} {order.status.name}: still working",
                              "order_report", audit=False)
            return Outcome(st, changed=False, duplicate=True, order=order)
        reasons = [f"order_report {client_order_id} {order.status.name} filled={order.filled:g}"]
        breaches: list[Breach] = []
        if new_fill > 0.0:
            st.fill_times.append(now)
            fill = checks.fill_breach(st, limits, now)
            if fill is not None:
                breaches = self._apply_breaches(st, (fill,), now, reasons)
        symbols = [(order.symbol, order.exchange)]
        firings = self._run_breakers(st, limits, now, symbols) if new_fill > 0.0 else []
        actions = checks.position_actions(st, limits) if new_fill > 0.0 else []
        for firing in firings:
            actions.extend(firing.actions)
        actions.extend(self.cancel_actions(st, now))
        # A fill moves the position (and may halt): audited. A status alone is bookkeeping.
        self._changed(st, now, "; ".join(reasons), "order_report", firings, breaches, actions,
                      audit=new_fill > 0.0 or bool(breaches) or bool(firings))
        return Outcome(st, actions=actions, firings=firings, order=order)

    def reserve_order(self, trader_id: str, account_id: str, order: PendingOrder) -> None:
        """An allowed order starts counting (CanTrade calls it; the replay of a journal too). Idempotent by
        client_order_id."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            self.journal.append((now, "reserve_order", (trader_id, account_id, order)))
        known = st.orders.get(order.client_order_id)
        if known is not None:
            if (known.symbol, known.side, known.quantity, known.price) == (
                    order.symbol, order.side, order.quantity, order.price):
                return
            # A replay: the stored state holds another order under this id (the bot reused it while the state was
            # loading). Both were allowed and both count: this one under a marked id.
            renamed = f"{order.client_order_id}~replayed"
            log.warning("replayed order %s of trader %s collides with a stored order of that id: kept as %s",
                        order.client_order_id, trader_id, renamed)
            order = replace(order, client_order_id=renamed)
            if renamed in st.orders:
                return
        self._tick(st, now)  # (a replay: a new day first, so the order counts in its own day's sums)
        st.finished_orders.pop(order.client_order_id, None)  # (a new order under a finished one's id)
        self._reserve(st, order, now)
        self._changed(st, now, f"order allowed {order.client_order_id}: {order.side.name} {order.quantity:g} "
                               f"{order.symbol} at {order.price:g}", "order_allowed", audit=False)

    @staticmethod
    def _reserve(st: TraderState, order: PendingOrder, now: float) -> None:
        orders.add_order(st, order)
        st.daily_orders += 1
        st.daily_order_notional += order.quantity * order.price
        recent = st.recent_orders
        key = (order.symbol, int(order.side), order.quantity, order.price)
        recent.pop(key, None)
        recent[key] = now
        while recent:  # drop what no duplicate window can reach any more
            first = next(iter(recent))
            if now - recent[first] <= DUPLICATE_WINDOW_MAX_S and len(recent) <= ORDER_IDS_KEPT:
                break
            del recent[first]

    def _release(self, st: TraderState, now: float) -> None:
        """Pending orders nothing was reported on for pending_order_ttl_seconds stop counting."""
        gone = orders.expire(st, now)
        if gone:
            self.orders_expired += len(gone)
            self._log_released(st.trader_id, gone, now)
            self._changed(st, now, "pending orders released (ttl): " + ",".join(o.client_order_id for o in gone),
                          "orders_expired", audit=False)

    def _log_released(self, trader_id: str, gone: list[PendingOrder], now: float) -> None:
        """One warning per trader per TTL_LOG_EVERY_S at most, counting the releases in between: a busy bot whose
        orders run out their TTL one per call wrote a line on every CanTrade (profiled: ~235 us each, on the event
        loop); `tradeguard_pending_orders_expired_total` counts every one."""
        last, skipped = self._released_logged.get(trader_id, (None, 0))
        if last is not None and abs(now - last) < TTL_LOG_EVERY_S:
            self._released_logged[trader_id] = (last, skipped + len(gone))
            return
        if len(self._released_logged) >= 10_000:  # bounded: one entry per trader that had a release
            self._released_logged.clear()
        self._released_logged[trader_id] = (now, 0)
        log.warning("pending orders released after their TTL with nothing reported: trader=%s orders=%s%s",
                    trader_id, ",".join(o.client_order_id for o in gone),
                    f" (and {skipped} more since the last such line)" if skipped else "")

    @staticmethod
    def _cancel_action(st: TraderState) -> RequiredAction:
        ids = orders.cancel_ids(st)
        return RequiredAction(ActionType.CANCEL_ALL_ORDERS, reason=f"HALTED: cancel every working order ({len(ids)} "
                              "pending)", client_order_ids=ids)

    def cancel_actions(self, st: TraderState, now: float) -> list[RequiredAction]:
        """cancel_all_orders while the trader is HALTED with pending orders (in every answer, not only the first)."""
        if st.orders and st.pauses and st.trading_state(now) is _HALTED:
            return [self._cancel_action(st)]
        return []

    def pause(
        self, trader_id: str, account_id: str, state: TradingState, duration_s: float | None, reason: str, *,
        until: float | None = None, since: float | None = None, by: str = "operator",
    ) -> TraderState:
        """Kill switch: HALTED or REDUCING for a duration, or until resumed (duration None). A pause made elsewhere
        (cluster.plane: another sidecar, a takeover's replay) gives its own end `until` (epoch seconds; it wins
        over `duration_s`), when it was made (`since`, default now) and who made it (`by`, in the reason)."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            if until is not None:
                duration_s = max(until - now, 0.0)
            self.journal.append((now, "pause", (trader_id, account_id, state, duration_s, reason)))
        self._tick(st, now)
        text = f"KILL_SWITCH: {state.name} by {by}" + (f": {reason}" if reason else "")
        if until is None:
            until = None if duration_s is None else now + duration_s
        elif until <= now:
            return st  # ended already (a late replay): nothing to do
        # Overlapping kill switches each end at their own time; one the new one covers entirely (no more
        # severe, ending no later) is dropped, so the list stays short.
        severity, end = SEVERITY[state], INF if until is None else until
        st.pauses = [p for p in st.pauses if not (
            p.source == "manual" and SEVERITY[p.state] <= severity and (INF if p.until is None else p.until) <= end)]
        st.pauses.append(Pause(state, until, DecisionCode.KILL_SWITCH, text, "manual",
                               since=now if since is None else since))
        log.warning("KILL SWITCH trader=%s account=%s state=%s until=%s by=%s reason=%s", trader_id, account_id,
                    state.name, "resume" if until is None else iso_utc(until), by, reason)
        self._changed(st, now, text, "paused by operator")
        return st

    def resume(self, trader_id: str, account_id: str, *, since: float | None = None,
               by: str = "operator") -> TraderState:
        """Lift every pause, manual or automatic, but not the account's nor the every-account one (SCOPE_SOURCES:
        ResumeTrading of the scope lifts those). Loss limits are re-checked on the next equity report.

        Since-aware: a resume made at `since` (another sidecar's, or replayed by a takeover) lifts only the pauses
        that began at or before it (a pause since then stays), so replaying a trader's pauses and resumes in order
        is idempotent. None = now: every pause."""
        now = self.clock.now()
        st = self._get(trader_id, account_id)
        if self.journal is not None:
            self.journal.append((now, "resume", (trader_id, account_id)))
        self._tick(st, now)
        at = now if since is None else since
        kept = [p for p in st.pauses if p.source in SCOPE_SOURCES or p.since > at]
        had = len(st.pauses) - len(kept)
        st.pauses = kept
        # The fill throttle's window starts again: the next fill must not halt at once. A resume made at `since`
        # (replayed by a takeover on a stored state that already holds it) drops only the fills up to it: the fills
        # after it (stored with the state) still count.
        if since is None:
            st.fill_times.clear()
        elif st.fill_times and st.fill_times[0] <= at:
            later = [f for f in st.fill_times if f > at]
            st.fill_times.clear()
            st.fill_times.extend(later)
        log.warning("RESUME trader=%s account=%s by=%s (pauses lifted: %d)", trader_id, account_id, by, had)
        self._changed(st, now, "resumed by operator" if by == "operator" else f"resumed by {by}")
        return st

    # ---- decisions ------------------------------------------------------------------------------

    def can_trade(
        self, trader_id: str, account_id: str, order: OrderIntent | None, client_order_id: str = ""
    ) -> tuple[Decision, TraderState]:
        """The decision for `order` (None: may the trader trade at all).

        With a `client_order_id`, the verdict is remembered (the last ORDER_IDS_KEPT ids per trader; one older
        than ORDER_ID_TTL_S is decided afresh): asking again for the same order answers the same verdict (allowed,
        code, reason, state; not the list of checks) and counts nothing again (a retry whose first answer was
        lost); the same id with a different order raises OrderIdReusedError.
        """
        now = self.clock.now()
        st = self.traders.get(trader_id)
        if st is not None and st.account_id != account_id:
            raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id {st.account_id!r}")
        enforce = self.flags.enable_risk_enforcement
        if st is None and trader_id in self.evicted:
            raise self._evicted_error(trader_id)
        if st is None or not st.equity_reported:
            st = st or TraderState(trader_id, account_id)
            check = CheckResult("equity_reported", CheckStatus.FAIL, DecisionCode.NO_EQUITY_REPORTED,
                                "no equity reported for this trader: no data, no trade")
            unseen = self._decide(st, now, [check], [], enforce)
            if self.gate is not None:
                unseen = self.gate(unseen, st, order, False)
            if self.control_gate is not None:
                unseen = self.control_gate(unseen, st, order, False)
            return unseen, st
        remember = bool(client_order_id) and order is not None
        if remember and order is not None:
            self._tick(st, now)  # (a pending order past its TTL is finished from here on)
            live = st.orders.get(client_order_id)
            rejudge = False
            answers = st.order_answers
            seen = answers.get(client_order_id)
            if seen is not None:
                first, allowed, code, reason, _state, _until, would_deny, at = seen
                if now - at <= ORDER_ID_TTL_S:
                    if first != order:
                        raise OrderIdReusedError(
                            f"client_order_id {client_order_id!r} was already used for a different order "
                            f"({first.side.name} {first.quantity:g} {first.symbol} at {first.price:g})")
                    # a retry of a denial: the same verdict, told in today's state - unless the id names an order
                    # that was allowed, denied on a later retry while pending, and has finished since: refused below,
                    # as any finished order's id (its reports would land on a new order)
                    if not allowed and (live is not None or client_order_id not in st.finished_orders):
                        pause = st.effective_pause(now) if st.pauses else None
                        return Decision(False, code, reason, _ACTIVE if pause is None else pause.state,
                                        None if pause is None else pause.until,
                                        actions=tuple(self.cancel_actions(st, now))), st
                    # A retry of an order still pending (an allowed order that has finished since - filled,
                    # cancelled, released - asked about again is a new order under the old id: judged afresh, and it
                    # counts anew). A shadow "allowed" that would have been denied is judged afresh once enforcement
                    # is on again; so is one a pause since forbids (the denial counts nothing).
                    if live is not None:
                        if would_deny and enforce:
                            rejudge = True
                        elif (would_deny and not enforce) or self._still_allowed(
                                st, order, now, self._reduces_now(st, order, live)):
                            return self._again(st, now, code, reason, would_deny), st
                del answers[client_order_id]
            if live is None:
                done = st.finished_orders.get(client_order_id)
                if done is not None:  # reports for the old order would land on a new one: refused
                    raise OrderIdReusedError(
                        f"client_order_id {client_order_id!r} names a finished order ({done.status.name} "
                        f"{done.side.name} {done.quantity:g} {done.symbol}): a new order needs a new id")
            elif not rejudge:  # pending, its answer not remembered (a restart since): a retry
                if (live.symbol, live.side, live.quantity, live.price) != (
                        order.symbol, order.side, order.quantity, order.price) or (
                        order.exchange and order.exchange != live.exchange):
                    raise OrderIdReusedError(
                        f"client_order_id {client_order_id!r} names the pending order {live.side.name} "
                        f"{live.quantity:g} {live.symbol} at {live.price:g}: a new order needs a new id")
                if self._still_allowed(st, order, now, self._reduces_now(st, order, live)):
                    return self._again(st, now, _ALLOWED,
                                       f"already allowed: order {client_order_id} is {live.status.name}", False), st
        self._tick(st, now)
        limits = self.limits_for(account_id)
        split = None if order is None else checks.split_order(st, order)
        reducing = split is not None and split.adding == 0.0
        cache = st.checks_cache
        if cache is None or cache.version != st.version or cache.limits is not limits or cache.reducing is not reducing:
            cache = st.checks_cache = self._checks_cache(st, limits, now, order, reducing)
        order_results = None if order is None else checks.order_checks(st, order, limits, now, split,
                                                                        self.prices.get((account_id, order.symbol)))
        actions = cache.actions
        times = st.order_times
        counted = False  # the order asked about counts in the order_rate windows while breakers look at it
        dropped: float | None = None
        if self.breakers is not None:
            if order is not None:
                if len(times) == times.maxlen:
                    dropped = times[0]
                times.append(now)
                counted = True
            try:
                firings = self._run_breakers(st, limits, now, [] if order is None else [(order.symbol, order.exchange)])
            except BaseException:
                if counted:
                    _uncount(times, dropped)
                raise
            if firings:
                fired = tuple(a for firing in firings for a in firing.actions)
                self._changed(st, now, "breaker fired on can_trade", firings=firings, actions=(*actions, *fired))
                # The firings paused the trader: the state checks (trading_state) and the actions (a halt lists the
                # orders to cancel) are judged on the new state.
                cache = st.checks_cache = self._checks_cache(st, limits, now, order, reducing)
                actions = (*cache.actions, *fired)
            elif st.episodes_changed:  # an episode ended (e.g. an order window emptied): stored with the state
                self._changed(st, now, "breaker re-armed")
        state_checks = cache.checks
        results = state_checks if order_results is None else (*state_checks, *order_results)
        account_checks = self.account_checks
        if account_checks is not None and limits.account_limited:
            results = (*results, *account_checks(st, order, split, limits, now))
        decision = self._decide(st, now, results, actions, enforce)
        if self.gate is not None:
            decision = self.gate(decision, st, order, reducing)
        if self.control_gate is not None:
            decision = self.control_gate(decision, st, order, reducing)
        decision.state_checks = state_checks
        keep = order is not None and decision.allowed and (
            limits.max_orders_per_window is not None or self.breakers is not None
        )
        if counted and not keep:  # denied: it was never placed
            _uncount(times, dropped)
        elif keep and not counted:
            times.append(now)
        if order is not None and decision.allowed and split is not None:
            # Allowed (in shadow mode too: the bot places it): it counts from now on, as if filled.
            self._reserve_allowed(st, order, split.exchange, reducing, client_order_id, limits, now)
        if remember and order is not None:
            d = decision  # kept small: the verdict, not the checks (a busy trader keeps 1,000 of them)
            answers[client_order_id] = (order, d.allowed, d.code, d.reason, d.trading_state, d.paused_until,
                                        d.would_deny, now)
            if len(answers) > ORDER_IDS_KEPT:
                answers.popitem(last=False)
        return decision, st

    def _reserve_allowed(
        self, st: TraderState, order: OrderIntent, exchange: str, reducing: bool, client_order_id: str, limits: Limits,
        now: float,
    ) -> None:
        oid = client_order_id or uuid.uuid4().hex
        if oid in st.orders:
            return  # judged again under the id of a pending order (see can_trade): it already counts
        st.finished_orders.pop(oid, None)  # a new order under a finished one's id: it counts anew
        pending = PendingOrder(oid, order.symbol, exchange, order.side, order.quantity, order.price, now,
                               now + limits.pending_order_ttl_seconds, reducing=reducing)
        if self.journal is not None:
            self.journal.append((now, "reserve_order", (st.trader_id, st.account_id, pending)))
        self._reserve(st, pending, now)
        self._changed(st, now, "order allowed " + oid, "order_allowed", audit=False)

    def _again(self, st: TraderState, now: float, code: DecisionCode, reason: str, would_deny: bool) -> Decision:
        """A pending order's "allowed" answered again (a retry), in today's state."""
        pause = st.effective_pause(now) if st.pauses else None
        return Decision(True, code, reason, _ACTIVE if pause is None else pause.state,
                        None if pause is None else pause.until, would_deny=would_deny)

    @staticmethod
    def _reduces_now(st: TraderState, order: OrderIntent, live: PendingOrder) -> bool:
        """Whether a pending order asked about again only reduces, judged on today's positions without its own
        reservation (counted, it would make a closing order look like one that adds; a position gone since makes
        it add)."""
        orders.uncount(st, live)
        try:
            return checks.split_order(st, order).adding == 0.0
        finally:
            orders.recount(st, live)

    def _still_allowed(self, st: TraderState, order: OrderIntent, now: float, reducing: bool) -> bool:
        """May a pending order's "allowed" be answered again? Not when a pause since then forbids the order, nor when
        the unloaded-state gate would now. `reducing`: what the order did when it was allowed (judged again now,
        its own reservation would make a closing order look like one that adds)."""
        self._tick(st, now)
        if checks.state_check(st, order, now, reducing).status is CheckStatus.FAIL:
            return False
        if self.gate is None and self.control_gate is None:
            return True
        gated = Decision(True, DecisionCode.ALLOWED, "", TradingState.ACTIVE, None)
        for gate in (self.gate, self.control_gate):
            if gate is not None:
                gated = gate(gated, st, order, reducing)
        return gated.allowed and not gated.would_deny

    @classmethod
    def _checks_cache(
        cls, st: TraderState, limits: Limits, now: float, order: OrderIntent | None, reducing: bool
    ) -> ChecksCache:
        """The checks that depend on the state, the limits and `reducing` only (not on the order's numbers), and
        the position actions: after `_tick` every remaining pause is in force, so they hold until the next state
        change (a new version)."""
        state_checks = (
            CheckResult("equity_reported", CheckStatus.PASS, DecisionCode.ALLOWED, f"equity={st.current_equity:.2f}",
                        st.current_equity),
            checks.state_check(st, order, now),
            *checks.loss_checks(st, limits, now, reducing),
            cls._streak_check(st, limits, now, reducing),
            checks.fill_rate(st, limits, now),
        )
        actions = checks.position_actions(st, limits)
        if st.orders and st.pauses and st.trading_state(now) is _HALTED:
            actions.append(cls._cancel_action(st))
        return ChecksCache(st.version, limits, reducing, state_checks, tuple(actions))

    @staticmethod
    def _streak_check(st: TraderState, limits: Limits, now: float, reducing: bool) -> CheckResult:
        code = DecisionCode.CONSECUTIVE_LOSSES
        threshold = limits.consecutive_loss_threshold
        losses = float(st.consecutive_losses)
        if threshold <= 0:
            return CheckResult("consecutive_losses", CheckStatus.SKIPPED, code, "not configured", losses)
        paused = st.active_pause_for(code, now) is not None
        status = CheckStatus.FAIL if paused and not reducing else CheckStatus.PASS
        detail = f"losses_in_a_row={st.consecutive_losses} threshold={threshold}"
        return CheckResult("consecutive_losses", status, code, detail, losses, float(threshold))

    @staticmethod
    def _decide(
        st: TraderState, now: float, results: Sequence[CheckResult], actions: Sequence[RequiredAction], enforce: bool
    ) -> Decision:
        failed = None
        for c in results:
            if c.status is _FAIL:
                failed = c
                break
        pause = st.effective_pause(now) if st.pauses else None
        state = _ACTIVE if pause is None else pause.state
        until = None if pause is None else pause.until
        if failed is None:
            return Decision(True, _ALLOWED, "all checks passed", state, until, tuple(results),
                            tuple(actions))
        reason = failed.detail if failed.detail.startswith(failed.code.name) else f"{failed.code.name}: {failed.detail}"
        if enforce:
            return Decision(False, failed.code, reason, state, until, tuple(results), tuple(actions))
        return Decision(True, failed.code, f"SHADOW (not enforced), would deny: {reason}", state, until,
                        tuple(results), tuple(actions), would_deny=True)
