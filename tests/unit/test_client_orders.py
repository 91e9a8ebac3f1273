"""tradeguard_client and the order lifecycle (issue 16): ReportOrder / ReportPrices requests, pending orders,
cancel_all_orders, and the new configuration fields (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_client import (
    Decision,
    InvalidArgumentError,
    PendingOrder,
    PriceMark,
    ReportResult,
    RiskConfig,
    StateUpdate,
    SymbolConfig,
    TradingWindow,
)
from tradeguard_client import _requests as req

T0 = 1_767_268_800  # 2026-01-01T12:00:00Z


def pending(client_order_id: str = "o-1", status: int = t.ORDER_STATUS_ALLOWED) -> t.PendingOrder:
    return t.PendingOrder(client_order_id=client_order_id, symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY,
                          quantity=0.01, price=50_000, status=status, allowed_at=Timestamp(seconds=T0),
                          expires_at=Timestamp(seconds=T0 + 60))


def cancel_all(*ids: str) -> t.RequiredAction:
    return t.RequiredAction(type=t.ACTION_TYPE_CANCEL_ALL_ORDERS, reason="HALTED by operator",
                            client_order_ids=list(ids))


# ---- ReportOrder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "value"), [
    ("FILLED", t.ORDER_STATUS_FILLED), ("cancelled", t.ORDER_STATUS_CANCELLED),
    ("ORDER_STATUS_PARTIALLY_FILLED", t.ORDER_STATUS_PARTIALLY_FILLED), (" accepted ", t.ORDER_STATUS_ACCEPTED),
    ("rejected", t.ORDER_STATUS_REJECTED), ("Expired", t.ORDER_STATUS_EXPIRED),
])
def test_report_order_request_takes_status_names_in_any_case(status: str, value: int) -> None:
    msg = req.report_order("bot-1", "acct-1", "o-1", status, 0.004, 50_010.5)

    assert msg == rs.ReportOrderRequest(trader_id="bot-1", account_id="acct-1", client_order_id="o-1",
                                        status=value, filled_quantity=0.004, average_price=50_010.5)


@pytest.mark.parametrize("status", ["ALLOWED", "ORDER_STATUS_ALLOWED", "UNSPECIFIED", "DONE", ""])
def test_report_order_refuses_a_status_a_bot_cannot_report_before_sending(status: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        req.report_order("bot-1", "acct-1", "o-1", status, 0.0, 0.0)

    assert err.value.field_violations[0].field == "status"
    assert "FILLED" in str(err.value)


def test_report_order_result_carries_the_order_and_the_duplicate_flag() -> None:
    msg = rs.ReportOrderResponse(
        duplicate=True, order=pending(status=t.ORDER_STATUS_FILLED),
        state=t.RiskState(trader_id="bot-1", pending_orders=[pending("o-2")], daily_order_notional=1_000.0,
                          daily_orders=2),
    )

    result = ReportResult.from_proto(msg)

    assert result.duplicate and not result.stale
    assert result.order == PendingOrder(
        client_order_id="o-1", symbol="BTCUSDT", exchange="binance", side="BUY", quantity=0.01, price=50_000,
        filled_quantity=0.0, average_price=0.0, status="FILLED", reducing=False,
        allowed_at=datetime.fromtimestamp(T0, UTC), expires_at=datetime.fromtimestamp(T0 + 60, UTC))
    assert result.order.finished
    assert result.state is not None
    assert [o.client_order_id for o in result.state.pending_orders] == ["o-2"]
    assert result.state.pending_orders[0].status == "ALLOWED" and not result.state.pending_orders[0].finished
    assert (result.state.daily_order_notional, result.state.daily_orders) == (1_000.0, 2)


def test_other_reports_have_no_order() -> None:
    assert ReportResult.from_proto(rs.ReportPositionsResponse()).order is None
    assert ReportResult.from_proto(rs.ReportOrderResponse()).order is None


# ---- ReportPrices --------------------------------------------------------------------------------


def test_report_prices_takes_price_marks_or_a_symbol_to_price_mapping() -> None:
    when = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))

    marks = req.report_prices("bot-1", "acct-1", [PriceMark("BTCUSDT", 50_000.0, exchange="binance",
                                                            observed_at=when), t.PriceMark(symbol="X", price=2)])
    mapping = req.report_prices("bot-1", "acct-1", {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0})

    assert [(p.symbol, p.exchange, p.price) for p in marks.prices] == [("BTCUSDT", "binance", 50_000.0),
                                                                       ("X", "", 2.0)]
    assert marks.prices[0].observed_at.seconds == T0 and not marks.prices[1].HasField("observed_at")
    assert [(p.symbol, p.price) for p in mapping.prices] == [("BTCUSDT", 50_000.0), ("ETHUSDT", 3_000.0)]
    assert not any(p.HasField("observed_at") for p in mapping.prices)


def test_report_prices_refuses_a_naive_observed_at() -> None:
    with pytest.raises(InvalidArgumentError, match="observed_at"):
        req.report_prices("bot-1", "acct-1", [PriceMark("BTCUSDT", 1.0, observed_at=datetime(2026, 1, 1))])


# ---- cancel_all_orders -----------------------------------------------------------------------------


def test_cancel_all_orders_action_lists_the_order_ids_on_decisions_reports_and_watch_updates() -> None:
    actions = [t.RequiredAction(type=t.ACTION_TYPE_PAUSE_TRADING, reason="halted"), cancel_all("o-1", "o-2"),
               cancel_all("o-2", "o-3")]
    decision = Decision.from_proto(rs.CanTradeResponse(allowed=False, code=t.DECISION_CODE_KILL_SWITCH,
                                                       trading_state=t.TRADING_STATE_HALTED, actions=actions))
    report = ReportResult.from_proto(rs.ReportOrderResponse(actions=actions))
    update = StateUpdate.from_proto(rs.WatchRiskStateResponse(reason="paused", actions=actions))

    for answer in (decision, report, update):
        assert answer.cancel_all_orders
        assert answer.cancel_order_ids == ("o-1", "o-2", "o-3")
    assert decision.actions[1].type == "CANCEL_ALL_ORDERS"
    assert decision.actions[1].client_order_ids == ("o-1", "o-2")


def test_cancel_all_orders_without_pending_orders_still_asks_to_cancel() -> None:
    update = StateUpdate.from_proto(rs.WatchRiskStateResponse(actions=[cancel_all()]))

    assert update.cancel_all_orders and update.cancel_order_ids == ()


def test_no_cancel_action_means_nothing_to_cancel() -> None:
    report = ReportResult.from_proto(rs.ReportPositionsResponse(
        actions=[t.RequiredAction(type=t.ACTION_TYPE_CLOSE_POSITION, symbol="BTCUSDT")]))

    assert not report.cancel_all_orders and report.cancel_order_ids == ()
    assert not Decision.unavailable("UNAVAILABLE", fail_open=False).cancel_all_orders


# ---- configuration -------------------------------------------------------------------------------


def test_risk_config_has_a_field_for_every_risk_configuration_field() -> None:
    def names(cls: type) -> set[str]:
        return set(cls.__dataclass_fields__) - {"raw"}  # type: ignore[attr-defined]

    assert names(RiskConfig) == set(t.RiskConfiguration.DESCRIPTOR.fields_by_name)
    assert names(SymbolConfig) == set(t.SymbolRiskConfiguration.DESCRIPTOR.fields_by_name)


def test_risk_config_round_trips_the_pre_trade_controls() -> None:
    config = RiskConfig(
        account_id="acct-1", config_id="controls", max_order_quantity=1.0, max_position_quantity=2.0,
        max_open_orders=5, price_collar_percentage=2.5, reference_price_max_age_seconds=30,
        duplicate_order_window_ms=500, allowed_symbols=("BTCUSDT", "ETHUSDT"), blocked_symbols=("DOGEUSDT",),
        trading_windows=(TradingWindow("08:00", "16:30", (1, 2, 3, 4, 5)), TradingWindow("22:00", "02:00")),
        max_daily_notional=100_000.0, max_daily_orders=200, max_fills_per_window=10, fill_window_seconds=60,
        pending_order_ttl_seconds=30,
        symbol_configs=(SymbolConfig(symbol="BTCUSDT", max_order_quantity=0.5, max_open_orders=2,
                                     price_collar_percentage=1.0),),
    )

    msg = config.to_proto()
    back = RiskConfig.from_proto(msg)

    assert list(msg.trading_windows[0].weekdays) == [1, 2, 3, 4, 5] and msg.trading_windows[1].end == "02:00"
    assert list(msg.blocked_symbols) == ["DOGEUSDT"] and msg.max_open_orders == 5
    assert not msg.symbol_configs[0].HasField("max_position_quantity")
    assert back == dataclasses.replace(config, is_active=True)  # is_active not sent: the server's default, active
