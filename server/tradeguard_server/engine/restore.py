"""Point-in-time restore of a trader's state from a history record (AdminService.RestoreRiskState). Pure.

What a history row records is put back exactly: the equity and its references (current, peak, day / week /
month start equity and the period starts, last_equity_at, equity_reported), the trader's own pauses (breaches,
breakers, kill switches: state, until, code, reason, source, since), the loss streak, the positions, the
volatilities and the per-symbol statistics. Derived values (drawdown, daily / weekly / monthly PnL, trading state,
paused_until) follow from those, so they read as recorded.

Kept as they are (live), by design:
- the order book: pending and finished orders and the day's order count and notional. The orders are at the
  venue whatever the history says; dropping a pending order would stop counting exposure that exists, bringing
  back one that finished would count exposure that does not. A restore never changes what is pending.
- the account and every-account kill switches (sources "account", "all"): they belong to the control state that
  every sidecar shares (ResumeTrading of the scope lifts them), not to one trader's history.
- what history rows do not record: the recent trades (loss-streak windows), the trade ids seen (duplicate
  reports stay duplicates), the breaker episodes in progress, the memory-only order-rate and fill windows.
- the version: it continues (the store keeps the newest version of a trader's row).

Periods roll on first use after the restore (a state recorded yesterday starts today's period at its equity).
"""

from __future__ import annotations

from .snapshot import StateRecord
from .state import INF, Pause, TraderState
from .types import SymbolStats

SCOPE_SOURCES = frozenset({"account", "all"})  # the kill switches of an account / every account (control state)


def restore_point(st: TraderState, rec: StateRecord) -> None:
    """Put what `rec` recorded into `st`, in place (see the module docstring for what stays)."""
    st.equity_reported = rec.equity_reported
    st.current_equity = rec.current_equity
    st.peak_equity = rec.peak_equity
    st.day_start_equity = rec.day_start_equity
    st.week_start_equity = rec.week_start_equity
    st.month_start_equity = rec.month_start_equity
    st.day_start = rec.day_start
    st.week_start = rec.week_start
    st.month_start = rec.month_start
    st.next_boundary = -INF  # periods roll on first use
    st.last_equity_at = rec.last_equity_at
    scope = [p for p in st.pauses if p.source in SCOPE_SOURCES]
    st.pauses = [Pause(p.state, p.until, p.code, p.reason, p.source, p.since)
                 for p in rec.pauses if p.source not in SCOPE_SOURCES] + scope
    st.consecutive_losses = rec.consecutive_losses
    st.positions = {(p.symbol, p.exchange): p for p in rec.positions}
    st.volatility = dict(rec.volatility)
    st.symbol_stats = {s.symbol: SymbolStats(s.trades, s.wins, s.losses, s.realized_pnl) for s in rec.symbol_stats}
    st.checks_cache = None
