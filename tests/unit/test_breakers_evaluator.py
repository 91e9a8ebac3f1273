"""The breaker evaluator, alone and inside the RiskEngine: episodes, scope, actions, shadow mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from tests.support.clock import T0
from tradeguard_server.engine.breakers import Evaluator, InvalidBreaker
from tradeguard_server.engine.breakers.evaluator import NO_FIRINGS
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.events import Firing, StateChanged
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import (
    ActionType,
    ClosedTrade,
    DecisionCode,
    Flags,
    OrderIntent,
    Position,
    Side,
    TradingState,
)
from tradeguard_server.services.breakers import BreakerService

LIMITS = Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None, stop_trading_minutes=30)
BTC_BUY = OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0, exchange="binance")
ETH_BUY = OrderIntent("ETHUSDT", Side.BUY, 0.01, 3_000.0, exchange="binance")


@dataclass
class Spec:
    """A breaker definition (the evaluator takes anything shaped like store.records.BreakerRecord)."""

    id: str = "b1"
    name: str = "dd10"
    condition: str = "max_drawdown"
    action: str = "pause_trading"
    parameters: dict[str, object] = field(default_factory=lambda: {"threshold": 0.1})
    account_id: str = "a1"
    symbols: list[str] | None = None
    exchanges: list[str] | None = None
    enabled: bool = True


@pytest.fixture
def fired() -> list[Firing]:
    return []


@pytest.fixture
def evaluator() -> Evaluator:
    return Evaluator()


@pytest.fixture
def engine(clock: ManualClock, evaluator: Evaluator, fired: list[Firing]) -> RiskEngine:
    """An engine whose listener collects every firing it announces in `fired`."""
    return RiskEngine(clock, defaults=LIMITS, breakers=evaluator, listeners=[lambda e: fired.extend(e.firings)])


def firings_of(engine: RiskEngine, equity: float) -> list[Firing]:
    out = engine.report_equity("t1", "a1", equity, None).firings
    assert all(isinstance(f, Firing) for f in out)
    return [f for f in out if isinstance(f, Firing)]


# ---- episodes -----------------------------------------------------------------------------------


def test_breaker_fires_once_per_episode_and_rearms_when_the_condition_clears(
    engine: RiskEngine, evaluator: Evaluator, fired: list[Firing]
) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    first = firings_of(engine, 8_800.0)
    during = [firings_of(engine, e) for e in (8_700.0, 8_500.0, 8_900.0)]
    cleared = firings_of(engine, 9_500.0)
    again = firings_of(engine, 8_000.0)

    assert len(first) == 1 and first[0].triggered_values["drawdown"] == pytest.approx(0.12)
    assert during == [[], [], []]
    assert cleared == []
    assert len(again) == 1
    assert [f.event_id for f in fired] == [first[0].event_id, again[0].event_id]
    assert first[0].event_id != again[0].event_id


def test_episodes_are_per_trader(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(action="alert"))
    for trader in ("t1", "t2"):
        engine.report_equity(trader, "a1", 10_000.0, None)

    one = engine.report_equity("t1", "a1", 8_000.0, None).firings
    two = engine.report_equity("t2", "a1", 8_000.0, None).firings

    assert len(one) == 1 and len(two) == 1


def test_nothing_firing_returns_the_shared_empty_list_without_allocating(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec())
    engine.report_equity("t1", "a1", 10_000.0, None)
    st = engine.traders["t1"]

    assert evaluator.evaluate(st, LIMITS, T0, True, []) is NO_FIRINGS
    assert evaluator.evaluate(engine.traders["t1"], LIMITS, T0, True, [("BTCUSDT", "x")]) is NO_FIRINGS
    assert NO_FIRINGS == []


def test_disabled_breaker_is_never_evaluated(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(enabled=False))
    engine.report_equity("t1", "a1", 10_000.0, None)

    assert firings_of(engine, 5_000.0) == []
    assert evaluator.enabled("a1") == ()


def test_disabling_removes_and_enabling_rearms(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    assert len(firings_of(engine, 8_000.0)) == 1

    evaluator.install(Spec(action="alert", enabled=False))
    while_disabled = firings_of(engine, 7_900.0)
    evaluator.install(Spec(action="alert", enabled=True))
    after_enable = firings_of(engine, 7_800.0)

    assert while_disabled == []
    assert len(after_enable) == 1


def test_rearm_fires_again_while_the_condition_holds(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    firings_of(engine, 8_000.0)

    evaluator.rearm("b1")

    assert len(firings_of(engine, 8_000.0)) == 1


def test_deleted_breaker_no_longer_fires(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec())
    evaluator.remove("b1")
    engine.report_equity("t1", "a1", 10_000.0, None)

    assert firings_of(engine, 5_000.0) == []
    assert evaluator.get("b1") is None


def test_update_keeps_the_episode_when_the_rule_is_unchanged_and_rearms_when_it_changes(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    firings_of(engine, 8_000.0)

    evaluator.install(Spec(action="alert", name="renamed"))
    same_rule = firings_of(engine, 8_000.0)
    evaluator.install(Spec(action="alert", parameters={"threshold": 0.15}))
    new_rule = firings_of(engine, 8_000.0)

    assert same_rule == []
    assert len(new_rule) == 1 and new_rule[0].triggered_values["threshold"] == 0.15


def test_breakers_of_other_accounts_are_not_evaluated(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(account_id="other"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    assert firings_of(engine, 5_000.0) == []


# ---- actions ------------------------------------------------------------------------------------


def test_pause_trading_halts_for_stop_trading_minutes_and_can_trade_is_denied_circuit_breaker(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(action="pause_trading"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_800.0)
    decision, st = engine.can_trade("t1", "a1", BTC_BUY)

    pause = st.pauses[-1]
    assert (pause.state, pause.code, pause.source, pause.until) == (
        TradingState.HALTED, DecisionCode.CIRCUIT_BREAKER, "breaker:b1", T0 + 30 * 60)
    assert "dd10" in pause.reason and "drawdown=0.12" in pause.reason
    assert not decision.allowed and decision.code is DecisionCode.CIRCUIT_BREAKER
    assert decision.trading_state is TradingState.HALTED
    assert firing.action_result == {"success": True, "enforced": True, "trading_state": "HALTED",
                                    "paused_until": "2026-01-01T12:30:00Z", "duration_minutes": 30.0}
    assert [a.type for a in firing.actions] == [ActionType.PAUSE_TRADING]
    assert firing.actions[0].breaker_id == "b1" and not firing.shadow


def test_pause_ends_by_itself_after_duration_minutes(
    engine: RiskEngine, evaluator: Evaluator, clock: ManualClock
) -> None:
    evaluator.install(Spec(parameters={"threshold": 0.1, "duration_minutes": 5}))
    engine.report_equity("t1", "a1", 10_000.0, None)
    firings_of(engine, 8_800.0)

    clock.advance(5 * 60 + 1)
    decision, _ = engine.can_trade("t1", "a1", BTC_BUY)

    assert decision.allowed and decision.trading_state is TradingState.ACTIVE


def test_pause_with_zero_stop_trading_minutes_lasts_until_resumed(clock: ManualClock, evaluator: Evaluator) -> None:
    engine = RiskEngine(clock, defaults=LIMITS.with_changes(stop_trading_minutes=0), breakers=evaluator)
    evaluator.install(Spec())
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_000.0)
    clock.advance(86_400 * 3)

    assert firing.action_result["until_resumed"] is True
    assert engine.can_trade("t1", "a1", BTC_BUY)[0].code is DecisionCode.CIRCUIT_BREAKER


def test_reduce_only_allows_reducing_orders_and_blocks_new_exposure(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(action="reduce_only"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance")])
    firings_of(engine, 8_800.0)

    new_exposure, _ = engine.can_trade("t1", "a1", BTC_BUY)
    reducing, st = engine.can_trade("t1", "a1", OrderIntent("BTCUSDT", Side.SELL, 0.01, 50_000.0, "binance"))

    assert not new_exposure.allowed and new_exposure.code is DecisionCode.CIRCUIT_BREAKER
    assert reducing.allowed and st.trading_state(T0) is TradingState.REDUCING


def test_close_position_targets_open_positions_in_scope(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(action="close_position", symbols=["BTCUSDT", "ETHUSDT"], exchanges=["binance"]))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [
        Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance"),
        Position("SOLUSDT", Side.BUY, 1.0, 100.0, 100.0, "binance"),
        Position("ETHUSDT", Side.BUY, 1.0, 3_000.0, 3_000.0, "okx"),
    ])

    outcome = engine.report_equity("t1", "a1", 8_800.0, None)

    [firing] = outcome.firings
    assert firing.positions_affected == [("BTCUSDT", "binance")]
    assert [(a.type, a.symbol, a.exchange) for a in firing.actions] == [
        (ActionType.CLOSE_POSITION, "BTCUSDT", "binance")]
    assert firing.actions[0] in outcome.actions
    assert engine.traders["t1"].pauses == []


def test_close_position_without_open_positions_uses_scope_symbols_times_exchanges(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(action="close_position", symbols=["ETHUSDT", "BTCUSDT"], exchanges=["binance"]))
    engine.report_equity("t1", "a1", 10_000.0, None)

    decision, _ = engine.can_trade("t1", "a1", ETH_BUY)  # no firing yet
    engine.report_equity("t1", "a1", 8_800.0, None)  # no open positions: a scoped breaker is not evaluated
    decision, _ = engine.can_trade("t1", "a1", ETH_BUY)

    assert [(a.symbol, a.exchange) for a in decision.actions] == [("BTCUSDT", "binance"), ("ETHUSDT", "binance")]
    assert decision.allowed


def test_close_position_unscoped_without_positions_asks_to_close_everything(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(action="close_position"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_800.0)

    assert firing.positions_affected == [("", "")]
    assert firing.actions[0].symbol == "" and firing.actions[0].exchange == ""


def test_position_drawdown_close_position_closes_exactly_the_losing_positions(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(condition="position_drawdown", action="close_position", parameters={"threshold": 0.05}))
    engine.report_equity("t1", "a1", 10_000.0, None)

    outcome = engine.report_positions("t1", "a1", [
        Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 45_000.0, "binance"),
        Position("ETHUSDT", Side.BUY, 1.0, 3_000.0, 2_990.0, "binance"),
    ])

    [firing] = outcome.firings
    assert firing.positions_affected == [("BTCUSDT", "binance")]
    assert [a.symbol for a in firing.actions] == ["BTCUSDT"]
    assert firing.triggered_values["position_loss"] == pytest.approx(0.1)


def test_alert_records_the_event_only(engine: RiskEngine, evaluator: Evaluator, fired: list[Firing]) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_800.0)

    assert firing.actions == [] and firing.action_result == {"success": True, "enforced": True}
    assert engine.traders["t1"].pauses == []
    assert fired == [firing]
    assert (firing.trader_id, firing.account_id, firing.at) == ("t1", "a1", T0)


def test_breaker_firing_logs_risk_limit_breached(
    engine: RiskEngine, evaluator: Evaluator, caplog: pytest.LogCaptureFixture
) -> None:
    evaluator.install(Spec(action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    with caplog.at_level(logging.WARNING, logger="tradeguard.breakers"):
        firings_of(engine, 8_800.0)

    assert "RISK LIMIT BREACHED trader=t1 account=a1 rule=breaker:dd10" in caplog.text


def test_a_failing_event_recorder_does_not_break_evaluation(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore:
        def enqueue_event(self, _rec: object) -> None:
            raise RuntimeError("queue gone")

    evaluator = Evaluator()
    recorder = BreakerService(evaluator, BrokenStore())  # type: ignore[arg-type]  # only enqueue_event is used
    engine = RiskEngine(clock, defaults=LIMITS, breakers=evaluator, listeners=[recorder.on_state_changed])
    evaluator.install(Spec())
    engine.report_equity("t1", "a1", 10_000.0, None)

    with caplog.at_level(logging.ERROR, logger="tradeguard.breakers"):
        assert len(firings_of(engine, 8_000.0)) == 1

    assert "recording the event of breaker b1 failed" in caplog.text


def test_a_failing_state_listener_fails_the_call_after_every_other_listener_heard_the_change(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A change a listener could not take (the store queue, say) is not answered as done: the call raises (the RPC
    answers INTERNAL and the caller retries), and the listeners after it still heard the change."""

    def broken(e: StateChanged) -> None:
        if e.firings:
            raise RuntimeError("queue gone")

    heard: list[Firing] = []
    evaluator = Evaluator()
    engine = RiskEngine(clock, defaults=LIMITS, breakers=evaluator,
                        listeners=[broken, lambda e: heard.extend(e.firings)])
    evaluator.install(Spec())
    engine.report_equity("t1", "a1", 10_000.0, None)

    with caplog.at_level(logging.ERROR, logger="tradeguard.engine"), pytest.raises(RuntimeError, match="queue gone"):
        engine.report_equity("t1", "a1", 8_000.0, None)

    assert [f.breaker_id for f in heard] == ["b1"]  # the next listener still heard it
    assert "state change listener" in caplog.text and "failed" in caplog.text


# ---- shadow mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["close_position", "alert"])
def test_shadow_mode_fires_shadow_events_but_enforces_nothing(
    clock: ManualClock, evaluator: Evaluator, action: str
) -> None:
    engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=False), breakers=evaluator)
    evaluator.install(Spec(action=action))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance")])

    [firing] = firings_of(engine, 8_800.0)
    decision, st = engine.can_trade("t1", "a1", BTC_BUY)

    assert firing.shadow and firing.actions == []
    assert firing.action_result["enforced"] is False
    assert st.pauses == []
    assert decision.allowed and not decision.would_deny and decision.actions == ()


@pytest.mark.parametrize(("action", "state"), [("pause_trading", TradingState.HALTED),
                                               ("reduce_only", TradingState.REDUCING)])
def test_shadow_mode_pause_is_recorded_would_deny_and_denies_once_enforcement_is_back(
    clock: ManualClock, evaluator: Evaluator, action: str, state: TradingState
) -> None:
    engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=False), breakers=evaluator)
    evaluator.install(Spec(condition="equity_floor", parameters={"value": 9_000.0}, action=action))
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_700.0)
    shadow, st = engine.can_trade("t1", "a1", BTC_BUY)
    engine.flags = Flags(enable_risk_enforcement=True)
    clock.advance(60.0)
    engine.report_equity("t1", "a1", 8_700.0, None)  # the condition still holds: no second firing
    enforced, _ = engine.can_trade("t1", "a1", BTC_BUY)

    assert firing.shadow and firing.actions == []
    assert shadow.allowed and shadow.would_deny and shadow.code is DecisionCode.CIRCUIT_BREAKER
    assert shadow.trading_state is state and "SHADOW" in shadow.reason
    assert not enforced.allowed and enforced.code is DecisionCode.CIRCUIT_BREAKER
    assert enforced.trading_state is state and st.trading_state(clock.now()) is state


def test_shadow_pause_reports_what_it_would_have_done(clock: ManualClock, evaluator: Evaluator) -> None:
    engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=False), breakers=evaluator)
    evaluator.install(Spec())
    engine.report_equity("t1", "a1", 10_000.0, None)

    [firing] = firings_of(engine, 8_800.0)

    assert firing.action_result == {"success": True, "enforced": False, "would_trading_state": "HALTED",
                                    "would_paused_until": "2026-01-01T12:30:00Z", "duration_minutes": 30.0}


# ---- scope --------------------------------------------------------------------------------------


def trade(trade_id: str, symbol: str, pnl: float, at: float = T0) -> ClosedTrade:
    return ClosedTrade(trade_id, symbol, "binance", Side.SELL, pnl, at)


def test_eth_scoped_breaker_does_not_fire_on_btc_trades(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(condition="consecutive_losses", parameters={"count": 2}, symbols=["ETHUSDT"],
                           action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    btc = [engine.report_trade("t1", "a1", trade(f"b{i}", "BTCUSDT", -10.0)).firings for i in range(3)]
    eth = [engine.report_trade("t1", "a1", trade(f"e{i}", "ETHUSDT", -10.0)).firings for i in range(2)]

    assert btc == [[], [], []]
    assert [len(f) for f in eth] == [0, 1]


def test_eth_scoped_account_condition_is_skipped_on_btc_activity_and_fires_on_eth_order(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(symbols=["ETHUSDT"]))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 50_000.0, "binance")])

    on_equity = firings_of(engine, 8_000.0)  # only a BTC position is open: out of scope
    btc_order, _ = engine.can_trade("t1", "a1", BTC_BUY)
    no_order, _ = engine.can_trade("t1", "a1", None)
    eth_order, _ = engine.can_trade("t1", "a1", ETH_BUY)

    assert on_equity == []
    assert btc_order.allowed and no_order.allowed
    assert not eth_order.allowed and eth_order.code is DecisionCode.CIRCUIT_BREAKER


def test_scoped_account_condition_fires_on_equity_report_with_an_open_position_in_scope(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(symbols=["ETHUSDT"], exchanges=["binance"], action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("ETHUSDT", Side.BUY, 1.0, 3_000.0, 3_000.0, "binance")])

    assert len(firings_of(engine, 8_000.0)) == 1


def test_exchange_scope_excludes_other_venues(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(exchanges=["okx"], action="alert"))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 8_000.0, None)

    binance, _ = engine.can_trade("t1", "a1", BTC_BUY)
    okx = engine.report_trade("t1", "a1", ClosedTrade("x", "BTCUSDT", "okx", Side.SELL, -1.0, T0))

    assert binance.allowed
    assert len(okx.firings) == 1


def test_evaluate_accepts_a_one_shot_iterator_of_pairs(evaluator: Evaluator, engine: RiskEngine) -> None:
    evaluator.install(Spec(id="x", name="x", symbols=["ETHUSDT"], action="alert"))
    evaluator.install(Spec(id="y", name="y", symbols=["ETHUSDT"], action="alert", parameters={"threshold": 0.05}))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_equity("t1", "a1", 8_000.0, None)

    out = evaluator.evaluate(engine.traders["t1"], LIMITS, T0, True, iter([("ETHUSDT", "binance")]))

    assert sorted(f.breaker_id for f in out) == ["x", "y"]


# ---- other conditions through the engine --------------------------------------------------------


def test_loss_streak_in_window_pauses_after_trade_limit_losses(
    engine: RiskEngine, evaluator: Evaluator, clock: ManualClock
) -> None:
    evaluator.install(Spec(condition="loss_streak_in_window", parameters={"trade_limit": 3, "lookback_minutes": 10}))
    engine.report_equity("t1", "a1", 10_000.0, None)

    outcomes = []
    for i in range(3):
        clock.advance(60)
        outcomes.append(engine.report_trade("t1", "a1", trade(f"t{i}", "BTCUSDT", -5.0, clock.now())).firings)

    assert [len(f) for f in outcomes] == [0, 0, 1]
    assert outcomes[2][0].triggered_values == {"losing_trades": 3.0, "trade_limit": 3, "lookback_minutes": 10.0}


def test_order_rate_fires_on_the_can_trade_whose_order_would_exceed_max(
    engine: RiskEngine, evaluator: Evaluator
) -> None:
    evaluator.install(Spec(condition="order_rate", parameters={"max_orders": 2, "window_seconds": 60}))
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.traders["t1"].order_times.extend([T0 - 20, T0 - 10])

    decision, st = engine.can_trade("t1", "a1", BTC_BUY)

    assert not decision.allowed and decision.code is DecisionCode.CIRCUIT_BREAKER
    assert "orders=3" in decision.reason
    assert list(st.order_times) == [T0 - 20, T0 - 10]  # the denied order was not placed: not counted


def test_order_rate_allows_exactly_max_orders_in_the_window(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(condition="order_rate", parameters={"max_orders": 3, "window_seconds": 60}))
    engine.report_equity("t1", "a1", 10_000.0, None)

    allowed = [engine.can_trade("t1", "a1", BTC_BUY)[0].allowed for _ in range(5)]

    assert allowed == [True, True, True, False, False]
    assert len(engine.traders["t1"].order_times) == 3


def test_a_denied_order_at_full_memory_keeps_the_oldest_order_time(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(condition="order_rate", parameters={"max_orders": 10_000, "window_seconds": 60}))
    engine.report_equity("t1", "a1", 10_000.0, None)
    times = engine.traders["t1"].order_times
    assert times.maxlen is not None
    times.extend(T0 - 50 + i * 1e-3 for i in range(times.maxlen))
    before = list(times)

    decision, _ = engine.can_trade("t1", "a1", BTC_BUY)

    assert not decision.allowed
    assert list(times) == before


def test_equity_floor_and_daily_loss_fire_together_as_two_events(engine: RiskEngine, evaluator: Evaluator) -> None:
    evaluator.install(Spec(id="f", name="floor", condition="equity_floor", parameters={"value": 9_000}))
    evaluator.install(Spec(id="d", name="daily", condition="daily_loss", parameters={"threshold": 0.05},
                           action="reduce_only"))
    engine.report_equity("t1", "a1", 10_000.0, None)

    out = firings_of(engine, 8_500.0)

    assert [f.name for f in out] == ["daily", "floor"]
    assert engine.traders["t1"].trading_state(T0) is TradingState.HALTED


# ---- loading --------------------------------------------------------------------------------------


def test_load_installs_valid_breakers_and_rejects_invalid_ones(evaluator: Evaluator) -> None:
    rejected = evaluator.load([
        Spec(id="ok"),
        Spec(id="bad", condition="nope"),
        Spec(id="off", enabled=False),
        Spec(id="bad2", parameters={"threshold": 3}),
    ])

    assert [b.id for b in evaluator.enabled("a1")] == ["ok"]
    assert len(rejected) == 2 and all(isinstance(r, InvalidBreaker) for r in rejected)
    assert rejected[1].violations[0][0] == "breaker.parameters.threshold"


def test_install_of_an_invalid_definition_raises_and_changes_nothing(evaluator: Evaluator) -> None:
    evaluator.install(Spec())

    with pytest.raises(InvalidBreaker):
        evaluator.install(Spec(parameters={}))

    compiled = evaluator.get("b1")
    assert compiled is not None and compiled.params == {"threshold": 0.1}
