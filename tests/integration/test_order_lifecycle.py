"""Orders count from the moment CanTrade allows them (issue 16), through a real gRPC server on port 0.

The burst a buggy bot sends: three 400-notional BUYs against a 500 position limit. Before pending orders all three
were allowed (1,200 held, 2.4x the limit); now the second is denied with the numbers, a cancelled order frees its
room, and a fill followed by the position report that contains it counts once.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "acct-16"}
BUY_400 = {"symbol": "BTCUSDT", "side": t.SIDE_BUY, "quantity": 0.008, "price": 50_000.0}  # 400 notional


async def _configure(admin: adg.AdminServiceStub, **fields: object) -> None:
    config = t.RiskConfiguration(account_id=IDS["account_id"], config_id="c1", is_active=True, **fields)  # type: ignore[arg-type]
    await admin.SaveConfig(ad.SaveConfigRequest(config=config))


async def _ask(risk: rsg.RiskServiceStub, coid: str = "", **order: object) -> rs.CanTradeResponse:
    intent = t.OrderIntent(**{**BUY_400, **order}, client_order_id=coid)  # type: ignore[arg-type]
    answer: rs.CanTradeResponse = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=intent))
    return answer


def _check(answer: rs.CanTradeResponse, name: str) -> t.CheckResult:
    return next(c for c in answer.checks if c.name == name)


async def test_a_burst_of_orders_is_denied_once_pending_orders_fill_the_position_limit(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await _configure(admin, max_position_size_percentage=5.0)  # equity 10,000 -> 500 notional
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    first = await _ask(risk, "o-1")
    second = await _ask(risk, "o-2")
    third = await _ask(risk, "o-3")

    state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
    assert first.allowed and first.client_order_id == "o-1" and first.state.pending_order_count == 1
    assert [o.client_order_id for o in state.pending_orders] == ["o-1"]  # the list: GetRiskState, watch updates
    assert state.pending_orders[0].status == t.ORDER_STATUS_ALLOWED and state.daily_orders == 1
    assert not second.allowed and second.code == t.DECISION_CODE_POSITION_SIZE_LIMIT
    size = _check(second, "position_size")
    assert size.value == pytest.approx(800.0) and size.limit == pytest.approx(500.0)  # 400 pending + 400 > 500
    assert "position_after=800.00 limit=500.00" in second.reason
    assert not third.allowed  # a denied order reserved nothing: still 400 pending, not 800
    assert _check(third, "position_size").value == pytest.approx(800.0)


async def test_a_cancelled_order_frees_its_room_and_a_fill_then_the_position_counts_once(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await _configure(admin, max_position_size_percentage=5.0)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    assert (await _ask(risk, "o-1")).allowed

    cancelled = await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-1",
                                                             status=t.ORDER_STATUS_CANCELLED))
    after_cancel = await _ask(risk, "o-2")
    filled = await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-2", status=t.ORDER_STATUS_FILLED,
                                                          filled_quantity=0.008, average_price=50_000))
    held = t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.008, entry_price=50_000, mark_price=50_000)
    await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[held]))
    small = await _ask(risk, "o-3", quantity=0.002)  # 400 held + 100 = 500: at the limit passes
    over = await _ask(risk, "o-4", quantity=0.002)  # + 100 pending: 600

    assert cancelled.order.status == t.ORDER_STATUS_CANCELLED and cancelled.state.pending_order_count == 0
    assert after_cancel.allowed
    assert filled.order.status == t.ORDER_STATUS_FILLED and filled.order.filled_quantity == pytest.approx(0.008)
    assert [p.quantity for p in filled.state.positions] == [pytest.approx(0.008)]  # the fill moved into the position
    assert small.allowed and _check(small, "position_size").value == pytest.approx(500.0)  # counted once, not twice
    assert not over.allowed and _check(over, "position_size").value == pytest.approx(600.0)


async def test_report_order_is_idempotent_and_a_late_or_smaller_report_changes_nothing(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await _configure(admin, max_position_size_percentage=50.0)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await _ask(risk, "o-1")
    partial = rs.ReportOrderRequest(**IDS, client_order_id="o-1", status=t.ORDER_STATUS_PARTIALLY_FILLED,
                                    filled_quantity=0.004, average_price=50_000)

    first = await risk.ReportOrder(partial)
    again = await risk.ReportOrder(partial)
    late_accept = await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-1",
                                                               status=t.ORDER_STATUS_ACCEPTED))

    assert not first.duplicate and first.order.filled_quantity == pytest.approx(0.004)
    assert again.duplicate and late_accept.order.status == t.ORDER_STATUS_PARTIALLY_FILLED
    assert [p.quantity for p in again.state.positions] == [pytest.approx(0.004)]  # moved once
    state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
    assert [o.filled_quantity for o in state.pending_orders] == [pytest.approx(0.004)]


async def test_report_order_for_an_unknown_id_is_not_found_and_bad_input_names_the_field(
    risk: rsg.RiskServiceStub,
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="nope", status=t.ORDER_STATUS_FILLED))
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="x", status=t.ORDER_STATUS_ALLOWED,
                                                     filled_quantity=-1))

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (unknown.value.details() or "")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status" in (bad.value.details() or "") and "filled_quantity" in (bad.value.details() or "")


async def test_an_order_nothing_is_reported_on_is_released_after_its_ttl(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await _configure(admin, max_position_size_percentage=5.0, pending_order_ttl_seconds=30)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    assert (await _ask(risk, "o-1")).allowed
    assert not (await _ask(risk, "o-2")).allowed

    clock.advance(31.0)
    after = await _ask(risk, "o-3")

    state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
    assert after.allowed and [o.client_order_id for o in state.pending_orders] == ["o-3"]


async def test_a_halt_tells_the_bot_to_cancel_its_pending_orders(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await _configure(admin, max_position_size_percentage=50.0)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await _ask(risk, "o-1")
    await _ask(risk, "o-2", quantity=0.001)
    watch = risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS))
    await watch.read()  # initial

    await admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=t.TRADING_STATE_HALTED,
                                                    duration=Duration(seconds=600), reason="incident"))
    update = await watch.read()
    answer = await _ask(risk, "o-3")
    watch.cancel()

    cancel = [a for a in update.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS]
    assert [list(a.client_order_ids) for a in cancel] == [["o-1", "o-2"]]
    assert not answer.allowed and [list(a.client_order_ids) for a in answer.actions
                                   if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS] == [["o-1", "o-2"]]


async def test_a_retry_counts_once_and_a_finished_orders_id_is_refused_for_a_new_order(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await _configure(admin, max_position_size_percentage=10.0)  # 1,000: two 400 orders fit, three do not
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    first = await _ask(risk, "o-1")
    retry = await _ask(risk, "o-1")  # the answer was lost: the same order asked again
    await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-1", status=t.ORDER_STATUS_FILLED))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await _ask(risk, "o-1")  # re-placed under the id of the filled order: refused, reports would mix them up
    second = await _ask(risk, "o-2")
    third = await _ask(risk, "o-3")

    assert first.allowed and retry.allowed and retry.state.pending_order_count == 1
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "finished" in (reused.value.details() or "")
    assert second.allowed and _check(second, "position_size").value == pytest.approx(800.0)  # 400 filled + 400
    assert not third.allowed and _check(third, "position_size").value == pytest.approx(1_200.0)
