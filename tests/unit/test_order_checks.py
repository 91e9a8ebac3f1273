"""Table-driven order checks: for each limit, one order just inside (allowed) and one just outside (denied)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard_server.engine.checks import ORDER_CHECKS
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits, SymbolLimits
from tradeguard_server.engine.types import (
    CheckStatus,
    ClosedTrade,
    DecisionCode,
    OrderIntent,
    Position,
    Side,
    TradingState,
)

T0 = 1_767_268_800.0
EQUITY = 10_000.0


@dataclass
class Case:
    name: str
    limits: Limits
    inside: OrderIntent
    outside: OrderIntent
    code: DecisionCode
    positions: list[Position] = field(default_factory=list)


def order(
    qty: float, price: float = 100.0, side: Side = Side.BUY, symbol: str = "BTCUSDT", **kw: object
) -> OrderIntent:
    return OrderIntent(symbol, side, qty, price, exchange="binance", **kw)  # type: ignore[arg-type]


CASES = [
    Case("position size (account)", Limits(max_position_size_percentage=5.0),
         order(5.0), order(5.01), DecisionCode.POSITION_SIZE_LIMIT),
    Case("position size (symbol override)",
         Limits(max_position_size_percentage=50.0,
                symbols={"BTCUSDT": SymbolLimits("BTCUSDT", max_position_size_percentage=3.0)}),
         order(3.0), order(3.01), DecisionCode.POSITION_SIZE_LIMIT),
    Case("position size counts the open position",
         Limits(max_position_size_percentage=5.0), order(2.0), order(2.01), DecisionCode.POSITION_SIZE_LIMIT,
         [Position("BTCUSDT", Side.BUY, 3.0, 100.0, 100.0, "binance")]),
    Case("leverage (symbol)", Limits(symbols={"BTCUSDT": SymbolLimits("BTCUSDT", max_leverage=5)}),
         order(1.0, leverage=5.0), order(1.0, leverage=5.5), DecisionCode.LEVERAGE_LIMIT),
    Case("risk per trade with a stop", Limits(risk_per_trade_percentage=0.5),
         order(10.0, stop_price=95.0), order(10.1, stop_price=95.0), DecisionCode.RISK_PER_TRADE_LIMIT),
    Case("risk per trade (symbol override)",
         Limits(risk_per_trade_percentage=5.0,
                symbols={"BTCUSDT": SymbolLimits("BTCUSDT", risk_per_trade_percentage=0.3)}),
         order(6.0, stop_price=95.0), order(6.1, stop_price=95.0), DecisionCode.RISK_PER_TRADE_LIMIT),
    Case("correlated exposure (all symbols)", Limits(max_correlated_exposure_percentage=10.0),
         order(6.0), order(6.01), DecisionCode.CORRELATED_EXPOSURE_LIMIT,
         [Position("ETHUSDT", Side.BUY, 4.0, 100.0, 100.0, "binance"),
          Position("SOLUSDT", Side.SELL, 50.0, 100.0, 100.0, "binance")]),
    Case("correlated exposure (configured group)",
         Limits(max_correlated_exposure_percentage=10.0,
                correlation_groups=(("majors", frozenset({"BTCUSDT", "ETHUSDT"})),)),
         order(6.0), order(6.01), DecisionCode.CORRELATED_EXPOSURE_LIMIT,
         [Position("ETHUSDT", Side.BUY, 4.0, 100.0, 100.0, "binance"),
          Position("DOGEUSDT", Side.BUY, 90.0, 100.0, 100.0, "binance")]),
    Case("max notional per order", Limits(max_order_notional=1_000.0),
         order(10.0), order(10.01), DecisionCode.ORDER_NOTIONAL_LIMIT),
    Case("volatility: high regime scales size limits",
         Limits(max_position_size_percentage=5.0, volatility_high=3.0, volatility_adjustment_factor=0.5),
         order(2.5, volatility=3.5), order(2.51, volatility=3.5), DecisionCode.POSITION_SIZE_LIMIT),
    Case("volatility: extreme regime stops new entries",
         Limits(volatility_high=3.0, volatility_extreme=6.0),
         order(1.0, volatility=5.99), order(1.0, volatility=6.0), DecisionCode.VOLATILITY_REGIME),
]


def engine_with(case: Case) -> RiskEngine:
    engine = RiskEngine(ManualClock(T0), defaults=case.limits)
    engine.report_equity("t", "a", EQUITY, None)
    if case.positions:
        engine.report_positions("t", "a", case.positions)
    return engine


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_order_just_inside_a_limit_is_allowed(case: Case) -> None:
    decision, _ = engine_with(case).can_trade("t", "a", case.inside)

    assert decision.allowed, decision.reason


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_order_just_outside_a_limit_is_denied_with_its_code_and_numbers(case: Case) -> None:
    decision, _ = engine_with(case).can_trade("t", "a", case.outside)

    assert not decision.allowed
    assert decision.code is case.code
    failed = [c for c in decision.checks if c.status is CheckStatus.FAIL]
    assert failed[0].code is case.code and failed[0].limit >= 0 and any(ch.isdigit() for ch in failed[0].detail)


def test_order_rate_allows_max_orders_in_the_window_then_denies_then_recovers() -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits(max_orders_per_window=3, order_rate_window_seconds=60))
    engine.report_equity("t", "a", EQUITY, None)

    first_three = [engine.can_trade("t", "a", order(0.1))[0].allowed for _ in range(3)]
    fourth, _ = engine.can_trade("t", "a", order(0.1))
    clock.advance(60)
    later, _ = engine.can_trade("t", "a", order(0.1))

    assert first_three == [True, True, True]
    assert not fourth.allowed and fourth.code is DecisionCode.ORDER_RATE_LIMIT
    assert later.allowed


def test_risk_per_trade_is_skipped_without_a_stop() -> None:
    engine = RiskEngine(ManualClock(T0), defaults=Limits(risk_per_trade_percentage=0.01))
    engine.report_equity("t", "a", EQUITY, None)

    decision, _ = engine.can_trade("t", "a", order(10.0))

    check = next(c for c in decision.checks if c.name == "risk_per_trade")
    assert decision.allowed and check.status is CheckStatus.SKIPPED


def loss(trade_id: str, pnl: float = -10.0) -> ClosedTrade:
    return ClosedTrade(trade_id, "BTCUSDT", "binance", Side.BUY, pnl, T0)


def test_consecutive_losses_threshold_pauses_for_cooling_off_and_a_win_resets() -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits(consecutive_loss_threshold=3, cooling_off_period_minutes=120))
    engine.report_equity("t", "a", EQUITY, None)

    engine.report_trade("t", "a", loss("1"))
    engine.report_trade("t", "a", loss("2"))
    engine.report_trade("t", "a", loss("3", pnl=+5.0))  # a win resets the streak
    engine.report_trade("t", "a", loss("4"))
    engine.report_trade("t", "a", loss("5"))
    after_two, _ = engine.can_trade("t", "a", order(0.1))
    engine.report_trade("t", "a", loss("6"))
    after_three, _ = engine.can_trade("t", "a", order(0.1))
    clock.advance(120 * 60)
    cooled, _ = engine.can_trade("t", "a", order(0.1))

    assert after_two.allowed
    assert not after_three.allowed and after_three.code is DecisionCode.CONSECUTIVE_LOSSES
    assert after_three.paused_until == T0 + 120 * 60
    assert cooled.allowed


def test_the_same_trade_id_reported_twice_counts_once() -> None:
    engine = RiskEngine(ManualClock(T0), defaults=Limits(consecutive_loss_threshold=2, cooling_off_period_minutes=5))
    engine.report_equity("t", "a", EQUITY, None)

    engine.report_trade("t", "a", loss("same"))
    retry = engine.report_trade("t", "a", loss("same"))
    decision, st_ = engine.can_trade("t", "a", order(0.1))

    assert retry.duplicate
    assert st_.consecutive_losses == 1 and decision.allowed


def test_position_past_its_drawdown_limit_yields_close_position_action() -> None:
    limits = Limits(position_max_drawdown_percentage=3.0,
                    symbols={"BTCUSDT": SymbolLimits("BTCUSDT", position_max_drawdown_percentage=2.0)})
    engine = RiskEngine(ManualClock(T0), defaults=limits)
    engine.report_equity("t", "a", EQUITY, None)

    outcome = engine.report_positions("t", "a", [
        Position("BTCUSDT", Side.BUY, 1.0, 100.0, 97.9, "binance"),  # -2.1% > 2% (symbol)
        Position("ETHUSDT", Side.SELL, 1.0, 100.0, 102.9, "binance"),  # -2.9% < 3% (account)
    ])
    decision, _ = engine.can_trade("t", "a", None)

    assert [(a.symbol, a.exchange) for a in outcome.actions] == [("BTCUSDT", "binance")]
    assert [a.symbol for a in decision.actions] == ["BTCUSDT"]


def test_weekly_and_monthly_limits_deny_with_their_codes() -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None,
                                               monthly_max_drawdown_percentage=4.0))
    engine.report_equity("t", "a", EQUITY, None)
    clock.advance(86_400)
    engine.report_equity("t", "a", 9_700.0, None)
    clock.advance(86_400)
    engine.report_equity("t", "a", 9_550.0, None)

    decision, _ = engine.can_trade("t", "a", order(0.1))

    assert decision.code is DecisionCode.MONTHLY_LOSS_LIMIT


ALL_LIMITS = Limits(max_position_size_percentage=5.0, max_correlated_exposure_percentage=10.0,
                    risk_per_trade_percentage=0.5, max_order_notional=500.0,
                    symbols={"BTCUSDT": SymbolLimits("BTCUSDT", max_leverage=2)},
                    volatility_high=1.0, volatility_extreme=2.0)
quantities = st.floats(min_value=0.001, max_value=1_000.0, allow_nan=False, allow_infinity=False)
prices = st.floats(min_value=0.01, max_value=10_000.0, allow_nan=False, allow_infinity=False)


venues = st.sampled_from(["", "binance", "bybit", "okx"])


def held(positions: list[tuple[float, float, Side, str]]) -> list[Position]:
    unique = {ex: (q, p, s) for q, p, s, ex in positions}  # one position per (symbol, exchange)
    return [Position("BTCUSDT", s, q, p, p, ex) for ex, (q, p, s) in unique.items()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(quantities, prices, st.sampled_from([Side.BUY, Side.SELL]), venues), max_size=4),
       quantities, prices, st.sampled_from([Side.BUY, Side.SELL]), venues, st.booleans())
def test_an_allowed_order_never_leaves_the_gross_position_above_its_limit_unless_it_only_reduces(
    positions: list[tuple[float, float, Side, str]], qty: float, price: float, side: Side, exchange: str,
    reduce_only: bool,
) -> None:
    engine = RiskEngine(ManualClock(T0), defaults=Limits(max_position_size_percentage=5.0))
    engine.report_equity("t", "a", EQUITY, None)
    engine.report_positions("t", "a", held(positions))
    before = {p.exchange: (p.quantity if p.side is Side.BUY else -p.quantity)
              for p in engine.traders["t"].positions.values()}
    # an order without exchange trades against the only venue holding the symbol
    venue = exchange if exchange or "" in before or len(before) != 1 else next(iter(before))

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", side, qty, price, exchange=exchange,
                                                          reduce_only=reduce_only))

    old = before.get(venue, 0.0)
    new = old + (qty if side is Side.BUY else -qty)
    only_reduces = old != 0.0 and (old > 0) != (new > old) and qty <= abs(old) * (1 + 1e-9)
    gross_after = (sum(abs(q) for ex, q in before.items() if ex != venue) + abs(new)) * price
    if decision.allowed and not only_reduces:
        assert gross_after <= 0.05 * EQUITY * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(quantities, prices, st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=10.0),
       st.sampled_from([TradingState.ACTIVE, TradingState.REDUCING]))
def test_an_order_within_the_opposite_position_on_its_venue_is_never_denied_by_exposure_checks(
    held_qty: float, price: float, fraction: float, vol: float, state: TradingState
) -> None:
    engine = RiskEngine(ManualClock(T0), defaults=ALL_LIMITS)
    engine.report_equity("t", "a", EQUITY, None)
    engine.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, held_qty, price, price, "binance")])
    if state is TradingState.REDUCING:
        engine.pause("t", "a", TradingState.REDUCING, None, "test")
    qty = max(held_qty * fraction, 1e-9)

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, qty, price, exchange="binance",
                                                          leverage=50.0, stop_price=price / 2, volatility=vol))

    assert decision.allowed, decision.reason


# ---- issue 13 items 2 and 22: the orders that were wrongly allowed ----------------------------------------


def trader(limits: Limits, *positions: Position, equity: float = EQUITY) -> RiskEngine:
    engine = RiskEngine(ManualClock(T0), defaults=limits)
    engine.report_equity("t", "a", equity, None)
    engine.report_positions("t", "a", list(positions))
    return engine


def check(decision: object, name: str) -> tuple[CheckStatus, float, float]:
    c = next(c for c in decision.checks if c.name == name)  # type: ignore[attr-defined]
    return c.status, c.value, c.limit


LONG_1_BTC = Position("BTCUSDT", Side.BUY, 1.0, 50_000.0, 50_000.0, "binance")


def test_a_flip_is_not_reducing_when_the_trader_is_reducing() -> None:
    engine = trader(Limits(), LONG_1_BTC)
    engine.pause("t", "a", TradingState.REDUCING, None, "test")

    flip, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.1, 45_000.0, exchange="binance"))
    close, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.0, 45_000.0, exchange="binance"))

    assert not flip.allowed and flip.code is DecisionCode.KILL_SWITCH
    assert close.allowed, close.reason


def test_an_order_larger_than_a_small_position_is_judged_by_leverage_and_size() -> None:
    limits = Limits(max_position_size_percentage=5.0, symbols={"BTCUSDT": SymbolLimits("BTCUSDT", max_leverage=5)})
    engine = trader(limits, Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance"))  # 500 at mark

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.0, 500.0, exchange="binance",
                                                          leverage=50.0))

    assert not decision.allowed and decision.code is DecisionCode.LEVERAGE_LIMIT
    assert check(decision, "position_size")[0] is CheckStatus.PASS  # short 0.99 x 500 = 495 <= 500


def test_a_flip_below_the_mark_is_valued_in_quantities_at_the_order_price() -> None:
    engine = trader(Limits(max_position_size_percentage=5.0), LONG_1_BTC)

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.26, 40_000.0, exchange="binance"))

    assert not decision.allowed and decision.code is DecisionCode.POSITION_SIZE_LIMIT
    _status, value, limit = check(decision, "position_size")
    assert value == pytest.approx(0.26 * 40_000.0) and limit == pytest.approx(500.0)


def test_a_flip_against_a_stale_mark_reports_the_real_position() -> None:
    engine = trader(Limits(max_position_size_percentage=5.0),
                    Position("BTCUSDT", Side.BUY, 10.0, 50_500.0, 50_500.0, "binance"), equity=100_000.0)

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 10.2, 50_000.0, exchange="binance"))

    assert not decision.allowed
    assert check(decision, "position_size")[1] == pytest.approx(10_000.0)


def test_reduce_only_with_no_position_is_checked_as_new_exposure() -> None:
    limits = Limits(max_order_notional=1_000.0, risk_per_trade_percentage=1.0,
                    symbols={"BTCUSDT": SymbolLimits("BTCUSDT", max_leverage=2)})
    engine = trader(limits)

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 10.0, 50_000.0, exchange="binance",
                                                          reduce_only=True, leverage=100.0, stop_price=60_000.0))

    assert not decision.allowed and decision.code is DecisionCode.ORDER_NOTIONAL_LIMIT
    assert [check(decision, n)[0] for n in ("order_notional", "leverage", "risk_per_trade")] == [CheckStatus.FAIL] * 3


def test_reduce_only_beyond_the_position_checks_only_the_part_beyond_it() -> None:
    engine = trader(Limits(max_order_notional=10_000.0), LONG_1_BTC)

    inside, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.2, 50_000.0, exchange="binance",
                                                        reduce_only=True))
    outside, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 1.21, 50_000.0, exchange="binance",
                                                         reduce_only=True))

    assert inside.allowed and check(inside, "order_notional")[1] == pytest.approx(10_000.0)
    assert not outside.allowed and outside.code is DecisionCode.ORDER_NOTIONAL_LIMIT


@pytest.mark.parametrize(("limits", "order_", "stop"), [
    (Limits(max_order_notional=0.3), (3.0, 0.1), 0.0),
    (Limits(max_order_notional=3_500.0), (0.07, 50_000.0), 0.0),
    (Limits(risk_per_trade_percentage=1.0), (1.0, 3000.3), 2990.3),
    (Limits(risk_per_trade_percentage=0.01), (1.0, 1.1), 1.0),
], ids=["3 x 0.1 vs 0.3", "0.07 x 50,000 vs 3,500", "|3000.3 - 2990.3| x 1 vs 1% of 1,000",
        "|1.1 - 1.0| x 1 vs 0.01% of 1,000"])
def test_a_value_equal_to_its_limit_passes_in_floating_point(
    limits: Limits, order_: tuple[float, float], stop: float
) -> None:
    engine = trader(limits, equity=1_000.0)

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, *order_, stop_price=stop))

    assert decision.allowed, decision.reason


def test_an_opposite_order_on_another_exchange_does_not_reduce() -> None:
    engine = trader(Limits(max_position_size_percentage=5.0), Position("BTCUSDT", Side.BUY, 0.01, 50_000.0,
                                                                       50_000.0, "binance"))
    engine.pause("t", "a", TradingState.REDUCING, None, "test")

    other, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 0.01, 50_000.0, exchange="bybit"))
    unnamed, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 0.01, 50_000.0))

    assert not other.allowed and other.code is DecisionCode.KILL_SWITCH
    assert unnamed.allowed, unnamed.reason  # no exchange: the only venue holding the symbol


def test_position_size_counts_every_venue_gross() -> None:
    engine = trader(Limits(max_position_size_percentage=5.0),
                    Position("BTCUSDT", Side.SELL, 0.006, 50_000.0, 50_000.0, "bybit"))

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, 0.005, 50_000.0, exchange="binance"))

    assert not decision.allowed and check(decision, "position_size")[1] == pytest.approx(550.0)


def test_correlated_exposure_does_not_net_long_and_short_across_venues() -> None:
    engine = trader(Limits(max_correlated_exposure_percentage=10.0),
                    Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance"),
                    Position("BTCUSDT", Side.SELL, 0.01, 50_000.0, 50_000.0, "bybit"))

    decision, _ = engine.can_trade("t", "a", OrderIntent("ETHUSDT", Side.BUY, 0.21, 2_500.0, exchange="binance"))

    assert not decision.allowed and check(decision, "correlated_exposure")[1] == pytest.approx(1_025.0)


def test_a_high_volatility_regime_scales_the_fat_finger_limit_too() -> None:
    engine = trader(Limits(max_order_notional=1_000.0, volatility_high=3.0, volatility_adjustment_factor=0.5))

    inside, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, 5.0, 100.0, volatility=3.0))
    outside, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, 5.01, 100.0, volatility=3.0))

    assert inside.allowed and not outside.allowed and outside.code is DecisionCode.ORDER_NOTIONAL_LIMIT


def test_the_decision_lists_one_result_per_order_check_named_after_it_in_evaluation_order() -> None:
    engine = trader(Limits(max_position_size_percentage=5.0, max_order_notional=1_000.0))

    decision, _ = engine.can_trade("t", "a", order(1.0))

    names = [c.name for c in decision.checks]
    assert names[-len(ORDER_CHECKS):] == [check.__name__ for check in ORDER_CHECKS]
