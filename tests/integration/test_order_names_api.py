"""Symbols and exchanges through a real server (issue 13 item 10): one spelling everywhere (symbols
upper-case, exchanges lower-case), whitespace rejected; and the order arithmetic of items 2 and 22 seen
through the public API."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "account123"}


def config(**fields: object) -> t.RiskConfiguration:
    return json_format.ParseDict({"config_id": "c1", "account_id": "account123", "is_active": True, **fields},
                                 t.RiskConfiguration())


async def test_a_symbol_override_applies_to_every_spelling_of_the_symbol(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, admin = stubs
    await admin.SaveConfig(ad.SaveConfigRequest(config=config(
        symbol_configs=[{"symbol": "BTCUSDT", "max_leverage": 5}])))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    lower = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=t.OrderIntent(
        symbol="btcusdt", exchange="Binance", side=t.SIDE_BUY, quantity=0.001, price=50_000, leverage=6)))
    saved = await admin.GetConfig(ad.GetConfigRequest(account_id="account123", config_id="c1"))

    assert not lower.allowed and lower.code == t.DECISION_CODE_LEVERAGE_LIMIT
    assert [s.symbol for s in saved.config.symbol_configs] == ["BTCUSDT"]


async def test_a_breaker_scoped_to_an_exchange_is_evaluated_for_every_spelling_of_it(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, admin = stubs
    breaker = json_format.ParseDict({
        "name": "dd", "account_id": "account123", "condition": "max_drawdown", "action": "close_position",
        "parameters": {"threshold": 0.1}, "symbols": ["btcusdt"], "exchanges": ["binance"], "enabled": True,
    }, t.CircuitBreaker())
    created = await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[t.Position(
        symbol="BTCUSDT", exchange="Binance", side=t.SIDE_BUY, quantity=0.1, entry_price=50_000, mark_price=50_000)]))

    fallen = await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_900))

    assert list(created.breaker.symbols) == ["BTCUSDT"]
    assert [e.breaker_id for e in fallen.breaker_events] == [created.breaker.id]
    assert [(p.symbol, p.exchange) for p in fallen.breaker_events[0].positions_affected] == [("BTCUSDT", "binance")]


async def test_two_spellings_of_one_position_in_a_report_are_duplicates(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, _admin = stubs
    same = {"side": t.SIDE_BUY, "quantity": 0.1, "entry_price": 50_000, "mark_price": 50_000}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[
            t.Position(symbol="BTCUSDT", exchange="binance", **same),  # type: ignore[arg-type]
            t.Position(symbol="btcusdt", exchange="Binance", **same)]))  # type: ignore[arg-type]

    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "positions[1]" in violations(err.value)


async def test_a_symbol_in_two_correlation_groups_under_two_spellings_is_rejected(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs
    overlapping = config(max_correlated_exposure_percentage=10.0, correlation_groups=[
        {"name": "majors", "symbols": ["BTCUSDT", "ETHUSDT"]}, {"name": "other", "symbols": ["btcusdt"]}])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SaveConfig(ad.SaveConfigRequest(config=overlapping))

    assert "config.correlation_groups[1].symbols[0]" in violations(err.value)


@pytest.mark.parametrize("symbol", [" BTCUSDT", "BTCUSDT ", "BTC USDT"])
async def test_whitespace_in_a_symbol_is_rejected_not_stripped(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub], symbol: str,
) -> None:
    risk, _admin = stubs
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await risk.CanTrade(rs.CanTradeRequest(**IDS, order=t.OrderIntent(
            symbol=symbol, side=t.SIDE_BUY, quantity=0.001, price=50_000)))

    assert "order.symbol" in violations(err.value)


async def test_a_flip_is_denied_while_reducing_and_closing_the_position_is_allowed(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, admin = stubs
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[t.Position(
        symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=1.0, entry_price=50_000, mark_price=50_000)]))
    await admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=t.TRADING_STATE_REDUCING))

    def sell(qty: float, exchange: str = "binance") -> rs.CanTradeRequest:
        return rs.CanTradeRequest(**IDS, order=t.OrderIntent(symbol="BTCUSDT", exchange=exchange, side=t.SIDE_SELL,
                                                            quantity=qty, price=45_000, reduce_only=True))

    flip = await risk.CanTrade(sell(1.1))
    elsewhere = await risk.CanTrade(sell(0.5, "bybit"))
    close = await risk.CanTrade(sell(1.0, "BINANCE"))

    assert not flip.allowed and flip.code == t.DECISION_CODE_KILL_SWITCH
    assert not elsewhere.allowed
    assert close.allowed, close.reason
