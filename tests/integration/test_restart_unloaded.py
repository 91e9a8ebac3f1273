"""Starts with the database down or slow: nothing is answered from a state the store has not been merged into.

Real PostgreSQL behind a TCP proxy that a test cuts before the sidecar starts and restores later. While the
stored state is not loaded, CanTrade answers under `unloaded_state_policy` (default reduce_only) and health
`tradeguard.state` is NOT_SERVING; once it loads, the stored state is the base and what arrived meanwhile is
replayed on it (issue 13, items 1, 3 and 13).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.databases import T0, make_state, make_trade, open_store
from tests.support.pg import plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.state import SEEN_TRADE_IDS_KEPT
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "acct-1"}
BUY = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute(query).fetchall())


@contextlib.asynccontextmanager
async def sidecar_on(url: str, **overrides: Any) -> AsyncIterator[tuple[Sidecar, grpc.aio.Channel]]:
    async with running_sidecar(database_url=url, enable_persistence=True, **overrides) as sidecar, \
            grpc.aio.insecure_channel(sidecar.address) as ch:
        yield sidecar, ch


@contextlib.asynccontextmanager
async def database_down_at_start(pg_url: str, **overrides: Any) -> AsyncIterator[
        tuple[Sidecar, grpc.aio.Channel, FaultProxy]]:
    """A sidecar started on `pg_url` through a proxy that refuses every connection until `proxy.restore()`."""
    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with sidecar_on(proxy.url_for(pg_url), **overrides) as (sidecar, ch):
            yield sidecar, ch, proxy
    finally:
        await proxy.close()


async def health(ch: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def state_loaded(ch: grpc.aio.Channel, timeout: float = 30.0) -> None:
    """Wait for health `tradeguard.state` SERVING: the stored state is installed (the event, no polling)."""
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="tradeguard.state"),
                                                 timeout=timeout)
    async for update in watch:
        if update.status == SERVING:
            break
    watch.cancel()


async def test_health_says_the_stored_state_is_not_loaded_until_the_database_returns(pg_url: str) -> None:
    async with sidecar_on(pg_url) as (_sidecar, ch):
        normal = {name: await health(ch, name) for name in ("", "tradeguard.state", "tradeguard.store")}
    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        down = {name: await health(ch, name) for name in ("", "tradeguard.state", "tradeguard.store")}
        denied = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        proxy.restore()
        await state_loaded(ch)
        after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        assert sidecar.persistence.loaded

    assert normal == {"": SERVING, "tradeguard.state": SERVING, "tradeguard.store": SERVING}
    assert down == {"": SERVING, "tradeguard.state": NOT_SERVING, "tradeguard.store": NOT_SERVING}
    assert not denied.allowed and "STATE_NOT_LOADED" in denied.reason
    assert not after.allowed and after.code == t.DECISION_CODE_NO_EQUITY_REPORTED
    assert "STATE_NOT_LOADED" not in after.reason


async def test_a_loss_reported_while_the_database_is_down_at_start_is_judged_against_the_stored_day(
        pg_url: str) -> None:
    """-4 % before the restart; started with the database down, the bot reports -8 %. Memory alone would make
    9,200 a fresh day (ACTIVE); meanwhile new exposure is refused (STATE_NOT_LOADED). When the database returns,
    the stored day (start 10,000) is the base and the -8 % report is replayed on it: paused (limit 5 %)."""
    async with sidecar_on(pg_url) as (_sidecar, ch):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_600))

    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_200))
        during = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        proxy.restore()
        await state_loaded(ch)
        after = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        assert await sidecar.store.flush(timeout=30)

    stored = rows(pg_url, "SELECT current_equity, peak_equity, day_start_equity, trading_state FROM risk_state")
    assert not during.allowed and during.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert during.trading_state == t.TRADING_STATE_REDUCING
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert after.trading_state == t.TRADING_STATE_REDUCING
    assert (after.state.peak_equity, after.state.current_equity) == (10_000, 9_200)
    assert stored == [(9_200, 10_000, 10_000, "REDUCING")]


async def test_stored_configuration_and_breaker_apply_to_a_report_received_before_a_late_load(pg_url: str) -> None:
    """A stored 2 % daily limit and a 9,800 equity floor (pause_trading) were ignored at 9,700 when the
    database was down at start. Now the report is replayed once they are installed: both act."""
    floor = json_format.ParseDict({"name": "floor", "account_id": "acct-1", "condition": "equity_floor",
                                   "action": "pause_trading", "parameters": {"value": 9_800}}, t.CircuitBreaker())
    async with sidecar_on(pg_url) as (_sidecar, ch):
        admin = adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id="acct-1", config_id="tight", is_active=True, daily_max_drawdown_percentage=2.0)))
        breaker = (await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=floor))).breaker
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))
        proxy.restore()
        await state_loaded(ch)
        after = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
        checks = {c.name: c for c in after.checks}
        assert await sidecar.store.flush(timeout=30)

    assert not after.allowed
    assert after.trading_state == t.TRADING_STATE_HALTED  # the breaker's pause_trading, the most severe
    assert checks["daily_loss"].status == t.CHECK_STATUS_FAIL and checks["daily_loss"].limit == 2.0
    assert after.state.config_id == "tight"
    assert rows(pg_url, "SELECT circuit_breaker_id, action_taken FROM circuit_breaker_events") == [
        (breaker.id, "pause_trading")]


async def test_a_trade_retried_after_a_start_with_the_database_down_is_counted_once(pg_url: str) -> None:
    def trade(trade_id: str) -> rs.ReportTradeRequest:
        return rs.ReportTradeRequest(**IDS, trade_id=trade_id, symbol="BTCUSDT", exchange="binance",
                                     side=t.SIDE_SELL, realized_pnl=-10.0)

    async with sidecar_on(pg_url) as (_sidecar, ch):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
        await risk.ReportTrade(trade("T-1"))

    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportTrade(trade("T-1"))  # the bot's retry: it never heard the first answer
        await risk.ReportTrade(trade("T-2"))
        proxy.restore()
        await state_loaded(ch)
        again = await risk.ReportTrade(trade("T-1"))
        state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
        assert await sidecar.store.flush(timeout=30)

    stored = rows(pg_url, "SELECT trade_id FROM trade_reports ORDER BY trade_id")
    assert again.duplicate
    assert state.consecutive_losses == 2
    assert stored == [("T-1",), ("T-2",)]  # the streak matches trade_reports


async def test_a_trade_id_older_than_those_kept_in_memory_is_found_in_trade_reports(pg_url: str) -> None:
    """Memory keeps the newest 10,000 trade ids per trader; a retry of an older one is looked up in the table
    (only then: a new id is answered without a lookup while the kept ids have not overflowed)."""
    trader = {"trader_id": "t-1", "account_id": "a-1"}
    async with open_store(pg_url) as store:
        store.enqueue_state(make_state("t-1", consecutive_losses=0), "stored", None)
        for i in range(SEEN_TRADE_IDS_KEPT + 1):
            store.enqueue_trade(make_trade(f"x-{i:05d}", pnl=1.0))
    oldest, newest = "x-00000", f"x-{SEEN_TRADE_IDS_KEPT:05d}"

    async with sidecar_on(pg_url) as (sidecar, ch):
        risk = rsg.RiskServiceStub(ch)
        # (PostgreSQL is cluster mode: a stored trader no sidecar holds is installed by its first call, a claim)
        await risk.GetRiskState(rs.GetRiskStateRequest(**trader))
        kept = sidecar.engine.traders["t-1"].seen_trade_ids
        assert oldest not in kept and newest in kept and len(kept) == SEEN_TRADE_IDS_KEPT

        def loss(trade_id: str) -> rs.ReportTradeRequest:
            return rs.ReportTradeRequest(**trader, trade_id=trade_id, symbol="BTCUSDT", side=t.SIDE_SELL,
                                         realized_pnl=-5.0, closed_at={"seconds": int(T0) + 60})

        old = await risk.ReportTrade(loss(oldest))
        recent = await risk.ReportTrade(loss(newest))
        new = await risk.ReportTrade(loss("brand-new"))

    assert old.duplicate and recent.duplicate
    assert not new.duplicate and new.state.consecutive_losses == 1


async def test_an_old_trade_id_retried_while_the_database_is_down_at_start_is_found_when_it_loads(
        pg_url: str) -> None:
    trader = {"trader_id": "t-1", "account_id": "a-1"}
    async with open_store(pg_url) as store:
        store.enqueue_state(make_state("t-1", consecutive_losses=0), "stored", None)
        for i in range(SEEN_TRADE_IDS_KEPT + 1):
            store.enqueue_trade(make_trade(f"x-{i:05d}", pnl=1.0))

    def loss(trade_id: str) -> rs.ReportTradeRequest:
        return rs.ReportTradeRequest(**trader, trade_id=trade_id, symbol="BTCUSDT", side=t.SIDE_SELL,
                                     realized_pnl=-5.0, closed_at={"seconds": int(T0) + 60})

    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportTrade(loss("x-00000"))  # stored, older than the 10,000 ids the load brings
        await risk.ReportTrade(loss("brand-new"))
        proxy.restore()
        await state_loaded(ch)
        state = (await risk.GetRiskState(rs.GetRiskStateRequest(**trader))).state
        assert await sidecar.store.flush(timeout=30)

    assert state.consecutive_losses == 1
    assert rows(pg_url, "SELECT count(*) FROM trade_reports") == [(SEEN_TRADE_IDS_KEPT + 2,)]


async def test_configuration_and_breaker_rpcs_say_unavailable_not_not_found_while_the_stored_state_is_not_loaded(
        pg_url: str) -> None:
    """A breaker and a configuration stored before the restart are not in memory while the database is down at
    start: NOT_FOUND (or an empty list) would be a lie. They answer UNAVAILABLE until the stored state is
    loaded, then find what the store holds."""
    breaker = t.CircuitBreaker(name="floor", account_id="acct-1", condition="equity_floor",
                               action="alert", enabled=True)
    breaker.parameters.update({"value": 9_000})
    async with sidecar_on(pg_url) as (_sidecar, ch):
        admin = adg.AdminServiceStub(ch)
        created = await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            config_id="c1", account_id="acct-1", is_active=True, daily_max_drawdown_percentage=2.0)))
    breaker_id = created.breaker.id

    async with database_down_at_start(pg_url) as (_sidecar, ch, proxy):
        admin = adg.AdminServiceStub(ch)
        calls = {
            "DisableBreaker": admin.DisableBreaker(ad.DisableBreakerRequest(breaker_id=breaker_id)),
            "GetBreaker": admin.GetBreaker(ad.GetBreakerRequest(breaker_id=breaker_id)),
            "ListBreakers": admin.ListBreakers(ad.ListBreakersRequest(account_id="acct-1")),
            "GetConfig": admin.GetConfig(ad.GetConfigRequest(account_id="acct-1", config_id="c1")),
            "ListConfigs": admin.ListConfigs(ad.ListConfigsRequest(account_id="acct-1")),
        }
        codes = {}
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            codes[name] = (err.value.code(), "not loaded" in (err.value.details() or ""))
        proxy.restore()
        await state_loaded(ch)
        found = await admin.GetBreaker(ad.GetBreakerRequest(breaker_id=breaker_id))
        config = await admin.GetConfig(ad.GetConfigRequest(account_id="acct-1", config_id="c1"))

    assert codes == {name: (grpc.StatusCode.UNAVAILABLE, True) for name in calls}
    assert found.breaker.id == breaker_id and config.config.daily_max_drawdown_percentage == 2.0
