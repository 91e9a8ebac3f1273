"""A sidecar that starts while PostgreSQL is unreachable answers unloaded and journals every change; the journal goes
to the local spool too (store/spooled_journal.py), so a SIGKILL before the database returns loses none of it: the
next start replays it on the stored state, once, and the spool forgets it after what it changed is written.

Separate processes on port 0, one fresh database, the database cut by a TCP proxy in the test.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from tests.attack.test_issue21_attacks import SpoolRig, kill, spool_rig_fixture, spooled_journal, sql
from tests.support.pg import fresh_database
from tests.support.proxy import FaultProxy
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

BOT = {"trader_id": "bot-j", "account_id": "acct-j"}
CONFIG = t.RiskConfiguration(account_id=BOT["account_id"], config_id="cj", is_active=True,
                             max_position_size_percentage=100.0, daily_max_drawdown_percentage=5.0)


rig = spool_rig_fixture("tg_journal")


def trade(trade_id: str) -> rs.ReportTradeRequest:
    return rs.ReportTradeRequest(**BOT, trade_id=trade_id, symbol="BTCUSDT", side=t.SIDE_SELL, realized_pnl=-250.0)


async def test_trades_and_a_breach_of_a_run_that_never_loaded_are_stored_once_after_a_sigkill(rig: SpoolRig) -> None:
    first = await rig.spawn("first")
    try:
        async with grpc.aio.insecure_channel(first.address) as ch:
            await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=CONFIG), timeout=10)
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
    finally:
        assert await asyncio.to_thread(first.terminate, signal.SIGTERM, 30) == 0
    rig.proxy.cut()

    second = await rig.spawn("second")  # nothing spooled: it answers unloaded and journals every change
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            first_report = await risk.ReportTrade(trade("tr-1"), timeout=10)
            retried = await risk.ReportTrade(trade("tr-1"), timeout=10)
            await risk.ReportTrade(trade("tr-2"), timeout=10)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_000.0), timeout=10)  # -10 %: a breach
        assert await eventually(lambda: spooled_journal(rig.spool) >= 4, timeout=20), second.log()[-3000:]
    finally:
        kill(second)
    assert not first_report.duplicate and retried.duplicate

    rig.proxy.restore()
    third = await rig.spawn("third")
    try:
        async with grpc.aio.insecure_channel(third.address) as ch:
            after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
            again = await rsg.RiskServiceStub(ch).ReportTrade(trade("tr-2"), timeout=10)
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=20), third.log()[-3000:]
    finally:
        assert await asyncio.to_thread(third.terminate, signal.SIGTERM, 30) == 0

    fourth = await rig.spawn("fourth")  # nothing is replayed twice
    try:
        async with grpc.aio.insecure_channel(fourth.address) as ch:
            last = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(fourth.terminate, signal.SIGTERM, 30) == 0

    trades = sql(rig.url, "SELECT trade_id FROM trade_reports WHERE trader_id = 'bot-j' ORDER BY trade_id")
    assert trades == [("tr-1",), ("tr-2",)]
    assert again.duplicate
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, after
    assert not last.allowed and last.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, last
    assert "calls received by an earlier run before its stored state was loaded" in third.log()


async def test_a_kill_switch_on_a_sidecar_that_never_loaded_answers_after_its_call_is_in_the_spool(
        rig: SpoolRig) -> None:
    rig.proxy.cut()
    sc = await rig.spawn("cut-from-the-start")
    try:
        async with grpc.aio.insecure_channel(sc.address) as ch:
            await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                **BOT, trading_state=t.TRADING_STATE_HALTED, reason="halt before any load"), timeout=10)
            in_spool = spooled_journal(rig.spool)
    finally:
        kill(sc)
    rig.proxy.restore()
    loaded = await rig.spawn("loaded")
    try:
        async with grpc.aio.insecure_channel(loaded.address) as ch:
            decision = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(loaded.terminate, signal.SIGTERM, 30) == 0
    assert in_spool == 1
    assert not decision.allowed and decision.state.trading_state == t.TRADING_STATE_HALTED, decision
    stored = sql(rig.url, "SELECT trading_state FROM risk_state WHERE trader_id = 'bot-j'")
    assert stored == [("HALTED",)]


async def test_a_journal_replayed_before_a_stop_that_kept_it_is_not_replayed_again_over_a_later_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run 1 (database cut) halts the trader; run 2 loads, replays the halt, and stops before the spool forgets the
    journal (clear_journal made a no-op: the stop between the write and the clear), after the operator resumed the
    trader there; run 3 must not replay the halt again over that resume (the REPLAYED marker run 2 spooled says its
    state holds it). Found by attack22 (a strict xfail there, simulated by putting an older spool file back)."""
    from tests.support.sidecar import running_sidecar
    from tradeguard_server.store.spool import Spool

    with fresh_database("tg_journal_twice") as url:
        proxy = await FaultProxy().start()
        settings = {"database_url": proxy.url_for(url), "enable_persistence": True, "drain_timeout_s": 1.0,
                    "spool_path": str(tmp_path / "spool.db"), "dev_open_admin": True}
        try:
            proxy.cut()
            async with running_sidecar(**settings) as first, grpc.aio.insecure_channel(first.address) as ch:
                await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
                await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                    **BOT, trading_state=t.TRADING_STATE_HALTED, reason="halt in the outage"), timeout=10)
                assert not first.persistence.loaded
            proxy.restore()
            kept: list[int] = []

            async def stop_before_the_clear(spool: Spool) -> None:
                kept.append(spool.stats.journal)

            with monkeypatch.context() as patch:
                patch.setattr(Spool, "clear_journal", stop_before_the_clear)
                async with running_sidecar(**settings) as second, grpc.aio.insecure_channel(second.address) as ch:
                    risk = rsg.RiskServiceStub(ch)
                    assert await eventually(lambda: second.persistence.loaded, timeout=20)
                    halted = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
                    await adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(**BOT), timeout=10)
                    resumed = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
                    assert await eventually(lambda: bool(kept), timeout=20)  # the settle reached its clear
                    assert await second.store.flush(10)
            async with running_sidecar(**settings) as third, grpc.aio.insecure_channel(third.address) as ch:
                assert await eventually(lambda: third.persistence.loaded, timeout=20)
                after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
                skipped = third.persistence.already_replayed
        finally:
            await proxy.close()
    assert kept == [3]  # the two calls and run 2's REPLAYED marker were still in the spool
    assert not halted.allowed and halted.state.trading_state == t.TRADING_STATE_HALTED, halted
    assert resumed.allowed, resumed
    assert skipped == 2
    assert after.allowed and after.state.trading_state == t.TRADING_STATE_ACTIVE, after
