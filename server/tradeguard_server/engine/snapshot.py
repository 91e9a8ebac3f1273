"""Immutable snapshots of a trader's state, for the store (pure: no I/O, no clock).

`to_record` runs on the hot path after every state change, so it copies only what the engine may mutate
later (pauses, symbol statistics) and shares what it never mutates (Position is frozen; a ClosedTrade is
never changed once recorded). The record is then safe to hand to the store's writer thread.

Not in the snapshot: `seen_trade_ids` (trade ids have their own table; pass them back to `from_record`),
`next_boundary` (recomputed: periods roll on first use after a restore), the CanTrade answers remembered by
client_order_id (a retry across a restart is decided afresh) and the duplicate-order window (`recent_orders`),
which `from_record` rebuilds from the orders the record holds anyway (the pending ones and the last
FINISHED_ORDERS_KEPT finished ones: engine.orders.rebuild_windows).

The order and fill windows are in it, bounded: `order_times` (the allowed orders the throttle and the order_rate
breakers count) and `fill_times` (the fill throttle; every partial fill counts, a resume empties it) as their
newest WINDOW_TIMES_STORED times within WINDOW_STORED_S of the change (`_tail`: ~1 us for a typical bot, ~9 us for
one holding 10,001 times; the whole deque of a busy bot cost ~140 us on the event loop). So a restart keeps what
the windows held, up to 1,000 times each; `windows_stored` tells a row of an older version (False: its windows are
rebuilt from its orders alone, a lower bound).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, fields
from itertools import islice
from typing import Any

from .orders import rebuild_pending, rebuild_windows
from .state import (
    FILL_TIMES_KEPT,
    INF,
    ORDER_TIMES_KEPT,
    RECENT_TRADES_KEPT,
    SEEN_TRADE_IDS_KEPT,
    WINDOW_STORED_S,
    WINDOW_TIMES_STORED,
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
    order_times: tuple[float, ...] = ()  # the newest allowed orders' times (see the module docstring)
    breaker_episodes: tuple[tuple[str, str], ...] = ()  # (breaker id, rule) of the episodes in progress
    pending_orders: tuple[PendingOrder, ...] = ()  # allowed, not finished (oldest first)
    finished_orders: tuple[PendingOrder, ...] = ()  # the latest finished ones (oldest first)
    daily_order_notional: float = 0.0
    daily_orders: int = 0
    updated_at: float = 0.0
    version: int = 0
    # (appended last: a record pickled by an older version, e.g. in the spool, lacks them; __setstate__)
    fill_times: tuple[float, ...] = ()  # the newest fills' times, one per fill (see the module docstring)
    windows_stored: bool = False  # order_times and fill_times are the windows (False: a row of an older version)

    def __setstate__(self, state: list[Any]) -> None:
        """Unpickle (the spool): a record of an older version has fewer fields; the missing ones take their
        defaults instead of staying unset."""
        for f, value in zip(fields(self), state, strict=False):
            object.__setattr__(self, f.name, value)
        for f in fields(self)[len(state):]:
            object.__setattr__(self, f.name, f.default)


def _tail(times: deque[float], now: float) -> tuple[float, ...]:
    """The newest WINDOW_TIMES_STORED of `times` (sorted, oldest first) within WINDOW_STORED_S of `now`. Walks
    only what it keeps (a deque's index near either end and reversed() are cheap; islice from the left is not)."""
    n = len(times)
    if not n:
        return ()
    oldest = now - WINDOW_STORED_S
    start = max(0, n - WINDOW_TIMES_STORED)
    if times[start] < oldest:  # some are older than any window: leave them out
        start = bisect_left(times, oldest, lo=start)
    if start == 0:
        return tuple(times)
    newest = list(islice(reversed(times), n - start))
    newest.reverse()
    return tuple(newest)


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
        order_times=_tail(st.order_times, st.updated_at),
        fill_times=_tail(st.fill_times, st.updated_at),
        windows_stored=True,
    )


def _closed_at(t: ClosedTrade) -> float:
    return t.closed_at


def from_record(rec: StateRecord, seen_trade_ids: Iterable[str] = ()) -> TraderState:
    """A fresh, independent TraderState from a record. `next_boundary` is -inf so periods roll on first use.

    `seen_trade_ids` (oldest first) restores duplicate detection of trade reports; the newest
    SEEN_TRADE_IDS_KEPT are kept. The order windows (duplicate orders, order rate, fill rate) are rebuilt from
    the record's orders and, when it holds them (`windows_stored`), its order and fill times
    (engine.orders.rebuild_windows); RiskEngine.restore clamps times after its clock's now.
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
        fill_times=deque(rec.fill_times, maxlen=FILL_TIMES_KEPT),
    )
    rebuild_pending(st)
    rebuild_windows(st, stored=rec.windows_stored)
    return st
