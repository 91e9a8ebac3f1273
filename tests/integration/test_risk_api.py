"""RiskService and the kill switch / flags through a real gRPC server on port 0 (raw generated stubs)."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.support.sidecar import running_sidecar
from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

T0 = 1_767_268_800.0
ORDER = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
REDUCE = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_SELL, quantity=0.01, price=50_000,
                       reduce_only=True)
HELD = t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, entry_price=50_000,
                  mark_price=50_000)


async def test_walkthrough_no_equity_then_allowed_then_daily_loss_then_auto_resume(
    risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}

    first = await risk.CanTrade(rs.CanTradeRequest(**ids))
    eq = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    allowed = await risk.CanTrade(rs.CanTradeRequest(**ids))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_400))
    denied = await risk.CanTrade(rs.CanTradeRequest(**ids))
    await risk.ReportPositions(rs.ReportPositionsRequest(**ids, positions=[HELD]))  # what REDUCE reduces
    reduce = await risk.CanTrade(rs.CanTradeRequest(**ids, order=REDUCE))
    new_exposure = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))
    clock.advance(30 * 60)
    resumed = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))

    assert not first.allowed and first.code == t.DECISION_CODE_NO_EQUITY_REPORTED
    assert eq.state.peak_equity == 10_000 and eq.state.drawdown_pct == 0 and eq.state.daily_pnl == 0
    assert allowed.allowed and allowed.trading_state == t.TRADING_STATE_ACTIVE
    assert not denied.allowed and denied.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert "loss=6.00%" in denied.reason and "limit=5.00%" in denied.reason
    assert denied.paused_until.seconds == int(T0) + 1800
    assert denied.trading_state == t.TRADING_STATE_REDUCING
    assert reduce.allowed and reduce.trading_state == t.TRADING_STATE_REDUCING
    assert not new_exposure.allowed and new_exposure.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert resumed.allowed and resumed.trading_state == t.TRADING_STATE_ACTIVE


async def test_kill_switch_halts_even_reduce_only_and_resume_lifts_it(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    ids = {"trader_id": "bot-2", "account_id": "acct-1"}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    paused = await admin.PauseTrading(ad.PauseTradingRequest(**ids, trading_state=t.TRADING_STATE_HALTED,
                                                             reason="exchange incident"))
    clock.advance(86_400)
    halted = await risk.CanTrade(rs.CanTradeRequest(**ids, order=REDUCE))
    await admin.ResumeTrading(ad.ResumeTradingRequest(**ids))
    after = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))

    assert paused.state.trading_state == t.TRADING_STATE_HALTED and not paused.state.HasField("paused_until")
    assert not halted.allowed and halted.code == t.DECISION_CODE_KILL_SWITCH
    assert "exchange incident" in halted.reason
    assert after.allowed


async def test_kill_switch_with_duration_ends_by_itself(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    ids = {"trader_id": "bot-3", "account_id": "acct-1"}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    await admin.PauseTrading(ad.PauseTradingRequest(**ids, trading_state=t.TRADING_STATE_REDUCING,
                                                    duration=Duration(seconds=600)))
    during = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))
    clock.advance(600)
    after = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))

    assert not during.allowed and during.paused_until.seconds == int(T0) + 600
    assert after.allowed


async def test_shadow_mode_switches_at_once_and_flags_read_back(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    ids = {"trader_id": "bot-4", "account_id": "acct-1"}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_000))

    set_resp = await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(
        flags=t.FeatureFlags(enable_risk_enforcement=False)))
    shadow = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))
    got = await admin.GetFeatureFlags(ad.GetFeatureFlagsRequest())
    await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=True)))
    enforced = await risk.CanTrade(rs.CanTradeRequest(**ids, order=ORDER))

    assert not set_resp.flags.enable_risk_enforcement and set_resp.flags.enable_persistence is False
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert "would deny" in shadow.reason
    assert not got.flags.enable_risk_enforcement
    assert not enforced.allowed


async def test_flags_come_from_settings_at_start() -> None:
    async with running_sidecar(enable_risk_enforcement=False) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        got = await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest())

    assert not got.flags.enable_risk_enforcement


BAD_EQUITY = [
    ({"trader_id": "", "account_id": "a", "equity": 1.0}, "trader_id"),
    ({"trader_id": "x" * 10_240, "account_id": "a", "equity": 1.0}, "trader_id"),
    ({"trader_id": "t", "account_id": "bad id!", "equity": 1.0}, "account_id"),
    ({"trader_id": "t", "account_id": "a", "equity": math.nan}, "equity"),
    ({"trader_id": "t", "account_id": "a", "equity": math.inf}, "equity"),
    ({"trader_id": "t", "account_id": "a", "equity": -math.inf}, "equity"),
    ({"trader_id": "t", "account_id": "a", "equity": -1.0}, "equity"),
    ({"trader_id": "t", "account_id": "a", "equity": 1e300}, "equity"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_EQUITY)
async def test_bad_equity_report_is_invalid_argument_naming_the_field_and_changes_nothing(
    risk: rsg.RiskServiceStub, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await risk.ReportEquity(rs.ReportEquityRequest(**fields))  # type: ignore[arg-type]
    state = await risk.GetRiskState(rs.GetRiskStateRequest(trader_id="t", account_id="a"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value)
    assert not state.state.equity_reported


@pytest.mark.parametrize(
    ("order", "field"),
    [
        (t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_UNSPECIFIED, quantity=1, price=1), "order.side"),
        (t.OrderIntent(symbol="BTCUSDT", side=7, quantity=1, price=1), "order.side"),
        (t.OrderIntent(symbol="", side=t.SIDE_BUY, quantity=1, price=1), "order.symbol"),
        (t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0, price=1), "order.quantity"),
        (t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1, price=math.nan), "order.price"),
        (t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1, price=1, leverage=-2), "order.leverage"),
    ],
)
async def test_bad_order_intent_is_invalid_argument_naming_the_field(
    risk: rsg.RiskServiceStub, order: t.OrderIntent, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await risk.CanTrade(rs.CanTradeRequest(trader_id="t", account_id="a", order=order))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value)


async def test_pause_with_unspecified_or_unknown_state_is_invalid_argument(admin: adg.AdminServiceStub) -> None:
    for value in (t.TRADING_STATE_UNSPECIFIED, t.TRADING_STATE_ACTIVE, 42):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.PauseTrading(ad.PauseTradingRequest(trader_id="t", account_id="a", trading_state=value))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "trading_state" in violations(info.value)


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\xff", b"not protobuf at all", b"\x08" * 3])
async def test_body_that_is_not_protobuf_is_invalid_argument_not_unknown(
    channel: grpc.aio.Channel, risk: rsg.RiskServiceStub, body: bytes
) -> None:
    call = channel.unary_unary("/tradeguard.v1.RiskService/ReportEquity")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(body)
    still = await risk.CanTrade(rs.CanTradeRequest(trader_id="t", account_id="a"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert still.code == t.DECISION_CODE_NO_EQUITY_REPORTED


async def test_trader_used_with_another_account_is_invalid_argument(risk: rsg.RiskServiceStub) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-9", account_id="acct-1", equity=1_000))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-9", account_id="acct-2"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "account_id" in violations(info.value)


async def test_watch_risk_state_sends_initial_state_then_the_breach(risk: rsg.RiskServiceStub) -> None:
    ids = {"trader_id": "bot-w", "account_id": "acct-1"}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    stream = risk.WatchRiskState(rs.WatchRiskStateRequest(**ids))

    initial = await stream.read()
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_000))
    update = await stream.read()
    stream.cancel()

    assert initial.reason == "initial" and initial.state.trading_state == t.TRADING_STATE_ACTIVE
    assert update.state.trading_state == t.TRADING_STATE_REDUCING
    assert update.state.pause_code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_watch_risk_state_tells_when_a_pause_ends_by_itself() -> None:
    ids = {"trader_id": "bot-x", "account_id": "acct-1"}
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
        stream = risk.WatchRiskState(rs.WatchRiskStateRequest(**ids))
        await stream.read()
        await admin.PauseTrading(ad.PauseTradingRequest(**ids, trading_state=t.TRADING_STATE_HALTED,
                                                        duration=Duration(nanos=200_000_000)))

        paused = await stream.read()
        expired = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()

    assert paused.state.trading_state == t.TRADING_STATE_HALTED
    assert expired.reason == "pause_expired" and expired.state.trading_state == t.TRADING_STATE_ACTIVE
