"""Bounded traders (issue 21, residency.py) on a real sidecar (gRPC on port 0) over PostgreSQL (cluster mode: the
eviction releases the lease, the next call claims it) and SQLite (single mode: the next call reads the trader back):
an evicted trader's next call sees its stored state field by field; a paused trader and one with pending orders are
never evicted; beyond max_traders a new trader is refused RESOURCE_EXHAUSTED naming the setting (unary, Session,
HTTP 429, and the Python client's can_trade denies with code RESOURCE_EXHAUSTED)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from tests.support.databases import postgres_database_fixture, store_url_fixture
from tests.support.residency import evict_idle
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_client import AsyncRiskClient
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

IDLE_S = 60.0
BOT = {"trader_id": "bot-1", "account_id": "acct-21"}
BUY = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=50_000.0, client_order_id="o-1")


@pytest.fixture
async def sidecar(db_url: str, clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True,
                               trader_idle_evict_seconds=IDLE_S) as sc:
        yield sc




async def test_an_evicted_trader_answers_from_its_stored_state_field_by_field(sidecar: Sidecar,
                                                                                clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        clock.advance(1)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_700))  # peak 10,000, daily pnl -300
        await risk.ReportTrade(rs.ReportTradeRequest(**BOT, trade_id="t-1", symbol="ETHUSDT", side=t.SIDE_SELL,
                                                     realized_pnl=-120.0))
        await risk.ReportPositions(rs.ReportPositionsRequest(**BOT, positions=[t.Position(
            symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, entry_price=50_000.0, mark_price=49_000.0)]))
        clock.advance(IDLE_S + 1)
        before = (await risk.GetRiskState(rs.GetRiskStateRequest(**BOT))).state
        asked_before = await risk.CanTrade(rs.CanTradeRequest(**BOT))
        clock.advance(IDLE_S + 1)

        assert await evict_idle(sidecar) == 1
        assert "bot-1" not in sidecar.engine.traders
        assert sidecar.residency.evicted_total == 1

        asked_after = await risk.CanTrade(rs.CanTradeRequest(**BOT))  # loads it (awaits its own read only)
        after = (await risk.GetRiskState(rs.GetRiskStateRequest(**BOT))).state
        duplicate = await risk.ReportTrade(rs.ReportTradeRequest(**BOT, trade_id="t-1", symbol="ETHUSDT",
                                                                 side=t.SIDE_SELL, realized_pnl=-120.0))

    assert "bot-1" in sidecar.engine.traders
    for name in ("current_equity", "peak_equity", "daily_pnl", "drawdown_pct", "day_start_equity",
                 "week_start_equity", "month_start_equity", "consecutive_losses", "trading_state",
                 "daily_order_notional", "daily_orders"):
        assert getattr(after, name) == getattr(before, name), name
    assert (before.current_equity, before.peak_equity, before.daily_pnl) == (9_700.0, 10_000.0, -300.0)
    assert list(after.positions) == list(before.positions) and len(after.positions) == 1
    assert after == before  # every other field too
    assert (asked_after.allowed, asked_after.code, asked_after.reason, asked_after.state) == (
        asked_before.allowed, asked_before.code, asked_before.reason, asked_before.state)
    assert duplicate.duplicate  # its trade ids came back with it


async def test_a_paused_trader_is_never_evicted(sidecar: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-2", account_id="acct-21", equity=10_000))
        await admin.PauseTrading(ad.PauseTradingRequest(**BOT, trading_state=t.TRADING_STATE_HALTED,
                                                        reason="operator"))
        clock.advance(10 * IDLE_S)

        evicted = await evict_idle(sidecar)
        asked = await risk.CanTrade(rs.CanTradeRequest(**BOT))

    assert evicted == 1 and "bot-2" not in sidecar.engine.traders  # the idle unpaused one left
    st = sidecar.engine.traders["bot-1"]
    assert sidecar.residency.pin_reason(st, clock.now()) == "paused"
    assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_HALTED


async def test_a_trader_with_pending_orders_is_never_evicted(sidecar: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        allowed = await risk.CanTrade(rs.CanTradeRequest(**BOT, order=BUY))
        await risk.ReportOrder(rs.ReportOrderRequest(**BOT, client_order_id="o-1", status=t.ORDER_STATUS_ACCEPTED))
        clock.advance(IDLE_S + 1)

        evicted = await evict_idle(sidecar)

    assert allowed.allowed, allowed.reason
    assert evicted == 0 and "bot-1" in sidecar.engine.traders
    assert sidecar.residency.pin_reason(sidecar.engine.traders["bot-1"], clock.now()) == "pending orders"


def status_message(exc: grpc.aio.AioRpcError) -> str:
    return exc.details() or ""


async def test_beyond_max_traders_a_new_trader_is_refused_resource_exhausted_naming_the_setting(
    db_url: str, clock: ManualClock,
) -> None:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True, max_traders=2,
                               http_listen="127.0.0.1:0") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for trader in ("bot-1", "bot-2"):
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id="acct-21", equity=10_000))
        with pytest.raises(grpc.aio.AioRpcError) as report:
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-3", account_id="acct-21", equity=10_000))
        with pytest.raises(grpc.aio.AioRpcError) as asked:
            await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-3", account_id="acct-21"))
        existing = await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_100))  # unaffected

        call = risk.Session()
        await call.write(rs.SessionRequest(request_id=7, report_equity=rs.ReportEquityRequest(
            trader_id="bot-4", account_id="acct-21", equity=1.0)))
        in_session = await call.read()
        await call.write(rs.SessionRequest(request_id=8, can_trade=rs.CanTradeRequest(**BOT)))
        still = await call.read()
        await call.done_writing()

        async with aiohttp.ClientSession() as http, http.post(f"http://{sc.http_address}/v1/risk/report-equity",
                             json={"trader_id": "bot-5", "account_id": "acct-21", "equity": 1.0}) as resp:
            http_status, http_body = resp.status, await resp.json()

        async with AsyncRiskClient(sc.address) as guard:
            decision = await guard.can_trade("bot-6", "acct-21")

        rejected = sc.residency.rejected_total

    for err in (report.value, asked.value):
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert status_message(err).startswith("max_traders (2) reached: trader_id bot-3")
    assert existing.state.current_equity == 10_100.0
    assert in_session.request_id == 7 and in_session.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "max_traders (2) reached" in in_session.error.message
    assert still.request_id == 8 and still.HasField("can_trade")  # the stream goes on
    assert http_status == 429 and "max_traders (2) reached" in _message(http_body)
    assert not decision.allowed and decision.code == "RESOURCE_EXHAUSTED" and "max_traders (2)" in decision.reason
    assert rejected == 5
    assert set(sc.engine.traders) == {"bot-1", "bot-2"}


def _message(body: Any) -> str:
    return str(body.get("message") or body.get("error", {}).get("message", ""))


async def test_an_evicted_trader_comes_back_even_when_memory_is_full_and_a_new_one_does_not(
    db_url: str, clock: ManualClock,
) -> None:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True, max_traders=1,
                               trader_idle_evict_seconds=IDLE_S) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        clock.advance(IDLE_S + 1)
        assert await evict_idle(sc) == 1
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-2", account_id="acct-21", equity=5_000))
        back = await risk.GetRiskState(rs.GetRiskStateRequest(**BOT))  # (loads it: memory now holds 2 > 1)
        with pytest.raises(grpc.aio.AioRpcError) as new:
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-3", account_id="acct-21", equity=1.0))

    assert back.state.current_equity == 10_000.0
    assert new.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_restart_leaves_idle_traders_in_the_store_and_loads_them_on_their_next_call(
    tmp_path: Any, clock: ManualClock,
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"  # single mode (PostgreSQL: the reclaimed leases decide)
    settings = {"database_url": url, "enable_persistence": True, "trader_idle_evict_seconds": IDLE_S}
    async with running_sidecar(clock=clock, **settings) as first, grpc.aio.insecure_channel(first.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        before = (await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_800))).state
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-2", account_id="acct-21", equity=10_000))
        await admin.PauseTrading(ad.PauseTradingRequest(trader_id="bot-2", account_id="acct-21",
                                                        trading_state=t.TRADING_STATE_HALTED))
    clock.advance(IDLE_S + 1)
    async with running_sidecar(clock=clock, **settings) as second, grpc.aio.insecure_channel(second.address) as ch:
        installed = set(second.engine.traders)
        left = set(second.residency.evicted)
        after = (await rsg.RiskServiceStub(ch).GetRiskState(rs.GetRiskStateRequest(**BOT))).state

    assert installed == {"bot-2"} and left == {"bot-1"}  # the paused one is installed, the idle one waits
    assert (after.current_equity, after.peak_equity, after.daily_pnl) == (9_800.0, 10_000.0, -200.0)
    assert after == before


async def test_a_reload_the_store_cannot_answer_is_unavailable_and_the_trader_stays_evicted(
    tmp_path: Any, clock: ManualClock,
) -> None:
    import sqlite3

    path = tmp_path / "store.db"
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{path}", enable_persistence=True,
                               trader_idle_evict_seconds=IDLE_S) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000))
        clock.advance(IDLE_S + 1)
        assert await evict_idle(sc) == 1
        with sqlite3.connect(path) as db:  # the read of its row fails (a real failure of the store, not a mock)
            db.execute("ALTER TABLE risk_state RENAME TO risk_state_away")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await risk.CanTrade(rs.CanTradeRequest(**BOT))
        still_evicted = "bot-1" in sc.residency.evicted and "bot-1" not in sc.engine.traders
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE risk_state_away RENAME TO risk_state")
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT))

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (failed.value.details() or "").startswith("state of trader_id bot-1 not loaded")
    assert still_evicted and sc.residency.load_failures == 1
    assert back.allowed and back.state.current_equity == 10_000.0
