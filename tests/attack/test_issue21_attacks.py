"""Attacks on issue 21's features in combination (restore, spool, bounded traders, retention), through the public
interfaces: gRPC on port 0 over real SQLite / PostgreSQL. Each test names the behaviour that must hold; a defect
found here is fixed or marked xfail(strict) with its reason."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.pg import fresh_database, plain_dsn
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
from tradeguard_server.sidecar import Sidecar, StartupError

pytestmark = pytest.mark.integration

TOKEN = "attack21-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
IDLE_S = 60.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test (leases and control state of one test must not meet the next's
    manual clock)."""
    with fresh_database("tg_attack21") as url:
        yield url
BOT = {"trader_id": "bot-21", "account_id": "acct-21"}


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'attack21.db'}"


@pytest.fixture
async def bounded(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock, database_url=sqlite_url(tmp_path), enable_persistence=True,
                               admin_token=TOKEN, trader_idle_evict_seconds=IDLE_S) as sc:
        yield sc


@pytest.fixture(params=["postgresql", "sqlite"])
async def bounded_any(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Sidecar]:
    """Bounded traders in cluster mode (PostgreSQL: eviction releases the lease) and single mode (SQLite)."""
    url = sqlite_url(tmp_path) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    async with running_sidecar(clock=clock, database_url=url, enable_persistence=True, admin_token=TOKEN,
                               sidecar_id="sc-a", trader_idle_evict_seconds=IDLE_S) as sc:
        yield sc




async def history(admin: adg.AdminServiceStub) -> list[t.RiskStateHistoryEntry]:
    reply = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(**BOT, page_size=1000),
                                             metadata=AUTH, timeout=10)
    return list(reply.entries)


def restore(at: Timestamp, reason: str = "attack21", dry_run: bool = False) -> ad.RestoreRiskStateRequest:
    return ad.RestoreRiskStateRequest(**BOT, at=at, reason=reason, dry_run=dry_run)


# ---- 1. restore x bounded traders -------------------------------------------------------------------------


async def test_restore_of_an_evicted_trader_puts_back_the_paused_state_it_recorded(
        bounded_any: Sidecar, clock: ManualClock) -> None:
    """A trader paused by a breach, resumed by the operator, then idle and evicted: the operator restores it to the
    time it was paused. The restore must load it and put the pause back (CanTrade denied), not fail UNAVAILABLE
    'loaded again on its next call' for ever (the restore itself never loads it) nor build a fresh state."""
    async with grpc.aio.insecure_channel(bounded_any.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(1)
        breach = await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=8_000.0), timeout=10)
        assert breach.state.trading_state != t.TRADING_STATE_ACTIVE
        paused_point = (await history(admin))[-1]
        assert paused_point.state.trading_state != t.TRADING_STATE_ACTIVE
        clock.advance(1)
        await admin.ResumeTrading(ad.ResumeTradingRequest(**BOT), metadata=AUTH, timeout=10)
        assert (await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)).allowed
        clock.advance(10 * IDLE_S)
        assert await evict_idle(bounded_any) == 1
        assert BOT["trader_id"] not in bounded_any.engine.traders

        dry = await admin.RestoreRiskState(restore(paused_point.recorded_at, dry_run=True), metadata=AUTH,
                                           timeout=10)
        done = await admin.RestoreRiskState(restore(paused_point.recorded_at), metadata=AUTH, timeout=10)
        asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert dry.previous_state.current_equity == 8_000.0  # the stored state, not a fresh trader's
    assert done.state.trading_state == paused_point.state.trading_state
    assert not asked.allowed and asked.state.trading_state == paused_point.state.trading_state


async def test_an_account_kill_switch_pressed_while_a_trader_is_evicted_denies_its_next_call(
        bounded_any: Sidecar, clock: ManualClock) -> None:
    bounded = bounded_any
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        await risk.ReportTrade(rs.ReportTradeRequest(**BOT, trade_id="t-1", symbol="BTCUSDT", side=t.SIDE_SELL,
                                                     realized_pnl=-10.0), timeout=10)
        clock.advance(2 * 3_600.0)  # past the fill rate window too
        assert await evict_idle(bounded) == 1
        await admin.PauseTrading(ad.PauseTradingRequest(account_id=BOT["account_id"],
                                                        trading_state=t.TRADING_STATE_HALTED, reason="account kill"),
                                 metadata=AUTH, timeout=10)
        asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        dup = await risk.ReportTrade(rs.ReportTradeRequest(**BOT, trade_id="t-1", symbol="BTCUSDT",
                                                           side=t.SIDE_SELL, realized_pnl=-10.0), timeout=10)

    assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_HALTED
    assert dup.duplicate


async def test_restore_to_a_breach_pause_holds_after_a_restart_with_idle_eviction(
        tmp_path: Path, clock: ManualClock) -> None:
    """Restore to the breach, restart: the restarted sidecar's start-up load (which leaves idle traders in the
    store) must keep the trader paused: its first CanTrade is denied."""
    settings = {"database_url": sqlite_url(tmp_path), "enable_persistence": True, "admin_token": TOKEN,
                "trader_idle_evict_seconds": IDLE_S}
    async with running_sidecar(clock=clock, **settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(1)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=8_000.0), timeout=10)
        point = (await history(admin))[-1]
        clock.advance(1)
        await admin.ResumeTrading(ad.ResumeTradingRequest(**BOT), metadata=AUTH, timeout=10)
        clock.advance(1)
        done = await admin.RestoreRiskState(restore(point.recorded_at), metadata=AUTH, timeout=10)
        assert done.state.trading_state == point.state.trading_state
    clock.advance(10 * IDLE_S)
    async with running_sidecar(clock=clock, **settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        asked = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    assert not asked.allowed and asked.state.trading_state == point.state.trading_state


# ---- 1. restore: odd points in time ---------------------------------------------------------------------


async def test_restore_at_exactly_a_rows_recorded_at_picks_that_row_and_odd_times_are_answered_cleanly(
        bounded_any: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(bounded_any.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        clock.advance(0.123456789)  # a recorded_at with sub-microsecond digits
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(0.000001)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_100.0), timeout=10)
        rows = await history(admin)
        exact = [await admin.RestoreRiskState(restore(r.recorded_at, dry_run=True), metadata=AUTH, timeout=10)
                 for r in rows]
        codes = {}
        for name, at in (("year 1", Timestamp(seconds=-62_135_596_800)),
                         ("last nanosecond of year 9999", Timestamp(seconds=253_402_300_799, nanos=999_999_999)),
                         ("year 9999", Timestamp(seconds=253_402_300_799)),
                         ("epoch", Timestamp(seconds=0))):
            try:
                reply = await admin.RestoreRiskState(restore(at, dry_run=True), metadata=AUTH, timeout=10)
                codes[name] = reply.state.current_equity
            except grpc.aio.AioRpcError as err:
                codes[name] = (err.code(), (err.details() or "").split(": ")[1])

    assert [e.recorded_at for e in exact] == [r.recorded_at for r in rows]
    assert [e.state.current_equity for e in exact] == [r.state.current_equity for r in rows]
    # every refusal names the field: the last nanosecond of year 9999 used to answer "request: ValueError: year
    # 10000 is out of range" (the float rounds up past the range the validation checked)
    bad_at = (grpc.StatusCode.INVALID_ARGUMENT, "at")
    assert codes == {"year 1": bad_at, "last nanosecond of year 9999": bad_at, "year 9999": 10_100.0,
                     "epoch": bad_at}


# ---- 2. the spool x operator changes x SIGKILL ------------------------------------------------------------

ACCT_CFG = t.RiskConfiguration(account_id=BOT["account_id"], config_id="c21", is_active=True,
                               max_position_size_percentage=100.0, daily_max_drawdown_percentage=5.0)


@dataclass
class SpoolRig:
    proxy: FaultProxy
    url: str
    tmp: Path
    spool: Path

    async def spawn(self, name: str) -> SidecarProcess:
        args = ["--database-url", self.proxy.url_for(self.url), "--sidecar-id", "attack21", "--spool-path",
                str(self.spool), "--drain-timeout-s", "2", "--stop-trading-minutes", "600",
                "--control-state-stale-action", "serve"]
        return await asyncio.to_thread(spawn_sidecar, self.tmp, *args, name=name, timeout=60)


@pytest.fixture
async def spool_rig(pg_url: str, tmp_path: Path) -> AsyncIterator[SpoolRig]:
    proxy = await FaultProxy().start()
    try:
        yield SpoolRig(proxy, pg_url, tmp_path, tmp_path / "spool.db")
    finally:
        await proxy.close()


def spool_rig_fixture(database_prefix: str) -> Any:
    """Fixture factory: a SpoolRig on a fresh database named after `database_prefix` (dropped after the test)."""

    @pytest.fixture
    async def _rig(tmp_path: Path) -> AsyncIterator[SpoolRig]:
        with fresh_database(database_prefix) as url:
            proxy = await FaultProxy().start()
            try:
                yield SpoolRig(proxy, url, tmp_path, tmp_path / "spool.db")
            finally:
                await proxy.close()

    return _rig


def spool_count(path: Path, query: str) -> int:
    """A count read from a spool file (read-only; 0 when the file or its table is not there yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def spooled_state(path: Path) -> int:
    return spool_count(path, "SELECT count(*) FROM spool WHERE kind = 'state'")


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url), autocommit=True) as conn:
        return list(conn.execute(query).fetchall())  # type: ignore[arg-type,unused-ignore]


def kill(sp: SidecarProcess) -> None:
    os.kill(sp.proc.pid, signal.SIGKILL)
    sp.proc.wait(timeout=10)


def stop(sp: SidecarProcess, sig: signal.Signals) -> None:
    """SIGKILL, or SIGTERM and a clean exit."""
    if sig is signal.SIGKILL:
        kill(sp)
    else:
        assert sp.terminate(sig, 30) == 0, sp.log()[-3000:]


def spooled_journal(path: Path) -> int:
    """Calls journaled in the spool by a sidecar whose stored state was not loaded."""
    return spool_count(path, "SELECT count(*) FROM journal")


# Found here, fixed (store/spooled_journal.py): while the stored state was not loaded (a start with the database cut,
# answered from the spool) every change was journaled in memory only, so a SIGKILL or a SIGTERM before the database
# returned lost the operator's HALT (and every trade and breach of that run). The journal now goes to the spool too.


@pytest.mark.parametrize("second_stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_an_operator_halt_made_on_a_sidecar_started_from_the_spool_survives_its_stop_before_the_database_returns(
        spool_rig: SpoolRig, second_stop: signal.Signals) -> None:
    """Breach in an outage, SIGKILL, start with the database still cut (paused from the spool), the operator
    halts the trader there, that sidecar stops (SIGKILL / SIGTERM), a third start (still cut), then the database
    comes back: the stored state must be the operator's halt, not the older spooled breach state."""
    rig = spool_rig
    ids = dict(BOT)
    first = await rig.spawn("first")
    async with grpc.aio.insecure_channel(first.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=ACCT_CFG), timeout=10)
        await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000.0), timeout=10)
        assert await eventually(lambda: sql(rig.url, "SELECT count(*) FROM risk_state")[0][0] == 1, timeout=20)
        rig.proxy.cut()  # (the state spooled from here on is the breach's)
        breach = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_000.0), timeout=10)
    assert breach.state.trading_state == t.TRADING_STATE_REDUCING
    assert await eventually(lambda: spooled_state(rig.spool) >= 1, timeout=20)
    kill(first)

    second = await rig.spawn("second")
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            asked = await risk.CanTrade(rs.CanTradeRequest(**ids), timeout=10)
            assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_REDUCING, asked
            await admin.PauseTrading(ad.PauseTradingRequest(**ids, trading_state=t.TRADING_STATE_HALTED,
                                                            reason="newer operator halt"), timeout=10)
            halted = await risk.CanTrade(rs.CanTradeRequest(**ids), timeout=10)
        assert not halted.allowed and halted.state.trading_state == t.TRADING_STATE_HALTED, halted
        assert spooled_journal(rig.spool) >= 1, "the kill switch answered before its call was in the spool"
    finally:
        stop(second, second_stop)

    third = await rig.spawn("third")
    try:
        async with grpc.aio.insecure_channel(third.address) as ch:
            still = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**ids), timeout=10)
        rig.proxy.restore()
        assert await eventually(lambda: "stored state loaded late" in third.log(), timeout=60), third.log()[-3000:]
        async with grpc.aio.insecure_channel(third.address) as ch:
            after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**ids), timeout=10)
    finally:
        assert await asyncio.to_thread(third.terminate, signal.SIGTERM, 30) == 0
    stored = sql(rig.url, "SELECT trading_state, pauses::text FROM risk_state WHERE trader_id = 'bot-21'")

    assert not after.allowed and after.state.trading_state == t.TRADING_STATE_HALTED, after
    assert stored and stored[0][0] == "HALTED" and "newer operator halt" in str(stored[0][1]), stored
    assert not still.allowed and still.state.trading_state == t.TRADING_STATE_HALTED, still
    assert spooled_journal(rig.spool) == 0, "the replayed calls are forgotten once what they changed is written"


# ---- 1. restore x account kill switch x pending orders; 3. max_traders x operator pause -------------------

BUY = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=50_000.0, client_order_id="o-21")


async def test_restore_keeps_a_live_account_kill_switch_and_the_pending_orders_and_brings_no_lifted_one_back(
        bounded: Sidecar, clock: ManualClock) -> None:
    account = {"account_id": BOT["account_id"]}
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(1)
        await admin.PauseTrading(ad.PauseTradingRequest(**account, trading_state=t.TRADING_STATE_HALTED,
                                                        reason="account kill 1"), metadata=AUTH, timeout=10)
        under_account_pause = (await history(admin))[-1]
        assert under_account_pause.state.trading_state == t.TRADING_STATE_HALTED
        clock.advance(1)
        await admin.ResumeTrading(ad.ResumeTradingRequest(**account), metadata=AUTH, timeout=10)
        clock.advance(1)
        allowed = await risk.CanTrade(rs.CanTradeRequest(**BOT, order=BUY), timeout=10)
        assert allowed.allowed, allowed.reason
        clock.advance(1)
        # a restore to a time the account was paused must not bring that (lifted) account pause back
        back = await admin.RestoreRiskState(restore(under_account_pause.recorded_at), metadata=AUTH, timeout=10)
        free = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        live = (await risk.GetRiskState(rs.GetRiskStateRequest(**BOT), timeout=10)).state
        clock.advance(1)
        await admin.PauseTrading(ad.PauseTradingRequest(**account, trading_state=t.TRADING_STATE_HALTED,
                                                        reason="account kill 2"), metadata=AUTH, timeout=10)
        first_row = (await history(admin))[0]
        clock.advance(1)
        kept = await admin.RestoreRiskState(restore(first_row.recorded_at), metadata=AUTH, timeout=10)
        asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert back.state.trading_state == t.TRADING_STATE_ACTIVE and free.allowed, free.reason
    # the order is still at the venue: a restore never changes what is pending
    assert [o.client_order_id for o in back.state.pending_orders] == ["o-21"]
    assert [o.client_order_id for o in live.pending_orders] == ["o-21"]
    assert kept.state.trading_state == t.TRADING_STATE_HALTED and "account kill 2" in kept.state.pause_reason
    assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_HALTED


async def test_at_max_traders_an_operator_can_still_halt_a_new_trader_and_it_stays_halted(
        tmp_path: Path) -> None:
    settings = {"database_url": sqlite_url(tmp_path), "enable_persistence": True, "admin_token": TOKEN,
                "max_traders": 1}
    new = {"trader_id": "bot-new", "account_id": BOT["account_id"]}
    async with running_sidecar(**settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await risk.CanTrade(rs.CanTradeRequest(**new), timeout=10)
        await admin.PauseTrading(ad.PauseTradingRequest(**new, trading_state=t.TRADING_STATE_HALTED,
                                                        reason="pre-emptive"), metadata=AUTH, timeout=10)
        asked = await risk.CanTrade(rs.CanTradeRequest(**new), timeout=10)
    async with running_sidecar(**settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        again = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**new), timeout=10)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not asked.allowed and asked.state.trading_state == t.TRADING_STATE_HALTED
    assert not again.allowed and again.state.trading_state == t.TRADING_STATE_HALTED


async def test_a_restore_while_the_database_is_cut_is_unavailable_and_changes_nothing(
        pg_url: str, tmp_path: Path) -> None:
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True, admin_token=TOKEN,
                                   sidecar_id="sc-a", spool_path=str(tmp_path / "spool.db")) as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            before_breach = (await history(admin))[-1]
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=8_000.0), timeout=10)
            assert await sc.store.flush(10.0)
            proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.RestoreRiskState(restore(before_breach.recorded_at), metadata=AUTH, timeout=10)
            asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
            proxy.restore()
    finally:
        await proxy.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert not asked.allowed and asked.state.trading_state != t.TRADING_STATE_ACTIVE


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_a_restore_to_a_breach_then_an_immediate_sigkill_is_still_paused_after_the_restart(
        pg_url: str, tmp_path: Path, backend: str) -> None:
    url = pg_url if backend == "postgresql" else sqlite_url(tmp_path)
    args = ("--database-url", url, "--sidecar-id", "sc-k", "--stop-trading-minutes", "600")
    first = await asyncio.to_thread(spawn_sidecar, tmp_path, *args, name="first", timeout=60)
    try:
        async with grpc.aio.insecure_channel(first.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await admin.SaveConfig(ad.SaveConfigRequest(config=ACCT_CFG), timeout=10)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_000.0), timeout=10)
            point = (await history(admin))[-1]
            assert point.state.trading_state == t.TRADING_STATE_REDUCING
            await admin.ResumeTrading(ad.ResumeTradingRequest(**BOT), timeout=10)
            assert (await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)).allowed
            await admin.RestoreRiskState(restore(point.recorded_at), timeout=10)
    finally:
        kill(first)
    second = await asyncio.to_thread(spawn_sidecar, tmp_path, *args, name="second", timeout=60)
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            asked = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(second.terminate, signal.SIGTERM, 30) == 0
    assert not asked.allowed and asked.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, asked


# ---- 3. bounded traders x the dead-man's switch ---------------------------------------------------------


async def test_a_dead_mans_switch_configured_while_a_trader_is_evicted_still_trips_for_it(
        bounded: Sidecar, clock: ManualClock) -> None:
    """Found here: residency pins a trader for a heartbeat only while it is in memory, so a dead-man's switch
    configured after the trader was evicted never counted it (scan walks the traders in memory; the reload marked it
    heard): silent 30 s past a 10 s timeout, its next call was allowed while a kept trader of the account was HALTED.
    Now the reload judges its silence since the first scan that found the heartbeat, before the call is answered."""
    ctl = {"trader_id": "bot-ctl", "account_id": BOT["account_id"]}
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        clock.advance(10 * IDLE_S)
        await risk.ReportEquity(rs.ReportEquityRequest(**ctl, equity=10_000.0), timeout=10)
        assert await evict_idle(bounded) == 1 and BOT["trader_id"] in bounded.residency.evicted
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=BOT["account_id"], config_id="hb", is_active=True, heartbeat_timeout_seconds=10)),
            metadata=AUTH, timeout=10)
        bounded.deadman.scan()  # the first check after the heartbeat is configured starts the count
        clock.advance(30)
        tripped = bounded.deadman.scan()
        kept = await risk.CanTrade(rs.CanTradeRequest(**ctl), timeout=10)
        evicted = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)

    assert tripped == ["bot-ctl"] and not kept.allowed and kept.state.trading_state == t.TRADING_STATE_HALTED
    assert not evicted.allowed and evicted.state.trading_state == t.TRADING_STATE_HALTED, evicted.reason


# ---- 2. two sidecars, one spool path ---------------------------------------------------------------------


async def test_a_second_sidecar_given_a_spool_path_in_use_does_not_start_and_says_why(
        pg_url: str, tmp_path: Path) -> None:
    """Found here: two sidecars given one spool_path (an outage, 20 reports each) each replayed and deleted the other's
    rows: 20 history rows written twice, spool depths 20 and -20, and neither writer ever caught up again (flush
    False, so no eviction and every kill switch answered 'not stored yet'). Now the second one does not start."""
    spool = tmp_path / "shared-spool.db"
    settings = {"database_url": pg_url, "enable_persistence": True, "admin_token": TOKEN,
                "spool_path": str(spool)}
    async with running_sidecar(sidecar_id="sc-a", **settings) as a:
        with pytest.raises(StartupError) as err:
            async with running_sidecar(sidecar_id="sc-b", **settings):
                pass
        assert a.store.spool is not None and a.store.spool.depth == 0
    async with running_sidecar(sidecar_id="sc-b", **settings):  # free again once the first one stopped
        pass
    assert "spool_path" in str(err.value) and "in use by another running sidecar" in str(err.value)


# ---- 4. retention x restore x eviction ---------------------------------------------------------------------


def pos(symbol: str, qty: float) -> t.Position:
    return t.Position(symbol=symbol, exchange="binance", side=t.SIDE_BUY, quantity=qty, entry_price=100.0,
                      mark_price=100.0)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_after_a_prune_every_kept_history_row_is_a_whole_restore_point_across_evictions_and_restarts(
        pg_url: str, tmp_path: Path, clock: ManualClock, backend: str) -> None:
    url = pg_url if backend == "postgresql" else sqlite_url(tmp_path)
    settings = {"database_url": url, "enable_persistence": True, "admin_token": TOKEN, "sidecar_id": "sc-a",
                "trader_idle_evict_seconds": IDLE_S, "history_retention_days": 1.0}
    async with running_sidecar(clock=clock, **settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        await risk.ReportPositions(rs.ReportPositionsRequest(**BOT, positions=[pos("BTCUSDT", 1.0)]), timeout=10)
        for i in range(5):
            clock.advance(60)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0 + i), timeout=10)
        clock.advance(10 * IDLE_S)
        assert await evict_idle(sc) == 1
        clock.advance(86_400.0)  # everything so far is older than the retention
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_100.0), timeout=10)  # reloads it
        await risk.ReportPositions(rs.ReportPositionsRequest(**BOT, positions=[pos("ETHUSDT", 2.0)]), timeout=10)
        clock.advance(60)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_200.0), timeout=10)
        assert await sc.store.flush(10.0)
    clock.advance(2 * 86_400.0)  # now all but the next row are older than the retention
    async with running_sidecar(clock=clock, **settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_300.0), timeout=10)
        assert await sc.store.flush(10.0)
        assert sc.pruner is not None
        pruned = await sc.pruner.run_once()
        rows = await history(admin)
        answers = []
        for row in rows:
            try:
                reply = await admin.RestoreRiskState(restore(row.recorded_at, dry_run=True), metadata=AUTH,
                                                     timeout=10)
                answers.append(([p.symbol for p in reply.state.positions], reply.state.current_equity))
            except grpc.aio.AioRpcError as err:
                answers.append((err.code(), err.details()))
    assert pruned is not None and pruned.get("risk_state_history", 0) > 0, pruned
    # (rows of one call share its instant: a restore to that time is the last of them)
    last_at = {r.recorded_at.ToNanoseconds(): r for r in rows}
    assert answers == [([p.symbol for p in last_at[r.recorded_at.ToNanoseconds()].state.positions],
                        last_at[r.recorded_at.ToNanoseconds()].state.current_equity) for r in rows], answers
    assert rows[0].state.current_equity == 10_004.0  # the newest full row before the cutoff is kept


async def test_no_trader_is_evicted_while_the_database_is_cut_even_once_its_change_is_spooled(
        pg_url: str, tmp_path: Path, clock: ManualClock) -> None:
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(clock=clock, database_url=proxy.url_for(pg_url), enable_persistence=True,
                                   admin_token=TOKEN, sidecar_id="sc-a", trader_idle_evict_seconds=IDLE_S,
                                   spool_path=str(tmp_path / "spool.db")) as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            assert await sc.store.flush(10.0)
            proxy.cut()
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_990.0), timeout=10)
            assert await eventually(lambda: spooled_state(tmp_path / "spool.db") == 1, timeout=20)
            clock.advance(10 * IDLE_S)
            evicted = await sc.residency.evict_round() + await sc.residency.evict_round()
            in_memory = BOT["trader_id"] in sc.engine.traders
            asked = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
            proxy.restore()
    finally:
        await proxy.close()
    assert evicted == 0 and in_memory
    assert asked.allowed and asked.state.current_equity == 9_990.0


async def test_a_restore_made_in_shadow_mode_is_enforced_once_enforcement_is_on(tmp_path: Path) -> None:
    settings = {"database_url": sqlite_url(tmp_path), "enable_persistence": True, "admin_token": TOKEN,
                "stop_trading_minutes": 600}
    async with running_sidecar(enable_risk_enforcement=False, **settings) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=ACCT_CFG), metadata=AUTH, timeout=10)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_000.0), timeout=10)
        point = (await history(admin))[-1]
        await admin.ResumeTrading(ad.ResumeTradingRequest(**BOT), metadata=AUTH, timeout=10)
        done = await admin.RestoreRiskState(restore(point.recorded_at), metadata=AUTH, timeout=10)
        shadow = await risk.CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    async with running_sidecar(enable_risk_enforcement=True, **settings) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        enforced = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    assert done.state.trading_state == t.TRADING_STATE_REDUCING
    assert shadow.allowed and shadow.state.trading_state == t.TRADING_STATE_REDUCING  # shadow: not enforced
    assert not enforced.allowed and enforced.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, enforced


async def test_a_corrupted_spool_stops_the_start_naming_spool_path_and_is_kept(
        pg_url: str, tmp_path: Path) -> None:
    """Held (fail-stop by design): a spool that is not an SQLite file any more is not silently dropped (its paused
    states may be in it); the start fails naming the setting, and the file stays for the operator."""
    spool = tmp_path / "spool.db"
    proxy = await FaultProxy().start()
    try:
        settings = {"database_url": proxy.url_for(pg_url), "enable_persistence": True, "admin_token": TOKEN,
                    "spool_path": str(spool)}
        async with running_sidecar(**settings):
            pass
        proxy.cut()
        for leftover in tmp_path.glob("spool.db*"):
            leftover.unlink()
        spool.write_bytes(b"not a database " * 500)
        with pytest.raises(StartupError) as err:
            async with running_sidecar(**settings):
                pass
    finally:
        await proxy.close()
    assert "spool_path" in str(err.value) and "cannot open the spool" in str(err.value)
    assert spool.read_bytes().startswith(b"not a database ")


async def test_a_restore_racing_with_order_checks_keeps_every_allowed_order_pending(
        bounded: Sidecar, clock: ManualClock) -> None:
    async with grpc.aio.insecure_channel(bounded.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=100_000.0), timeout=10)
        point = (await history(admin))[-1]
        clock.advance(1)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=100_500.0), timeout=10)

        async def check(i: int) -> rs.CanTradeResponse:
            order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=50_000.0,
                                  client_order_id=f"race-{i}")
            return await risk.CanTrade(rs.CanTradeRequest(**BOT, order=order), timeout=10)

        results = await asyncio.gather(*[check(i) for i in range(20)],
                                       admin.RestoreRiskState(restore(point.recorded_at), metadata=AUTH, timeout=10),
                                       *[check(i) for i in range(20, 40)])
        live = (await risk.GetRiskState(rs.GetRiskStateRequest(**BOT), timeout=10)).state
    allowed = {f"race-{i}" for i, r in enumerate(results[:20] + results[21:]) if r.allowed}
    assert len(allowed) == 40
    assert {o.client_order_id for o in live.pending_orders} == allowed
    assert live.current_equity == 100_000.0 and live.daily_orders == 40


async def test_the_newest_spooled_change_wins_after_a_sigkill_in_an_outage_and_the_replay(spool_rig: SpoolRig) -> None:
    """On a loaded sidecar, in one outage: a breach, the operator's resume, then the operator's halt; SIGKILL; a
    start with the database still cut answers HALTED from the spool; the database back: HALTED is stored (the
    older spooled states and the pre-outage row do not win)."""
    rig = spool_rig
    first = await rig.spawn("first")
    try:
        async with grpc.aio.insecure_channel(first.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await admin.SaveConfig(ad.SaveConfigRequest(config=ACCT_CFG), timeout=10)
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
            assert await eventually(lambda: sql(rig.url, "SELECT count(*) FROM risk_state")[0][0] == 1, timeout=20)
            rig.proxy.cut()
            await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_000.0), timeout=10)
            await admin.ResumeTrading(ad.ResumeTradingRequest(**BOT), timeout=10)
            await admin.PauseTrading(ad.PauseTradingRequest(**BOT, trading_state=t.TRADING_STATE_HALTED,
                                                            reason="newest halt"), timeout=10)
            await asyncio.sleep(0.3)  # the spill window (50 ms): no event a client can await
    finally:
        kill(first)
    second = await rig.spawn("second")
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            still = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
        rig.proxy.restore()
        assert await eventually(lambda: "stored state loaded late" in second.log(), timeout=60)
        async with grpc.aio.insecure_channel(second.address) as ch:
            after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(second.terminate, signal.SIGTERM, 30) == 0
    stored = sql(rig.url, "SELECT trading_state, pauses::text FROM risk_state WHERE trader_id = 'bot-21'")
    assert not still.allowed and still.state.trading_state == t.TRADING_STATE_HALTED, still
    assert not after.allowed and after.state.trading_state == t.TRADING_STATE_HALTED, after
    assert stored[0][0] == "HALTED" and "newest halt" in str(stored[0][1]), stored


async def test_an_operator_halt_of_an_active_trader_on_a_sidecar_started_from_the_spool_is_not_lost_by_a_sigterm(
        spool_rig: SpoolRig) -> None:
    """The same hole as a wrong 'allowed': the trader was active, the operator halts it on the sidecar started from
    the spool (database cut), that sidecar is stopped cleanly (SIGTERM, exit 0), the next one loads once the
    database is back: its CanTrade must be denied HALTED."""
    rig = spool_rig
    first = await rig.spawn("first")
    async with grpc.aio.insecure_channel(first.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=10_000.0), timeout=10)
        assert await eventually(lambda: sql(rig.url, "SELECT count(*) FROM risk_state")[0][0] == 1, timeout=20)
        rig.proxy.cut()
        await risk.ReportEquity(rs.ReportEquityRequest(**BOT, equity=9_990.0), timeout=10)
    assert await eventually(lambda: spooled_state(rig.spool) >= 1, timeout=20)
    kill(first)
    second = await rig.spawn("second")
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                **BOT, trading_state=t.TRADING_STATE_HALTED, reason="operator halt in the outage"), timeout=10)
            halted = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(second.terminate, signal.SIGTERM, 30) == 0
    assert not halted.allowed and halted.state.trading_state == t.TRADING_STATE_HALTED
    rig.proxy.restore()
    third = await rig.spawn("third")
    try:
        async with grpc.aio.insecure_channel(third.address) as ch:
            after = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**BOT), timeout=10)
    finally:
        assert await asyncio.to_thread(third.terminate, signal.SIGTERM, 30) == 0
    assert not after.allowed and after.state.trading_state == t.TRADING_STATE_HALTED, after
    assert spooled_journal(rig.spool) == 0
