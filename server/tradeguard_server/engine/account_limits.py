"""Account-wide limits (issue 17): pure math over the figures of every trader of an account.

The figures of one trader (`TraderFigures`) come from its live state (`figures_of_state`, a trader this sidecar
owns) or from its stored risk_state row (`figures_of_row`, a trader another sidecar owns; cluster.account_view
reads them). `aggregate` sums them; `evaluate` judges the sums against the configured limits and returns one
CheckResult per configured limit (code ACCOUNT_LIMIT), each with its value and limit and the view's age:

- `account_daily_loss`: the loss of the account today, % of the account's start-of-day equity:
  -(sum of daily PnL) / (sum of day-start equity) * 100, a loss only (a gain is 0 %). Reached (>= limit): a breach.
- `account_drawdown`: the account's summed equity below its peak (account_marks), % of the peak. Reached: a breach.
- `account_gross_exposure`: sum over the traders of |position notional| (quantity x mark price) plus the notional
  of their pending orders (unfilled quantity x order price), per venue the worst case (see `exposure`: an order
  that closes a position adds nothing), AFTER the order asked about (its part that opens or grows exposure): an
  order that adds exposure and would take it beyond the limit FAILs.
- `account_net_exposure`: |long - short| of the same notionals (pending orders as filled), after the order (its
  whole quantity on its side, as if filled): FAILs when it would end beyond the limit and further from zero than
  before (an order that brings the net back toward the limit is allowed).

A breach (daily loss or drawdown reached) FAILs every call of the account's traders except an order that only
reduces a position (as the trader's own loss limits do), and is returned in `AccountVerdict.breaches` so the
caller pauses the account (once per episode: cluster.account_view). An order that only reduces the trader's own
position never FAILs an exposure limit. Without an order (may the trader trade at all?) the exposure checks PASS and
show the current numbers: they judge orders.

Numbers a trader without any equity report has are not counted (no data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .limits import Limits
from .state import TraderState
from .types import CheckResult, CheckStatus, DecisionCode, Side

ACCOUNT = DecisionCode.ACCOUNT_LIMIT
_PASS, _FAIL = CheckStatus.PASS, CheckStatus.FAIL
DAILY_LOSS = "account_daily_loss"
DRAWDOWN = "account_drawdown"
GROSS = "account_gross_exposure"
NET = "account_net_exposure"
BREACH_RULES = (DAILY_LOSS, DRAWDOWN)


@dataclass(frozen=True, slots=True)
class TraderFigures:
    """What one trader adds to its account's sums. `at`: when these numbers were true (a remote trader's
    risk_state.updated_at; a local one's last change). See `exposure` for gross and net."""

    trader_id: str
    equity: float
    day_start_equity: float
    daily_pnl: float
    gross_notional: float
    net_notional: float  # signed: + long, - short
    at: float = 0.0


@dataclass(slots=True)
class AccountFigures:
    """The sums over an account's traders (not frozen, for speed: built on every CanTrade; never changed)."""

    equity: float = 0.0
    day_start_equity: float = 0.0
    daily_pnl: float = 0.0
    gross_notional: float = 0.0
    net_notional: float = 0.0  # signed
    traders: int = 0

    @property
    def daily_loss_pct(self) -> float:
        return daily_loss_pct(self.daily_pnl, self.day_start_equity)


@dataclass(slots=True)
class OrderEffect:
    """What an order would do to the account's exposure if it filled: `adding` the notional that opens or grows
    the trader's exposure (0: it only reduces), `signed` its whole notional (+ buy, - sell)."""

    adding: float
    signed: float


@dataclass(frozen=True, slots=True)
class Breach:
    """A breach of the account's daily loss or drawdown limit: pause every trader of the account."""

    rule: str  # DAILY_LOSS or DRAWDOWN
    value: float
    limit: float
    text: str


@dataclass(frozen=True, slots=True)
class AccountVerdict:
    checks: tuple[CheckResult, ...]
    breaches: tuple[Breach, ...]


def daily_loss_pct(daily_pnl: float, day_start_equity: float) -> float:
    """Loss today as % of the day-start equity (0 for a gain or without a positive reference)."""
    if day_start_equity <= 0.0 or daily_pnl >= 0.0:
        return 0.0
    return -daily_pnl / day_start_equity * 100.0


def drawdown_pct(equity: float, peak: float) -> float:
    """Equity below the peak, % of the peak (0 at or above it, or without a positive peak)."""
    if peak <= 0.0 or equity >= peak:
        return 0.0
    return (peak - equity) / peak * 100.0


def exposure(positions: Mapping[Venue, float], pending: Mapping[Venue, tuple[float, float]]) -> tuple[float, float]:
    """(gross, signed net) notional of one trader: `positions` the signed notional per venue (+ long, - short;
    quantity x mark price), `pending` the (buy, sell) notional of its pending orders per venue (unfilled quantity x
    order price, unreconciled fills included).

    Gross takes the worst case of the pending orders on each venue: all its buys fill or all its sells fill,
    whichever leaves the larger position (max(|p + buys|, |p - sells|)), so an order that closes a position adds
    nothing and one that flips it counts what it opens. Net counts every pending order as filled (p + buys - sells).
    """
    gross = net = 0.0
    for venue, p in positions.items():
        side = pending.get(venue)
        if side is None:
            gross += abs(p)
            net += p
    for venue, (buys, sells) in pending.items():
        p = positions.get(venue, 0.0)
        gross += max(abs(p + buys), abs(p - sells))
        net += p + buys - sells
    return gross, net


Venue = tuple[str, str]  # (symbol, exchange)


def figures_of_state(st: TraderState, day_start: float = 0.0) -> TraderFigures | None:
    """A live TraderState's figures (None: no equity reported yet). Costs one pass over its positions and the venues
    with pending orders (engine.orders keeps their sums), never over its orders. `day_start`: the start of today: a
    trader idle since an earlier day (its periods not rolled yet) has no loss today."""
    if not st.equity_reported:
        return None
    start_equity, pnl = st.day_start_equity, st.daily_pnl
    if st.day_start < day_start or start_equity <= 0.0:
        start_equity, pnl = st.current_equity, 0.0
    positions = {v: (p.quantity * p.mark_price if p.side is Side.BUY else -p.quantity * p.mark_price)
                 for v, p in st.positions.items()}
    pending = {v: (vp.buy_notional, vp.sell_notional) for v, vp in st.pending.items()}
    gross, net = exposure(positions, pending)
    return TraderFigures(st.trader_id, st.current_equity, start_equity, pnl, gross, net, st.updated_at)


def _pending_qty(o: Mapping[str, Any]) -> float:
    final = o.get("status") in ("FILLED", "CANCELLED", "REJECTED", "EXPIRED")
    remaining = 0.0 if final else max(0.0, float(o["quantity"]) - float(o.get("filled") or 0.0))
    return remaining + float(o.get("unreconciled") or 0.0)


def figures_of_row(row: Mapping[str, Any], day_start: float) -> TraderFigures | None:
    """A risk_state row's figures (columns trader_id, current_equity, day_start_equity, day_start, equity_reported,
    positions, pending_orders, updated_at). `day_start`: the start of today: a row from an earlier day (its trader
    idle since) has no loss today (its day-start equity is its equity)."""
    if not row["equity_reported"]:
        return None
    equity = float(row["current_equity"])
    start_equity = float(row["day_start_equity"])
    if row["day_start"] is not None and row["day_start"] < day_start:
        start_equity = equity
    if start_equity <= 0.0:  # no reference yet (engine.state): no PnL today
        start_equity = equity
    positions: dict[Venue, float] = {}
    for p in row["positions"] or ():
        notional = float(p["quantity"]) * float(p["mark_price"])
        venue = (p["symbol"], p.get("exchange") or "")
        positions[venue] = positions.get(venue, 0.0) + (notional if p["side"] == "BUY" else -notional)
    pending: dict[Venue, tuple[float, float]] = {}
    for o in row["pending_orders"] or ():
        notional = _pending_qty(o) * float(o["price"])
        venue = (o["symbol"], o.get("exchange") or "")
        buys, sells = pending.get(venue, (0.0, 0.0))
        pending[venue] = (buys + notional, sells) if o["side"] == "BUY" else (buys, sells + notional)
    gross, net = exposure(positions, pending)
    return TraderFigures(row["trader_id"], equity, start_equity, equity - start_equity, gross, net,
                         float(row["updated_at"]))


def aggregate(figures: Iterable[TraderFigures]) -> AccountFigures:
    equity = start = pnl = gross = net = 0.0
    n = 0
    for f in figures:
        equity += f.equity
        start += f.day_start_equity
        pnl += f.daily_pnl
        gross += f.gross_notional
        net += f.net_notional
        n += 1
    return AccountFigures(equity, start, pnl, gross, net, n)


def order_effect(side: Side, quantity: float, price: float, adding_quantity: float) -> OrderEffect:
    """The effect of an order of `quantity` at `price` of which `adding_quantity` opens or grows exposure
    (engine.checks.split_order)."""
    notional = quantity * price
    return OrderEffect(adding_quantity * price, notional if side is Side.BUY else -notional)


def view_text(traders: int, age_s: float) -> str:
    return f"{traders} trader{'' if traders == 1 else 's'}, view {age_s:.1f}s old"


def loss_checks(a: AccountFigures, peak: float, limits: Limits, view: str) -> tuple[tuple[CheckResult, ...],
                                                                                   tuple[Breach, ...]]:
    """The daily-loss and drawdown checks (as judged for a call that is not a reducing order) and their breaches.
    Depends on the sums, the peak and the view only: the caller may reuse it while those stay the same."""
    out: list[CheckResult] = []
    breaches: list[Breach] = []
    cap = limits.account_daily_loss_percentage
    if cap is not None:
        loss = a.daily_loss_pct
        text = (f"account daily loss {loss:.2f}% (pnl {a.daily_pnl:.2f} of day-start equity "
                f"{a.day_start_equity:.2f}) limit {cap:g}%; {view}")
        if loss >= cap:
            breaches.append(Breach(DAILY_LOSS, loss, cap, text))
        out.append(CheckResult(DAILY_LOSS, _FAIL if loss >= cap else _PASS, ACCOUNT, text, loss, cap))
    cap = limits.account_max_drawdown_percentage
    if cap is not None:
        top = max(peak, a.equity)
        dd = drawdown_pct(a.equity, top)
        text = f"account drawdown {dd:.2f}% (equity {a.equity:.2f} peak {top:.2f}) limit {cap:g}%; {view}"
        if dd >= cap:
            breaches.append(Breach(DRAWDOWN, dd, cap, text))
        out.append(CheckResult(DRAWDOWN, _FAIL if dd >= cap else _PASS, ACCOUNT, text, dd, cap))
    return tuple(out), tuple(breaches)


def exposure_checks(a: AccountFigures, limits: Limits, view: str, order: OrderEffect | None) -> tuple[CheckResult, ...]:
    """The gross and net exposure checks, after `order` (None: the current numbers, PASS)."""
    out: list[CheckResult] = []
    cap = limits.account_max_gross_exposure
    if cap is not None:
        gross = a.gross_notional
        if order is None:
            out.append(CheckResult(GROSS, _PASS, ACCOUNT, f"account gross exposure {gross:.2f} limit {cap:g} "
                                   f"(no order); {view}", gross, cap))
        else:
            after = gross + max(order.adding, 0.0)
            failed = order.adding > 0.0 and after > cap
            out.append(CheckResult(GROSS, _FAIL if failed else _PASS, ACCOUNT,
                                   f"account gross exposure after the order {after:.2f} (now {gross:.2f}) limit "
                                   f"{cap:g}; {view}", after, cap))
    cap = limits.account_max_net_exposure
    if cap is not None:
        net = abs(a.net_notional)
        if order is None:
            out.append(CheckResult(NET, _PASS, ACCOUNT, f"account net exposure {net:.2f} limit {cap:g} (no order); "
                                   f"{view}", net, cap))
        else:
            after = abs(a.net_notional + order.signed)
            failed = order.adding > 0.0 and after > cap and after > net
            out.append(CheckResult(NET, _FAIL if failed else _PASS, ACCOUNT,
                                   f"account net exposure after the order {after:.2f} (now {net:.2f}) limit {cap:g}; "
                                   f"{view}", after, cap))
    return tuple(out)


def for_order(checks: tuple[CheckResult, ...], order: OrderEffect | None) -> tuple[CheckResult, ...]:
    """`loss_checks` as judged for `order`: one that only reduces passes a breach (a copy with status PASS)."""
    if order is None or order.adding > 0.0:
        return checks
    return tuple(c if c.status is _PASS else CheckResult(c.name, _PASS, c.code, c.detail + " (the order only reduces)",
                                                         c.value, c.limit) for c in checks)


def evaluate(
    a: AccountFigures, peak: float, limits: Limits, age_s: float, order: OrderEffect | None = None
) -> AccountVerdict:
    """One CheckResult per configured account-wide limit, and the breaches (daily loss, drawdown) to pause on.
    `peak`: the account's summed-equity peak known (the current sum counts too); `age_s`: how old the view of the
    other sidecars' traders is (0 when every trader is local)."""
    view = view_text(a.traders, age_s)
    losses, breaches = loss_checks(a, peak, limits, view)
    return AccountVerdict((*for_order(losses, order), *exposure_checks(a, limits, view, order)), breaches)
