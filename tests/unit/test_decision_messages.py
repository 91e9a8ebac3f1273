"""CanTrade answers built from the per-trader template equal answers built field by field."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard_server.api.convert import DecisionMessages, decision_msg
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import ClosedTrade, OrderIntent, Position, Side, TradingState

T0 = 1_767_268_800.0
LIMITS = Limits(daily_max_drawdown_percentage=3.0, max_drawdown_percentage=10.0, consecutive_loss_threshold=2,
                cooling_off_period_minutes=10, stop_trading_minutes=5, position_max_drawdown_percentage=2.0,
                max_order_notional=1_000.0)
ORDERS = [None, OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0), OrderIntent("BTCUSDT", Side.BUY, 1.0, 50_000.0),
          OrderIntent("BTCUSDT", Side.SELL, 0.005, 50_000.0, reduce_only=True)]
ops = st.lists(st.one_of(
    st.tuples(st.just("equity"), st.floats(min_value=5_000.0, max_value=12_000.0)),
    st.tuples(st.just("trade"), st.floats(min_value=-50.0, max_value=50.0)),
    st.tuples(st.just("position"), st.floats(min_value=0.9, max_value=1.1)),
    st.tuples(st.just("pause"), st.sampled_from([TradingState.HALTED, TradingState.REDUCING])),
    st.tuples(st.just("resume"), st.just(0.0)),
    st.tuples(st.just("limits"), st.sampled_from([LIMITS, Limits(), Limits(config_id="cfg-2")])),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=1_200.0)),
    st.tuples(st.just("ask"), st.integers(min_value=0, max_value=len(ORDERS) - 1)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from(["t1", "t2"]))
def test_a_templated_answer_always_equals_one_built_field_by_field(
    operations: list[tuple[str, object]], trader: str
) -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=LIMITS)
    answers = DecisionMessages()
    engine.report_equity(trader, "a1", 10_000.0, None)
    for i, (kind, arg) in enumerate(operations):
        if kind == "equity" and isinstance(arg, float):
            engine.report_equity(trader, "a1", arg, None)
        elif kind == "trade" and isinstance(arg, float):
            engine.report_trade(trader, "a1", ClosedTrade(f"x{i}", "BTCUSDT", "", Side.BUY, arg, clock.now()))
        elif kind == "position" and isinstance(arg, float):
            engine.report_positions(trader, "a1", [Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0 * arg)])
        elif kind == "pause" and isinstance(arg, TradingState):
            engine.pause(trader, "a1", arg, 300.0, "test")
        elif kind == "resume":
            engine.resume(trader, "a1")
        elif kind == "limits" and isinstance(arg, Limits):
            engine.apply_limits("a1", arg, "test")
        elif kind == "wait" and isinstance(arg, float):
            clock.advance(arg)
        order = ORDERS[arg] if kind == "ask" and isinstance(arg, int) else ORDERS[1]
        for _ in range(2):  # the second answer comes from the template
            decision, state = engine.can_trade(trader, "a1", order)
            config_id = engine.limits_for("a1").config_id
            templated = answers.build(decision, state, clock.now(), config_id)
            assert templated == decision_msg(decision, state, clock.now(), config_id)
