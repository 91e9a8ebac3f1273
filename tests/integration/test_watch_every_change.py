"""Every path that changes a trader's state reaches a WatchRiskState watcher, within 100 ms of the call's answer:
reports, CanTrade (a breaker firing while it counts the order), the kill switch, a configuration re-check, a
breaker re-armed, a rebinding and a pause that ends by itself. One event flow: the engine announces the change,
the watch hub is one of its listeners (issue 15)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "account123"}
WITHIN_S = 0.1  # the bound: an update is on the stream this soon after the call that made it answered
ORDER = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=50_000)
ACTIVE, HALTED, REDUCING = t.TRADING_STATE_ACTIVE, t.TRADING_STATE_HALTED, t.TRADING_STATE_REDUCING


class Watch:
    """A WatchRiskState stream, read with a deadline."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.last = rs.WatchRiskStateResponse()

    async def next(self, within: float = WITHIN_S) -> tuple[int, str]:
        """(trading state, reason) of the next update, which must arrive within `within` seconds."""
        try:
            update: rs.WatchRiskStateResponse = await asyncio.wait_for(self.call.read(), within)
        except TimeoutError:
            raise AssertionError(f"no WatchRiskState update within {within * 1000:.0f} ms") from None
        self.last = update
        return update.state.trading_state, update.reason


@dataclass
class Stubs:
    risk: rsg.RiskServiceStub
    admin: adg.AdminServiceStub
    calls: list[Any]

    async def watch(self) -> Watch:
        """A watcher of bot-1 from now on (its initial update read)."""
        call = self.risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS))
        self.calls.append(call)
        initial = await asyncio.wait_for(call.read(), 5)
        assert initial.reason == "initial"
        return Watch(call)


@pytest.fixture
async def stubs() -> AsyncIterator[Stubs]:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        s = Stubs(rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch), [])
        yield s
        for call in s.calls:
            call.cancel()


def config(**fields: Any) -> ad.SaveConfigRequest:
    cfg = {"config_id": "tight", "account_id": IDS["account_id"], "is_active": True, **fields}
    return ad.SaveConfigRequest(config=json_format.ParseDict(cfg, t.RiskConfiguration()))


def breaker(condition: str, action: str, **parameters: float) -> t.CircuitBreaker:
    return json_format.ParseDict({"name": f"{condition}-{action}", "account_id": IDS["account_id"],
                                  "condition": condition, "action": action, "parameters": parameters,
                                  "enabled": True}, t.CircuitBreaker())


async def test_an_order_rate_breaker_pausing_the_trader_inside_can_trade_reaches_the_watcher(
    stubs: Stubs
) -> None:
    await stubs.admin.CreateBreaker(ad.CreateBreakerRequest(
        breaker=breaker("order_rate", "pause_trading", max_orders=2, window_seconds=60)))
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    watch = await stubs.watch()
    first = [await stubs.risk.CanTrade(rs.CanTradeRequest(**IDS, order=ORDER)) for _ in range(2)]
    third = await stubs.risk.CanTrade(rs.CanTradeRequest(**IDS, order=ORDER))  # one more than max_orders

    assert [a.allowed for a in first] == [True, True]
    assert not third.allowed and third.code == t.DECISION_CODE_CIRCUIT_BREAKER
    # Each allowed order is pending from then on: a change of the state too (issue 16).
    assert [await watch.next(), await watch.next()] == [(ACTIVE, "order_allowed")] * 2
    assert await watch.next() == (HALTED, "breaker fired on can_trade")
    (event,) = watch.last.breaker_events
    assert event.action_taken == "pause_trading" and event.trader_id == IDS["trader_id"]
    # HALTED with the two allowed orders pending: the bot is told to cancel them.
    assert [a.type for a in watch.last.actions] == [t.ACTION_TYPE_PAUSE_TRADING, t.ACTION_TYPE_CANCEL_ALL_ORDERS]
    assert list(watch.last.actions[1].client_order_ids) == [a.client_order_id for a in first]


async def test_reports_reach_the_watcher(stubs: Stubs) -> None:
    await stubs.admin.SaveConfig(config(daily_max_drawdown_percentage=2.0))
    watch = await stubs.watch()
    position = t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, entry_price=50_000, mark_price=50_000)

    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    assert await watch.next() == (ACTIVE, "equity_report")
    await stubs.risk.ReportTrade(rs.ReportTradeRequest(**IDS, trade_id="T-1", symbol="BTCUSDT",
                                                       side=t.SIDE_BUY, realized_pnl=5.0))
    assert await watch.next() == (ACTIVE, "trade_report")
    await stubs.risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[position]))
    assert await watch.next() == (ACTIVE, "positions_report")
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))  # 3% down: daily limit 2%
    assert await watch.next() == (REDUCING, "equity_report")


async def test_the_kill_switch_and_its_end_reach_the_watcher(stubs: Stubs) -> None:
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    watch = await stubs.watch()

    await stubs.admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=HALTED, reason="incident"))
    assert await watch.next() == (HALTED, "paused by operator")
    await stubs.admin.ResumeTrading(ad.ResumeTradingRequest(**IDS))
    assert await watch.next() == (ACTIVE, "resumed by operator")
    paused = await stubs.admin.PauseTrading(ad.PauseTradingRequest(
        **IDS, trading_state=REDUCING, duration={"nanos": 300_000_000}))
    assert await watch.next() == (REDUCING, "paused by operator")
    ends_in = paused.state.paused_until.ToNanoseconds() / 1e9 - time.time()
    assert await watch.next(within=max(0.0, ends_in) + WITHIN_S) == (ACTIVE, "pause_expired")


async def test_a_configuration_re_check_reaches_the_watcher(stubs: Stubs) -> None:
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))  # no limit yet
    watch = await stubs.watch()

    await stubs.admin.SaveConfig(config(daily_max_drawdown_percentage=2.0))
    state, reason = await watch.next()
    assert (state, reason.split(" by ")[0]) == (REDUCING, "config tight created (active)")


async def test_a_breaker_re_armed_by_its_update_reaches_the_watcher(stubs: Stubs) -> None:
    created = await stubs.admin.CreateBreaker(ad.CreateBreakerRequest(
        breaker=breaker("max_drawdown", "alert", threshold=0.02)))
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    fired = await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))  # 3% down: an episode
    assert len(fired.breaker_events) == 1
    watch = await stubs.watch()

    await stubs.admin.UpdateBreaker(ad.UpdateBreakerRequest(
        breaker_id=created.breaker.id, breaker=breaker("max_drawdown", "alert", threshold=0.025)))
    assert await watch.next() == (ACTIVE, f"breaker {created.breaker.id} re-armed")


async def test_a_rebinding_reaches_the_watcher(stubs: Stubs) -> None:
    await stubs.risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    watch = await stubs.watch()

    await stubs.admin.RebindTrader(ad.RebindTraderRequest(trader_id=IDS["trader_id"], account_id="account456",
                                                          reason="squatted"))
    assert await watch.next() == (ACTIVE, "rebound by operator: squatted")
    assert watch.last.state.account_id == "account456" and not watch.last.state.equity_reported
