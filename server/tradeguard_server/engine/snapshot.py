"""Immutable snapshots of a trader's state, for the store (pure: no I/O, no clock).

`to_record` runs on the hot path after every state change, so it copies only what the engine may mutate
later (pauses, symbol statistics) and shares what it never mutates (Position is frozen; a ClosedTrade is
never changed once recorded). The record is then safe to hand to the store's writer thread.

Not in the snapshot: `seen_trade_ids` (trade ids have their own table; pass them back to `from_record`),
`next_boundary` (recomputed: periods roll on first use after a restore), the CanTrade answers remembered by
client_order_id (a retry across a restart is decided afresh) and the order windows: `order_times` (the
recent allowed orders that the throttle and order_rate breakers count), `fill_times` (the fill throttle) and
`recent_orders` (the duplicate-order window) are memory only. A busy bot keeps up to 10,001 order times, and
copying and JSON-encoding them into every state row cost ~140 µs on the event loop and ~8 ms in the writer per
change. Instead `from_record` rebuilds the windows from the orders the record holds anyway (the pending ones and
the last FINISHED_ORDERS_KEPT finished ones: engine.orders.rebuild_windows), at load time only: what they show
survives a restart, a lower bound of what memory held (pauses the windows caused are kept as pauses).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from .orders import rebuild_pending, rebuild_windows
from .state import (
    INF,
    ORDER_TIMES_KEPT,
    RECENT_TRADES_KEPT,
    SEEN_TRADE_IDS_KEPT,
    DerivedState,
    Pause,
    PauseTerms,
    TraderState,
)
from .types import ClosedTrade, DecisionCode, PendingOrder, Position, SymbolStats, TradingState


@dataclass(frozen=True, slots=True)
class PauseRecord(PauseTerms):
    """An immutable copy of a Pause."""

    state: TradingState
    until: float | None  # None = until resumed
    code: DecisionCode
    reason: str
    source: str
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class SymbolStatsRecord:
    """An immutable copy of one symbol's SymbolStats."""

    symbol: str
    trades: int = 0
    wins: int = 0
    losses: int = 0
    realized_pnl: float = 0.0


@dataclass(frozen=True, slots=True)
class StateRecord(DerivedState[PauseRecord]):
    """Every persisted field of a TraderState, frozen. Times are float epoch seconds. Derived values
    (drawdown_pct, daily_pnl, effective_pause, ...) are TraderState's: both come from DerivedState."""

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
    last_equity_at: float | None = None
    pauses: tuple[PauseRecord, ...] = ()
    consecutive_losses: int = 0
    positions: tuple[Position, ...] = ()
    volatility: tuple[tuple[str, float], ...] = ()
    symbol_stats: tuple[SymbolStatsRecord, ...] = ()
    recent_trades: tuple[ClosedTrade, ...] = ()  # by closed_at (ties as reported); for streaks and breaker windows
    order_times: tuple[float, ...] = ()  # not written any more (memory only); rows of older versions may have some
    breaker_episodes: tuple[tuple[str, str], ...] = ()  # (breaker id, rule) of the episodes in progress
    pending_orders: tuple[PendingOrder, ...] = ()  # allowed, not finished (oldest first)
    finished_orders: tuple[PendingOrder, ...] = ()  # the latest finished ones (oldest first)
    daily_order_notional: float = 0.0
    daily_orders: int = 0
    updated_at: float = 0.0
    version: int = 0


def to_record(st: TraderState) -> StateRecord:
    """A frozen copy of `st` (fast: a few microseconds for a typical trader)."""
    return StateRecord(
        trader_id=st.trader_id,
        account_id=st.account_id,
        equity_reported=st.equity_reported,
        current_equity=st.current_equity,
        peak_equity=st.peak_equity,
        day_start_equity=st.day_start_equity,
        week_start_equity=st.week_start_equity,
        month_start_equity=st.month_start_equity,
        day_start=st.day_start,
        week_start=st.week_start,
        month_start=st.month_start,
        last_equity_at=st.last_equity_at,
        pauses=tuple(PauseRecord(p.state, p.until, p.code, p.reason, p.source, p.since) for p in st.pauses),
        consecutive_losses=st.consecutive_losses,
        positions=tuple(st.positions.values()),
        volatility=tuple(st.volatility.items()),
        symbol_stats=tuple(
            SymbolStatsRecord(sym, s.trades, s.wins, s.losses, s.realized_pnl) for sym, s in st.symbol_stats.items()
        ),
        recent_trades=tuple(st.recent_trades),
        breaker_episodes=tuple(st.breaker_episodes.items()) if st.breaker_episodes else (),
        pending_orders=tuple(st.orders.values()) if st.orders else (),
        finished_orders=tuple(st.finished_orders.values()) if st.finished_orders else (),
        daily_order_notional=st.daily_order_notional,
        daily_orders=st.daily_orders,
        updated_at=st.updated_at,
        version=st.version,
    )


def _closed_at(t: ClosedTrade) -> float:
    return t.closed_at


def from_record(rec: StateRecord, seen_trade_ids: Iterable[str] = ()) -> TraderState:
    """A fresh, independent TraderState from a record. `next_boundary` is -inf so periods roll on first use.

    `seen_trade_ids` (oldest first) restores duplicate detection of trade reports; the newest
    SEEN_TRADE_IDS_KEPT are kept. The order windows (duplicate orders, order rate, fill rate) are rebuilt from
    the record's orders (engine.orders.rebuild_windows); RiskEngine.restore clamps times after its clock's now.
    """
    seen: OrderedDict[str, None] = OrderedDict((tid, None) for tid in seen_trade_ids)
    while len(seen) > SEEN_TRADE_IDS_KEPT:
        seen.popitem(last=False)
    st = TraderState(
        trader_id=rec.trader_id,
        account_id=rec.account_id,
        equity_reported=rec.equity_reported,
        current_equity=rec.current_equity,
        peak_equity=rec.peak_equity,
        day_start_equity=rec.day_start_equity,
        week_start_equity=rec.week_start_equity,
        month_start_equity=rec.month_start_equity,
        day_start=rec.day_start,
        week_start=rec.week_start,
        month_start=rec.month_start,
        next_boundary=-INF,
        last_equity_at=rec.last_equity_at,
        pauses=[Pause(p.state, p.until, p.code, p.reason, p.source, p.since) for p in rec.pauses],
        consecutive_losses=rec.consecutive_losses,
        positions={(p.symbol, p.exchange): p for p in rec.positions},
        volatility=dict(rec.volatility),
        order_times=deque(rec.order_times, maxlen=ORDER_TIMES_KEPT),
        recent_trades=sorted(rec.recent_trades, key=_closed_at)[-RECENT_TRADES_KEPT:],
        breaker_episodes=dict(rec.breaker_episodes),
        seen_trade_ids=seen,
        symbol_stats={s.symbol: SymbolStats(s.trades, s.wins, s.losses, s.realized_pnl) for s in rec.symbol_stats},
        orders={o.client_order_id: o for o in rec.pending_orders},
        finished_orders=OrderedDict((o.client_order_id, o) for o in rec.finished_orders),
        daily_order_notional=rec.daily_order_notional,
        daily_orders=rec.daily_orders,
        updated_at=rec.updated_at,
        version=rec.version,
    )
    rebuild_pending(st)
    rebuild_windows(st)
    return st
