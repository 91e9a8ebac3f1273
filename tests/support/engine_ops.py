"""Random sequences of what changes a trader's state, for property tests of the engine's shortcuts."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import ClosedTrade, Position, Side, TradingState

Op = tuple[str, object]


def state_ops(limits: Sequence[Limits], orders: int, max_size: int) -> st.SearchStrategy[list[Op]]:
    """Reports, pauses, resumes, limit changes, waits, and ("ask", i): CanTrade with the i-th of `orders`."""
    return st.lists(st.one_of(
        st.tuples(st.just("equity"), st.floats(min_value=5_000.0, max_value=12_000.0)),
        st.tuples(st.just("trade"), st.floats(min_value=-50.0, max_value=50.0)),
        st.tuples(st.just("position"), st.floats(min_value=0.9, max_value=1.1)),
        st.tuples(st.just("pause"), st.sampled_from([TradingState.HALTED, TradingState.REDUCING])),
        st.tuples(st.just("resume"), st.just(0.0)),
        st.tuples(st.just("limits"), st.sampled_from(list(limits))),
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=1_200.0)),
        st.tuples(st.just("ask"), st.integers(min_value=0, max_value=orders - 1)),
    ), max_size=max_size)


def apply(engine: RiskEngine, clock: ManualClock, trader: str, op: Op, i: int) -> None:
    """Carry out one op (of account "a1"); "ask" does nothing here."""
    kind, arg = op
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
