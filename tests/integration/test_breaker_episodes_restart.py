"""Issue 13 item 12: a breaker's episode is stored with the trader's state, so a restart mid-episode neither
writes a second event nor halts a trader the operator resumed (real `tradeguard serve`, real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.struct_pb2 import Struct

from tests.support.pg import fresh_database, plain_dsn
from tests.support.sidecar import start_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "acct-1"}
BUY = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
ONLY_BREAKERS = ("--daily-max-drawdown-percentage", "0", "--max-drawdown-percentage", "0")


def floor_breaker() -> ad.CreateBreakerRequest:
    params = Struct()
    params.update({"value": 9_000})
    return ad.CreateBreakerRequest(breaker=t.CircuitBreaker(
        name="equity-floor", account_id=IDS["account_id"], condition="equity_floor", action="pause_trading",
        parameters=params, enabled=True))


def event_rows(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute("SELECT circuit_breaker_id, trader_id FROM circuit_breaker_events").fetchall())


def test_restart_mid_episode_writes_no_second_event_and_does_not_halt_a_resumed_trader(tmp_path: Path) -> None:
    with fresh_database() as url:
        with start_sidecar(tmp_path, "--database-url", url, *ONLY_BREAKERS, name="first") as first, \
                grpc.insecure_channel(first.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            breaker = admin.CreateBreaker(floor_breaker()).breaker
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
            fired = risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_700))
            halted = risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
            admin.ResumeTrading(ad.ResumeTradingRequest(**IDS))
            resumed = risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        assert first.terminate() == 0

        with start_sidecar(tmp_path, "--database-url", url, *ONLY_BREAKERS, name="second") as second, \
                grpc.insecure_channel(second.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            after_restart = risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
            again = risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_600))  # still below the floor
            still = risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        assert second.terminate() == 0
        rows = event_rows(url)

    assert [e.breaker_id for e in fired.breaker_events] == [breaker.id]
    assert not halted.allowed and halted.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert resumed.allowed
    assert after_restart.allowed and list(again.breaker_events) == []
    assert still.allowed and still.trading_state == t.TRADING_STATE_ACTIVE
    assert rows == [(breaker.id, "bot-1")]


def test_an_episode_that_ended_before_the_restart_fires_again_after_it(tmp_path: Path) -> None:
    with fresh_database() as url:
        with start_sidecar(tmp_path, "--database-url", url, *ONLY_BREAKERS, name="first") as first, \
                grpc.insecure_channel(first.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            adg.AdminServiceStub(ch).CreateBreaker(floor_breaker())
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_700))
            adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(**IDS))
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_500))  # the episode ends
        assert first.terminate() == 0

        with start_sidecar(tmp_path, "--database-url", url, *ONLY_BREAKERS, name="second") as second, \
                grpc.insecure_channel(second.address) as ch:
            refired = rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_800))
        rows = event_rows(url)

    assert len(refired.breaker_events) == 1 and len(rows) == 2
