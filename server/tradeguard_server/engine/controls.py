"""The pre-trade controls of RTS 6 Art. 15, SEC 15c3-5 and the exchanges' filters (issue 16), as order checks.

A PASS carries its numbers in `value` and `limit` and a fixed text (formatting numbers into every passing
check's text cost ~0.5 µs a check on every CanTrade); a FAIL's text has the numbers too, as the denial's reason.

Each is one pure function over an OrderContext, like engine.checks: SKIPPED when not configured, a value equal
to its limit passes (`within`), and an order that only reduces exposure passes every exposure control (the
symbol permissions and the trading windows too: a position can always be closed). The duplicate-order check
and a price collar with a reference price judge every order: a duplicated or mispriced order is an error
whatever it does to exposure. Pending orders (engine.orders) count as filled.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .context import OrderContext, within
from .types import CheckResult, CheckStatus, DecisionCode, Side, TradingWindow

PASS, FAIL, SKIPPED = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIPPED
_QTY = DecisionCode.ORDER_QUANTITY_LIMIT
_POS_QTY = DecisionCode.POSITION_QUANTITY_LIMIT
_OPEN = DecisionCode.OPEN_ORDERS_LIMIT
_COLLAR = DecisionCode.PRICE_COLLAR
_NO_REF = DecisionCode.NO_REFERENCE_PRICE
_DUP = DecisionCode.DUPLICATE_ORDER
_SYMBOL = DecisionCode.SYMBOL_NOT_ALLOWED
_WINDOW = DecisionCode.OUTSIDE_TRADING_WINDOW
_DAY_NOTIONAL = DecisionCode.DAILY_NOTIONAL_LIMIT
_DAY_ORDERS = DecisionCode.DAILY_ORDERS_LIMIT
_BUY = Side.BUY


def symbol_limit(c: OrderContext, name: str) -> float | None:
    """A limit with a symbol override: the order symbol's value, else the account's (None: not configured)."""
    sym = c.sym
    value: float | None = getattr(sym, name) if sym is not None else None
    return getattr(c.limits, name) if value is None else value


_QTY_SKIPPED = CheckResult("order_quantity", SKIPPED, _QTY, "not configured")
_POS_QTY_SKIPPED = CheckResult("position_quantity", SKIPPED, _POS_QTY, "not configured")
_POS_QTY_REDUCING = CheckResult("position_quantity", PASS, _POS_QTY, "reducing order")
_OPEN_SKIPPED = CheckResult("open_orders", SKIPPED, _OPEN, "not configured")
_COLLAR_SKIPPED = CheckResult("price_collar", SKIPPED, _COLLAR, "not configured")
_DUP_SKIPPED = CheckResult("duplicate_order", SKIPPED, _DUP, "not configured")
_SYMBOL_SKIPPED = CheckResult("symbol_permission", SKIPPED, _SYMBOL, "not configured")
_WINDOW_SKIPPED = CheckResult("trading_window", SKIPPED, _WINDOW, "not configured")
_DAY_NOTIONAL_SKIPPED = CheckResult("daily_notional", SKIPPED, _DAY_NOTIONAL, "not configured")
_DAY_ORDERS_SKIPPED = CheckResult("daily_orders", SKIPPED, _DAY_ORDERS, "not configured")
_WINDOW_PASS = CheckResult("trading_window", PASS, _WINDOW, "within a trading window")


_PERMITTED: dict[str, CheckResult] = {}  # the PASS result of each symbol, built once (results are never changed)


def symbol_permission(c: OrderContext) -> CheckResult:
    """allowed_symbols (empty: all) and blocked_symbols."""
    limits = c.limits
    allowed, blocked = limits.allowed_symbols, limits.blocked_symbols
    if not allowed and not blocked:
        return _SYMBOL_SKIPPED
    symbol = c.order.symbol
    if symbol in blocked:
        why = f"{symbol} is in blocked_symbols"
    elif allowed and symbol not in allowed:
        why = f"{symbol} is not in allowed_symbols"
    else:
        permitted = _PERMITTED.get(symbol)
        if permitted is None:
            if len(_PERMITTED) > 10_000:
                _PERMITTED.clear()
            permitted = _PERMITTED[symbol] = CheckResult("symbol_permission", PASS, _SYMBOL, f"{symbol} permitted")
        return permitted
    if c.reducing:
        return CheckResult("symbol_permission", PASS, _SYMBOL, f"{why} (reducing order)")
    return CheckResult("symbol_permission", FAIL, _SYMBOL, why)


def in_window(now: float, windows: tuple[TradingWindow, ...]) -> bool:
    """Whether `now` (epoch seconds) falls in one of the UTC windows."""
    t = datetime.fromtimestamp(now, UTC)
    weekday, minute = t.isoweekday(), t.hour * 60 + t.minute
    yesterday = 7 if weekday == 1 else weekday - 1
    for w in windows:
        days = w.weekdays
        if w.end_minute > w.start_minute:
            if (not days or weekday in days) and w.start_minute <= minute < w.end_minute:
                return True
        else:  # runs past midnight into the next day
            if (not days or weekday in days) and minute >= w.start_minute:
                return True
            if (not days or yesterday in days) and minute < w.end_minute:
                return True
    return False


# (minute, id of the windows tuple) -> (that tuple, inside): keyed by identity (hashing the windows on every order
# cost more than the check), the tuple held so that its id is never reused while the entry lives.
_window_memo: dict[tuple[int, int], tuple[tuple[TradingWindow, ...], bool]] = {}


def _in_window_now(now: float, windows: tuple[TradingWindow, ...]) -> bool:
    """in_window, remembered for the minute (windows are whole minutes): the calendar arithmetic runs once a
    minute, not on every order."""
    key = (int(now // 60), id(windows))
    hit = _window_memo.get(key)
    if hit is None or hit[0] is not windows:
        if len(_window_memo) > 64:
            _window_memo.clear()
        hit = _window_memo[key] = (windows, in_window(now, windows))
    return hit[1]


def trading_window(c: OrderContext) -> CheckResult:
    """New exposure only within the configured UTC windows."""
    windows = c.limits.trading_windows
    if not windows:
        return _WINDOW_SKIPPED
    if _in_window_now(c.now, windows):
        return _WINDOW_PASS
    if c.reducing:
        return CheckResult("trading_window", PASS, _WINDOW, "outside the trading windows (reducing order)")
    when = datetime.fromtimestamp(c.now, UTC).strftime("%a %H:%M")
    return CheckResult("trading_window", FAIL, _WINDOW, f"{when} UTC is outside every trading window")


def duplicate_order(c: OrderContext) -> CheckResult:
    """The same symbol, side, quantity and price as an order allowed within duplicate_order_window_ms."""
    window_ms = c.limits.duplicate_order_window_ms
    if window_ms is None:
        return _DUP_SKIPPED
    order = c.order
    last = c.st.recent_orders.get((order.symbol, int(order.side), order.quantity, order.price))
    if last is None:
        return CheckResult("duplicate_order", PASS, _DUP, "no equal order in the window", 0.0, float(window_ms))
    age_ms = (c.now - last) * 1000.0
    if age_ms >= window_ms:  # (an equal order exactly the window old is outside it, as in every window)
        return CheckResult("duplicate_order", PASS, _DUP, f"equal order {age_ms:.0f} ms ago, window {window_ms} ms",
                           age_ms, float(window_ms))
    detail = (f"{order.side.name} {order.quantity:g} {order.symbol} at {order.price:g} was allowed {age_ms:.0f} ms ago "
              f"(window {window_ms} ms)")
    return CheckResult("duplicate_order", FAIL, _DUP, detail, age_ms, float(window_ms))


def price_collar(c: OrderContext) -> CheckResult:
    """|price - reference| within price_collar_percentage of the reference (the symbol's, else the account's). No
    reference, or one older than reference_price_max_age_seconds, denies new exposure (never skipped)."""
    pct = symbol_limit(c, "price_collar_percentage")
    if pct is None:
        return _COLLAR_SKIPPED
    ref, order = c.ref, c.order
    max_age = c.limits.reference_price_max_age_seconds
    if ref is None or c.now - ref.at > max_age:
        what = (f"no reference price for {order.symbol}" if ref is None else
                f"the reference price of {order.symbol} is {c.now - ref.at:.0f}s old (max {max_age}s)")
        if c.reducing:
            return CheckResult("price_collar", PASS, _NO_REF, f"{what} (reducing order)")
        return CheckResult("price_collar", FAIL, _NO_REF,
                           f"{what}: report prices (ReportPrices or ReportPositions marks)")
    deviation = abs(order.price - ref.price) / ref.price * 100.0
    if within(deviation, pct):
        return CheckResult("price_collar", PASS, _COLLAR, "deviation within the collar", deviation, pct)
    detail = f"price={order.price:g} reference={ref.price:g} deviation={deviation:.2f}% limit={pct:.2f}%"
    return CheckResult("price_collar", FAIL, _COLLAR, detail, deviation, pct)


def order_quantity(c: OrderContext) -> CheckResult:
    """The order's quantity (base units) against max_order_quantity (the symbol's, else the account's)."""
    cap = symbol_limit(c, "max_order_quantity")
    if cap is None:
        return _QTY_SKIPPED
    qty = c.order.quantity
    if c.reducing:
        return CheckResult("order_quantity", PASS, _QTY, f"reducing order quantity={qty:g}", qty, cap)
    if within(qty, cap):
        return CheckResult("order_quantity", PASS, _QTY, "quantity within the limit", qty, cap)
    return CheckResult("order_quantity", FAIL, _QTY, f"quantity={qty:g} limit={cap:g}", qty, cap)


def position_quantity(c: OrderContext) -> CheckResult:
    """The net position in the symbol (every venue) plus the pending orders in the order's direction, after the
    order, in base units, against max_position_quantity (the symbol's, else the account's)."""
    cap = symbol_limit(c, "max_position_quantity")
    if cap is None:
        return _POS_QTY_SKIPPED
    if c.reducing:
        return _POS_QTY_REDUCING
    st, order = c.st, c.order
    symbol, buy = order.symbol, order.side is _BUY
    net = 0.0  # in the order's direction
    for (s, _ex), p in st.positions.items():
        if s == symbol:
            net += p.quantity if (p.side is _BUY) == buy else -p.quantity
    pending = 0.0
    if st.pending:
        for ex in st.pending_venues.get(symbol, ()):
            vp = st.pending[(symbol, ex)]
            pending += vp.buy if buy else vp.sell
    after = net + pending + order.quantity
    if within(after, cap):
        return CheckResult("position_quantity", PASS, _POS_QTY, "position after the order within the limit", after, cap)
    detail = (f"net_position={net:g} pending={pending:g} order={order.quantity:g} after={after:g} limit={cap:g} "
              f"({order.side.name})")
    return CheckResult("position_quantity", FAIL, _POS_QTY, detail, after, cap)


def open_orders(c: OrderContext) -> CheckResult:
    """The trader's pending orders with this one against max_open_orders, and with a symbol override the symbol's
    pending orders with this one against it too: both must hold (an override never lifts the trader's limit)."""
    sym = c.sym
    sym_cap = sym.max_open_orders if sym is not None else None
    cap = c.limits.max_open_orders
    if cap is None and sym_cap is None:
        return _OPEN_SKIPPED
    st = c.st
    count = 1 + len(st.orders)
    if sym_cap is not None:
        symbol = c.order.symbol
        in_symbol = 1 + sum(st.pending[(symbol, ex)].count for ex in st.pending_venues.get(symbol, ()))
        # the tighter of the two is the one reported
        if cap is None or (cap - count) > (sym_cap - in_symbol):
            count, cap, scope = in_symbol, sym_cap, f" in {symbol}"
        else:
            scope = ""
    else:
        scope = ""
    assert cap is not None
    if c.reducing:
        return CheckResult("open_orders", PASS, _OPEN, f"reducing order; open_orders={count}{scope}",
                           float(count), float(cap))
    if count <= cap:
        return CheckResult("open_orders", PASS, _OPEN, "open orders within the limit" + scope, float(count), float(cap))
    detail = f"open_orders={count}{scope} (pending {count - 1} + this one) limit={cap}"
    return CheckResult("open_orders", FAIL, _OPEN, detail, float(count), float(cap))


def daily_orders(c: OrderContext) -> CheckResult:
    """Orders allowed since the day started, this one included, against max_daily_orders."""
    cap = c.limits.max_daily_orders
    if cap is None:
        return _DAY_ORDERS_SKIPPED
    count = c.st.daily_orders + 1
    if c.reducing:
        return CheckResult("daily_orders", PASS, _DAY_ORDERS, f"reducing order; orders_today={count}", float(count),
                           float(cap))
    if count <= cap:
        return CheckResult("daily_orders", PASS, _DAY_ORDERS, "orders today within the limit", float(count), float(cap))
    return CheckResult("daily_orders", FAIL, _DAY_ORDERS, f"orders_today={count} limit={cap}", float(count),
                       float(cap))


def daily_notional(c: OrderContext) -> CheckResult:
    """Notional of the orders allowed since the day started, this one included, against max_daily_notional."""
    cap = c.limits.max_daily_notional
    if cap is None:
        return _DAY_NOTIONAL_SKIPPED
    order = c.order
    total = c.st.daily_order_notional + order.quantity * order.price
    if c.reducing:
        return CheckResult("daily_notional", PASS, _DAY_NOTIONAL, f"reducing order; notional_today={total:.2f}",
                           total, cap)
    if within(total, cap):
        return CheckResult("daily_notional", PASS, _DAY_NOTIONAL, "notional today within the limit", total, cap)
    return CheckResult("daily_notional", FAIL, _DAY_NOTIONAL, f"notional_today={total:.2f} limit={cap:.2f}",
                       total, cap)
