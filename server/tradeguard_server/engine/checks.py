"""The rules. Loss limits are evaluated on equity reports (they start pauses); order checks on CanTrade.

Every function here is pure: state, limits and time in, results out. A value equal to its limit passes (order
checks compare with `within`, a relative tolerance of 1e-9). README "Order checks: the arithmetic" states the
rules; tests/unit/test_checks_oracle.py holds the engine to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from . import controls
from .context import TOLERANCE as TOLERANCE  # re-exported
from .context import OrderContext, within
from .limits import Limits
from .measures import orders_since
from .state import TraderState
from .types import (
    ActionType,
    Breach,
    CheckResult,
    CheckStatus,
    DecisionCode,
    OrderIntent,
    OrderSplit,
    Position,
    PriceMark,
    RequiredAction,
    Side,
    TradingState,
)

PASS, FAIL, SKIPPED = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIPPED
# Enum members read on every order are module constants: `DecisionCode.X` costs ~50 ns a read on Python 3.11.
_NOTIONAL = DecisionCode.ORDER_NOTIONAL_LIMIT
_RATE = DecisionCode.ORDER_RATE_LIMIT
_LEVERAGE = DecisionCode.LEVERAGE_LIMIT
_SIZE = DecisionCode.POSITION_SIZE_LIMIT
_RISK = DecisionCode.RISK_PER_TRADE_LIMIT
_CORR = DecisionCode.CORRELATED_EXPOSURE_LIMIT
_VOLATILITY = DecisionCode.VOLATILITY_REGIME
_REDUCING, _HALTED = TradingState.REDUCING, TradingState.HALTED
_BUY = Side.BUY

# (check name, code, limit attribute, state attribute for the loss %, start-equity attribute, label)
LOSS_RULES: tuple[tuple[str, DecisionCode, str, str, str, str], ...] = (
    ("daily_loss", DecisionCode.DAILY_LOSS_LIMIT, "daily_max_drawdown_percentage", "daily_loss_pct",
     "day_start_equity", "day_start_equity"),
    ("weekly_loss", DecisionCode.WEEKLY_LOSS_LIMIT, "weekly_max_drawdown_percentage", "weekly_loss_pct",
     "week_start_equity", "week_start_equity"),
    ("monthly_loss", DecisionCode.MONTHLY_LOSS_LIMIT, "monthly_max_drawdown_percentage", "monthly_loss_pct",
     "month_start_equity", "month_start_equity"),
    ("max_drawdown", DecisionCode.MAX_DRAWDOWN, "max_drawdown_percentage", "drawdown_pct",
     "peak_equity", "peak_equity"),
)


def loss_breaches(st: TraderState, limits: Limits) -> list[Breach]:
    """Loss limits passed by the trader's current equity."""
    breaches: list[Breach] = []
    if not st.equity_reported:
        return breaches
    for rule, code, limit_attr, value_attr, ref_attr, ref_label in LOSS_RULES:
        limit: float | None = getattr(limits, limit_attr)
        if limit is None:
            continue
        value: float = getattr(st, value_attr)
        if value > limit:
            reference: float = getattr(st, ref_attr)
            noun = "drawdown" if code is DecisionCode.MAX_DRAWDOWN else "loss"
            reason = (
                f"{code.name}: {noun}={value:.2f}% limit={limit:.2f}% "
                f"equity={st.current_equity:.2f} {ref_label}={reference:.2f}"
            )
            breaches.append(
                Breach(code, rule, value, limit, reason, limits.breach_state, limits.stop_trading_minutes * 60.0)
            )
    return breaches


def loss_checks(st: TraderState, limits: Limits, now: float, reducing: bool) -> list[CheckResult]:
    """Loss limits as decision checks: FAIL while the pause they started is in force, except for an
    exposure-reducing order (a loss limit never blocks one; only HALTED does, in the state check)."""
    out: list[CheckResult] = []
    for rule, code, limit_attr, value_attr, _ref, _label in LOSS_RULES:
        limit: float | None = getattr(limits, limit_attr)
        value: float = getattr(st, value_attr)
        if limit is None:
            out.append(CheckResult(rule, SKIPPED, code, "not configured", value, 0.0))
            continue
        if st.active_pause_for(code, now) is not None:
            status, note = (PASS, "paused; reducing order allowed") if reducing else (FAIL, "paused")
            out.append(CheckResult(rule, status, code, f"loss={value:.2f}% limit={limit:.2f}% ({note})", value, limit))
        elif value > limit:
            detail = f"loss={value:.2f}% limit={limit:.2f}% (pause served; re-checked on the next equity report)"
            out.append(CheckResult(rule, PASS, code, detail, value, limit))
        else:
            out.append(CheckResult(rule, PASS, code, f"loss={value:.2f}% limit={limit:.2f}%", value, limit))
    return out


def streak_breach(st: TraderState, limits: Limits) -> Breach | None:
    """consecutive_loss_threshold losing trades in a row -> cooling-off pause."""
    threshold = limits.consecutive_loss_threshold
    if threshold <= 0 or st.consecutive_losses < threshold:
        return None
    reason = (
        f"CONSECUTIVE_LOSSES: losses_in_a_row={st.consecutive_losses} threshold={threshold} "
        f"cooling_off={limits.cooling_off_period_minutes}m"
    )
    return Breach(
        DecisionCode.CONSECUTIVE_LOSSES, "consecutive_losses", float(st.consecutive_losses), float(threshold),
        reason, limits.breach_state, limits.cooling_off_period_minutes * 60.0,
    )


# ---- order checks -------------------------------------------------------------------------------

def venue_position(positions: dict[tuple[str, str], Position], symbol: str, exchange: str) -> Position | None:
    """The known position an order on (symbol, exchange) trades against: the position on that exchange; for an
    order without an exchange, the position without one, else the only position held in the symbol (None
    when no venue or several venues hold it)."""
    if exchange:
        return positions.get((symbol, exchange))
    pos = positions.get((symbol, ""))
    if pos is not None:
        return pos
    for (sym, _ex), p in positions.items():
        if sym == symbol:
            if pos is not None:
                return None
            pos = p
    return pos


def split_order(st: TraderState, order: OrderIntent) -> OrderSplit:
    """Split an order into the quantity that shrinks the known opposite position on its venue and the quantity
    that adds exposure (`reduce_only` is not trusted: what goes beyond the position adds). The trader's pending
    orders on the venue in the order's direction count as filled: they use up the position first. An order
    within TOLERANCE of what is left of the opposite position closes it."""
    pos = venue_position(st.positions, order.symbol, order.exchange)
    exchange = order.exchange if pos is None else pos.exchange
    qty = order.quantity
    same = 0.0
    if st.pending:
        vp = st.pending.get((order.symbol, exchange))
        if vp is not None:
            same = vp.buy if order.side is _BUY else vp.sell
    if pos is None:
        return OrderSplit(None, 0.0, qty, 0.0, same, exchange)
    if pos.side is order.side:
        return OrderSplit(pos, 0.0, qty, pos.quantity, same, exchange)
    held = pos.quantity - same
    if held <= 0.0:
        return OrderSplit(pos, 0.0, qty, -pos.quantity, same, exchange)
    if within(qty, held):
        return OrderSplit(pos, qty, 0.0, -pos.quantity, same, exchange)
    return OrderSplit(pos, held, qty - held, -pos.quantity, same, exchange)


def is_reducing(st: TraderState, order: OrderIntent) -> bool:
    """True when the order only shrinks a known position (it has no adding part)."""
    return split_order(st, order).adding == 0.0


def volatility_scale(st: TraderState, order: OrderIntent, limits: Limits) -> tuple[float, CheckResult]:
    """Size-limit scale for the volatility regime, and the regime check (FAIL = extreme: no new entries)."""
    code = _VOLATILITY
    high, extreme = limits.volatility_high, limits.volatility_extreme
    vol = order.volatility or st.volatility.get(order.symbol, 0.0)
    if high is None and extreme is None:
        return 1.0, CheckResult("volatility_regime", SKIPPED, code, "no regime thresholds", vol, 0.0)
    if vol <= 0.0:
        return 1.0, CheckResult("volatility_regime", SKIPPED, code, "no volatility reported", 0.0, 0.0)
    if extreme is not None and vol >= extreme:
        # The size limits keep the high regime's scale: the regime check alone is the extreme's denial.
        factor = limits.volatility_adjustment_factor if high is not None else 1.0
        detail = f"volatility={vol:g} extreme>={extreme:g}: no new entries"
        return factor, CheckResult("volatility_regime", FAIL, code, detail, vol, extreme)
    if high is not None and vol >= high:
        factor = limits.volatility_adjustment_factor
        detail = f"volatility={vol:g} high>={high:g}: size limits x{factor:g}"
        return factor, CheckResult("volatility_regime", PASS, code, detail, vol, high)
    threshold = high if high is not None else extreme or 0.0
    return 1.0, CheckResult("volatility_regime", PASS, code, f"volatility={vol:g} normal", vol, threshold)


# Results that never vary, built once (nothing changes a CheckResult after it is built: sharing them is safe).
_RATE_SKIPPED = CheckResult("order_rate", SKIPPED, _RATE, "not configured")
_SIZE_SKIPPED = CheckResult("position_size", SKIPPED, _SIZE, "not configured")
_SIZE_REDUCING = CheckResult("position_size", PASS, _SIZE, "reducing order")
_RISK_NO_STOP = CheckResult("risk_per_trade", SKIPPED, _RISK, "no stop_price")
_RISK_SKIPPED = CheckResult("risk_per_trade", SKIPPED, _RISK, "not configured")
_RISK_REDUCING = CheckResult("risk_per_trade", PASS, _RISK, "reducing order")
_CORR_SKIPPED = CheckResult("correlated_exposure", SKIPPED, _CORR, "not configured")
_CORR_REDUCING = CheckResult("correlated_exposure", PASS, _CORR, "reducing order")
_STATE_ACTIVE = CheckResult("trading_state", PASS, DecisionCode.ALLOWED, "ACTIVE")


# Each order check: skip when unconfigured, pass when the order only reduces, else compare with the numbers.
# The exposure checks judge the order's adding part only; the position in its symbol is computed in
# quantities and valued once, at the order's price.

def order_notional(c: OrderContext) -> CheckResult:
    """Fat-finger: the notional of the order's adding part against max_order_notional."""
    code = _NOTIONAL
    cap = c.limits.max_order_notional
    if cap is None:
        return CheckResult("order_notional", SKIPPED, code, "not configured", c.added)
    if c.reducing:
        order = c.order
        return CheckResult("order_notional", PASS, code, f"reducing order notional={order.quantity * order.price:.2f}",
                           0.0, cap)
    cap *= c.scale
    added = c.added
    status = PASS if within(added, cap) else FAIL
    return CheckResult("order_notional", status, code, f"notional={added:.2f} limit={cap:.2f}", added, cap)


def order_rate(c: OrderContext) -> CheckResult:
    """Throttle: the orders allowed in the window, this one included, against max_orders_per_window."""
    limits = c.limits
    max_orders = limits.max_orders_per_window
    if max_orders is None:
        return _RATE_SKIPPED
    window = limits.order_rate_window_seconds
    count = 1 + orders_since(c.st.order_times, c.now - window)
    status = PASS if count <= max_orders else FAIL
    detail = f"orders={count} in {window}s limit={max_orders}"
    return CheckResult("order_rate", status, _RATE, detail, float(count), float(max_orders))


def volatility_regime(c: OrderContext) -> CheckResult:
    """The volatility regime (volatility_scale): an extreme one denies new entries, never a reducing order."""
    regime = c.regime
    if c.reducing and regime.status is FAIL:
        return CheckResult(regime.name, PASS, regime.code, regime.detail + " (reducing order)", regime.value,
                           regime.limit)
    return regime


def leverage(c: OrderContext) -> CheckResult:
    """The order's leverage against the symbol's max_leverage."""
    code = _LEVERAGE
    lev = c.order.leverage or 1.0
    sym = c.sym
    max_lev = sym.max_leverage if sym is not None else None
    if max_lev is None:
        return CheckResult("leverage", SKIPPED, code, "not configured", lev)
    if c.reducing:
        return CheckResult("leverage", PASS, code, f"reducing order leverage={lev:g}", lev, max_lev)
    status = PASS if within(lev, max_lev) else FAIL
    return CheckResult("leverage", status, code, f"leverage={lev:g} limit={max_lev:g}", lev, max_lev)


def position_size(c: OrderContext) -> CheckResult:
    """The position in the symbol after the order (gross quantity over every venue, valued at the order's price)
    against max_position_size_percentage of equity (the symbol's, else the account's)."""
    sym = c.sym
    pct = sym.max_position_size_percentage if sym is not None else None
    if pct is None:
        pct = c.limits.max_position_size_percentage
        if pct is None:
            return _SIZE_SKIPPED
    if c.reducing:
        return _SIZE_REDUCING
    st, symbol, exchange = c.st, c.order.symbol, c.split.exchange
    gross = c.venue_after
    pending = st.pending
    for (s, ex), p in st.positions.items():
        if s == symbol and ex != exchange:
            vp = pending.get((s, ex)) if pending else None
            if vp is None:
                gross += p.quantity
            else:  # the worst case of the pending orders there: the larger of the long and the short side
                signed = p.quantity if p.side is _BUY else -p.quantity
                gross += max(signed + vp.buy, vp.sell - signed, 0.0)
    if pending:
        for ex in st.pending_venues.get(symbol, ()):
            if ex != exchange and (symbol, ex) not in st.positions:
                vp = pending[(symbol, ex)]
                gross += max(vp.buy, vp.sell)
    after = gross * c.order.price
    pct *= c.scale
    equity = c.equity
    cap = pct * equity / 100.0
    status = PASS if within(after, cap) else FAIL
    detail = f"position_after={after:.2f} limit={cap:.2f} ({pct:.2f}% of equity {equity:.2f})"
    return CheckResult("position_size", status, _SIZE, detail, after, cap)


def risk_per_trade(c: OrderContext) -> CheckResult:
    """What the adding part loses at the order's stop against risk_per_trade_percentage of equity (the symbol's,
    else the account's); skipped without a stop."""
    order = c.order
    stop = order.stop_price
    if stop <= 0.0:
        return _RISK_NO_STOP
    sym = c.sym
    pct = sym.risk_per_trade_percentage if sym is not None else None
    if pct is None:
        pct = c.limits.risk_per_trade_percentage
        if pct is None:
            return _RISK_SKIPPED
    if c.reducing:
        return _RISK_REDUCING
    risk = abs(order.price - stop) * c.split.adding
    pct *= c.scale
    equity = c.equity
    cap = pct * equity / 100.0
    status = PASS if within(risk, cap) else FAIL
    detail = f"risk={risk:.2f} limit={cap:.2f} ({pct:.2f}% of equity {equity:.2f})"
    return CheckResult("risk_per_trade", status, _RISK, detail, risk, cap)


def correlated_exposure(c: OrderContext) -> CheckResult:
    """Same-direction exposure across the order's correlation group after the order (long and short never net)
    against max_correlated_exposure_percentage of equity."""
    limits = c.limits
    pct = limits.max_correlated_exposure_percentage
    if pct is None:
        return _CORR_SKIPPED
    if c.reducing:
        return _CORR_REDUCING
    order = c.order
    symbol, side, price = order.symbol, order.side, order.price
    group = limits.group_of(symbol)
    st, exchange = c.st, c.split.exchange
    buy = side is _BUY
    pending = st.pending
    total = c.venue_after * price
    for (s, ex), p in st.positions.items():
        if (s == symbol and ex == exchange) or (group is not None and s not in group):
            continue
        vp = pending.get((s, ex)) if pending else None
        qty = p.quantity if p.side is side else -p.quantity
        if vp is not None:  # pending orders in this direction count as filled
            qty += vp.buy if buy else vp.sell
        if qty > 0.0:
            total += qty * (price if s == symbol else p.mark_price)
    if pending:
        venues = st.pending_venues
        if group is None:
            # Every symbol: the pending notional over every venue, less what is counted above with a position and
            # the order symbol's venues (counted below at the order's price) - never a walk over every venue.
            rest = st.pending_notional[0 if buy else 1]
            for key in st.positions:
                vp = pending.get(key)
                if vp is not None:
                    rest -= vp.buy_notional if buy else vp.sell_notional
            total += max(0.0, rest)
            symbols: Iterable[str] = (symbol,)
        else:
            symbols = group
        for s in symbols:  # (the group's symbols only, or the order's)
            for ex in venues.get(s, ()):
                if (s == symbol and ex == exchange) or (s, ex) in st.positions:
                    if group is None and s == symbol and (s, ex) not in st.positions:
                        vp = pending[(s, ex)]  # the order's venue: in venue_after, not in `rest`
                        total -= vp.buy_notional if buy else vp.sell_notional
                    continue
                vp = pending[(s, ex)]
                if s == symbol:
                    total += (vp.buy if buy else vp.sell) * price
                    if group is None:  # (in `rest` at the orders' prices)
                        total -= vp.buy_notional if buy else vp.sell_notional
                else:
                    total += vp.buy_notional if buy else vp.sell_notional
    pct *= c.scale
    cap = pct * c.equity / 100.0
    status = PASS if within(total, cap) else FAIL
    detail = f"same_direction_exposure={total:.2f} limit={cap:.2f} ({pct:.2f}% of equity)"
    return CheckResult("correlated_exposure", status, _CORR, detail, total, cap)


OrderCheck = Callable[[OrderContext], CheckResult]

# Every per-order check, in evaluation order: the permissions and the order's own numbers first, then the
# throttles, then exposure (DESIGN 2.1 and the pre-trade controls of engine.controls).
ORDER_CHECKS: tuple[OrderCheck, ...] = (
    controls.symbol_permission,
    controls.trading_window,
    controls.duplicate_order,
    controls.price_collar,
    controls.order_quantity,
    order_notional,
    order_rate,
    controls.daily_orders,
    controls.daily_notional,
    controls.open_orders,
    volatility_regime,
    leverage,
    position_size,
    controls.position_quantity,
    risk_per_trade,
    correlated_exposure,
)


def order_checks(
    st: TraderState, order: OrderIntent, limits: Limits, now: float, split: OrderSplit | None = None,
    ref: PriceMark | None = None,
) -> list[CheckResult]:
    """The results of ORDER_CHECKS for one order, in order (`split`: split_order's answer, when the caller
    already has it; `ref`: the reference price of the order's symbol)."""
    if split is None:
        split = split_order(st, order)
    adding = split.adding
    scale, regime = volatility_scale(st, order, limits)
    ctx = OrderContext(st, order, limits, now, split, adding == 0.0, limits.symbols.get(order.symbol),
                       st.current_equity, adding * order.price, split.venue_after, scale, regime, ref)
    return [check(ctx) for check in ORDER_CHECKS]


def position_actions(st: TraderState, limits: Limits) -> list[RequiredAction]:
    """close_position for every open position losing more than its position_max_drawdown_percentage."""
    actions: list[RequiredAction] = []
    for (symbol, exchange), pos in st.positions.items():
        sym = limits.for_symbol(symbol)
        limit = sym.position_max_drawdown_percentage if sym is not None else None
        limit = limit if limit is not None else limits.position_max_drawdown_percentage
        if limit is None or pos.quantity <= 0.0:
            continue
        loss = pos.loss_pct
        if loss > limit:
            reason = f"POSITION_DRAWDOWN: {symbol} loss={loss:.2f}% limit={limit:.2f}%"
            actions.append(RequiredAction(ActionType.CLOSE_POSITION, symbol, exchange, reason))
    return actions


def state_check(st: TraderState, order: OrderIntent | None, now: float, reducing: bool | None = None) -> CheckResult:
    """The trading-state gate: HALTED blocks everything, REDUCING only what adds exposure (`reducing`: whether the
    order only reduces, when the caller knows; else split_order says)."""
    pause = st.effective_pause(now) if st.pauses else None
    if pause is None:
        return _STATE_ACTIVE
    if pause.state is _REDUCING and order is not None and (is_reducing(st, order) if reducing is None else reducing):
        return CheckResult("trading_state", PASS, pause.code, f"{pause.reason} [REDUCING: reducing order allowed]")
    what = "no orders" if pause.state is _HALTED else "only exposure-reducing orders"
    return CheckResult("trading_state", FAIL, pause.code, f"{pause.reason} [{pause.state.name}: {what}]")


_FILLS = DecisionCode.FILL_RATE_LIMIT
_FILLS_SKIPPED = CheckResult("fill_rate", SKIPPED, _FILLS, "not configured")


def fill_rate(st: TraderState, limits: Limits, now: float) -> CheckResult:
    """max_fills_per_window: FAIL while the halt it started is in force (until a person resumes the trader)."""
    cap = limits.max_fills_per_window
    if cap is None:
        return _FILLS_SKIPPED
    window = limits.fill_window_seconds
    count = orders_since(st.fill_times, now - window)
    detail = f"fills={count} in {window}s limit={cap}"
    if st.active_pause_for(_FILLS, now) is not None:
        return CheckResult("fill_rate", FAIL, _FILLS, detail + " (halted until resumed)", float(count), float(cap))
    return CheckResult("fill_rate", PASS, _FILLS, detail, float(count), float(cap))


def fill_breach(st: TraderState, limits: Limits, now: float) -> Breach | None:
    """max_fills_per_window fills within fill_window_seconds -> HALTED until resumed (RTS 6 15(3))."""
    cap = limits.max_fills_per_window
    if cap is None:
        return None
    window = limits.fill_window_seconds
    count = orders_since(st.fill_times, now - window)
    if count < cap:
        return None
    reason = f"FILL_RATE_LIMIT: fills={count} in {window}s limit={cap}: halted until resumed"
    return Breach(_FILLS, "fill_rate", float(count), float(cap), reason, _HALTED, None)
