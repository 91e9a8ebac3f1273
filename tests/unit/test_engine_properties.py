"""Property tests of engine invariants (hypothesis)."""

from __future__ import annotations

import copy
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import engine_ops
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.periods import day_start
from tradeguard_server.engine.types import OrderIntent, Side, TradingState

T0 = 1_767_268_800.0
NEW_EXPOSURE = OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0)

equities = st.floats(min_value=1.0, max_value=1e9, allow_nan=False, allow_infinity=False)
steps = st.lists(st.tuples(equities, st.floats(min_value=0.0, max_value=6 * 3600.0)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_no_sequence_of_equity_reports_allows_new_exposure_while_a_breach_pause_is_in_force(
    reports: list[tuple[float, float]],
) -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits())
    for equity, gap in reports:
        clock.advance(gap)
        engine.report_equity("t", "a", equity, None)
        st_ = engine.traders["t"]
        decision, _ = engine.can_trade("t", "a", NEW_EXPOSURE)
        paused = st_.effective_pause(clock.now()) is not None
        assert not (paused and decision.allowed)
        if paused:
            assert st_.trading_state(clock.now()) in (TradingState.REDUCING, TradingState.HALTED)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_drawdown_and_daily_pnl_match_a_reference_computation(reports: list[tuple[float, float]]) -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits())
    peak = 0.0
    day = None
    day_start_equity = 0.0
    last = None
    for equity, gap in reports:
        clock.advance(gap)
        engine.report_equity("t", "a", equity, None)
        today = day_start(clock.now())
        if day is None:
            day_start_equity = equity
        elif today != day:
            day_start_equity = last if last is not None else equity
        day = today
        peak = max(peak, equity)
        last = equity
        state = engine.traders["t"]
        assert state.peak_equity == peak
        assert abs(state.drawdown_pct - (peak - equity) / peak * 100.0) < 1e-9
        assert abs(state.daily_pnl - (equity - day_start_equity)) <= 1e-9 * max(1.0, abs(equity))


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(min_value=0, max_value=3))
def test_a_breach_pause_always_ends_at_paused_until(reports: list[tuple[float, float]], extra: int) -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits())
    for equity, gap in reports:
        clock.advance(gap)
        engine.report_equity("t", "a", equity, None)
    state = engine.traders["t"]
    pause = state.effective_pause(clock.now())
    if pause is None or pause.until is None:
        return
    clock.set(max(p.until or 0.0 for p in state.pauses) + extra)
    decision, _ = engine.can_trade("t", "a", NEW_EXPOSURE)
    assert decision.trading_state is TradingState.ACTIVE


LIMITED = Limits(daily_max_drawdown_percentage=3.0, max_drawdown_percentage=10.0, weekly_max_drawdown_percentage=6.0,
                 consecutive_loss_threshold=2, cooling_off_period_minutes=10, stop_trading_minutes=5,
                 position_max_drawdown_percentage=2.0, breach_state=TradingState.REDUCING)
ORDERS = [None, NEW_EXPOSURE, OrderIntent("BTCUSDT", Side.SELL, 0.001, 50_000.0),
          OrderIntent("BTCUSDT", Side.SELL, 0.5, 50_000.0, reduce_only=True)]
state_ops = engine_ops.state_ops([LIMITED, Limits()], len(ORDERS), max_size=50)


@settings(max_examples=300, deadline=None)
@given(state_ops)
def test_a_cached_decision_always_equals_a_fresh_one(ops: list[tuple[str, object]]) -> None:
    """CanTrade reuses its state-only checks until the state changes; a decision from the cache must equal
    one computed from scratch after any sequence of reports, pauses, limit changes and waits."""
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=LIMITED)
    engine.report_equity("t1", "a1", 10_000.0, None)
    for i, (kind, arg) in enumerate(ops):
        engine_ops.apply(engine, clock, "t1", (kind, arg), i)
        order = ORDERS[arg] if kind == "ask" and isinstance(arg, int) else NEW_EXPOSURE
        twin = copy.deepcopy(engine)  # the same state: an allowed order changes it (it is pending from then on)
        cached, _st = engine.can_trade("t1", "a1", order)
        twin.set_account_limits("a1", replace(twin.limits_for("a1")))  # equal limits, a new object: no cache
        fresh, _st = twin.can_trade("t1", "a1", order)
        assert cached == fresh
