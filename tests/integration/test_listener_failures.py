"""A state change that could not be queued for the store is never answered as done.

The engine hands every change to its listeners (persistence, watchers, metrics, breaker events). If one of
them fails, the RPC answers INTERNAL (the caller retries) instead of OK: an operator must not be told a kill
switch was stored when its state never reached the store queue.
"""

from __future__ import annotations

import grpc
import pytest

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server import persistence

pytestmark = pytest.mark.integration


def _refuse(*_args: object) -> None:
    raise RuntimeError("state record refused")


async def test_a_pause_whose_state_cannot_be_queued_answers_internal_not_ok(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=10_000))
    monkeypatch.setattr(persistence, "to_record", _refuse)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.PauseTrading(ad.PauseTradingRequest(trader_id="bot-1", account_id="acct",
                                                        trading_state=t.TRADING_STATE_HALTED, reason="incident"))
    assert err.value.code() is grpc.StatusCode.INTERNAL

    monkeypatch.undo()  # the retry goes through, and is stored
    await admin.PauseTrading(ad.PauseTradingRequest(trader_id="bot-1", account_id="acct",
                                                    trading_state=t.TRADING_STATE_HALTED, reason="incident"))
    answer = await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))
    assert not answer.allowed and answer.state.trading_state == t.TRADING_STATE_HALTED


async def test_a_report_whose_state_cannot_be_queued_answers_internal_not_ok(
    risk: rsg.RiskServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persistence, "to_record", _refuse)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=10_000))
    assert err.value.code() is grpc.StatusCode.INTERNAL
