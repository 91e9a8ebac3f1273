"""Differential test: the engine's order checks against an oracle written from the README alone.

The oracle below implements README.md "Order checks: the arithmetic" and the table above it, in exact
decimals (Decimal of each float's shortest repr), straightforwardly and slowly; it shares no code with
engine.checks. A seeded generator builds scenarios biased to the boundaries (values at, just above and just
below their limits, within the stated tolerance, flips, exact closes, flat traders, reduce_only with no
position, several venues, correlation groups, volatility regimes, pauses, pending orders on the order's venue and
elsewhere) and asserts that the engine's verdict, code and every check's status equal the oracle's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal, getcontext

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits, SymbolLimits
from tradeguard_server.engine.types import DecisionCode, OrderIntent, PendingOrder, Position, Side, TradingState

getcontext().prec = 60
CASES = 3_200
SEED = 20261130
T0 = 1_767_268_800.0
TOL = Decimal("1e-9")
PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
VENUES = ("", "binance", "bybit")


def D(x: float | int) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


# ---- the oracle (README.md, "Order checks: the arithmetic") ------------------------------------------------


@dataclass
class World:
    """What the oracle knows: equity, positions by (symbol, exchange), volatility by symbol, the pause."""

    equity: float
    positions: dict[tuple[str, str], tuple[str, float, float]]  # (symbol, exchange) -> (side, qty, mark)
    volatility: dict[str, float]
    pause: TradingState  # ACTIVE, REDUCING or HALTED
    # the trader's pending orders: (symbol, exchange, side, quantity, price)
    pending: list[tuple[str, str, str, float, float]] = field(default_factory=list)

    def pending_on(self, key: tuple[str, str], side: str) -> tuple[Decimal, Decimal]:
        """(quantity, notional at the orders' prices) of the pending orders on a venue on one side."""
        orders = [(D(q), D(p)) for s, ex, sd, q, p in self.pending if (s, ex) == key and sd == side]
        return sum((q for q, _p in orders), Decimal(0)), sum((q * p for q, p in orders), Decimal(0))


@dataclass
class Order:
    symbol: str
    side: str  # "BUY" / "SELL"
    qty: float
    price: float
    exchange: str
    reduce_only: bool
    leverage: float
    stop: float
    volatility: float


@dataclass
class Config:
    max_order_notional: float | None = None
    max_orders: int | None = None
    high: float | None = None
    extreme: float | None = None
    factor: float = 1.0
    max_leverage: float | None = None
    position_pct: float | None = None
    position_pct_symbol: float | None = None
    risk_pct: float | None = None
    risk_pct_symbol: float | None = None
    corr_pct: float | None = None
    groups: list[set[str]] = field(default_factory=list)


def le(value: Decimal, limit: Decimal) -> bool:
    """README: value <= limit x (1 + 1e-9)."""
    return value <= limit * (1 + TOL)


def oracle_venue(w: World, o: Order) -> tuple[str, str] | None:
    if o.exchange:
        key = (o.symbol, o.exchange)
        return key if key in w.positions else None
    if (o.symbol, "") in w.positions:
        return (o.symbol, "")
    holding = [k for k in w.positions if k[0] == o.symbol]
    return holding[0] if len(holding) == 1 else None


def order_venue(w: World, o: Order) -> tuple[str, str]:
    """The venue the order trades on: its position's, else the order's exchange."""
    venue = oracle_venue(w, o)
    return venue if venue is not None else (o.symbol, o.exchange)


def oracle_parts(w: World, o: Order) -> tuple[Decimal, Decimal, Decimal]:
    """(reduced, added, venue quantity after the order in the order's direction). README: the pending orders on the
    venue on the order's side count as filled: they add to what it holds after and first use up the opposite
    position the order could reduce."""
    q = D(o.qty)
    same, _notional = w.pending_on(order_venue(w, o), o.side)
    venue = oracle_venue(w, o)
    if venue is None:
        return Decimal(0), q, same + q
    side, h_, _mark = w.positions[venue]
    h = D(h_)
    if side != o.side:
        held = h - same
        if held <= 0:
            return Decimal(0), q, same - h + q
        if q <= held * (1 + TOL):
            return q, Decimal(0), Decimal(0)
        return held, q - held, q - held
    return Decimal(0), q, h + same + q


def oracle_others(w: World, o: Order) -> Decimal:
    """Position size: the quantity on the symbol's other venues, each the larger of its long and short worst
    cases (position + pending buys, short + pending sells)."""
    venue = order_venue(w, o)
    keys = {k for k in w.positions if k[0] == o.symbol} | {(s, ex) for s, ex, _sd, _q, _p in w.pending if s == o.symbol}
    total = Decimal(0)
    for key in keys - {venue}:
        signed = Decimal(0)
        if key in w.positions:
            side, q, _m = w.positions[key]
            signed = D(q) if side == "BUY" else -D(q)
        buys, _n = w.pending_on(key, "BUY")
        sells, _n = w.pending_on(key, "SELL")
        total += max(signed + buys, sells - signed, Decimal(0))
    return total


def oracle_same_direction(w: World, o: Order, group: set[str] | None, venue_after: Decimal) -> Decimal:
    """Correlated exposure: everything on the order's side in its group after the order, pending orders counted as
    filled (a venue with a position valued at its mark, or the order's price in the order's symbol; a venue with
    only pending orders at the orders' prices, or the order's price in the order's symbol)."""
    price = D(o.price)
    venue = order_venue(w, o)
    total = venue_after * price
    keys = set(w.positions) | {(s, ex) for s, ex, _sd, _q, _p in w.pending}
    for key in keys - {venue}:
        if group is not None and key[0] not in group:
            continue
        pending, notional = w.pending_on(key, o.side)
        if key in w.positions:
            side, q, mark = w.positions[key]
            qty = (D(q) if side == o.side else -D(q)) + pending
            if qty > 0:
                total += qty * (price if key[0] == o.symbol else D(mark))
        else:
            total += pending * price if key[0] == o.symbol else notional
    return total


def oracle_scale(w: World, o: Order, c: Config) -> tuple[Decimal, str, bool]:
    """(scale, regime status before the reducing exemption, extreme)."""
    vol = o.volatility if o.volatility > 0 else w.volatility.get(o.symbol, 0.0)
    if c.high is None and c.extreme is None:
        return Decimal(1), SKIPPED, False
    if vol <= 0:
        return Decimal(1), SKIPPED, False
    scale = D(c.factor) if c.high is not None and D(vol) >= D(c.high) else Decimal(1)
    if c.extreme is not None and D(vol) >= D(c.extreme):
        return scale, FAIL, True
    return scale, PASS, False


def oracle(
    w: World, o: Order, c: Config, judged_values: list[tuple[Decimal, Decimal]] | None = None
) -> tuple[bool, DecisionCode, list[tuple[str, str]]]:
    """The verdict, its code and every check (name, status) in the README's order (`judged_values`: gets the
    (value, limit) of every limit comparison made)."""
    _reduced, added, venue_after = oracle_parts(w, o)
    only_reduces = added == 0
    equity, price = D(w.equity), D(o.price)
    scale, regime, _extreme = oracle_scale(w, o, c)
    checks: list[tuple[str, str, DecisionCode]] = [("equity_reported", PASS, DecisionCode.ALLOWED)]
    if w.pause is TradingState.HALTED or (w.pause is TradingState.REDUCING and not only_reduces):
        checks.append(("trading_state", FAIL, DecisionCode.KILL_SWITCH))
    else:
        checks.append(("trading_state", PASS, DecisionCode.KILL_SWITCH))
    for name, code in (("daily_loss", DecisionCode.DAILY_LOSS_LIMIT), ("weekly_loss", DecisionCode.WEEKLY_LOSS_LIMIT),
                       ("monthly_loss", DecisionCode.MONTHLY_LOSS_LIMIT), ("max_drawdown", DecisionCode.MAX_DRAWDOWN),
                       ("consecutive_losses", DecisionCode.CONSECUTIVE_LOSSES)):
        checks.append((name, SKIPPED, code))
    checks.append(("fill_rate", SKIPPED, DecisionCode.FILL_RATE_LIMIT))
    for name, code in (("symbol_permission", DecisionCode.SYMBOL_NOT_ALLOWED),
                       ("trading_window", DecisionCode.OUTSIDE_TRADING_WINDOW),
                       ("duplicate_order", DecisionCode.DUPLICATE_ORDER), ("price_collar", DecisionCode.PRICE_COLLAR),
                       ("order_quantity", DecisionCode.ORDER_QUANTITY_LIMIT)):
        checks.append((name, SKIPPED, code))  # the pre-trade controls: not configured here

    def judged(name: str, code: DecisionCode, configured: bool, value: Decimal, limit: Decimal) -> None:
        if not configured:
            checks.append((name, SKIPPED, code))
        elif only_reduces:
            checks.append((name, PASS, code))
        else:
            checks.append((name, PASS if le(value, limit) else FAIL, code))
            if judged_values is not None:
                judged_values.append((value, limit))

    judged("order_notional", DecisionCode.ORDER_NOTIONAL_LIMIT, c.max_order_notional is not None,
           added * price, D(c.max_order_notional or 0.0) * scale)
    if c.max_orders is None:
        checks.append(("order_rate", SKIPPED, DecisionCode.ORDER_RATE_LIMIT))
    else:  # the first order asked about: a count of 1
        checks.append(("order_rate", PASS if c.max_orders >= 1 else FAIL, DecisionCode.ORDER_RATE_LIMIT))
    for name, code in (("daily_orders", DecisionCode.DAILY_ORDERS_LIMIT),
                       ("daily_notional", DecisionCode.DAILY_NOTIONAL_LIMIT),
                       ("open_orders", DecisionCode.OPEN_ORDERS_LIMIT)):
        checks.append((name, SKIPPED, code))
    checks.append(("volatility_regime", PASS if regime == FAIL and only_reduces else regime,
                   DecisionCode.VOLATILITY_REGIME))
    judged("leverage", DecisionCode.LEVERAGE_LIMIT, c.max_leverage is not None,
           D(o.leverage) if o.leverage > 0 else Decimal(1), D(c.max_leverage or 0.0))
    pos_pct = c.position_pct_symbol if c.position_pct_symbol is not None else c.position_pct
    judged("position_size", DecisionCode.POSITION_SIZE_LIMIT, pos_pct is not None,
           (oracle_others(w, o) + venue_after) * price, D(pos_pct or 0.0) * scale * equity / 100)
    checks.append(("position_quantity", SKIPPED, DecisionCode.POSITION_QUANTITY_LIMIT))
    risk_pct = c.risk_pct_symbol if c.risk_pct_symbol is not None else c.risk_pct
    if o.stop <= 0:
        checks.append(("risk_per_trade", SKIPPED, DecisionCode.RISK_PER_TRADE_LIMIT))
    else:
        judged("risk_per_trade", DecisionCode.RISK_PER_TRADE_LIMIT, risk_pct is not None,
               abs(price - D(o.stop)) * added, D(risk_pct or 0.0) * scale * equity / 100)
    same = oracle_same_direction(w, o, oracle_group(o.symbol, c), venue_after)
    judged("correlated_exposure", DecisionCode.CORRELATED_EXPOSURE_LIMIT, c.corr_pct is not None,
           same, D(c.corr_pct or 0.0) * scale * equity / 100)
    failed = [code for _n, status, code in checks if status == FAIL]
    return not failed, failed[0] if failed else DecisionCode.ALLOWED, [(n, s) for n, s, _c in checks]


def oracle_group(symbol: str, c: Config) -> set[str] | None:
    if not c.groups:
        return None  # all symbols
    for g in c.groups:
        if symbol in g:
            return g
    return {symbol}


# ---- the generator -----------------------------------------------------------------------------------------

NICE_QTY = (0.1, 0.3, 0.07, 1.0, 1.26, 10.2, 0.01, 3.0, 0.001, 2.5)
NICE_PRICE = (0.1, 1.1, 3000.3, 50_000.0, 45_000.0, 40_000.0, 50_500.0, 2990.3, 100.0, 0.3)


def amount(rng: random.Random, nice: tuple[float, ...], low: float, high: float) -> float:
    if rng.random() < 0.4:
        return rng.choice(nice)
    return round(rng.uniform(low, high), rng.choice((0, 1, 2, 3, 4))) or nice[0]


NEAR = (1.0, 1.0, 1.0 + 1e-6, 1.0 - 1e-6, 1.0 + 1e-12, 1.0 - 1e-12, 1.0 + 1e-3, 1.0 - 1e-3, 0.5, 2.0)


def near(rng: random.Random, value: Decimal) -> float | None:
    """A limit at, just above or just below `value` (or anywhere), or None (not configured)."""
    roll = rng.random()
    if roll < 0.12:
        return None
    if value <= 0 or roll < 0.2:
        return round(rng.uniform(0.1, 5_000.0), 2)
    return float(value * D(rng.choice(NEAR)))


def scenario(rng: random.Random) -> tuple[World, Order, Config, list[list[Position]]]:
    reports: list[list[Position]] = []
    if rng.random() < 0.3:  # an earlier report that set a volatility
        reports.append([Position(rng.choice(SYMBOLS), Side.BUY, 0.0, 1.0, 1.0, rng.choice(VENUES),
                                 volatility=rng.choice((1.0, 2.0, 3.0, 6.0)))])
    held: dict[tuple[str, str], Position] = {}
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 4))):
        key = (rng.choice(SYMBOLS), rng.choice(VENUES))
        held[key] = Position(key[0], rng.choice((Side.BUY, Side.SELL)), amount(rng, NICE_QTY, 0.001, 20.0),
                             50_000.0, amount(rng, NICE_PRICE, 0.1, 60_000.0), key[1],
                             volatility=rng.choice((0.0, 0.0, 1.0, 2.5, 3.0, 6.0)))
    reports.append(list(held.values()))
    volatility: dict[str, float] = {}
    for report in reports:
        for p in report:
            if p.volatility > 0:
                volatility[p.symbol] = p.volatility
    world = World(equity=rng.choice((10_000.0, 1_000.0, 100_000.0, round(rng.uniform(100.0, 1e6), 2))),
                  positions={k: (p.side.name, p.quantity, p.mark_price) for k, p in held.items()},
                  volatility=volatility,
                  pause=rng.choice((TradingState.ACTIVE,) * 3 + (TradingState.REDUCING,) * 2 + (TradingState.HALTED,)))

    symbol = rng.choice(SYMBOLS)
    exchange = rng.choice(VENUES)
    if held and rng.random() < 0.6:  # trade against something held
        symbol, exchange = rng.choice(list(held))
        if rng.random() < 0.25:
            exchange = ""
    side = rng.choice(("BUY", "SELL"))
    qty = amount(rng, NICE_QTY, 0.001, 20.0)
    venue_pos = held.get((symbol, exchange))
    if venue_pos is not None and rng.random() < 0.6:
        side = "SELL" if venue_pos.side is Side.BUY else "BUY"
        h = venue_pos.quantity
        qty = rng.choice((h, h, h * (1 + 1e-12), h * (1 + 1e-6), h * 0.5, h + rng.choice(NICE_QTY), h * 1.1))
    price = amount(rng, NICE_PRICE, 0.1, 60_000.0)
    stop = 0.0 if rng.random() < 0.25 else round(price * rng.choice((0.9, 0.99, 1.01, 0.5, 1.2)), 2)
    order = Order(symbol, side, qty, price, exchange, rng.random() < 0.3,
                  rng.choice((0.0, 1.0, 2.0, 5.0, 5.0, 10.0, 50.0)), stop,
                  rng.choice((0.0, 0.0, 0.0, 1.0, 3.0, 5.99, 6.0)))
    pending_orders(rng, world, order)

    config = Config()
    if rng.random() < 0.5:
        config.groups = rng.choice(([{"BTCUSDT", "ETHUSDT"}], [{"BTCUSDT", "ETHUSDT"}, {"SOLUSDT"}],
                                    [{"ETHUSDT", "SOLUSDT"}]))
    if rng.random() < 0.5:
        config.high, config.extreme = rng.choice(((3.0, 6.0), (None, 6.0), (3.0, None), (1.0, 2.0)))
        config.factor = rng.choice((1.0, 0.5, 0.8, 0.3))
    config.max_orders = rng.choice((None, None, 1))
    # Limits set relative to the values the oracle computes, so that many land on a boundary.
    _r, added, venue_after = oracle_parts(world, order)
    scale, _regime, _x = oracle_scale(world, order, config)
    price_d, equity_d = D(price), D(world.equity)
    config.max_order_notional = near(rng, added * price_d / scale)
    lev = D(order.leverage) if order.leverage > 0 else Decimal(1)
    config.max_leverage = None if rng.random() < 0.3 else float(lev * D(rng.choice(NEAR)))
    if config.max_leverage is not None and config.max_leverage < 1.0:
        config.max_leverage = None
    pct_of = 100 / (scale * equity_d)
    chosen = near(rng, (oracle_others(world, order) + venue_after) * price_d * pct_of)
    if rng.random() < 0.3:
        config.position_pct_symbol, config.position_pct = chosen, rng.choice((None, 1.0, 50.0))
    else:
        config.position_pct = chosen
    risk = near(rng, abs(price_d - D(stop)) * added * pct_of) if stop > 0 else rng.choice((None, 1.0))
    if rng.random() < 0.3:
        config.risk_pct_symbol, config.risk_pct = risk, rng.choice((None, 0.5))
    else:
        config.risk_pct = risk
    same = oracle_same_direction(world, order, oracle_group(symbol, config), venue_after)
    config.corr_pct = near(rng, same * pct_of)
    return world, order, config, reports


def pending_orders(rng: random.Random, world: World, order: Order) -> None:
    """Pending orders of the trader: none in about half the scenarios; else on the order's venue (on its side, some
    using up exactly the opposite position the order could reduce) and elsewhere."""
    if rng.random() < 0.5:
        return
    venue = order_venue(world, order)
    held = world.positions.get(venue)
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        key = venue if roll < 0.4 else rng.choice(list(world.positions)) if roll < 0.7 and world.positions else (
            rng.choice(SYMBOLS), rng.choice(VENUES))
        side = rng.choice(("BUY", "SELL"))
        qty = amount(rng, NICE_QTY, 0.001, 20.0)
        if key == venue and held is not None and held[0] != order.side and rng.random() < 0.5:
            side, qty = order.side, rng.choice((held[1], held[1] * 0.5, held[1] * 0.25))  # uses up the position
        world.pending.append((key[0], key[1], side, qty, amount(rng, NICE_PRICE, 0.1, 60_000.0)))
    if held is not None and held[0] != order.side and rng.random() < 0.4:  # the order closes what is left exactly
        same, _n = world.pending_on(venue, order.side)
        left = D(held[1]) - same
        if left > 0:
            order.qty = float(left) * rng.choice((1.0, 1.0, 1 + 1e-12, 1 + 1e-6))


def limits_of(c: Config) -> Limits:
    sym = SymbolLimits("BTCUSDT", max_position_size_percentage=c.position_pct_symbol, max_leverage=c.max_leverage,
                       risk_per_trade_percentage=c.risk_pct_symbol)
    symbols = {s: SymbolLimits(s, max_position_size_percentage=c.position_pct_symbol, max_leverage=c.max_leverage,
                               risk_per_trade_percentage=c.risk_pct_symbol) for s in SYMBOLS}
    symbols["BTCUSDT"] = sym
    return Limits(
        daily_max_drawdown_percentage=None, max_drawdown_percentage=None, max_order_notional=c.max_order_notional,
        max_orders_per_window=c.max_orders, volatility_high=c.high, volatility_extreme=c.extreme,
        volatility_adjustment_factor=c.factor, max_position_size_percentage=c.position_pct,
        risk_per_trade_percentage=c.risk_pct, max_correlated_exposure_percentage=c.corr_pct,
        correlation_groups=tuple((f"g{i}", frozenset(g)) for i, g in enumerate(c.groups)), symbols=symbols,
    )


def engine_verdict(world: World, order: Order, config: Config, reports: list[list[Position]]) -> tuple[
        bool, DecisionCode, list[tuple[str, str]]]:
    engine = RiskEngine(ManualClock(T0), defaults=limits_of(config))
    engine.report_equity("t", "a", world.equity, None)
    for report in reports:
        engine.report_positions("t", "a", report)
    for i, (symbol, exchange, side, qty, price) in enumerate(world.pending):
        engine.reserve_order("t", "a", PendingOrder(f"p{i}", symbol, exchange, Side[side], qty, price, T0, T0 + 60))
    if world.pause is not TradingState.ACTIVE:
        engine.pause("t", "a", world.pause, None, "oracle")
    intent = OrderIntent(order.symbol, Side[order.side], order.qty, order.price, exchange=order.exchange,
                         leverage=order.leverage, reduce_only=order.reduce_only, stop_price=order.stop,
                         volatility=order.volatility)
    decision, _ = engine.can_trade("t", "a", intent)
    return decision.allowed, decision.code, [(c.name, c.status.name) for c in decision.checks]


def test_the_engine_agrees_with_the_readme_oracle_on_boundary_biased_random_orders() -> None:
    rng = random.Random(SEED)
    disagreements: list[str] = []
    seen = {"at_limit": 0, "within_tolerance_above": 0, "just_above": 0, "just_below": 0, "flip": 0, "close": 0,
            "reduce_only_flat": 0, "allowed": 0, "denied": 0, "pending": 0, "pending_used_up_the_position": 0,
            "pending_on_another_venue_held": 0}
    for i in range(CASES):
        world, order, config, reports = scenario(rng)
        compared: list[tuple[Decimal, Decimal]] = []
        expected = oracle(world, order, config, compared)
        actual = engine_verdict(world, order, config, reports)
        if actual != expected:
            diff = [(e, a) for e, a in zip(expected[2], actual[2], strict=True) if e != a]
            disagreements.append(f"case {i}: oracle {expected[:2]} engine {actual[:2]} {diff}\n  {world}\n  {order}\n"
                                 f"  {config}")
        _r, added, _v = oracle_parts(world, order)
        seen["allowed" if expected[0] else "denied"] += 1
        seen["flip"] += int(_r > 0 and added > 0)
        seen["close"] += int(_r > 0 and added == 0)
        seen["reduce_only_flat"] += int(order.reduce_only and oracle_venue(world, order) is None)
        seen["pending"] += int(bool(world.pending))
        venue = oracle_venue(world, order)
        if venue is not None and world.positions[venue][0] != order.side:
            same, _n = world.pending_on(venue, order.side)
            seen["pending_used_up_the_position"] += int(same >= D(world.positions[venue][1]))
        seen["pending_on_another_venue_held"] += int(any(
            (s, ex) in world.positions and (s, ex) != order_venue(world, order) and s == order.symbol
            for s, ex, _sd, _q, _p in world.pending))
        for value, limit in compared:
            if limit > 0:
                ratio = value / limit - 1
                seen["at_limit"] += int(abs(ratio) < Decimal("1e-14"))
                seen["within_tolerance_above"] += int(Decimal("1e-14") <= ratio < TOL)
                seen["just_above"] += int(TOL <= ratio <= Decimal("1e-5"))
                seen["just_below"] += int(Decimal("-1e-5") <= ratio <= Decimal("-1e-14"))

    assert not disagreements, f"{len(disagreements)} of {CASES} disagree:\n" + "\n".join(disagreements[:5])
    assert all(n >= 50 for n in seen.values()), seen  # the generator reaches every kind of case
