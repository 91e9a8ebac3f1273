"""Attacks on issue 22's features in combination: the unloaded-mode journal kept in the local spool
(store/spooled_journal.py), the dead-man's switch of evicted traders, the HTTP streams' budget. Real sidecar
processes over real PostgreSQL behind a FaultProxy (the database is cut only there), gRPC / HTTP on port 0. Each test
names the behaviour that must hold; a defect found here is fixed or marked xfail(strict) with its reason."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from tests.attack.test_issue21_attacks import SpoolRig, kill, spool_rig_fixture, spooled_journal, sql
from tests.support.proxy import FaultProxy
from tests.support.residency import evict_idle
from tests.support.sidecar import SidecarProcess, running_sidecar, spawn_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BOT = {"trader_id": "bot-22", "account_id": "acct-22"}
MEMORY = ("--unloaded-state-policy", "memory")  # CanTrade answers from the state while not loaded


rig = spool_rig_fixture("tg_attack22")


async def spawn(rig: SpoolRig, name: str, *extra: str, sidecar_id: str = "attack22", spool: Path | None = None,
                proxy: FaultProxy | None = None) -> SidecarProcess:
    args = ["--database-url", (proxy or rig.proxy).url_for(rig.url), "--sidecar-id", sidecar_id, "--spool-path",
            str(spool or rig.spool), "--drain-timeout-s", "2", "--stop-trading-minutes", "600",
            "--control-state-stale-action", "serve", *extra]
    return await asyncio.to_thread(spawn_sidecar, rig.tmp, *args, name=name, timeout=60)


async def term(sp: SidecarProcess) -> None:
    assert await asyncio.to_thread(sp.terminate, signal.SIGTERM, 30) == 0, sp.log()[-3000:]


def trade(trade_id: str, pnl: float = -100.0) -> rs.ReportTradeRequest:
    return rs.ReportTradeRequest(**BOT, trade_id=trade_id, symbol="BTCUSDT", side=t.SIDE_SELL, realized_pnl=pnl)


def halt(reason: str = "attack22 halt", duration_s: float = 0.0) -> ad.PauseTradingRequest:
    req = ad.PauseTradingRequest(**BOT, trading_state=t.TRADING_STATE_HALTED, reason=reason)
    if duration_s:
        req.duration.FromMilliseconds(int(duration_s * 1000))
    return req


async def ask(sp: SidecarProcess, order: t.OrderIntent | None = None) -> rs.CanTradeResponse:
    async with grpc.aio.insecure_channel(sp.address) as ch:
        return await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT, order=order), timeout=10)


def spool_files(spool: Path) -> list[Path]:
    return [p for p in (spool, Path(f"{spool}-wal"), Path(f"{spool}-shm")) if p.exists()]


def save_spool(spool: Path, into: Path) -> None:
    """A copy of the spool file as a stopped sidecar left it (with its WAL)."""
    into.mkdir()
    for p in spool_files(spool):
        shutil.copy2(p, into / p.name)


def put_back_spool(spool: Path, saved: Path) -> None:
    for p in spool_files(spool):
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, spool.parent / p.name)


# ---- 1. a kill between the replay's flush and the journal's clear: the second replay --------------------------
#
# SpooledJournal.settle forgets the journal once store.flush says what the replay changed is written. A stop between
# the two (the window is the whole outage when the database drops again right after the load: flush waits for the
# database, and the calls of the loaded run go to the spool's states) leaves the journal in the spool; the next
# start replays it again on a stored state that already holds it AND whatever the loaded run did after. The module
# docstring calls that harmless ("pauses and resumes are replayed at the times they were made, an allowed order by
# its client order id"); it is not for calls the loaded run made after the replay. The test reproduces the window
# exactly: the spool file as the never-loaded run left it is put back after the loaded run stopped cleanly.


async def double_replay(rig: SpoolRig, first_run: object, loaded_run: object,
                        *extra: str) -> tuple[SidecarProcess, str]:
    """Run 1 with the database cut (`first_run(sidecar)`), SIGKILL; run 2 loads, replays, settles, then
    `loaded_run(sidecar)`, SIGTERM; the spool of run 1 is put back; run 3 is started (returned, running)."""
    rig.proxy.cut()
    first = await spawn(rig, "never-loaded", *extra)
    try:
        await first_run(first)  # type: ignore[operator]
    finally:
        kill(first)
    journaled = spooled_journal(rig.spool)
    assert journaled > 0
    save_spool(rig.spool, rig.tmp / "saved-spool")
    rig.proxy.restore()
    second = await spawn(rig, "loaded", *extra)
    try:
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), second.log()[-3000:]
        await loaded_run(second)  # type: ignore[operator]
    finally:
        await term(second)
    put_back_spool(rig.spool, rig.tmp / "saved-spool")
    assert spooled_journal(rig.spool) == journaled
    third = await spawn(rig, "replayed-again", *extra)
    return third, f"journal of {journaled} calls replayed twice"


@pytest.mark.xfail(strict=True, reason=(
    "Narrowed, not gone: the load now spools a REPLAYED marker (each trader's version after the replay) right after "
    "it, and the next start skips the calls a state at that version holds "
    "(test_spooled_journal.py::test_a_journal_replayed_before_a_stop_that_kept_it_is_not_replayed_again_over_a_later_"
    "resume). This test puts back the spool file of before the loaded run, i.e. a stop before that marker's commit "
    "(milliseconds after the load): the never-loaded run's HALT is replayed again over the operator's later resume, "
    "and the trader is HALTED (fail-closed). Closing it needs the marker in the same transaction as the load's "
    "effect, which is in PostgreSQL, not in the spool."))
async def test_an_operator_resume_after_the_replay_is_not_undone_by_a_stop_before_the_journal_is_cleared(
        rig: SpoolRig) -> None:
    async def never_loaded(sp: SidecarProcess) -> None:
        async with grpc.aio.insecure_channel(sp.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            await adg.AdminServiceStub(ch).PauseTrading(halt(), timeout=10)

    async def loaded(sp: SidecarProcess) -> None:
        assert (await ask(sp)).state.trading_state == t.TRADING_STATE_HALTED
        async with grpc.aio.insecure_channel(sp.address) as ch:
            await adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(**BOT), timeout=10)
        assert (await ask(sp)).allowed

    third, _ = await double_replay(rig, never_loaded, loaded)
    try:
        after = await ask(third)
    finally:
        await term(third)
    assert after.allowed and after.state.trading_state == t.TRADING_STATE_ACTIVE, after


BUY = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, price=50_000.0, client_order_id="o-22")


# Found here, fixed (persistence.py, Persistence._finished_already): the second replay of the never-loaded run's allowed
# order (reserve_order) found the order finished (filled in the loaded run), popped it from finished_orders and
# reserved it again (RiskEngine.reserve_order is idempotent only against a pending order of that id): daily_orders and
# daily_order_notional counted it twice, and the replayed ReportOrder FILLED filled the phantom again, doubling the
# position (0.02 instead of 0.01 BTC), which feeds every exposure check and the reduce-only judgement.


async def test_a_filled_order_of_a_never_loaded_run_is_not_counted_again_by_a_stop_before_the_journal_is_cleared(
        rig: SpoolRig) -> None:
    """The never-loaded run allows an order and sees it filled; the loaded run holds it as finished; the journal is
    replayed a second time: the order counts once (daily orders, pending) and the position is 0.01, not 0.02."""
    async def never_loaded(sp: SidecarProcess) -> None:
        async with grpc.aio.insecure_channel(sp.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            allowed = await risk.CanTrade(rs.CanTradeRequest(**BOT, order=BUY), timeout=10)
            assert allowed.allowed, allowed
            await risk.ReportOrder(rs.ReportOrderRequest(**BOT, client_order_id="o-22", status=t.ORDER_STATUS_FILLED,
                                                         filled_quantity=0.01, average_price=50_000.0), timeout=10)
            await adg.AdminServiceStub(ch).PauseTrading(halt(duration_s=0.5), timeout=10)  # (committed: a barrier)

    async def loaded(sp: SidecarProcess) -> None:
        state = (await ask(sp)).state
        assert (state.daily_orders, state.pending_order_count) == (1, 0), state
        assert [(p.symbol, p.quantity) for p in state.positions] == [("BTCUSDT", 0.01)], state

    third, _ = await double_replay(rig, never_loaded, loaded, "--unloaded-state-policy", "memory")
    try:
        state = (await ask(third)).state
    finally:
        await term(third)
    assert (state.daily_orders, state.pending_order_count) == (1, 0), state
    assert [(p.symbol, p.quantity) for p in state.positions] == [("BTCUSDT", 0.01)], state


async def test_a_trade_and_a_breach_replayed_twice_count_once(rig: SpoolRig) -> None:
    """The journal's trades and equity reports are harmless to replay twice (ids and levels): one trade row, one
    consecutive loss, the daily loss of the never-loaded run's breach, and nothing more from a later equity."""
    cfg = t.RiskConfiguration(account_id=BOT["account_id"], config_id="c22", is_active=True,
                              max_position_size_percentage=100.0, daily_max_drawdown_percentage=5.0)
    first = await spawn(rig, "config")
    async with grpc.aio.insecure_channel(first.address) as ch:
        await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=cfg), timeout=10)
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
    await term(first)

    async def never_loaded(sp: SidecarProcess) -> None:
        async with grpc.aio.insecure_channel(sp.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportTrade(trade("tr-1"), timeout=10)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_400.0), timeout=10)  # -6 %: a breach
        assert await eventually(lambda: spooled_journal(rig.spool) >= 2, timeout=20)

    async def loaded(sp: SidecarProcess) -> None:
        assert (await ask(sp)).code == t.DECISION_CODE_DAILY_LOSS_LIMIT

    third, _ = await double_replay(rig, never_loaded, loaded)
    try:
        after = await ask(third)
        async with grpc.aio.insecure_channel(third.address) as ch:
            dup = await rsg.RiskServiceStub(ch).ReportTrade(trade("tr-1"), timeout=10)
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), third.log()[-3000:]
    finally:
        await term(third)
    assert dup.duplicate
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, after
    assert after.state.consecutive_losses == 1 and after.state.current_equity == 9_400.0, after.state
    assert sql(rig.url, "SELECT trade_id FROM trade_reports WHERE trader_id = 'bot-22'") == [("tr-1",)]


# ---- 2. several restarts in a row with the database cut ----------------------------------------------------


async def test_journals_of_three_runs_that_never_loaded_are_replayed_in_order_and_once(rig: SpoolRig) -> None:
    """Run 1 (cut): equity, trade tr-1, HALT; SIGKILL. Run 2 (cut): halted from run 1's journal, tr-1 again is a
    duplicate, tr-2, the operator resumes; SIGKILL. Run 3 (cut): resumed (order kept), a third trade; then the
    database returns: three trades stored once each, the resume in force, the journal forgotten; run 4 agrees."""
    rig.proxy.cut()
    one = await spawn(rig, "one", *MEMORY)
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            await risk.ReportTrade(trade("tr-1"), timeout=10)
            await adg.AdminServiceStub(ch).PauseTrading(halt("run one"), timeout=10)
    finally:
        kill(one)
    assert spooled_journal(rig.spool) == 3

    two = await spawn(rig, "two", *MEMORY)
    try:
        halted = await ask(two)
        async with grpc.aio.insecure_channel(two.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            again = await risk.ReportTrade(trade("tr-1"), timeout=10)
            await risk.ReportTrade(trade("tr-2"), timeout=10)
            await adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(**BOT), timeout=10)
        resumed = await ask(two)
    finally:
        kill(two)
    assert halted.state.trading_state == t.TRADING_STATE_HALTED, halted
    assert again.duplicate
    assert resumed.state.trading_state == t.TRADING_STATE_ACTIVE, resumed

    three = await spawn(rig, "three", *MEMORY)
    try:
        still = await ask(three)
        async with grpc.aio.insecure_channel(three.address) as ch:
            third_trade = await rsg.RiskServiceStub(ch).ReportTrade(trade("tr-3"), timeout=10)
        rig.proxy.restore()
        assert await eventually(lambda: "stored state loaded late" in three.log(), timeout=60), three.log()[-3000:]
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), three.log()[-3000:]
        loaded = await ask(three)
    finally:
        await term(three)
    four = await spawn(rig, "four", *MEMORY)
    try:
        last = await ask(four)
    finally:
        await term(four)

    assert still.state.trading_state == t.TRADING_STATE_ACTIVE and not third_trade.duplicate, still
    for answer in (loaded, last):
        assert answer.allowed and answer.state.trading_state == t.TRADING_STATE_ACTIVE, answer
        assert answer.state.consecutive_losses == 3, answer.state  # each trade counted once
    assert sql(rig.url, "SELECT trade_id FROM trade_reports WHERE trader_id = 'bot-22' ORDER BY trade_id") == [
        ("tr-1",), ("tr-2",), ("tr-3",)]


async def test_a_timed_pause_of_a_never_loaded_run_is_over_after_its_time_at_the_next_start(rig: SpoolRig) -> None:
    """A 2 s HALT made while the database is cut, SIGKILL; the next start (still cut, then loaded) comes after the
    2 s: the replay (at the time the pause was made) must not put it in force again from the restart's time."""
    rig.proxy.cut()
    one = await spawn(rig, "one")
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            paused = await adg.AdminServiceStub(ch).PauseTrading(halt("two seconds", duration_s=2.0), timeout=10)
    finally:
        kill(one)
    ends = paused.state.paused_until.ToDatetime().timestamp()
    await asyncio.sleep(max(0.0, ends - time.time()) + 0.5)  # a wall-clock duration, no event to await
    two = await spawn(rig, "two", "--unloaded-state-policy", "memory")
    try:
        cut = await ask(two)
        rig.proxy.restore()
        assert await eventually(lambda: "stored state loaded late" in two.log(), timeout=60), two.log()[-3000:]
        loaded = await ask(two)
    finally:
        await term(two)
    assert cut.allowed and cut.state.trading_state == t.TRADING_STATE_ACTIVE, cut
    assert loaded.allowed and loaded.state.trading_state == t.TRADING_STATE_ACTIVE, loaded


async def test_an_order_retried_after_a_restart_in_an_outage_counts_once_and_its_fill_once(rig: SpoolRig) -> None:
    """Run 1 (cut) allows o-22 and dies before the bot got the answer; run 2 (still cut) gets the retry of the same
    CanTrade, then the fill; the database returns: one order counted, none pending, the position filled once."""
    rig.proxy.cut()
    one = await spawn(rig, "one", *MEMORY)
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        first = await ask(one, BUY)
        assert await eventually(lambda: spooled_journal(rig.spool) >= 2, timeout=20)
    finally:
        kill(one)
    two = await spawn(rig, "two", *MEMORY)
    try:
        retried = await ask(two, BUY)
        async with grpc.aio.insecure_channel(two.address) as ch:
            await rsg.RiskServiceStub(ch).ReportOrder(rs.ReportOrderRequest(
                **BOT, client_order_id="o-22", status=t.ORDER_STATUS_FILLED, filled_quantity=0.01,
                average_price=50_000.0), timeout=10)
        rig.proxy.restore()
        assert await eventually(lambda: "stored state loaded late" in two.log(), timeout=60), two.log()[-3000:]
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), two.log()[-3000:]
        loaded = (await ask(two)).state
    finally:
        await term(two)
    three = await spawn(rig, "three", *MEMORY)
    try:
        last = (await ask(three)).state
    finally:
        await term(three)
    assert first.allowed and retried.allowed, (first, retried)
    for state in (loaded, last):
        assert (state.daily_orders, state.pending_order_count) == (1, 0), state
        assert [(p.symbol, p.quantity) for p in state.positions] == [("BTCUSDT", 0.01)], state


async def test_the_database_returning_during_a_burst_of_trades_stores_each_trade_once(rig: SpoolRig) -> None:
    """A run that never loaded left trades in the spool; the next run (cut) takes a burst of trades and the
    database returns in the middle of it (load, replay and settle racing the calls): every trade id is stored
    once, counted once, and the journal is forgotten."""
    rig.proxy.cut()
    one = await spawn(rig, "one", *MEMORY)
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            for i in range(5):
                await risk.ReportTrade(trade(f"r1-{i}", pnl=-1.0), timeout=10)
        assert await eventually(lambda: spooled_journal(rig.spool) >= 6, timeout=20)
    finally:
        kill(one)
    two = await spawn(rig, "two", *MEMORY)
    try:
        async with grpc.aio.insecure_channel(two.address) as ch:
            risk = rsg.RiskServiceStub(ch)

            async def burst(worker: int) -> int:
                dups = 0
                for i in range(40):
                    if worker == 0 and i == 10:
                        rig.proxy.restore()
                    reply = await risk.ReportTrade(trade(f"r2-{i % 30}", pnl=-1.0), timeout=10)  # 10 retried ids
                    dups += reply.duplicate
                return dups

            dups = await asyncio.gather(*(burst(w) for w in range(4)))
        assert await eventually(lambda: "stored state loaded late" in two.log(), timeout=60), two.log()[-3000:]
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), two.log()[-3000:]
        loaded = (await ask(two)).state
    finally:
        await term(two)
    stored = sql(rig.url, "SELECT trade_id, count(*) FROM trade_reports GROUP BY trade_id HAVING count(*) > 1")
    total = sql(rig.url, "SELECT count(*) FROM trade_reports")
    assert stored == [] and total == [(35,)], (stored, total)
    assert sum(dups) == 4 * 40 - 30, dups
    assert loaded.consecutive_losses == 35, loaded


@pytest.mark.parametrize("scope", ["account", "all_accounts"])
async def test_an_account_kill_switch_on_a_sidecar_that_never_loaded_is_refused_or_survives_a_sigkill(
        rig: SpoolRig, scope: str) -> None:
    """The account's (or every account's) HALT pressed while the database is cut from the start: either it is
    refused, or, answered OK, it is in force after a SIGKILL and the database's return. (Today: refused
    UNAVAILABLE, the scope's pause is written to the database first; never answered OK and then lost.)"""
    rig.proxy.cut()
    one = await spawn(rig, "one", *MEMORY)
    refused: grpc.StatusCode | None = None
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            req = ad.PauseTradingRequest(trading_state=t.TRADING_STATE_HALTED, reason=f"{scope} halt")
            if scope == "account":
                req.account_id = BOT["account_id"]
            else:
                req.all_accounts = True
            try:
                await adg.AdminServiceStub(ch).PauseTrading(req, timeout=10)
            except grpc.aio.AioRpcError as err:
                refused = err.code()
        in_force = await ask(one)
    finally:
        kill(one)
    rig.proxy.restore()
    two = await spawn(rig, "two", *MEMORY)
    try:
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), two.log()[-3000:]
        after = await ask(two)
    finally:
        await term(two)
    if refused is not None:
        assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), refused
        return
    assert not in_force.allowed and in_force.state.trading_state == t.TRADING_STATE_HALTED, in_force
    assert not after.allowed and after.state.trading_state == t.TRADING_STATE_HALTED, after


# Found here, fixed (persistence.py, Persistence.on_flags): while not loaded, the calls journaled while
# enable_persistence was off never went to the spool, even once it was on again; a SIGKILL then lost the HALT made
# meanwhile and the next start ALLOWED the trader (a loaded sidecar queues every trader's state when it is on again).
async def test_a_halt_made_while_persistence_was_off_is_kept_once_it_is_on_again_on_a_sidecar_that_never_loaded(
        rig: SpoolRig) -> None:
    """SetFeatureFlags persistence off, a HALT, persistence on again, all while the stored state is not loaded;
    then SIGKILL. As on a loaded sidecar (persistence on again queues every trader's current state), the HALT in
    force must not be lost: the next start has it."""
    rig.proxy.cut()
    one = await spawn(rig, "one", *MEMORY)
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            admin = adg.AdminServiceStub(ch)
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            for on in (False, None, True):
                if on is None:
                    await admin.PauseTrading(halt("made while persistence was off"), timeout=10)
                    continue
                await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(
                    enable_risk_enforcement=True, enable_persistence=on)), timeout=10)
            await rsg.RiskServiceStub(ch).ReportTrade(trade("after-on"), timeout=10)
        in_force = await ask(one)
        assert await eventually(lambda: spooled_journal(rig.spool) >= 2, timeout=20)
    finally:
        kill(one)
    rig.proxy.restore()
    two = await spawn(rig, "two", *MEMORY)
    try:
        after = await ask(two)
    finally:
        await term(two)
    assert in_force.state.trading_state == t.TRADING_STATE_HALTED, in_force
    assert not after.allowed and after.state.trading_state == t.TRADING_STATE_HALTED, after


# ---- 3. the spool file itself -------------------------------------------------------------------------------


async def test_a_corrupted_journal_row_is_skipped_and_the_other_calls_are_replayed(rig: SpoolRig) -> None:
    """One journal row overwritten with garbage (and one whose payload is a valid pickle of something else): the
    start does not fail, says which row it skips, replays the rest (the HALT is in force), forgets them all. The
    spool file and its WAL are owner-only."""
    rig.proxy.cut()
    one = await spawn(rig, "one")
    try:
        async with grpc.aio.insecure_channel(one.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            await rsg.RiskServiceStub(ch).ReportTrade(trade("tr-1"), timeout=10)
            await adg.AdminServiceStub(ch).PauseTrading(halt("kept"), timeout=10)
    finally:
        kill(one)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in spool_files(rig.spool)}
    conn = sqlite3.connect(rig.spool)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM journal ORDER BY seq")]
        conn.execute("UPDATE journal SET data = ? WHERE seq = ?", (b"\x80\x05garbage", seqs[1]))
        conn.execute("INSERT INTO journal (at, data) VALUES (?, ?)", (time.time(), b"\x80\x05K\x07."))  # int 7
        conn.commit()
    finally:
        conn.close()

    rig.proxy.restore()
    two = await spawn(rig, "two")
    try:
        answer = await ask(two)
        assert await eventually(lambda: spooled_journal(rig.spool) == 0, timeout=30), two.log()[-3000:]
    finally:
        await term(two)
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes  # owner-only, its WAL too
    assert not answer.allowed and answer.state.trading_state == t.TRADING_STATE_HALTED, answer
    assert answer.state.current_equity == 10_000.0
    assert "journaled call" in two.log() and "cannot be read" in two.log()
    assert sql(rig.url, "SELECT count(*) FROM trade_reports") == [(0,)]  # the garbled row was the trade


# ---- 4. cluster mode: a sidecar started while the database is cut ---------------------------------------------


# Found here, fixed (Persistence._forward_foreign_pauses): the HALT journaled on the unloaded sidecar for a trader
# another owns was skipped by the replay and forgotten; it is now forwarded to the owner as a control change.
async def test_an_operator_halt_on_an_unloaded_cluster_sidecar_for_a_trader_another_owns_reaches_the_owner(
        rig: SpoolRig) -> None:
    owner = await spawn(rig, "owner", sidecar_id="sc-a", spool=rig.tmp / "a.spool")
    other_proxy = await FaultProxy().start()
    try:
        async with grpc.aio.insecure_channel(owner.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        assert await eventually(lambda: sql(rig.url, "SELECT count(*) FROM risk_state")[0][0] == 1, timeout=20)
        other_proxy.cut()
        late = await spawn(rig, "late", sidecar_id="sc-b", spool=rig.tmp / "b.spool", proxy=other_proxy)
        try:
            async with grpc.aio.insecure_channel(late.address) as ch:
                await adg.AdminServiceStub(ch).PauseTrading(halt("operator on b"), timeout=10)
            other_proxy.restore()
            assert await eventually(lambda: "stored state loaded late" in late.log(), timeout=60), late.log()[-3000:]
            assert await eventually(lambda: spooled_journal(rig.tmp / "b.spool") == 0, timeout=30)

            async def owner_halted() -> bool:
                return (await ask(owner)).state.trading_state == t.TRADING_STATE_HALTED

            halted = await eventually(owner_halted, timeout=10)
        finally:
            await term(late)
    finally:
        await term(owner)
        await other_proxy.close()
    assert halted, "the HALT made on sidecar b never reached the owner"


# ---- 5. HTTP streams' budget -----------------------------------------------------------------------------------

ADMIN, TRADER = "attack22-admin-token-0123", "attack22-trader-token-0123"


async def test_http_streams_dropped_without_a_close_give_their_budget_back_and_the_kill_switch_always_answers(
) -> None:
    """A bot fills http_max_streams with raw sockets that read nothing and are then reset; meanwhile a burst of
    unary calls (more than http_max_concurrent) and the operator's kill switch over HTTP: the kill switch is
    answered 200, the streams' budget is given back once the sockets are gone."""
    async with running_sidecar(http_listen="127.0.0.1:0", admin_token=ADMIN, trader_token=TRADER,
                               http_max_concurrent=4, http_max_streams=3, max_watchers_per_trader=0) as sc, \
            aiohttp.ClientSession() as http:
        base, bot = f"http://{sc.http_address}", {"Authorization": f"Bearer {TRADER}"}
        operator = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(f"{base}/v1/risk/report-equity", headers=bot, json={**BOT, "equity": 10_000}) as ok:
            assert ok.status == 200
        host, port = sc.http_address.rsplit(":", 1)
        socks = []
        for _ in range(3):
            s = socket.create_connection((host, int(port)))
            s.sendall(f"GET /v1/risk/watch?trader_id={BOT['trader_id']}&account_id={BOT['account_id']} HTTP/1.1\r\n"
                      f"Host: {sc.http_address}\r\nAuthorization: Bearer {TRADER}\r\n\r\n".encode())
            socks.append(s)
        assert await eventually(lambda: sc.admission.in_progress["http_stream"] == 3, timeout=10)

        async def unary(i: int) -> int:
            async with http.post(f"{base}/v1/risk/can-trade", headers=bot, json=BOT) as reply:
                return reply.status

        burst = asyncio.gather(*(unary(i) for i in range(40)))
        async with http.post(f"{base}/v1/admin/pause-trading", headers=operator,
                             json={**BOT, "trading_state": "TRADING_STATE_HALTED", "reason": "incident"}) as paused:
            paused_status = paused.status
        statuses = await burst
        async with http.get(f"{base}/v1/risk/watch", headers=bot, params=BOT) as busy:
            busy_status = busy.status
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        released = await eventually(lambda: sc.admission.in_progress["http_stream"] == 0, timeout=20)
        async with http.get(f"{base}/v1/risk/watch", headers=bot, params=BOT) as again:
            again_status = again.status
        assert sc.engine.traders[BOT["trader_id"]].pauses

    assert paused_status == 200
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
    assert busy_status == 429
    assert released, "streams whose client reset the connection still hold the budget"
    assert again_status == 200


# ---- 6. the dead-man's switch of evicted traders (single mode) -----------------------------------------------

IDLE_S = 60.0
HB_S = 10.0
PEER = {"trader_id": "bot-22b", "account_id": BOT["account_id"]}


@pytest.fixture
async def bounded(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{tmp_path / 'attack22.db'}",
                               enable_persistence=True, trader_idle_evict_seconds=IDLE_S) as sc:
        yield sc




async def evicted_then_heartbeat(sc: Sidecar, clock: ManualClock, risk: rsg.RiskServiceStub,
                                 admin: adg.AdminServiceStub, *bots: dict[str, str]) -> None:
    """`bots` report, go idle and are evicted; then the account gets a heartbeat, armed by a scan (time T)."""
    for bot in bots:
        await risk.ReportEquity(rs.ReportEquityRequest(**bot, equity=10_000.0), timeout=10)
    clock.advance(10 * IDLE_S)
    assert await evict_idle(sc) == len(bots)
    await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
        account_id=BOT["account_id"], config_id="hb22", is_active=True, heartbeat_timeout_seconds=int(HB_S))),
        timeout=10)
    sc.deadman.scan()


async def test_an_evicted_bot_back_exactly_at_the_heartbeat_timeout_is_paused_and_a_hair_before_is_not(
        bounded: Sidecar, clock: ManualClock) -> None:
    """The reload judges like `scan` (silent for the timeout or more: tripped): the bot back exactly HB_S after the
    heartbeat came into effect is HALTED before its call is answered; its peer back a millisecond earlier is not."""
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(bounded, clock, risk, admin, BOT, PEER)
        clock.advance(HB_S - 0.001)
        early = await risk.CanTrade(rs.CanTradeRequest(**PEER), timeout=10)
        clock.advance(0.001)
        exact = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    assert early.allowed, early.reason
    assert not exact.allowed and exact.state.trading_state == t.TRADING_STATE_HALTED, exact.reason


async def test_a_heartbeat_removed_then_added_again_counts_an_evicted_bot_from_the_new_one(
        bounded: Sidecar, clock: ManualClock) -> None:
    """Heartbeat on, off (a scan sees it off), the bot evicted meanwhile, on again: the count starts at the scan
    that found the new heartbeat, not at the first one (the bot back 5 s after the new one is allowed), and the
    bot silent past the new timeout is paused when it comes back."""
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(bounded, clock, risk, admin, BOT, PEER)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=BOT["account_id"], config_id="hb22", is_active=True)), timeout=10)
        bounded.deadman.scan()
        clock.advance(10 * HB_S)
        bounded.deadman.scan()
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=BOT["account_id"], config_id="hb22", is_active=True,
            heartbeat_timeout_seconds=int(HB_S))), timeout=10)
        bounded.deadman.scan()
        clock.advance(HB_S / 2)
        back = await risk.CanTrade(rs.CanTradeRequest(**PEER), timeout=10)
        clock.advance(HB_S)
        late = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    assert back.allowed, back.reason
    assert not late.allowed and late.state.trading_state == t.TRADING_STATE_HALTED, late.reason


# Found here, fixed (engine/heartbeat.py, DeadMansSwitch.heard): the reload of an evicted trader recorded it as
# heard whoever's call loaded it, so a dashboard's GetRiskState 5 s into a 10 s heartbeat postponed the trip of a
# silent bot by 5 s (GetRiskState is never heard for a trader in memory).
async def test_an_operators_read_of_an_evicted_trader_does_not_count_as_its_heartbeat(
        bounded: Sidecar, clock: ManualClock) -> None:
    """A dashboard's GetRiskState (not a bot call: it is never 'heard' for a trader in memory) loads an evicted
    trader back 5 s into a 10 s heartbeat: the bot stays silent, so it must be tripped 10 s after the heartbeat came
    into effect, not 10 s after the dashboard looked."""
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await evicted_then_heartbeat(bounded, clock, risk, admin, BOT)
        clock.advance(HB_S / 2)
        await risk.GetRiskState(rs.GetRiskStateRequest(**BOT), timeout=10)
        assert BOT["trader_id"] in bounded.engine.traders
        clock.advance(HB_S / 2 + 1)
        tripped = bounded.deadman.scan()
        asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    assert tripped == [BOT["trader_id"]]
    assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_HALTED, asked.reason
