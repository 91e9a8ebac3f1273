"""An independent model of the order lifecycle (issue 16) and random interleavings of what a bot sends.

Used by tests/unit/test_order_properties.py (against the engine) and tests/integration/test_order_properties_grpc.py
(against a real sidecar that restarts on its SQLite file). The model knows nothing of the engine's per-venue sums:
it keeps every order the sidecar allowed, what was reported on it, the reported positions and the fills since, and
recomputes the worst case from scratch on every question:

- a pending order counts with its unfilled quantity in its direction until a final status is reported (FILLED,
  CANCELLED, REJECTED, EXPIRED, or a cumulative fill of its whole quantity) or pending_order_ttl_seconds pass after
  its last report (allowed_at, or the last ReportOrder on it); one released by its TTL that the bot then reports
  ACCEPTED or PARTIALLY_FILLED (short of its quantity) counts again;
- `filled_quantity` is cumulative: only what it adds to the known fill counts, once; FILLED means the whole order;
  a final status is never undone (a later larger fill still counts);
- a CanTrade under the id of a pending order is a retry (it counts once); under the id of a finished order, or
  the id of another order, it is refused (INVALID_ARGUMENT);
- a fill moves into the position, unless the order was allowed before the last ReportPositions (README: that
  report may already hold it): then it is kept apart, unreconciled, and counts like pending quantity in the
  order's direction (never as a position to reduce) until the next ReportPositions;
- ReportPositions replaces the positions (the truth); reference prices come from ReportPrices (a mark older than
  the known one is ignored) and from the marks of ReportPositions; a restart loses them (memory only), and the
  duplicate-order memory and the fill times with them; ResumeTrading starts the fill throttle's window again;
- the worst case of an order in its direction: position + every unfilled pending quantity in that direction + the
  order; valued as README "Order checks: the arithmetic" says (the order's symbol at the order's price, other
  symbols with a position at its mark, other symbols with only pending orders at those orders' prices).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import event
from hypothesis import strategies as st

from tradeguard_server.engine.limits import Limits, SymbolLimits
from tradeguard_server.engine.periods import day_start
from tradeguard_server.engine.types import OrderIntent, OrderStatus, Side, TradingWindow

ACCOUNT = "a1"
TRADERS = ("t1", "t2")
EQUITY = 10_000.0
PRICES = {"BTCUSDT": 100.0, "ETHUSDT": 50.0, "SOLUSDT": 10.0}  # the reference level of each symbol
SYMBOLS = tuple(PRICES)
SLACK = 1e-7  # relative: the model adds in another order than the engine (whose own tolerance is 1e-9)
WINDOW = TradingWindow(frozenset({4}), 12 * 60, 12 * 60 + 20)  # Thursdays 12:00-12:20 UTC (T0 is Thursday 12:00)


def over(value: float, limit: float) -> bool:
    """value > limit beyond floating-point noise."""
    return value > limit + abs(limit) * SLACK + 1e-12


def key_of(order: OrderIntent) -> tuple[str, Side, float, float]:
    """What identifies an allowed order (all a pending order keeps of it)."""
    return order.symbol, order.side, order.quantity, order.price


# ---- the configuration ----------------------------------------------------------------------------------------

def _maybe(*values: float) -> st.SearchStrategy[float | None]:
    return st.sampled_from((None, None, *values))  # unset as often as set: the later checks get their turn


def _maybe_int(*values: int) -> st.SearchStrategy[int | None]:
    return st.sampled_from((None, None, *values))


@st.composite
def limits_strategy(draw: st.DrawFn) -> Limits:
    """Every exposure limit and pre-trade control of issue 16, each unset or set (some per symbol)."""
    btc = SymbolLimits(
        "BTCUSDT",
        max_position_size_percentage=draw(_maybe(3.0)),
        max_order_quantity=draw(_maybe(1.5)),
        max_position_quantity=draw(_maybe(3.0)),
        max_open_orders=draw(_maybe_int(1, 2)),
        price_collar_percentage=draw(_maybe(2.5)),
    )
    return Limits(
        config_id="c",
        daily_max_drawdown_percentage=None,
        max_drawdown_percentage=None,
        max_position_size_percentage=draw(_maybe(2.0, 4.0)),
        max_correlated_exposure_percentage=draw(_maybe(3.0, 6.0)),
        correlation_groups=draw(st.sampled_from(((), (("majors", frozenset({"BTCUSDT", "ETHUSDT"})),)))),
        max_order_quantity=draw(_maybe(2.0, 3.0)),
        max_position_quantity=draw(_maybe(2.5, 4.0)),
        max_open_orders=draw(_maybe_int(2, 4)),
        price_collar_percentage=draw(_maybe(1.0, 2.0)),
        reference_price_max_age_seconds=draw(st.sampled_from((30, 60))),
        duplicate_order_window_ms=draw(_maybe_int(500, 2_000)),
        allowed_symbols=draw(st.sampled_from((frozenset(), frozenset(), frozenset({"BTCUSDT", "ETHUSDT"})))),
        blocked_symbols=draw(st.sampled_from((frozenset(), frozenset(), frozenset({"SOLUSDT"})))),  # (not allowed too)
        trading_windows=draw(st.sampled_from(((), (WINDOW,)))),
        max_daily_notional=draw(_maybe(1_000.0, 2_500.0)),
        max_daily_orders=draw(_maybe_int(6, 12)),
        max_fills_per_window=draw(_maybe_int(3, 6)),
        fill_window_seconds=60,
        pending_order_ttl_seconds=draw(st.sampled_from((30, 60))),
        symbols=draw(st.sampled_from(({}, {"BTCUSDT": btc}))),
    )


# ---- the operations -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ask:
    """CanTrade. `reuse` >= 0: under the reuse-th id used before (with its order when `same`, else this one);
    < -110: the previous order again under a new id (a duplicate); else a new order under a new id."""

    trader: int
    symbol: str
    side: Side
    quantity: float
    price_factor: float
    reduce_only: bool
    reuse: int
    same: bool


@dataclass(frozen=True)
class Report:
    """ReportOrder on the pick-th allowed order (-1: an id never allowed): cumulative fill = fraction x quantity."""

    trader: int
    pick: int
    status: OrderStatus
    fill_fraction: float
    price_factor: float  # average_price = factor x the order's price; 0 = not given


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Positions:
    """ReportPositions: (symbol, signed quantity, mark factor) each; the list replaces every position."""

    trader: int
    positions: tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class Prices:
    """ReportPrices: (symbol, price factor, age in seconds) each."""

    marks: tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class Equity:
    trader: int
    equity: float


@dataclass(frozen=True)
class Resume:
    trader: int


@dataclass(frozen=True)
class Restart:
    pass


@dataclass(frozen=True)
class Look:
    """GetRiskState of every trader."""


Op = Ask | Report | Wait | Positions | Prices | Equity | Resume | Restart | Look

QUANTITIES = (0.3, 0.5, 0.7, 1.0, 1.1, 1.5, 2.0, 3.0)
PRICE_FACTORS = (0.97, 0.985, 0.99, 1.0, 1.0, 1.0, 1.0, 1.01, 1.02, 1.03)
FILL_FRACTIONS = (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0)
STATUSES = (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED,
            OrderStatus.REJECTED, OrderStatus.EXPIRED)
WAITS = (0.001, 0.2, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 5.0, 10.0, 29.999, 30.0, 45.0, 60.0, 61.0, 300.0, 43_200.0)

trader_ix = st.sampled_from((0, 0, 0, 1))  # mostly one trader, so that its orders pile up against the limits
asks = st.builds(Ask, trader_ix, st.sampled_from(("BTCUSDT", "BTCUSDT", *SYMBOLS)),
                 st.sampled_from((Side.BUY, Side.BUY, Side.SELL)), st.sampled_from(QUANTITIES),
                 st.sampled_from(PRICE_FACTORS), st.booleans(), st.integers(-150, 50), st.booleans())
reports = st.builds(Report, trader_ix, st.integers(-1, 50), st.sampled_from(STATUSES),
                    st.sampled_from(FILL_FRACTIONS), st.sampled_from((0.0, 0.99, 1.0, 1.01)))
waits = st.builds(Wait, st.sampled_from(WAITS))
position_reports = st.builds(Positions, trader_ix, st.lists(
    st.tuples(st.sampled_from(SYMBOLS), st.sampled_from((-3.0, -1.0, 0.0, 0.5, 1.0, 2.0)),
              st.sampled_from((0.98, 1.0, 1.02))), max_size=3, unique_by=lambda p: p[0]).map(tuple))
price_reports = st.builds(Prices, st.lists(
    st.tuples(st.sampled_from(SYMBOLS), st.sampled_from((0.99, 1.0, 1.01)), st.sampled_from((0.0, 5.0, 40.0, 90.0))),
    min_size=1, max_size=3).map(tuple))
equities = st.builds(Equity, trader_ix, st.sampled_from((8_000.0, 10_000.0, 12_000.0)))
resumes = st.builds(Resume, trader_ix)

# one_of would weigh each distinct strategy once: draw the kind first, weighted by repetition.
WEIGHTED: tuple[st.SearchStrategy[Op], ...] = (
    (asks,) * 8 + (reports,) * 5 + (waits,) * 3
    + (position_reports, price_reports, price_reports, equities, resumes, st.just(Restart()), st.just(Look())))


def operations(min_size: int = 25, max_size: int = 70) -> st.SearchStrategy[list[Op]]:
    return st.lists(st.sampled_from(WEIGHTED).flatmap(lambda op: op), min_size=min_size, max_size=max_size)


# ---- the model ------------------------------------------------------------------------------------------------

@dataclass
class MOrder:
    """An order the sidecar allowed, as the model follows it."""

    coid: str
    symbol: str
    side: Side
    quantity: float
    price: float
    allowed_at: float
    expires_at: float
    filled: float = 0.0
    status: OrderStatus = OrderStatus.ALLOWED
    final: bool = False
    released: bool = False  # finished by its TTL (a later ACCEPTED or PARTIALLY_FILLED revives it)
    before_positions: bool = False  # a ReportPositions came after the order was allowed
    unreconciled: float = 0.0  # filled since then: maybe in the reported positions, maybe not

    @property
    def remaining(self) -> float:
        return 0.0 if self.final else max(0.0, self.quantity - self.filled)

    @property
    def exposure(self) -> float:
        """What the order may still add in its direction: its unfilled quantity and its unreconciled fill."""
        return self.remaining + self.unreconciled


@dataclass
class Mark:
    price: float
    at: float


@dataclass
class MTrader:
    """What the model knows of one trader."""

    equity: float = EQUITY
    net: dict[str, float] = field(default_factory=dict)  # signed: long > 0
    mark: dict[str, float] = field(default_factory=dict)
    orders: dict[str, MOrder] = field(default_factory=dict)  # every order ever allowed, by client_order_id
    asked: dict[str, OrderIntent] = field(default_factory=dict)  # the order each id stands for
    allowed: list[tuple[float, str, Side, float, float]] = field(default_factory=list)  # (time, key) of each allowed
    recent: list[tuple[float, str, Side, float, float]] = field(default_factory=list)  # the same, since the restart
    fills: list[float] = field(default_factory=list)  # fill times since the restart
    halted: bool = False  # by max_fills_per_window, until resumed
    expired: int = 0  # orders released after their TTL

    def live(self, now: float) -> list[MOrder]:
        return [o for o in self.orders.values() if not o.final and now < o.expires_at]

    def expire(self, now: float) -> None:
        for o in self.orders.values():
            if not o.final and now >= o.expires_at:
                o.final, o.status, o.released = True, OrderStatus.EXPIRED, True
                self.expired += 1

    def fill(self, order: MOrder, qty: float, price: float) -> None:
        sign = 1.0 if order.side is Side.BUY else -1.0
        net = self.net.get(order.symbol, 0.0) + sign * qty
        self.net[order.symbol] = 0.0 if abs(net) < 1e-9 else net
        self.mark[order.symbol] = price


@dataclass
class Model:
    limits: Limits
    traders: dict[str, MTrader] = field(default_factory=lambda: {t: MTrader() for t in TRADERS})
    refs: dict[str, Mark] = field(default_factory=dict)
    serial: int = 0

    def symbol_limit(self, symbol: str, name: str) -> float | None:
        sym = self.limits.symbols.get(symbol)
        value = getattr(sym, name) if sym is not None else None
        return value if value is not None else getattr(self.limits, name)  # type: ignore[no-any-return]

    def group(self, symbol: str) -> Iterable[str]:
        groups = self.limits.correlation_groups
        if not groups:
            return SYMBOLS
        for _name, members in groups:
            if symbol in members:
                return members
        return (symbol,)

    def expire(self, now: float) -> None:
        for m in self.traders.values():
            m.expire(now)

    # ---- what the bot sends ------------------------------------------------------------------------------

    def order_of(self, op: Ask) -> tuple[str, OrderIntent]:
        """The client_order_id and the order an Ask sends."""
        trader = TRADERS[op.trader]
        m = self.traders[trader]
        order = OrderIntent(op.symbol, op.side, op.quantity, round(PRICES[op.symbol] * op.price_factor, 6),
                            reduce_only=op.reduce_only)
        used = list(m.asked)
        if op.reuse >= 0 and used:
            coid = used[op.reuse % len(used)]
            return coid, (m.asked[coid] if op.same else order)
        if op.reuse < -110 and used:
            order = m.asked[used[-1]]  # the same order under a new id: a duplicate
        self.serial += 1
        return f"{trader}-o{self.serial}", order

    def report_of(self, op: Report) -> tuple[str, float, float]:
        """The client_order_id, cumulative filled quantity and average price a Report sends."""
        trader = TRADERS[op.trader]
        known = list(self.traders[trader].orders)
        if not known or op.pick < 0:
            return f"{trader}-unknown", 0.0, 0.0
        o = self.traders[trader].orders[known[op.pick % len(known)]]
        return o.coid, o.quantity * op.fill_fraction, o.price * op.price_factor

    # ---- what the sidecar answered -------------------------------------------------------------------------

    def refused(self, trader: str, coid: str, order: OrderIntent, now: float) -> list[str]:
        """CanTrade refused the id (OrderIdReusedError / INVALID_ARGUMENT): what is wrong with that. (An id stands
        for the order last judged under it; the sidecar forgets that after 10 minutes or a restart, and then
        refuses only another order under the id of a pending one.)"""
        m = self.traders[trader]
        m.expire(now)
        first = m.asked.get(coid)
        if first is None:
            return [f"{coid} refused though never used"]
        live = m.orders.get(coid)
        if live is not None and not live.final and first == order:
            return [f"{coid} refused for its own pending order"]
        return []  # another order under the id, or the id of a finished order (a new order needs a new id)

    def answered(self, trader: str, coid: str, order: OrderIntent, allowed: bool, now: float) -> list[str]:
        """CanTrade answered: what is wrong with it (invariant a); an allowed new order starts counting."""
        m = self.traders[trader]
        m.expire(now)
        first = m.asked.get(coid)
        known = m.orders.get(coid)
        if known is not None and not known.final:  # a retry of a pending order: it already counts, and counts once
            # (After a restart the sidecar knows the order by its symbol, side, quantity and price only.)
            if first is None or key_of(first) != key_of(order):
                return [f"{coid} named another order ({order}) than its pending one ({first}) and was answered"]
            return []
        if known is not None:
            return [f"{coid} names the finished order {known} and was answered, not refused"]
        if first is not None and first == order and not allowed:
            return []  # a retry of a denial: the same answer (or judged afresh after a restart)
        broken = self.violations(m, order, now) if allowed else []
        if allowed:
            m.orders[coid] = MOrder(coid, order.symbol, order.side, order.quantity, order.price, now,
                                    now + self.limits.pending_order_ttl_seconds)
            entry = (now, order.symbol, order.side, order.quantity, order.price)
            m.allowed.append(entry)
            m.recent.append(entry)
        m.asked[coid] = order
        return broken

    def reported(self, trader: str, coid: str, status: OrderStatus, filled: float, avg: float, now: float) -> None:
        """What the issue says a ReportOrder does: cumulative fills move once; a final status is never undone."""
        lim = self.limits
        m = self.traders[trader]
        m.expire(now)
        o = m.orders[coid]
        total = o.quantity if status is OrderStatus.FILLED else min(filled, o.quantity)
        new = total - o.filled if total > o.filled else 0.0
        total = max(total, o.filled)  # (cumulative: a smaller report does not undo a fill)
        if o.released and not status.final and total < o.quantity:  # still working after all: it counts again
            o.final, o.released, o.status = False, False, status
            event("an order released by its TTL was revived")
        if not o.final:
            if status.final:
                o.status, o.final = status, True
            elif total >= o.quantity:
                o.status, o.final = OrderStatus.FILLED, True
            elif status > o.status:
                o.status = status
            if not o.final:
                o.expires_at = now + lim.pending_order_ttl_seconds
        if new > 0.0:
            o.filled = total
            if o.before_positions:
                o.unreconciled += new
            else:
                m.fill(o, new, avg if avg > 0.0 else o.price)
            m.fills.append(now)
            cap = lim.max_fills_per_window
            if cap is not None and sum(1 for t in m.fills if t > now - lim.fill_window_seconds) >= cap:
                m.halted = True

    def positions_reported(self, trader: str, listed: Iterable[tuple[str, float, float]], now: float) -> None:
        """(symbol, signed quantity, mark price) each."""
        m = self.traders[trader]
        m.expire(now)
        listed = list(listed)
        m.net = {s: q for s, q, _mark in listed if q != 0.0}
        m.mark = {s: mark for s, _q, mark in listed}
        for o in m.orders.values():  # every fill reported so far is in these positions; later ones may be too
            o.before_positions, o.unreconciled = True, 0.0
        for s, _q, mark in listed:
            self.refs[s] = Mark(mark, now)

    def prices_reported(self, marks: Iterable[tuple[str, float, float]]) -> None:
        """(symbol, price, observed at) each."""
        for symbol, price, at in marks:
            known = self.refs.get(symbol)
            if known is None or at >= known.at:
                self.refs[symbol] = Mark(price, at)

    def resumed(self, trader: str) -> None:
        """ResumeTrading: every pause lifted, and the fill throttle's window starts again."""
        m = self.traders[trader]
        m.halted, m.fills = False, []

    def restarted(self) -> None:
        self.refs = {}
        for m in self.traders.values():
            m.recent, m.fills = [], []

    # ---- invariant (a) ------------------------------------------------------------------------------------

    def worst(self, m: MTrader, symbol: str, side: Side, now: float) -> tuple[float, float, float]:
        """(position in the direction of `side`, pending quantity in it (unfilled and unreconciled), its notional)."""
        sign = 1.0 if side is Side.BUY else -1.0
        counted = [o for o in m.orders.values() if o.symbol == symbol and o.side is side
                   and (o.unreconciled > 0.0 or (not o.final and now < o.expires_at))]
        return (sign * m.net.get(symbol, 0.0), sum(o.exposure for o in counted),
                sum(o.exposure * o.price for o in counted))

    def violations(self, m: MTrader, order: OrderIntent, now: float) -> list[str]:
        """What allowing `order` (a new one) breaks, from the model's worst case before it."""
        lim, symbol, q, price, side = self.limits, order.symbol, order.quantity, order.price, order.side
        out: list[str] = []
        if m.halted:
            out.append("allowed while halted by max_fills_per_window")
        window = lim.duplicate_order_window_ms
        if window is not None:
            for at, s, sd, qq, pp in m.recent:
                # (an equal order exactly the window old is outside it)
                if (s, sd, qq, pp) == (symbol, side, q, price) and (now - at) * 1000.0 < window:
                    out.append(f"a duplicate of an order allowed {(now - at) * 1000.0:.0f} ms ago (window {window})")
        collar = self.symbol_limit(symbol, "price_collar_percentage")
        ref = self.refs.get(symbol)
        fresh = ref is not None and now - ref.at <= lim.reference_price_max_age_seconds
        if collar is not None and ref is not None and fresh:
            deviation = abs(price - ref.price) / ref.price * 100.0
            if over(deviation, collar):
                out.append(f"price {price} is {deviation:.3f}% from the reference {ref.price} (collar {collar}%)")
        held, pending, _ = self.worst(m, symbol, side, now)
        after = held + pending + q  # in the order's direction: everything pending filled, then the order
        if after <= 1e-9 * max(1.0, q):
            return out  # the order only reduces: the exposure limits and the controls let it through
        if symbol in lim.blocked_symbols or (lim.allowed_symbols and symbol not in lim.allowed_symbols):
            out.append(f"{symbol} is not permitted")
        if lim.trading_windows:
            t = datetime.fromtimestamp(now, UTC)
            minute = t.hour * 60 + t.minute
            if not (t.isoweekday() == 4 and WINDOW.start_minute <= minute < WINDOW.end_minute):
                out.append(f"{t:%a %H:%M} is outside the trading window")
        if collar is not None and not fresh:
            out.append("new exposure without a fresh reference price")
        cap = self.symbol_limit(symbol, "max_order_quantity")
        if cap is not None and over(q, cap):
            out.append(f"quantity {q} > max_order_quantity {cap}")
        today = [a for a in m.allowed if a[0] >= day_start(now)]
        if lim.max_daily_orders is not None and len(today) + 1 > lim.max_daily_orders:
            out.append(f"{len(today) + 1} orders today > max_daily_orders {lim.max_daily_orders}")
        if lim.max_daily_notional is not None:
            notional = sum(a[3] * a[4] for a in today) + q * price
            if over(notional, lim.max_daily_notional):
                out.append(f"notional today {notional} > max_daily_notional {lim.max_daily_notional}")
        sym = lim.symbols.get(symbol)
        live = m.live(now)
        if sym is not None and sym.max_open_orders is not None:
            count = 1 + sum(1 for o in live if o.symbol == symbol)
            if count > sym.max_open_orders:
                out.append(f"{count} open orders in {symbol} > {sym.max_open_orders}")
        if lim.max_open_orders is not None and 1 + len(live) > lim.max_open_orders:
            out.append(f"{1 + len(live)} open orders > max_open_orders {lim.max_open_orders}")
        pct = self.symbol_limit(symbol, "max_position_size_percentage")
        if pct is not None and over(after * price, pct * m.equity / 100.0):
            out.append(f"worst-case position {after} x {price} > {pct}% of {m.equity} (held {held}, pending {pending})")
        cap = self.symbol_limit(symbol, "max_position_quantity")
        if cap is not None and over(after, cap):
            out.append(f"worst-case position quantity {after} > max_position_quantity {cap}")
        pct = lim.max_correlated_exposure_percentage
        if pct is not None:
            total = after * price
            for other in self.group(symbol):
                if other == symbol:
                    continue
                o_held, o_pending, o_notional = self.worst(m, other, side, now)
                if m.net.get(other, 0.0) != 0.0:  # a position there: valued at its mark
                    total += max(0.0, o_held + o_pending) * m.mark[other]
                else:  # only pending orders: at their prices
                    total += o_notional
            if over(total, pct * m.equity / 100.0):
                out.append(f"worst-case correlated exposure {total} > {pct}% of {m.equity}")
        return out
