"""Per-trader risk state and the pure functions that move it.

Pauses are kept as a small list so that overlapping pauses (a 5-minute kill switch over a 30-minute
loss-limit pause, a REDUCING kill switch over a HALTED one) each end at their own time; the effective state
is the most severe active pause.

Time: every report carries the time it describes (`observed_at`, `closed_at`). Trades are kept ordered by
closed_at (trades closed at the same time in the order reported), so every windowed rule judges by when a
trade closed, whatever order the reports came in. Equity reports are levels: the newest `observed_at` is
the current equity; an older one that arrives late still counts toward the peak (the equity was there).

A reference equity (peak, day / week / month start) of 0 is no reference: the first positive equity in
the period becomes it, so a day that starts at 0 still has loss limits. Any positive amount, however small,
is a reference (a loss is a fraction of it).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from . import periods
from .measures import EquityMeasures
from .types import (
    CheckResult,
    ClosedTrade,
    DecisionCode,
    OrderIntent,
    PendingOrder,
    Position,
    RequiredAction,
    SymbolStats,
    TradingState,
)

OrderAnswer = tuple[OrderIntent, bool, DecisionCode, str, TradingState, float | None, bool, float]
SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
INF = float("inf")
SEEN_TRADE_IDS_KEPT = 10_000
RECENT_TRADES_KEPT = 500
ORDER_TIMES_KEPT = 10_001  # recent allowed orders (throttle and order_rate breakers count within windows)
ORDER_IDS_KEPT = 1_000  # CanTrade answers remembered per trader by client_order_id (retries answer the same)
ORDER_ID_TTL_S = 600.0  # ...each for at most this long
FINISHED_ORDERS_KEPT = 64  # finished orders a trader remembers (repeated or late ReportOrder), persisted
FILL_TIMES_KEPT = 10_001  # recent fills (max_fills_per_window)
# The order and fill windows a stored state carries (engine.snapshot): the newest WINDOW_TIMES_STORED times of
# each, those within WINDOW_STORED_S (the longest window a configuration or breaker may have) of the change.
WINDOW_TIMES_STORED = 1_000
WINDOW_STORED_S = 86_400.0


@dataclass(slots=True)
class VenuePending:
    """The unfilled quantity of a trader's pending orders on one (symbol, exchange), per side, kept up to date by
    engine.orders so that a check never walks the orders."""

    buy: float = 0.0
    sell: float = 0.0
    buy_notional: float = 0.0
    sell_notional: float = 0.0
    count: int = 0  # live (open) orders
    entries: int = 0  # orders counted here: the live ones and finished ones with an unreconciled fill


class PauseTerms:
    """When a pause is in force and how it ranks; for Pause and its frozen copy (snapshot.PauseRecord)."""

    __slots__ = ()

    state: TradingState
    until: float | None  # None = until resumed
    code: DecisionCode

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def rank(self) -> tuple[int, float]:
        return SEVERITY[self.state], INF if self.until is None else self.until


@dataclass(slots=True)
class Pause(PauseTerms):
    """One reason the trader may not trade freely."""

    state: TradingState
    until: float | None  # None = until resumed
    code: DecisionCode
    reason: str
    source: str  # "limit", "manual" or "breaker:<id>"
    since: float = 0.0


P = TypeVar("P", bound=PauseTerms)


class DerivedState(EquityMeasures, Generic[P]):
    """What a trader's numbers imply, defined once for TraderState and its frozen copy (snapshot.StateRecord):
    the loss and PnL measures (engine.measures) and the pause in force."""

    __slots__ = ()

    pauses: Sequence[P]

    def effective_pause(self, now: float) -> P | None:
        """The most severe active pause (the longest of equally severe ones), None when trading freely."""
        best: P | None = None
        for pause in self.pauses:
            if pause.active(now) and (best is None or pause.rank() > best.rank()):
                best = pause
        return best

    def trading_state(self, now: float) -> TradingState:
        pause = self.effective_pause(now)
        return TradingState.ACTIVE if pause is None else pause.state

    def active_pause_for(self, code: DecisionCode, now: float) -> P | None:
        for pause in self.pauses:
            if pause.code is code and pause.active(now):
                return pause
        return None


@dataclass(slots=True)
class ChecksCache:
    """CanTrade's checks that depend only on a trader's state, the limits and whether the order reduces (not on
    the order's numbers), and the position actions: valid while the state stays at `version` under `limits`."""

    version: int
    limits: object
    reducing: bool
    checks: tuple[CheckResult, ...]
    actions: tuple[RequiredAction, ...]


@dataclass(slots=True)
class TraderState(DerivedState[Pause]):
    """Everything the engine knows about one trader. Mutated only by the engine. Derived values (drawdown_pct,
    daily_pnl, effective_pause, ...) come from DerivedState."""

    trader_id: str
    account_id: str
    equity_reported: bool = False
    current_equity: float = 0.0
    peak_equity: float = 0.0
    day_start_equity: float = 0.0
    week_start_equity: float = 0.0
    month_start_equity: float = 0.0
    day_start: float = 0.0
    week_start: float = 0.0
    month_start: float = 0.0
    next_boundary: float = INF
    last_equity_at: float | None = None
    pauses: list[Pause] = field(default_factory=list)
    consecutive_losses: int = 0
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    volatility: dict[str, float] = field(default_factory=dict)
    order_times: deque[float] = field(default_factory=lambda: deque(maxlen=ORDER_TIMES_KEPT))
    recent_trades: list[ClosedTrade] = field(default_factory=list)  # by closed_at (ties: as reported); newest kept
    seen_trade_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # CanTrade verdicts by client_order_id, oldest first: (the order, allowed, code, reason, trading state,
    # paused_until, would_deny, when). Memory only.
    order_answers: OrderedDict[str, OrderAnswer] = field(
        default_factory=OrderedDict, repr=False, compare=False)
    symbol_stats: dict[str, SymbolStats] = field(default_factory=dict)
    # The order lifecycle (engine.orders): orders allowed and not finished, by client_order_id (oldest first), and
    # the latest finished ones (a repeated or late report is recognised). Persisted.
    orders: dict[str, PendingOrder] = field(default_factory=dict)
    finished_orders: OrderedDict[str, PendingOrder] = field(default_factory=OrderedDict)
    # Sums of the orders allowed since day_start (max_daily_notional, max_daily_orders). Persisted.
    daily_order_notional: float = 0.0
    daily_orders: int = 0
    # The fill times (max_fills_per_window): stored, as `order_times` are, as their newest WINDOW_TIMES_STORED.
    # Memory only: the unfilled pending quantity per venue (orders.VenuePending, rebuilt from `orders`), the last
    # time each (symbol, side, quantity, price) was allowed (duplicate orders, rebuilt from the orders by
    # orders.rebuild_windows), and whether the last announced state was HALTED (cancel_all_orders goes out once
    # per halt).
    pending: dict[tuple[str, str], VenuePending] = field(default_factory=dict, repr=False, compare=False)
    fill_times: deque[float] = field(default_factory=lambda: deque(maxlen=FILL_TIMES_KEPT), repr=False,
                                     compare=False)
    recent_orders: OrderedDict[tuple[str, int, float, float], float] = field(
        default_factory=OrderedDict, repr=False, compare=False)
    halted_announced: bool = field(default=False, repr=False, compare=False)
    next_order_expiry: float = field(default=INF, repr=False, compare=False)  # the earliest pending expires_at
    # (expires_at, client_order_id) of the pending orders, a heap; entries of orders since refreshed or finished
    # are skipped when they come up (engine.orders.expire).
    expiry_heap: list[tuple[float, str]] = field(default_factory=list, repr=False, compare=False)
    # The exchanges on which each symbol has pending quantity (keys of `pending`, by symbol): a check of one symbol
    # never walks every venue.
    pending_venues: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)
    # The pending notional over every venue, [buy, sell] (the correlated exposure of an account-wide group).
    pending_notional: list[float] = field(default_factory=lambda: [0.0, 0.0], repr=False, compare=False)
    # Circuit-breaker episodes in progress: breaker id -> the rule it fired under (see breakers.evaluator).
    breaker_episodes: dict[str, str] = field(default_factory=dict)
    updated_at: float = 0.0
    version: int = 0
    episodes_changed: bool = field(default=False, repr=False, compare=False)  # not yet announced
    episodes_adopted: bool = field(default=False, repr=False, compare=False)  # seen by the breaker evaluator
    # CanTrade's checks of the last call, kept for the next call at the same version. Every change goes through
    # RiskEngine._changed, which bumps `version`, so a stale entry is never used.
    checks_cache: ChecksCache | None = field(default=None, init=False, repr=False, compare=False)


def roll_periods(st: TraderState, now: float, reset_offset_s: float) -> bool:
    """Start new day / week / month periods at their boundaries. Returns True when one rolled."""
    if now < st.next_boundary:
        return False
    day = periods.day_start(now, reset_offset_s)
    week = periods.week_start(now, reset_offset_s)
    month = periods.month_start(now, reset_offset_s)
    rolled = False
    if day != st.day_start:
        st.day_start, st.day_start_equity, rolled = day, st.current_equity, True
        st.daily_order_notional, st.daily_orders = 0.0, 0
    if week != st.week_start:
        st.week_start, st.week_start_equity, rolled = week, st.current_equity, True
    if month != st.month_start:
        st.month_start, st.month_start_equity, rolled = month, st.current_equity, True
    st.next_boundary = min(day + periods.DAY, periods.next_month_start(now, reset_offset_s))
    return rolled


def apply_equity(st: TraderState, equity: float, at: float, reset_offset_s: float) -> bool:
    """Apply an equity level observed at `at`. Returns False when the report is stale: older than the last
    one (it then only counts toward the peak)."""
    last = st.last_equity_at
    if last is not None and at < last:
        if equity > st.peak_equity:
            st.peak_equity = equity
        return False
    if not st.equity_reported:
        st.current_equity = st.peak_equity = equity
        st.day_start_equity = st.week_start_equity = st.month_start_equity = equity
        st.equity_reported = True
        st.next_boundary = -INF
        roll_periods(st, at, reset_offset_s)
    else:
        roll_periods(st, at, reset_offset_s)
        # Observed before a period began yet newer than every level known then (received after the boundary):
        # it was the equity at the boundary. Raised to it, never lowered (the earlier period's loss still counts).
        if at < st.day_start and equity > st.day_start_equity:
            st.day_start_equity = equity
        if at < st.week_start and equity > st.week_start_equity:
            st.week_start_equity = equity
        if at < st.month_start and equity > st.month_start_equity:
            st.month_start_equity = equity
        st.current_equity = equity
        if equity > st.peak_equity:
            st.peak_equity = equity
        if equity > 0.0:  # a period that started at 0 takes its first positive equity as its reference
            if st.day_start_equity <= 0.0:
                st.day_start_equity = equity
            if st.week_start_equity <= 0.0:
                st.week_start_equity = equity
            if st.month_start_equity <= 0.0:
                st.month_start_equity = equity
    st.last_equity_at = at
    return True


def add_pause(st: TraderState, pause: Pause) -> bool:
    """Add a pause unless an active one of the same code already covers it. Returns True if added."""
    for existing in st.pauses:
        if existing.code is pause.code and existing.source == pause.source and existing.active(pause.since):
            if existing.rank() >= pause.rank():
                return False
            st.pauses.remove(existing)
            break
    st.pauses.append(pause)
    return True


def expire_pauses(st: TraderState, now: float) -> bool:
    """Drop pauses that ended. Returns True when any did."""
    if not st.pauses:
        return False
    kept = [p for p in st.pauses if p.active(now)]
    if len(kept) == len(st.pauses):
        return False
    st.pauses = kept
    return True


def add_trade(st: TraderState, trade: ClosedTrade) -> None:
    """Count a new closed trade: keep it in closed_at order (bounded) and update the loss streak.

    The streak is the number of losing trades closed after the newest winning one (break-even trades neither
    extend nor reset it), whatever order the reports come in. A trade older than every trade kept (with
    RECENT_TRADES_KEPT kept) is not kept; it can only lengthen the streak, never shorten it.
    """
    trades = st.recent_trades
    closed_at = trade.closed_at
    if not trades or closed_at >= trades[-1].closed_at:
        index = len(trades)
        trades.append(trade)  # the usual case: the newest trade
    else:
        index = bisect_right(trades, closed_at, key=_closed_at)  # after trades closed at the same time
        trades.insert(index, trade)
    later = trades[index + 1:] if index + 1 < len(trades) else ()
    dropped = len(trades) > RECENT_TRADES_KEPT
    if dropped:
        del trades[0]
    pnl = trade.realized_pnl
    if pnl == 0.0 or any(t.realized_pnl > 0.0 for t in later):
        return  # break-even, or closed before the newest win: the streak is unchanged
    if pnl < 0.0:
        st.consecutive_losses += 1
    elif not (dropped and index == 0):  # a win older than every kept trade tells nothing certain
        st.consecutive_losses = sum(1 for t in later if t.realized_pnl < 0.0)


def _closed_at(t: ClosedTrade) -> float:
    return t.closed_at


def remember_trade_id(st: TraderState, trade_id: str) -> bool:
    """Record a trade id. Returns False when it was already seen (a retried report)."""
    if trade_id in st.seen_trade_ids:
        return False
    st.seen_trade_ids[trade_id] = None
    if len(st.seen_trade_ids) > SEEN_TRADE_IDS_KEPT:
        st.seen_trade_ids.popitem(last=False)
    return True


SYMBOLS_KEPT = 256  # per-symbol entries (symbol_stats, volatility) a trader keeps beyond its live symbols
RECENT_SYMBOL_TRADES = 64  # the symbols of this many latest trades count as live


def prune_symbols(st: TraderState) -> int:
    """Bound the per-symbol maps: once one holds more than SYMBOLS_KEPT symbols, drop (oldest first) those
    without an open position or one of the last RECENT_SYMBOL_TRADES trades, down to 3/4 of it. Returns how
    many entries were dropped.

    A bot reporting trades or positions on ever new symbols would otherwise grow its state, and every
    history row that copies it, without end. Live symbols are never dropped, so the maps stay below
    SYMBOLS_KEPT + RECENT_SYMBOL_TRADES + the open positions (at most 1,000 per report), and a check never
    loses the volatility of a symbol the trader holds.
    """
    if len(st.symbol_stats) <= SYMBOLS_KEPT and len(st.volatility) <= SYMBOLS_KEPT:
        return 0
    live = {symbol for symbol, _ in st.positions}
    recent = st.recent_trades
    live.update(recent[i].symbol for i in range(max(0, len(recent) - RECENT_SYMBOL_TRADES), len(recent)))
    target = SYMBOLS_KEPT * 3 // 4
    dropped = 0
    for table in (st.symbol_stats, st.volatility):
        if len(table) <= SYMBOLS_KEPT:
            continue
        for symbol in [s for s in table if s not in live][: max(0, len(table) - target)]:
            del table[symbol]
            dropped += 1
    return dropped
