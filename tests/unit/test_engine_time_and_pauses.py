"""Engine rules found wrong by attacking the sidecar (issue 13): zero-minute pauses, overlapping kill
switches, future and late timestamps, zero start equity, trade windows by closed_at, breaker episodes that
survive a restart, and CanTrade retries by client_order_id."""

from __future__ import annotations

import pytest

from tests.support.clock import T0
from tradeguard_server.engine.breakers import Evaluator
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import OrderIdReusedError, RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.snapshot import from_record, to_record
from tradeguard_server.engine.state import ORDER_ID_TTL_S, ORDER_IDS_KEPT
from tradeguard_server.engine.types import (
    CheckStatus,
    ClosedTrade,
    DecisionCode,
    OrderIntent,
    Side,
    TradingState,
)

BUY = OrderIntent("BTCUSDT", Side.BUY, 0.01, 50_000.0)
NO_LOSS_LIMITS = Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None)


def loss(trade_id: str, closed_at: float, pnl: float = -10.0, symbol: str = "BTCUSDT") -> ClosedTrade:
    return ClosedTrade(trade_id, symbol, "binance", Side.SELL, pnl, closed_at)


# ---- item 5: a zero-minute pause lasts until resumed -----------------------------------------------------


def test_stop_trading_minutes_zero_pauses_a_loss_limit_breach_until_resumed(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(stop_trading_minutes=0))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 5_000.0, None)

    clock.advance(7 * 86_400.0)
    paused, _ = engine.can_trade("t1", "a1", BUY)
    engine.resume("t1", "a1")
    resumed, _ = engine.can_trade("t1", "a1", BUY)

    assert not paused.allowed and paused.code is DecisionCode.DAILY_LOSS_LIMIT
    assert paused.paused_until is None and paused.trading_state is TradingState.REDUCING
    assert resumed.allowed


def test_streak_with_cooling_off_unset_pauses_until_resumed(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(consecutive_loss_threshold=2))  # cooling_off_period_minutes 0
    engine.report_equity("t1", "a1", 10_000.0, None)
    for i in range(5):
        clock.advance(60.0)
        engine.report_trade("t1", "a1", loss(f"x{i}", clock.now(), pnl=-1.0))

    decision, _ = engine.can_trade("t1", "a1", BUY)
    check = next(c for c in decision.checks if c.name == "consecutive_losses")
    clock.advance(30 * 86_400.0)
    later, _ = engine.can_trade("t1", "a1", BUY)

    assert not decision.allowed and decision.code is DecisionCode.CONSECUTIVE_LOSSES
    assert check.status is CheckStatus.FAIL and "losses_in_a_row=5 threshold=2" in check.detail
    assert decision.paused_until is None
    assert not later.allowed


# ---- item 6: overlapping kill switches -------------------------------------------------------------------


def test_a_short_reducing_kill_switch_does_not_end_a_halt_until_resumed(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.pause("t1", "a1", TradingState.HALTED, None, "incident")
    engine.pause("t1", "a1", TradingState.REDUCING, 2.0, "short")

    clock.advance(2.5)
    after, st = engine.can_trade("t1", "a1", BUY)
    engine.resume("t1", "a1")
    resumed, _ = engine.can_trade("t1", "a1", BUY)

    assert not after.allowed and after.trading_state is TradingState.HALTED and after.paused_until is None
    assert resumed.allowed and st.pauses == []


def test_a_kill_switch_covered_by_a_new_one_is_dropped(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.pause("t1", "a1", TradingState.REDUCING, 60.0, "first")
    engine.pause("t1", "a1", TradingState.HALTED, 120.0, "second")

    st = engine.traders["t1"]

    assert [(p.state, p.until) for p in st.pauses] == [(TradingState.HALTED, T0 + 120.0)]


# ---- item 7: times ahead of the clock ---------------------------------------------------------------------


def test_an_equity_time_slightly_ahead_counts_as_now_and_never_makes_the_next_report_stale(
    clock: ManualClock,
) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)
    ahead = engine.report_equity("t1", "a1", 10_000.0, T0 + 4.0)

    clock.advance(1.0)
    crash = engine.report_equity("t1", "a1", 5_000.0, None)
    decision, st = engine.can_trade("t1", "a1", BUY)

    assert not ahead.stale and st.last_equity_at == T0 + 1.0
    assert not crash.stale and st.current_equity == 5_000.0
    assert not decision.allowed


def test_a_trade_closed_ahead_of_the_clock_counts_as_closed_now(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)

    engine.report_trade("t1", "a1", loss("x1", T0 + 4.0))

    assert engine.traders["t1"].recent_trades[0].closed_at == T0


# ---- item 8: a period that starts at 0 ----------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second", "third"), [(0.0, 10_000.0, 8_500.0), (0.0, 0.01, 0.0085)])
def test_a_day_starting_at_zero_equity_takes_its_first_positive_equity_as_reference(
    clock: ManualClock, first: float, second: float, third: float
) -> None:
    engine = RiskEngine(clock, defaults=Limits(max_drawdown_percentage=None))
    for equity in (first, second, third):
        clock.advance(60.0)
        engine.report_equity("t1", "a1", equity, None)

    decision, st = engine.can_trade("t1", "a1", BUY)

    assert st.day_start_equity == st.week_start_equity == st.month_start_equity == second
    assert st.daily_loss_pct == pytest.approx(15.0)
    assert not decision.allowed and decision.code is DecisionCode.DAILY_LOSS_LIMIT


def test_drawdown_after_a_zero_peak_is_measured_from_the_first_positive_equity(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=10.0))
    for equity in (0.0, 10_000.0, 8_500.0):
        clock.advance(60.0)
        engine.report_equity("t1", "a1", equity, None)

    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert not decision.allowed and decision.code is DecisionCode.MAX_DRAWDOWN


def test_a_late_equity_report_still_raises_the_peak(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=10.0))
    engine.report_equity("t1", "a1", 10_000.0, T0 - 120.0)
    engine.report_equity("t1", "a1", 9_500.0, T0)

    late = engine.report_equity("t1", "a1", 11_000.0, T0 - 60.0)  # it was there, a minute ago
    decision, st = engine.can_trade("t1", "a1", BUY)

    assert late.stale and st.current_equity == 9_500.0 and st.peak_equity == 11_000.0
    assert not decision.allowed and decision.code is DecisionCode.MAX_DRAWDOWN


# ---- item 9: windows judge by closed_at ---------------------------------------------------------------------


def stoploss_guard() -> tuple[RiskEngine, Evaluator]:
    evaluator = Evaluator()
    evaluator.install(_Spec("sg", "stoploss-guard", "loss_streak_in_window",
                            {"trade_limit": 3, "lookback_minutes": 60}, "pause_trading"))
    return RiskEngine(ManualClock(T0), defaults=NO_LOSS_LIMITS, breakers=evaluator), evaluator


def test_freqtrade_stoploss_guard_case_fires_whatever_order_the_trades_are_reported_in() -> None:
    """freqtrade's test_stoploss_guard: losses closed 30, 100, 30 and 30 minutes ago, limit 3 in 60 minutes."""
    engine, _ = stoploss_guard()
    engine.report_equity("t1", "a1", 10_000.0, None)
    fired = []
    for i, minutes_ago in enumerate((30, 100, 30, 30)):
        fired.append(engine.report_trade("t1", "a1", loss(f"x{i}", T0 - minutes_ago * 60.0)).firings)

    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert [len(f) for f in fired] == [0, 0, 0, 1]
    assert fired[3][0].triggered_values["losing_trades"] == 3.0
    assert not decision.allowed and decision.code is DecisionCode.CIRCUIT_BREAKER


def test_a_back_dated_trade_reported_late_does_not_hide_the_losses_in_the_window() -> None:
    engine, _ = stoploss_guard()
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_trade("t1", "a1", loss("x1", T0 - 600.0))
    engine.report_trade("t1", "a1", loss("x2", T0 - 500.0))
    engine.report_trade("t1", "a1", loss("old", T0 - 86_400.0))  # a day old, reported now

    outcome = engine.report_trade("t1", "a1", loss("x3", T0 - 400.0))

    assert [f.condition for f in outcome.firings] == ["loss_streak_in_window"]


def test_streak_counts_losses_closed_after_the_newest_win_in_any_report_order(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(consecutive_loss_threshold=3, cooling_off_period_minutes=30))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_trade("t1", "a1", loss("win", T0 - 100.0, pnl=+50.0))
    engine.report_trade("t1", "a1", loss("l1", T0 - 300.0))  # before the win: not in the streak
    engine.report_trade("t1", "a1", loss("l2", T0 - 50.0))
    engine.report_trade("t1", "a1", loss("l3", T0 - 40.0))
    before, _ = engine.can_trade("t1", "a1", BUY)
    engine.report_trade("t1", "a1", loss("l4", T0 - 60.0))  # after the win, reported late
    after, st = engine.can_trade("t1", "a1", BUY)

    assert before.allowed
    assert st.consecutive_losses == 3
    assert [t.trade_id for t in st.recent_trades] == ["l1", "win", "l4", "l2", "l3"]
    assert not after.allowed and after.code is DecisionCode.CONSECUTIVE_LOSSES


def test_a_late_win_ends_the_streak_only_for_losses_closed_before_it(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)
    for i, at in enumerate((T0 - 50.0, T0 - 40.0, T0 - 30.0)):
        engine.report_trade("t1", "a1", loss(f"l{i}", at))

    engine.report_trade("t1", "a1", loss("win", T0 - 45.0, pnl=+1.0))

    assert engine.traders["t1"].consecutive_losses == 2


# ---- item 12: breaker episodes are part of the stored state ---------------------------------------------------


class _Spec:
    def __init__(self, id: str, name: str, condition: str, parameters: dict[str, object], action: str) -> None:
        self.id, self.name, self.condition, self.parameters, self.action = id, name, condition, parameters, action
        self.account_id = "a1"
        self.symbols: list[str] | None = None
        self.exchanges: list[str] | None = None
        self.enabled = True


FLOOR = _Spec("b1", "floor", "equity_floor", {"value": 9_000.0}, "pause_trading")


def restarted(engine: RiskEngine, clock: ManualClock, spec: _Spec = FLOOR) -> RiskEngine:
    """A new engine and evaluator holding what the store would give back."""
    evaluator = Evaluator()
    evaluator.install(spec)
    fresh = RiskEngine(clock, defaults=NO_LOSS_LIMITS, breakers=evaluator)
    for st in engine.traders.values():
        fresh.restore(from_record(to_record(st)))
    return fresh


def test_a_restart_mid_episode_does_not_fire_again_nor_halt_a_resumed_trader(clock: ManualClock) -> None:
    evaluator = Evaluator()
    evaluator.install(FLOOR)
    engine = RiskEngine(clock, defaults=NO_LOSS_LIMITS, breakers=evaluator)
    engine.report_equity("t1", "a1", 10_000.0, None)
    first = engine.report_equity("t1", "a1", 8_700.0, None)
    engine.resume("t1", "a1")

    engine = restarted(engine, clock)
    clock.advance(60.0)
    again = engine.report_equity("t1", "a1", 8_600.0, None)
    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert len(first.firings) == 1
    assert again.firings == [] and decision.allowed


def test_a_restored_episode_ends_when_the_condition_clears_and_the_breaker_fires_again_later(
    clock: ManualClock,
) -> None:
    evaluator = Evaluator()
    evaluator.install(FLOOR)
    engine = RiskEngine(clock, defaults=NO_LOSS_LIMITS, breakers=evaluator)
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 8_700.0, None)

    engine = restarted(engine, clock)
    engine.report_equity("t1", "a1", 9_500.0, None)
    refire = engine.report_equity("t1", "a1", 8_800.0, None)

    assert [f.breaker_id for f in refire.firings] == ["b1"]


def test_a_restored_episode_of_a_changed_rule_is_over(clock: ManualClock) -> None:
    evaluator = Evaluator()
    evaluator.install(FLOOR)
    engine = RiskEngine(clock, defaults=NO_LOSS_LIMITS, breakers=evaluator)
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 8_700.0, None)

    engine = restarted(engine, clock, _Spec("b1", "floor", "equity_floor", {"value": 9_500.0}, "pause_trading"))
    again = engine.report_equity("t1", "a1", 8_700.0, None)

    assert [f.breaker_id for f in again.firings] == ["b1"]


def test_an_episode_ended_during_can_trade_is_announced_for_the_store(clock: ManualClock) -> None:
    evaluator = Evaluator()
    evaluator.install(_Spec("r", "rate", "order_rate", {"max_orders": 1, "window_seconds": 10}, "alert"))
    changes: list[str] = []
    engine = RiskEngine(clock, defaults=NO_LOSS_LIMITS, breakers=evaluator,
                        listeners=[lambda e: changes.append(e.reason)])
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.can_trade("t1", "a1", BUY)
    engine.can_trade("t1", "a1", BUY)  # the second order in the window fires the alert
    assert engine.traders["t1"].breaker_episodes == {"r": evaluator.get("r").rule}  # type: ignore[union-attr]

    clock.advance(60.0)
    before = len(changes)
    engine.can_trade("t1", "a1", BUY)

    assert engine.traders["t1"].breaker_episodes == {}
    assert "breaker re-armed" in changes[before:]  # (then the order's own change: it is pending from now on)


# ---- item 20: CanTrade retries by client_order_id ----------------------------------------------------------------


def test_a_retried_can_trade_answers_the_first_decision_and_counts_once(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(max_orders_per_window=3, order_rate_window_seconds=60))
    engine.report_equity("t1", "a1", 10_000.0, None)

    answers = [engine.can_trade("t1", "a1", BUY, cid)[0] for cid in ("o1", "o2", "o2", "o3", "o4")]

    assert [d.allowed for d in answers] == [True, True, True, True, False]
    assert (answers[2].code, answers[2].reason, answers[2].trading_state) == (
        answers[1].code, answers[1].reason, answers[1].trading_state)
    assert answers[4].code is DecisionCode.ORDER_RATE_LIMIT


def test_the_same_client_order_id_for_another_order_is_refused(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.can_trade("t1", "a1", BUY, "o1")

    with pytest.raises(OrderIdReusedError, match="o1"):
        engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.BUY, 0.02, 50_000.0), "o1")


def test_a_retried_allowed_order_is_denied_once_the_trader_was_paused_since(clock: ManualClock) -> None:
    """A remembered "allowed" is never an allow the current state forbids: the kill switch pressed between
    the first answer and its retry (or a bot replaying an old id) wins."""
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)
    first, _ = engine.can_trade("t1", "a1", BUY, "o1")
    engine.pause("t1", "a1", TradingState.HALTED, None, "incident")

    retried, _ = engine.can_trade("t1", "a1", BUY, "o1")
    clock.advance(1.0)
    again, _ = engine.can_trade("t1", "a1", BUY, "o1")

    assert first.allowed
    assert (retried.allowed, retried.code) == (False, DecisionCode.KILL_SWITCH)
    assert (again.allowed, again.code) == (False, DecisionCode.KILL_SWITCH)


def test_an_allowed_order_denied_on_a_retry_and_finished_since_is_refused_as_a_finished_order(
        clock: ManualClock) -> None:
    """Found by test_order_properties (hypothesis): the retry's remembered denial answered the id again after its
    order had finished, where any other finished order's id is refused (its reports would land on a new order)."""
    engine = RiskEngine(clock, defaults=Limits(pending_order_ttl_seconds=30))
    engine.report_equity("t1", "a1", 10_000.0, None)
    first, _ = engine.can_trade("t1", "a1", BUY, "o1")
    engine.pause("t1", "a1", TradingState.HALTED, None, "incident")
    retried, _ = engine.can_trade("t1", "a1", BUY, "o1")  # while pending: denied, and that answer remembered
    clock.advance(31.0)  # the pending order expires: finished

    assert first.allowed and not retried.allowed
    with pytest.raises(OrderIdReusedError, match="names a finished order"):
        engine.can_trade("t1", "a1", BUY, "o1")


def test_remembered_answers_are_bounded_per_trader_and_expire(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(max_orders_per_window=1, order_rate_window_seconds=60))
    engine.report_equity("t1", "a1", 10_000.0, None)
    first, _ = engine.can_trade("t1", "a1", BUY, "o0")
    for i in range(1, ORDER_IDS_KEPT + 50):
        engine.can_trade("t1", "a1", BUY, f"o{i}")
    answers = engine.traders["t1"].order_answers

    clock.advance(ORDER_ID_TTL_S + 1.0)
    expired, _ = engine.can_trade("t1", "a1", BUY, f"o{ORDER_IDS_KEPT + 49}")

    assert first.allowed and len(answers) == ORDER_IDS_KEPT and "o0" not in answers
    assert expired is not first and expired.allowed  # decided afresh, not the remembered denial


def test_trades_closed_at_the_same_time_count_in_the_order_reported(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 10_000.0, None)

    engine.report_trade("t1", "a1", loss("tr-1", T0))
    engine.report_trade("t1", "a1", loss("tr-0", T0, pnl=+25.0))

    assert engine.traders["t1"].consecutive_losses == 0


def test_orders_released_by_the_ttl_one_per_call_log_one_line_per_ten_seconds_with_the_count_between(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A busy bot whose orders run out their TTL one per call wrote a warning on every CanTrade (~235 us each on
    the event loop; test_order_lifecycle_scale's TTL churn case was 1.5x slower for it)."""
    engine = RiskEngine(clock, defaults=Limits(pending_order_ttl_seconds=30, max_position_size_percentage=100.0))
    engine.report_equity("t1", "a1", 1e12, None)
    for i in range(40):  # one order a second: from the 31st on, each call releases one
        engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.BUY, 0.0001, 50_000.0 + i), f"o{i}")
        clock.advance(1.0)
    lines = [r.getMessage() for r in caplog.records if "released after their TTL" in r.getMessage()]

    assert engine.orders_expired == 10
    assert len(lines) == 1 and "orders=o0" in lines[0]
    clock.advance(10.0)
    engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.BUY, 0.0001, 40_000.0), "o-last")
    lines = [r.getMessage() for r in caplog.records if "released after their TTL" in r.getMessage()]
    assert len(lines) == 2 and "(and 9 more since the last such line)" in lines[1]
