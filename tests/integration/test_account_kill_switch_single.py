"""Issue 17 in the single-sidecar modes: the account and every-account kill switch works with SQLite (and survives
a restart: SQLite stores the control_changes rows too) and with the memory store; the control health component
is SERVING; every CanTrade answer carries the control-state version."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

ORDER = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=100.0)


async def _can_trade(risk: rsg.RiskServiceStub, trader: str, account: str = "acct") -> rs.CanTradeResponse:
    return await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=account, order=ORDER))


async def _equity(risk: rsg.RiskServiceStub, trader: str, account: str = "acct") -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=account, equity=10_000.0))


async def test_sqlite_account_pause_stops_the_account_and_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    async with running_sidecar(database_url=url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await _equity(risk, "bot-1")
        status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="tradeguard.control"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reply = await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct",
                                                                trading_state=t.TRADING_STATE_HALTED, reason="x"))
        assert reply.control_state_version == 1 and reply.scope_pause.trading_state == t.TRADING_STATE_HALTED
        answer = await _can_trade(risk, "bot-1")
        assert not answer.allowed and answer.code == t.DECISION_CODE_KILL_SWITCH
        assert answer.control_state_version == 1
    async with running_sidecar(database_url=url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await _equity(risk, "bot-2")  # first seen after the restart
        for trader in ("bot-1", "bot-2"):
            answer = await _can_trade(risk, trader)
            assert not answer.allowed and answer.code == t.DECISION_CODE_KILL_SWITCH, trader
        assert answer.control_state_version == 1
        resumed = await admin.ResumeTrading(ad.ResumeTradingRequest(account_id="acct"))
        assert resumed.control_state_version == 2
        assert (await _can_trade(risk, "bot-1")).allowed and (await _can_trade(risk, "bot-2")).allowed


async def test_memory_every_account_pause_stops_every_account_until_resumed() -> None:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await _equity(risk, "a", "acct-1")
        await _equity(risk, "b", "acct-2")
        await admin.PauseTrading(ad.PauseTradingRequest(all_accounts=True, trading_state=t.TRADING_STATE_HALTED))
        assert not (await _can_trade(risk, "a", "acct-1")).allowed
        assert not (await _can_trade(risk, "b", "acct-2")).allowed
        await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-1", trading_state=t.TRADING_STATE_REDUCING))
        await admin.ResumeTrading(ad.ResumeTradingRequest(all_accounts=True))
        a = await _can_trade(risk, "a", "acct-1")
        assert not a.allowed and a.trading_state == t.TRADING_STATE_REDUCING  # its account's pause stays
        assert (await _can_trade(risk, "b", "acct-2")).allowed
