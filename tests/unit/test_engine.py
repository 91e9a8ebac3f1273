"""Unit tests of the pure engine: equity-driven state, loss limits, pauses, kill switch, shadow mode."""

from __future__ import annotations

import logging

import pytest

from tests.support.clock import T0
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import AccountMismatchError, RiskEngine
from tradeguard_server.engine.events import StateChanged
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import (
    CheckStatus,
    ClosedTrade,
    DecisionCode,
    Flags,
    OrderIntent,
    Position,
    Side,
    TradingState,
)

BUY = OrderIntent("BTCUSDT", Side.BUY, 0.01, 50_000.0)
REDUCE = OrderIntent("BTCUSDT", Side.SELL, 0.01, 50_000.0, reduce_only=True)
HELD = Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0)  # what REDUCE reduces


@pytest.fixture
def engine(clock: ManualClock) -> RiskEngine:
    return RiskEngine(clock, defaults=Limits())


def test_can_trade_without_equity_report_is_denied_no_equity_reported(engine: RiskEngine) -> None:
    decision, _ = engine.can_trade("t1", "a1", None)

    assert not decision.allowed
    assert decision.code is DecisionCode.NO_EQUITY_REPORTED


def test_first_equity_report_sets_peak_and_period_starts_and_allows(engine: RiskEngine) -> None:
    outcome = engine.report_equity("t1", "a1", 10_000.0, None)
    decision, st = engine.can_trade("t1", "a1", None)

    assert decision.allowed and decision.code is DecisionCode.ALLOWED
    assert outcome.state.peak_equity == 10_000.0
    assert st.drawdown_pct == 0.0 and st.daily_pnl == 0.0
    assert st.trading_state(T0) is TradingState.ACTIVE


def test_daily_loss_over_limit_pauses_reduce_only_for_stop_trading_minutes(
    engine: RiskEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    with caplog.at_level(logging.WARNING, logger="tradeguard.engine"):
        engine.report_equity("t1", "a1", 9_400.0, None)

    decision, _ = engine.can_trade("t1", "a1", None)

    assert not decision.allowed
    assert decision.code is DecisionCode.DAILY_LOSS_LIMIT
    assert "loss=6.00%" in decision.reason and "limit=5.00%" in decision.reason
    assert decision.trading_state is TradingState.REDUCING
    assert decision.paused_until == T0 + 30 * 60
    assert "RISK LIMIT BREACHED" in caplog.text and "t1" in caplog.text and "daily_loss" in caplog.text


def test_daily_loss_pause_allows_reduce_only_and_denies_new_exposure(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)
    engine.report_positions("t1", "a1", [HELD])

    reduce_decision, _ = engine.can_trade("t1", "a1", REDUCE)
    buy_decision, _ = engine.can_trade("t1", "a1", BUY)

    assert reduce_decision.allowed
    assert not buy_decision.allowed and buy_decision.code is DecisionCode.DAILY_LOSS_LIMIT


def test_opposite_order_within_open_position_counts_as_reducing(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("BTCUSDT", Side.BUY, 0.02, 50_000.0, 50_000.0)])
    engine.report_equity("t1", "a1", 9_400.0, None)

    closing, _ = engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.SELL, 0.02, 50_000.0))
    flipping, _ = engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.SELL, 0.05, 50_000.0))

    assert closing.allowed
    assert not flipping.allowed


def test_pause_ends_by_itself_when_paused_until_passes(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)

    clock.advance(30 * 60 - 1)
    still_paused, _ = engine.can_trade("t1", "a1", BUY)
    clock.advance(1)
    after, st = engine.can_trade("t1", "a1", BUY)

    assert not still_paused.allowed
    assert after.allowed and after.trading_state is TradingState.ACTIVE
    assert st.pauses == []


def test_equity_report_still_in_breach_after_pause_starts_a_new_pause(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)
    clock.advance(31 * 60)

    engine.report_equity("t1", "a1", 9_390.0, None)
    decision, _ = engine.can_trade("t1", "a1", None)

    assert not decision.allowed and decision.code is DecisionCode.DAILY_LOSS_LIMIT


def test_reports_during_a_pause_do_not_extend_it(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)
    clock.advance(60)

    engine.report_equity("t1", "a1", 9_300.0, None)
    decision, _ = engine.can_trade("t1", "a1", None)

    assert decision.paused_until == T0 + 30 * 60


def test_loss_exactly_at_limit_is_not_a_breach(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_500.0, None)

    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert decision.allowed


def test_drawdown_from_peak_over_max_drawdown_pauses(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    for day in range(1, 6):  # lose 4.9% a day: never a daily breach, 22.6% from peak after 5 days
        clock.advance(86_400)
        engine.report_equity("t1", "a1", 10_000.0 * (0.951**day), None)

    decision, st = engine.can_trade("t1", "a1", None)

    assert st.drawdown_pct > 20.0
    assert not decision.allowed and decision.code is DecisionCode.MAX_DRAWDOWN


def test_new_utc_day_resets_daily_pnl_to_the_last_equity(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_700.0, None)
    clock.advance(12 * 3600 + 1)  # past midnight UTC

    engine.report_equity("t1", "a1", 9_650.0, None)
    st = engine.peek("t1", "a1")

    assert st.day_start_equity == 9_700.0
    assert st.daily_pnl == pytest.approx(-50.0)


def test_weekly_and_monthly_limits_use_their_own_period_start(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None, weekly_max_drawdown_percentage=3.0))
    engine.report_equity("t1", "a1", 10_000.0, None)
    clock.advance(86_400)
    engine.report_equity("t1", "a1", 9_800.0, None)
    clock.advance(3600)
    engine.report_equity("t1", "a1", 9_650.0, None)

    decision, _ = engine.can_trade("t1", "a1", None)

    assert decision.code is DecisionCode.WEEKLY_LOSS_LIMIT


def test_stale_equity_report_is_ignored(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, T0)
    outcome = engine.report_equity("t1", "a1", 5_000.0, T0 - 10)

    assert outcome.stale
    assert engine.peek("t1", "a1").current_equity == 10_000.0


def test_kill_switch_halted_blocks_reduce_only_until_resumed(engine: RiskEngine, clock: ManualClock) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.pause("t1", "a1", TradingState.HALTED, None, "exchange incident")
    clock.advance(10 * 86_400)

    halted, _ = engine.can_trade("t1", "a1", REDUCE)
    engine.resume("t1", "a1")
    resumed, _ = engine.can_trade("t1", "a1", BUY)

    assert not halted.allowed and halted.code is DecisionCode.KILL_SWITCH
    assert halted.trading_state is TradingState.HALTED and halted.paused_until is None
    assert resumed.allowed


def test_kill_switch_for_a_duration_ends_then_the_longer_loss_pause_remains(
    engine: RiskEngine, clock: ManualClock
) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)
    engine.report_positions("t1", "a1", [HELD])
    engine.pause("t1", "a1", TradingState.HALTED, 300, "")

    halted, _ = engine.can_trade("t1", "a1", REDUCE)
    clock.advance(301)
    reducing, _ = engine.can_trade("t1", "a1", REDUCE)

    assert not halted.allowed
    assert reducing.allowed and reducing.trading_state is TradingState.REDUCING


def test_resume_lifts_a_loss_limit_pause(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)

    engine.resume("t1", "a1")
    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert decision.allowed


def test_shadow_mode_allows_but_reports_what_would_be_denied(clock: ManualClock) -> None:
    engine = RiskEngine(clock, flags=Flags(enable_risk_enforcement=False))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)

    decision, _ = engine.can_trade("t1", "a1", BUY)

    assert decision.allowed and decision.would_deny
    assert decision.code is DecisionCode.DAILY_LOSS_LIMIT
    assert "would deny" in decision.reason


def test_shadow_mode_without_equity_allows_with_would_deny(clock: ManualClock) -> None:
    engine = RiskEngine(clock, flags=Flags(enable_risk_enforcement=False))

    decision, _ = engine.can_trade("t1", "a1", None)

    assert decision.allowed and decision.would_deny and decision.code is DecisionCode.NO_EQUITY_REPORTED


def test_trader_bound_to_another_account_is_rejected(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)

    with pytest.raises(AccountMismatchError):
        engine.can_trade("t1", "other", None)


def test_every_check_appears_with_a_status(engine: RiskEngine) -> None:
    engine.report_equity("t1", "a1", 10_000.0, None)

    decision, _ = engine.can_trade("t1", "a1", BUY)

    names = [c.name for c in decision.checks]
    assert names[:2] == ["equity_reported", "trading_state"]
    assert {"daily_loss", "max_drawdown", "position_size", "leverage", "risk_per_trade"} <= set(names)
    assert all(c.status in (CheckStatus.PASS, CheckStatus.SKIPPED) for c in decision.checks)


def test_state_change_listener_sees_every_change(clock: ManualClock) -> None:
    seen: list[tuple[str, int]] = []

    def listener(event: StateChanged) -> None:
        seen.append((event.reason, event.state.version))

    engine = RiskEngine(clock, listeners=[listener])
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 9_400.0, None)
    engine.report_trade("t1", "a1", ClosedTrade("x1", "BTCUSDT", "binance", Side.BUY, -5.0, T0))

    assert [v for _r, v in seen] == [1, 2, 3]
    assert "breach DAILY_LOSS_LIMIT" in seen[1][0]
