"""tradeguard_client conversions between the frozen result types and the protobuf messages (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_client import (
    BreakerEvent,
    CircuitBreaker,
    CorrelationGroup,
    Decision,
    Order,
    Position,
    ReportResult,
    RiskConfig,
    RiskState,
    StateUpdate,
    SymbolConfig,
)
from tradeguard_client import _requests as req

T0 = 1_767_268_800


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def denied_response() -> rs.CanTradeResponse:
    return rs.CanTradeResponse(
        allowed=False, code=t.DECISION_CODE_DAILY_LOSS_LIMIT,
        reason="DAILY_LOSS_LIMIT: loss=6.00% limit=5.00% equity=9400.00",
        trading_state=t.TRADING_STATE_REDUCING, paused_until=ts(T0 + 1800),
        checks=[
            t.CheckResult(name="equity_reported", status=t.CHECK_STATUS_PASS, code=t.DECISION_CODE_NO_EQUITY_REPORTED),
            t.CheckResult(name="daily_loss", status=t.CHECK_STATUS_FAIL, code=t.DECISION_CODE_DAILY_LOSS_LIMIT,
                          detail="loss=6.00% limit=5.00%", value=6.0, limit=5.0),
        ],
        actions=[t.RequiredAction(type=t.ACTION_TYPE_REDUCE_ONLY, reason="daily loss")],
        state=t.RiskState(trader_id="bot-1", account_id="acct-1", current_equity=9_400, peak_equity=10_000,
                          trading_state=t.TRADING_STATE_REDUCING, pause_code=t.DECISION_CODE_DAILY_LOSS_LIMIT,
                          equity_reported=True, last_equity_at=ts(T0),
                          positions=[t.Position(symbol="BTCUSDT", side=t.SIDE_SELL, quantity=1.0, entry_price=2.0,
                                                mark_price=3.0)]),
    )


def test_decision_from_proto_names_enums_without_prefix_and_times_are_aware_utc() -> None:
    msg = denied_response()

    decision = Decision.from_proto(msg)

    assert not decision.allowed and not decision
    assert decision.code == "DAILY_LOSS_LIMIT" and decision.trading_state == "REDUCING"
    assert decision.paused_until == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert [(c.name, c.status, c.code) for c in decision.checks] == [
        ("equity_reported", "PASS", "NO_EQUITY_REPORTED"), ("daily_loss", "FAIL", "DAILY_LOSS_LIMIT")]
    assert decision.checks[1].value == 6.0 and decision.checks[1].limit == 5.0
    assert decision.actions[0].type == "REDUCE_ONLY"
    assert decision.state is not None and decision.state.pause_code == "DAILY_LOSS_LIMIT"
    assert decision.state.positions == (Position("BTCUSDT", "SELL", 1.0, 2.0, 3.0),)
    assert decision.state.last_equity_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert decision.state.paused_until is None and decision.state.updated_at is None
    assert decision.raw is msg and not decision.sidecar_unavailable


def test_decision_is_frozen_and_raw_is_not_part_of_equality() -> None:
    a = Decision.from_proto(denied_response())
    b = Decision.from_proto(denied_response())

    assert a == b and a.raw is not b.raw
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.allowed = True  # type: ignore[misc]


def test_enum_value_unknown_to_this_client_reads_as_unknown_number() -> None:
    msg = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED, trading_state=42,  # type: ignore[arg-type]
                              checks=[t.CheckResult(name="new_rule", status=7, code=98)])  # type: ignore[arg-type]

    decision = Decision.from_proto(msg)

    assert decision.code == "ALLOWED" and decision.trading_state == "UNKNOWN_42"
    assert (decision.checks[0].status, decision.checks[0].code) == ("UNKNOWN_7", "UNKNOWN_98")
    assert decision.state is None and decision.paused_until is None


# Answers no TradeGuard server sends: whatever sent one (a bug, a mock, an impostor) cannot allow.
IMPOSSIBLE_ALLOWS = {
    "08 01: allowed, no code": rs.CanTradeResponse.FromString(b"\x08\x01"),
    "UNSPECIFIED": rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_UNSPECIFIED),
    "SIDECAR_UNAVAILABLE (client-only)": rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_SIDECAR_UNAVAILABLE),
    "INVALID_RESPONSE (client-only)": rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_INVALID_RESPONSE),
    "unknown code 99": rs.CanTradeResponse(allowed=True, code=99),  # type: ignore[arg-type]
    "rule code without would_deny": rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_DAILY_LOSS_LIMIT),
    "timestamp past year 9999": rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED,
                                                    paused_until=Timestamp(seconds=10**15)),
    "state timestamp past year 9999": rs.CanTradeResponse(
        allowed=True, code=t.DECISION_CODE_ALLOWED, state=t.RiskState(updated_at=Timestamp(seconds=-10**15))),
}


@pytest.mark.parametrize("msg", IMPOSSIBLE_ALLOWS.values(), ids=IMPOSSIBLE_ALLOWS.keys())
def test_an_allowed_answer_no_server_sends_is_denied_as_invalid_response(msg: rs.CanTradeResponse) -> None:
    decision = Decision.from_proto(msg, client_order_id="tg-1")

    assert not decision and decision.code == "INVALID_RESPONSE" and decision.invalid_response
    assert decision.reason.startswith("INVALID_RESPONSE: the answer broke the protocol: ")
    assert not decision.would_deny and decision.checks == () and decision.state is None
    assert decision.raw is msg and decision.client_order_id == "tg-1"


def test_invalid_response_names_what_was_wrong_and_keeps_the_answers_reason() -> None:
    msg = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_SIDECAR_UNAVAILABLE, reason="trust me")

    reason = Decision.from_proto(msg).reason

    assert "allowed=true with DECISION_CODE_SIDECAR_UNAVAILABLE (17, set by clients only)" in reason
    assert "'trust me'" in reason


@pytest.mark.parametrize("code", [t.DECISION_CODE_DAILY_LOSS_LIMIT, t.DECISION_CODE_CIRCUIT_BREAKER,
                                  t.DECISION_CODE_STATE_NOT_LOADED])
def test_shadow_mode_allow_with_a_rule_code_and_would_deny_stays_allowed(code: int) -> None:
    msg = rs.CanTradeResponse(allowed=True, code=code, would_deny=True,  # type: ignore[arg-type]
                              reason="SHADOW (not enforced), would deny: ...", client_order_id="bot-7")

    decision = Decision.from_proto(msg, client_order_id="bot-7")

    assert decision and decision.would_deny and decision.code == t.DecisionCode.Name(code).removeprefix(  # type: ignore[arg-type]
        "DECISION_CODE_")
    assert decision.client_order_id == "bot-7"


@pytest.mark.parametrize("code", [t.DECISION_CODE_UNSPECIFIED, t.DECISION_CODE_ALLOWED,
                                  t.DECISION_CODE_SIDECAR_UNAVAILABLE])
def test_a_denial_without_a_rule_code_is_still_denied_and_marked_invalid(code: int) -> None:
    decision = Decision.from_proto(rs.CanTradeResponse(allowed=False, code=code))  # type: ignore[arg-type]

    assert not decision and decision.code == "INVALID_RESPONSE"


@pytest.mark.parametrize("body", [None, b"\xff\xff\xff", b"\x0a\x05ab"])
def test_a_body_that_is_not_a_can_trade_response_is_denied_as_invalid_response(body: bytes | None) -> None:
    decision = Decision.from_bytes(body)

    assert not decision and decision.code == "INVALID_RESPONSE"


def test_a_well_formed_body_decodes_to_its_decision() -> None:
    body = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED, client_order_id="x").SerializeToString()

    decision = Decision.from_bytes(body, client_order_id="ignored-when-echoed")

    assert decision and decision.code == "ALLOWED" and decision.client_order_id == "x"


def test_unavailable_decision_fails_closed_by_default() -> None:
    decision = Decision.unavailable("UNAVAILABLE: connection refused (after 3 attempt(s))", fail_open=False)

    assert not decision and decision.code == "SIDECAR_UNAVAILABLE" and decision.sidecar_unavailable
    assert decision.reason.startswith("SIDECAR_UNAVAILABLE: UNAVAILABLE: connection refused")
    assert not decision.would_deny and decision.state is None and decision.raw is None
    assert decision.checks == () and decision.actions == () and decision.trading_state == "UNSPECIFIED"


def test_unavailable_decision_fails_open_with_would_deny_when_asked_to() -> None:
    decision = Decision.unavailable("DEADLINE_EXCEEDED: Deadline Exceeded (after 1 attempt(s))", fail_open=True)

    assert decision and decision.would_deny and decision.code == "SIDECAR_UNAVAILABLE"
    assert "fails open" in decision.reason


@pytest.mark.parametrize(("side", "value"), [("BUY", t.SIDE_BUY), ("buy", t.SIDE_BUY), ("SIDE_SELL", t.SIDE_SELL),
                                             (" sell ", t.SIDE_SELL)])
def test_order_to_proto_accepts_side_names_in_any_case(side: str, value: int) -> None:
    order = Order("BTCUSDT", side, 0.5, 100.0, exchange="binance", leverage=2, reduce_only=True, stop_price=95)

    msg = order.to_proto()

    assert msg.side == value and msg.symbol == "BTCUSDT" and msg.exchange == "binance"
    assert (msg.quantity, msg.price, msg.leverage, msg.reduce_only, msg.stop_price) == (0.5, 100.0, 2.0, True, 95.0)


@pytest.mark.parametrize("side", ["LONG", "", "UNSPECIFIED", "SIDE_UNSPECIFIED"])
def test_order_with_an_unknown_side_is_refused_before_any_call(side: str) -> None:
    with pytest.raises(ValueError, match="side"):
        Order("BTCUSDT", side, 1, 1).to_proto()


def test_can_trade_request_without_order_has_no_order_field() -> None:
    without = req.can_trade("bot-1", "acct-1", None)
    with_proto = req.can_trade("bot-1", "acct-1", t.OrderIntent(symbol="ETHUSDT", side=t.SIDE_BUY))

    assert not without.HasField("order")
    assert with_proto.order.symbol == "ETHUSDT"


def test_naive_datetimes_are_refused_and_aware_ones_are_sent_in_utc() -> None:
    plus2 = timezone(timedelta(hours=2))

    msg = req.report_equity("bot-1", "acct-1", 1.0, datetime(2026, 1, 1, 14, 0, tzinfo=plus2))

    assert msg.observed_at.seconds == T0
    with pytest.raises(ValueError, match="timezone-aware"):
        req.report_equity("bot-1", "acct-1", 1.0, datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="closed_at"):
        req.report_trade("b", "a", trade_id="t", symbol="s", side="BUY", realized_pnl=1, exchange="",
                         closed_at=datetime(2026, 1, 1))


def test_report_result_carries_stale_and_duplicate_flags_and_breaker_events() -> None:
    event = t.CircuitBreakerEvent(id="e1", breaker_id="b1", trader_id="bot-1", account_id="acct-1",
                                  timestamp=ts(T0), action_taken="pause_trading",
                                  positions_affected=[t.PositionRef(symbol="BTCUSDT", exchange="binance")])
    event.triggered_values.update({"drawdown": 0.12})

    stale = ReportResult.from_proto(rs.ReportEquityResponse(stale=True))
    duplicate = ReportResult.from_proto(rs.ReportTradeResponse(duplicate=True, breaker_events=[event]))
    positions = ReportResult.from_proto(rs.ReportPositionsResponse(
        actions=[t.RequiredAction(type=t.ACTION_TYPE_CLOSE_POSITION, symbol="BTCUSDT")]))

    assert stale.stale and not stale.duplicate and stale.state is None
    assert duplicate.duplicate and not duplicate.stale
    assert duplicate.breaker_events == (BreakerEvent(
        id="e1", breaker_id="b1", trader_id="bot-1", account_id="acct-1", timestamp=datetime.fromtimestamp(T0, UTC),
        triggered_values={"drawdown": 0.12}, action_taken="pause_trading", action_result={},
        positions_affected=(("BTCUSDT", "binance"),), shadow=False),)
    assert positions.actions[0].type == "CLOSE_POSITION" and positions.actions[0].symbol == "BTCUSDT"


def test_state_update_keeps_reason_and_skipped_updates() -> None:
    update = StateUpdate.from_proto(rs.WatchRiskStateResponse(reason="breach", skipped_updates=3,
                                                              state=t.RiskState(trader_id="bot-1")))

    assert update.reason == "breach" and update.skipped_updates == 3
    assert isinstance(update.state, RiskState) and update.state.trader_id == "bot-1"


def test_risk_config_round_trips_and_unset_limits_stay_unset() -> None:
    config = RiskConfig(
        account_id="acct-1", config_id="low_risk", is_active=True, daily_max_drawdown_percentage=3.0,
        stop_trading_minutes=0, consecutive_loss_threshold=4, market_regime_thresholds={"high": 2.0, "extreme": 5.0},
        correlation_groups=(CorrelationGroup("majors", ("BTCUSDT", "ETHUSDT")),),
        symbol_configs=(SymbolConfig(symbol="BTCUSDT", max_leverage=5.0),),
    )

    msg = config.to_proto()
    back = RiskConfig.from_proto(msg)

    assert msg.HasField("stop_trading_minutes") and msg.stop_trading_minutes == 0
    assert not msg.HasField("weekly_max_drawdown_percentage")
    assert not msg.symbol_configs[0].HasField("max_position_size_percentage")
    assert back == config and back.raw is msg


def test_circuit_breaker_round_trips_with_struct_parameters() -> None:
    breaker = CircuitBreaker(name="dd10", account_id="acct-1", condition="max_drawdown", action="pause_trading",
                             parameters={"threshold": 0.1, "minutes": 30.0}, symbols=("BTCUSDT",))

    msg = breaker.to_proto()
    back = CircuitBreaker.from_proto(msg)

    assert msg.parameters["threshold"] == 0.1 and list(msg.symbols) == ["BTCUSDT"] and msg.enabled
    assert back == breaker


def test_pause_request_takes_seconds_or_timedelta_and_refuses_active_and_negative() -> None:
    seconds = req.pause_trading("b", "a", "REDUCING", 90, "why")
    delta = req.pause_trading("b", "a", "halted", timedelta(minutes=1, seconds=30), "")
    forever = req.pause_trading("b", "a", "HALTED", None, "")

    assert seconds.duration.seconds == 90 and seconds.trading_state == t.TRADING_STATE_REDUCING
    assert delta.duration.seconds == 90 and delta.trading_state == t.TRADING_STATE_HALTED
    assert not forever.HasField("duration")
    with pytest.raises(ValueError, match="duration"):
        req.pause_trading("b", "a", "HALTED", -1, "")
    with pytest.raises(ValueError, match="trading_state"):
        req.pause_trading("b", "a", "PAUSED", None, "")


def test_set_feature_flags_sends_only_the_flags_given() -> None:
    only_enforcement = req.set_feature_flags(False, None)

    assert only_enforcement.flags.HasField("enable_risk_enforcement")
    assert not only_enforcement.flags.enable_risk_enforcement
    assert not only_enforcement.flags.HasField("enable_persistence")


def test_history_request_sets_only_the_bounds_given() -> None:
    msg = req.list_history("b", "a", datetime.fromtimestamp(T0, UTC), None, 10, "tok")

    assert msg.start_time.seconds == T0 and not msg.HasField("end_time")
    assert (msg.page_size, msg.page_token) == (10, "tok")
