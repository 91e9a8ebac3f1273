"""Pending orders are part of the trader's state (issue 16): a sidecar restarted on its database (PostgreSQL or
SQLite) still counts the orders CanTrade allowed before the restart, shows them in RiskState and the audit trail,
and takes the reports on them."""

from __future__ import annotations

import grpc
import pytest

from tests.support.databases import postgres_database_fixture, store_url_fixture
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

IDS = {"trader_id": "bot-1", "account_id": "acct-16"}
BUY_400 = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.008, price=50_000.0)  # 400 notional


def buy(coid: str) -> rs.CanTradeRequest:
    order = t.OrderIntent()
    order.CopyFrom(BUY_400)
    order.client_order_id = coid
    return rs.CanTradeRequest(**IDS, order=order)


async def test_orders_allowed_before_a_restart_still_count_after_it(db_url: str, clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as first, \
            grpc.aio.insecure_channel(first.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=IDS["account_id"], config_id="c1", is_active=True, max_position_size_percentage=5.0,
            max_daily_orders=10)))  # 500 of 10,000
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
        allowed = await risk.CanTrade(buy("o-1"))
        await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-1", status=t.ORDER_STATUS_ACCEPTED))
        clock.advance(1)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_001))  # an audited change: a history row

    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as second, \
            grpc.aio.insecure_channel(second.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
        denied = await risk.CanTrade(buy("o-2"))
        await risk.ReportOrder(rs.ReportOrderRequest(**IDS, client_order_id="o-1", status=t.ORDER_STATUS_CANCELLED))
        again = await risk.CanTrade(buy("o-3"))
        listed = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
        clock.advance(1)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_002))
        history = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(**IDS))

    assert allowed.allowed, allowed.reason
    assert [(o.client_order_id, o.status) for o in state.pending_orders] == [("o-1", t.ORDER_STATUS_ACCEPTED)]
    assert (state.daily_order_notional, state.daily_orders) == (400.0, 1)
    assert not denied.allowed and denied.code == t.DECISION_CODE_POSITION_SIZE_LIMIT  # 400 pending + 400 > 500
    assert again.allowed, again.reason  # o-1 cancelled after the restart: its room is free
    assert again.state.pending_order_count == 1 and [o.client_order_id for o in listed.pending_orders] == ["o-3"]
    # Order bookkeeping writes no history row of its own: each audited row (the equity reports) holds the orders
    # pending then.
    pending_in_history = [[o.client_order_id for o in e.state.pending_orders] for e in history.entries]
    assert pending_in_history == [[], ["o-1"], ["o-3"]]
