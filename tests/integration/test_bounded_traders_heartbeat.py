"""Bounded traders (residency.py) x the dead-man's switch (engine/heartbeat.py) on a real sidecar over SQLite (single
mode: an evicted trader's next call reads it back). A heartbeat configured for the account while a trader is evicted
counts its silence from the first scan that found the heartbeat, as for a trader kept in memory: its next call within
the timeout is allowed and starts a new count; past the timeout it is HALTED by the switch (same reason, history row
and counter) before the call is answered. Cluster mode (PostgreSQL): the same when this sidecar claims it back with the
epoch after the one it released; another epoch means another sidecar owned it meanwhile (it may have heard the bot):
not judged then, counted from the next scan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest

from tests.support.pg import plain_dsn
from tests.support.residency import evict_idle
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IDLE_S = 60.0
TIMEOUT_S = 10
BOT = {"trader_id": "bot-hb", "account_id": "acct-hb"}
HEARTBEAT = t.RiskConfiguration(account_id=BOT["account_id"], config_id="hb", is_active=True,
                                heartbeat_timeout_seconds=TIMEOUT_S)


@pytest.fixture
async def single(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{tmp_path / 'hb.db'}", enable_persistence=True,
                               trader_idle_evict_seconds=IDLE_S) as sc:
        yield sc




async def evicted_then_heartbeat(sc: Sidecar, clock: ManualClock, risk: rsg.RiskServiceStub,
                                 admin: adg.AdminServiceStub) -> None:
    """BOT reports, goes idle and is evicted; then its account gets a heartbeat and the switch scans once."""
    await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
    clock.advance(10 * IDLE_S)
    assert await evict_idle(sc) == 1 and BOT["trader_id"] in sc.residency.evicted
    await admin.SaveConfig(ad.SaveConfigRequest(config=HEARTBEAT), timeout=10)
    sc.deadman.scan()  # the first check after the heartbeat is configured starts the count


async def test_an_evicted_trader_calling_within_the_timeout_of_a_heartbeat_configured_meanwhile_is_allowed(
        single: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(single.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(single, clock, risk, admin)
        clock.advance(TIMEOUT_S / 2)
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)  # loads it: 5 s of silence, not 10
        clock.advance(TIMEOUT_S * 0.6)  # 11 s since the count started, 6 s since the call
        not_yet = single.deadman.scan()
        clock.advance(TIMEOUT_S * 0.5)  # 11 s since the call
        then = single.deadman.scan()
        silent = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert back.allowed and back.state.trading_state == t.TRADING_STATE_ACTIVE, back.reason
    assert not_yet == [] and then == [BOT["trader_id"]]  # the call was heard: a new count from it
    assert not silent.allowed and silent.state.trading_state == t.TRADING_STATE_HALTED


async def test_an_evicted_trader_silent_past_a_heartbeat_configured_meanwhile_is_halted_by_the_switch(
        single: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(single.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(single, clock, risk, admin)
        clock.advance(3 * TIMEOUT_S)
        assert single.deadman.scan() == []  # not in memory: not walked
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        again = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        rescan = single.deadman.scan()
        history = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(**BOT, page_size=100), timeout=10)

    assert not back.allowed and back.state.trading_state == t.TRADING_STATE_HALTED, back.reason
    assert not again.allowed and rescan == [] and single.deadman.trips == 1  # paused once
    reason = single.engine.traders[BOT["trader_id"]].pauses[-1].reason
    assert "by dead-man's switch: no call or session message for 30.0s" in reason
    assert f"heartbeat_timeout_seconds={TIMEOUT_S}" in reason
    assert any(e.reason == reason for e in history.entries)


async def test_an_evicted_trader_whose_account_has_no_heartbeat_is_not_paused_by_the_switch_on_reload(
        single: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(single.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(single, clock, risk, admin)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=BOT["account_id"], config_id="no-hb", is_active=True)), timeout=10)
        single.deadman.scan()  # the heartbeat is off again
        clock.advance(3 * TIMEOUT_S)
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert back.allowed and single.deadman.trips == 0, back.reason


async def test_cluster_mode_an_evicted_trader_silent_past_a_heartbeat_configured_meanwhile_is_halted(
        pg_url: str, clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True, sidecar_id="sc-hb",
                               trader_idle_evict_seconds=IDLE_S) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(10 * IDLE_S)
        assert await evict_idle(sc) == 1 and BOT["trader_id"] not in sc.engine.traders
        await admin.SaveConfig(ad.SaveConfigRequest(config=HEARTBEAT), timeout=10)
        sc.deadman.scan()
        clock.advance(3 * TIMEOUT_S)
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert not back.allowed and back.state.trading_state == t.TRADING_STATE_HALTED, back.reason


async def cluster_evicted_then_heartbeat(sc: Sidecar, clock: ManualClock, risk: rsg.RiskServiceStub,
                                         admin: adg.AdminServiceStub) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
    clock.advance(10 * IDLE_S)
    assert await evict_idle(sc) == 1 and BOT["trader_id"] not in sc.engine.traders
    await admin.SaveConfig(ad.SaveConfigRequest(config=HEARTBEAT), timeout=10)
    sc.deadman.scan()


async def test_cluster_mode_an_evicted_trader_calling_within_the_timeout_is_allowed(
        pg_url: str, clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True, sidecar_id="sc-hb",
                               trader_idle_evict_seconds=IDLE_S) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await cluster_evicted_then_heartbeat(sc, clock, risk, admin)
        clock.advance(TIMEOUT_S / 2)
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        clock.advance(TIMEOUT_S / 2 + 1)  # 6 s after that call: not overdue
        assert sc.deadman.scan() == []
    assert back.allowed and sc.deadman.trips == 0, back.reason


async def test_cluster_mode_a_trader_another_sidecar_owned_meanwhile_is_not_judged_on_this_ones_count(
        pg_url: str, clock: ManualClock) -> None:
    """Another sidecar claimed it after the eviction (and may have heard the bot): the claim here gets a later epoch
    than the one after its release, so this sidecar's count does not halt it (a false halt); the scans count it
    from the first one after the claim."""
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True, sidecar_id="sc-hb",
                               trader_idle_evict_seconds=IDLE_S) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await cluster_evicted_then_heartbeat(sc, clock, risk, admin)
        clock.advance(3 * TIMEOUT_S)
        with psycopg.connect(plain_dsn(pg_url), autocommit=True) as conn:  # another owner's claim and release
            conn.execute("UPDATE trader_leases SET epoch = epoch + 1, owner = 'sc-other' WHERE trader_id = %s",
                         (BOT["trader_id"],))
            conn.execute("UPDATE trader_leases SET expires_at = now() - interval '1 second' WHERE trader_id = %s",
                         (BOT["trader_id"],))
        back = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        assert sc.deadman.scan() == []  # the first scan after the claim starts its count (as for any takeover)
        clock.advance(TIMEOUT_S + 1)
        tripped = sc.deadman.scan()
    assert back.allowed and back.state.trading_state == t.TRADING_STATE_ACTIVE, back.reason
    assert tripped == [BOT["trader_id"]]  # silent since then
