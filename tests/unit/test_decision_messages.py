"""CanTrade answers built from the per-trader template equal answers built field by field."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import engine_ops
from tradeguard_server.api.convert import DecisionMessages, decision_msg
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import OrderIntent, Side

T0 = 1_767_268_800.0
LIMITS = Limits(daily_max_drawdown_percentage=3.0, max_drawdown_percentage=10.0, consecutive_loss_threshold=2,
                cooling_off_period_minutes=10, stop_trading_minutes=5, position_max_drawdown_percentage=2.0,
                max_order_notional=1_000.0)
ORDERS = [None, OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0), OrderIntent("BTCUSDT", Side.BUY, 1.0, 50_000.0),
          OrderIntent("BTCUSDT", Side.SELL, 0.005, 50_000.0, reduce_only=True)]
ops = engine_ops.state_ops([LIMITS, Limits(), Limits(config_id="cfg-2")], len(ORDERS), max_size=40)


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
        engine_ops.apply(engine, clock, trader, (kind, arg), i)
        order = ORDERS[arg] if kind == "ask" and isinstance(arg, int) else ORDERS[1]
        for _ in range(2):  # the second answer comes from the template
            decision, state = engine.can_trade(trader, "a1", order)
            config_id = engine.limits_for("a1").config_id
            templated = answers.build(decision, state, clock.now(), config_id)
            assert templated == decision_msg(decision, state, clock.now(), config_id)
