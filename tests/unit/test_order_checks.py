"""Table-driven order checks: for each limit, one order just inside (allowed) and one just outside (denied)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(quantities, prices, st.sampled_from([Side.BUY, Side.SELL])), max_size=5),
       quantities, prices, st.sampled_from([Side.BUY, Side.SELL]))
def test_an_allowed_new_exposure_order_never_leaves_the_position_above_its_limit(
    positions: list[tuple[float, float, Side]], qty: float, price: float, side: Side
) -> None:
    engine = RiskEngine(ManualClock(T0), defaults=Limits(max_position_size_percentage=5.0))
    engine.report_equity("t", "a", EQUITY, None)
    engine.report_positions("t", "a", [Position("BTCUSDT", s, q, p, p, f"ex{i}") for i, (q, p, s) in
                                       enumerate(positions)])
    st_ = engine.traders["t"]
    before = st_.signed_exposure("BTCUSDT")

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", side, qty, price))

    after = abs(before + (qty * price if side is Side.BUY else -qty * price))
    if decision.allowed and after > abs(before):
        assert after <= 0.05 * EQUITY * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(quantities, prices, st.sampled_from([Side.BUY, Side.SELL])), max_size=5),
       quantities, prices, st.sampled_from([Side.BUY, Side.SELL]),
       st.floats(min_value=0.0, max_value=10.0), st.sampled_from([TradingState.ACTIVE, TradingState.REDUCING]))
def test_reduce_only_orders_are_never_denied_by_exposure_checks(
    positions: list[tuple[float, float, Side]], qty: float, price: float, side: Side, vol: float,
    state: TradingState,
) -> None:
    engine = RiskEngine(ManualClock(T0), defaults=ALL_LIMITS)
    engine.report_equity("t", "a", EQUITY, None)
    engine.report_positions("t", "a", [Position("BTCUSDT", s, q, p, p, f"ex{i}") for i, (q, p, s) in
                                       enumerate(positions)])
    if state is TradingState.REDUCING:
        engine.pause("t", "a", TradingState.REDUCING, None, "test")

    decision, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", side, qty, price, reduce_only=True,
                                                          leverage=50.0, stop_price=price / 2, volatility=vol))

    assert decision.allowed, decision.reason
