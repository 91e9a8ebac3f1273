"""Issue 13 through the public API (a real gRPC server on port 0): zero-minute pauses, overlapping kill
switches, report times ahead of the clock, a day starting at equity 0, trade windows judged by closed_at
(freqtrade's StoplossGuard case replayed), and CanTrade retries by client_order_id."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from tests.support.sidecar import running_sidecar
from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

T0 = 1_767_268_800.0  # 2026-01-01T12:00:00Z
IDS = {"trader_id": "bot-1", "account_id": "acct-1"}
BUY = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)


async def save_config(admin: adg.AdminServiceStub, **fields: Any) -> None:
    await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
        account_id=IDS["account_id"], config_id="main", is_active=True, **fields)))


def at(seconds: float) -> dict[str, Any]:
    return {"seconds": int(seconds), "nanos": round((seconds % 1) * 1e9)}


# ---- item 5 -------------------------------------------------------------------------------------------


async def test_stop_trading_minutes_zero_denies_until_resumed(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    await save_config(admin, daily_max_drawdown_percentage=5.0, stop_trading_minutes=0)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=5_000))

    clock.advance(3_600)
    denied = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
    await admin.ResumeTrading(ad.ResumeTradingRequest(**IDS))
    resumed = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))

    assert not denied.allowed and denied.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert not denied.HasField("paused_until")
    assert resumed.allowed


async def test_loss_streak_with_cooling_off_unset_denies(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    await save_config(admin, consecutive_loss_threshold=2)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    for i in range(5):
        clock.advance(60)
        await risk.ReportTrade(rs.ReportTradeRequest(**IDS, trade_id=f"x{i}", symbol="BTCUSDT",
                                                     side=t.SIDE_SELL, realized_pnl=-1))

    decision = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))

    check = next(c for c in decision.checks if c.name == "consecutive_losses")
    assert not decision.allowed and decision.code == t.DECISION_CODE_CONSECUTIVE_LOSSES
    assert check.status == t.CHECK_STATUS_FAIL


# ---- item 6 -------------------------------------------------------------------------------------------


async def test_halted_until_resumed_outlasts_a_later_two_second_reducing_kill_switch(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=t.TRADING_STATE_HALTED, reason="incident"))
    await admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=t.TRADING_STATE_REDUCING,
                                                    duration={"seconds": 2}, reason="short"))

    clock.advance(2.5)
    after = await risk.CanTrade(rs.CanTradeRequest(**IDS))
    await admin.ResumeTrading(ad.ResumeTradingRequest(**IDS))
    resumed = await risk.CanTrade(rs.CanTradeRequest(**IDS))

    assert not after.allowed and after.trading_state == t.TRADING_STATE_HALTED
    assert resumed.allowed and resumed.trading_state == t.TRADING_STATE_ACTIVE


# ---- item 7 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [6.0, 290.0])
async def test_an_equity_time_beyond_the_clock_skew_is_refused_naming_observed_at(
    risk: rsg.RiskServiceStub, ahead: float
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000, observed_at=at(T0 + ahead)))

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "observed_at" in violations(refused.value)


async def test_a_trade_time_beyond_the_clock_skew_is_refused_naming_closed_at(risk: rsg.RiskServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await risk.ReportTrade(rs.ReportTradeRequest(**IDS, trade_id="x1", symbol="BTCUSDT", side=t.SIDE_SELL,
                                                     realized_pnl=-1, closed_at=at(T0 + 290)))

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "closed_at" in violations(refused.value)


async def test_a_report_within_the_skew_never_makes_the_next_report_stale(
    risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000, observed_at=at(T0 + 4.5)))

    clock.advance(1)
    crash = await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=5_000))
    decision = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))

    assert not crash.stale and crash.state.current_equity == 5_000
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_max_clock_skew_s_is_a_setting(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, max_clock_skew_s=300.0) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        reply = await rsg.RiskServiceStub(ch).ReportEquity(
            rs.ReportEquityRequest(**IDS, equity=10_000, observed_at=at(T0 + 290)))

    assert not reply.stale and reply.state.current_equity == 10_000


# ---- item 8 -------------------------------------------------------------------------------------------


async def test_a_day_that_starts_at_zero_equity_still_has_a_daily_loss_limit(
    risk: rsg.RiskServiceStub, clock: ManualClock
) -> None:
    for equity in (0, 10_000, 8_500):
        clock.advance(60)
        reply = await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=equity))

    decision = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))

    assert reply.state.daily_pnl == -1_500
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


# ---- item 9 -------------------------------------------------------------------------------------------


async def test_freqtrade_stoploss_guard_replayed_losses_reported_30_100_30_30_minutes_old_deny(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    params = Struct()
    params.update({"trade_limit": 3, "lookback_minutes": 60})
    await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=t.CircuitBreaker(
        name="stoploss-guard", account_id=IDS["account_id"], condition="loss_streak_in_window",
        action="pause_trading", parameters=params, enabled=True)))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    events = []
    for i, minutes_ago in enumerate((30, 100, 30, 30)):
        reply = await risk.ReportTrade(rs.ReportTradeRequest(
            **IDS, trade_id=f"sl-{i}", symbol="ETH/BTC", side=t.SIDE_SELL, realized_pnl=-5,
            closed_at=at(T0 - minutes_ago * 60)))
        events.append(len(reply.breaker_events))
    decision = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))

    assert events == [0, 0, 0, 1]
    assert not decision.allowed and decision.code == t.DECISION_CODE_CIRCUIT_BREAKER


# ---- item 20 ------------------------------------------------------------------------------------------


def order(cid: str = "", quantity: float = 0.01) -> t.OrderIntent:
    o = t.OrderIntent()
    o.CopyFrom(BUY)
    o.quantity, o.client_order_id = quantity, cid
    return o


async def test_a_retried_can_trade_is_answered_the_same_and_not_counted_again(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    await save_config(admin, max_orders_per_window=3, order_rate_window_seconds=60)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    replies = [await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order(cid)))
               for cid in ("bot-o1", "bot-o2", "bot-o2", "bot-o3", "bot-o4")]

    assert [r.allowed for r in replies] == [True, True, True, True, False]
    assert replies[2].code == replies[1].code == t.DECISION_CODE_ALLOWED
    assert replies[4].code == t.DECISION_CODE_ORDER_RATE_LIMIT
    assert [r.client_order_id for r in replies] == ["bot-o1", "bot-o2", "bot-o2", "bot-o3", "bot-o4"]


async def test_an_order_without_an_id_gets_one_that_a_retry_can_use(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    await save_config(admin, max_orders_per_window=1, order_rate_window_seconds=60)
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    first = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order()))
    retry = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order(first.client_order_id)))
    other = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order()))

    assert len(first.client_order_id) == 24 and other.client_order_id not in ("", first.client_order_id)
    assert first.allowed and retry.allowed and retry.client_order_id == first.client_order_id
    assert not other.allowed and other.code == t.DECISION_CODE_ORDER_RATE_LIMIT


async def test_the_same_client_order_id_with_a_different_order_is_invalid_argument(
    risk: rsg.RiskServiceStub,
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order("bot-o1")))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order("bot-o1", quantity=0.02)))

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "order.client_order_id" in violations(refused.value)


async def test_a_client_order_id_with_unsafe_characters_is_invalid_argument(risk: rsg.RiskServiceStub) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order("no spaces\n")))

    assert "order.client_order_id" in violations(refused.value)
