"""Issue 21, must-show 1: a PostgreSQL outage and a process failure together lose nothing.

A `tradeguard serve` process on PostgreSQL behind the suite's TCP proxy (the test cuts the proxy, never the
server). During the outage bots report equity (an alert breaker fires on every other report), trades and orders; one
trader breaches its daily loss limit, another is paused with the kill switch. Then the process dies (SIGKILL, or
SIGTERM) and starts again with the database still unreachable: the paused traders are still paused, answered from
the local spool. Then the proxy comes back: every trade, breaker event, latest state and pending order the clients
were acknowledged before the kill is in the database exactly once. The replay is also killed half-way.

SPOOL_TEST_LOAD_S sets the outage's load (default 12 s; the README figure is from a 60 s run).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from tests.support.pg import plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import SidecarProcess, spawn_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

LOAD_S = float(os.environ.get("SPOOL_TEST_LOAD_S", "12"))
BOTS = 4
FLOOR = 9_990.0  # the alert breaker fires on every report below this (every other report of a bot)
ACCT = "acct"
BREACH, KILL = "breach-bot", "kill-bot"
ORDERS_PER_BOT = 40


@dataclass
class Acked:
    """What the clients were told."""

    equity: dict[str, float] = field(default_factory=dict)  # last acknowledged level per trader
    trades: set[tuple[str, str]] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    orders: dict[str, set[str]] = field(default_factory=dict)  # allowed (pending) orders per trader
    calls: int = 0


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url), autocommit=True) as conn:
        return list(conn.execute(query).fetchall())  # type: ignore[arg-type,unused-ignore]


def spooled(path: Path, kind: str) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM spool WHERE kind = ?", (kind,)).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def order(coid: str) -> t.OrderIntent:
    return t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.001, price=50_000.0,
                         client_order_id=coid)


async def drive(risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, acked: Acked, seconds: float) -> None:
    """The outage's load; each bot's last call is a trade report (so "every trade is spooled" means every earlier
    change of the bot is spooled too: the writer moves the queue to the spool all at once)."""
    deadline = time.monotonic() + seconds

    async def bot(i: int) -> None:
        trader, step = f"bot-{i}", 0
        orders = acked.orders.setdefault(trader, set())
        while time.monotonic() < deadline:
            step += 1
            equity = 10_000.0 + step if step % 2 else FLOOR - 10.0
            reply = await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=ACCT, equity=equity),
                                            timeout=5)
            acked.equity[trader] = equity
            acked.events.update(e.id for e in reply.breaker_events)
            if step % 5 == 0 and len(orders) < ORDERS_PER_BOT:
                coid = f"{trader}-o{step}"
                decision = await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=ACCT,
                                                                  order=order(coid)), timeout=5)
                if decision.allowed:
                    orders.add(coid)
            if step % 3 == 0:
                await report_trade(risk, acked, trader, f"{trader}-t{step}")
            acked.calls += 1
            await asyncio.sleep(0.005)  # pacing: a bot, not a flood
        await report_trade(risk, acked, trader, f"{trader}-last")

    async def breach_and_kill_switch() -> None:
        reply = await risk.ReportEquity(rs.ReportEquityRequest(trader_id=BREACH, account_id=ACCT, equity=9_000.0),
                                        timeout=5)
        assert reply.state.trading_state == t.TRADING_STATE_REDUCING, reply.state
        acked.equity[BREACH] = 9_000.0
        acked.events.update(e.id for e in reply.breaker_events)
        await admin.PauseTrading(ad.PauseTradingRequest(trader_id=KILL, account_id=ACCT,
                                                        trading_state=t.TRADING_STATE_HALTED, reason="incident"),
                                 timeout=10)  # answers after kill_switch_store_timeout_s: the database is away
        await report_trade(risk, acked, BREACH, f"{BREACH}-last")

    await asyncio.gather(*(bot(i) for i in range(BOTS)), breach_and_kill_switch())


async def report_trade(risk: rsg.RiskServiceStub, acked: Acked, trader: str, trade_id: str) -> None:
    await risk.ReportTrade(rs.ReportTradeRequest(trader_id=trader, account_id=ACCT, trade_id=trade_id,
                                                 symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY,
                                                 realized_pnl=1.0), timeout=5)
    acked.trades.add((trader, trade_id))


@dataclass
class Rig:
    proxy: FaultProxy
    url: str
    tmp: Path
    spool: Path

    def args(self) -> list[str]:
        return ["--database-url", self.proxy.url_for(self.url), "--sidecar-id", "spool-test",
                "--spool-path", str(self.spool), "--drain-timeout-s", "2", "--stop-trading-minutes", "600",
                "--control-state-stale-action", "serve"]

    async def spawn(self, name: str) -> SidecarProcess:
        # in a thread: the proxy runs on this event loop and must keep answering meanwhile
        return await asyncio.to_thread(spawn_sidecar, self.tmp, *self.args(), name=name, timeout=60)


@pytest.fixture
async def rig(pg_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    proxy = await FaultProxy().start()
    try:
        yield Rig(proxy, pg_url, tmp_path, tmp_path / "spool.db")
    finally:
        await proxy.close()


async def outage_with_load(rig: Rig, acked: Acked) -> SidecarProcess:
    """A sidecar on a reachable database; the traders claimed and configured; then the proxy cut and the load run.
    Returns once everything the clients were acknowledged is in the spool."""
    sp = await rig.spawn("first")
    async with grpc.aio.insecure_channel(sp.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=ACCT, config_id="c1", is_active=True, max_position_size_percentage=100.0,
            pending_order_ttl_seconds=86_400, daily_max_drawdown_percentage=5.0)))
        breaker = t.CircuitBreaker(name="floor", account_id=ACCT, condition="equity_floor", action="alert")
        breaker.parameters.update({"value": FLOOR})
        await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
        for trader in [f"bot-{i}" for i in range(BOTS)] + [BREACH, KILL]:  # claimed (cluster mode) before the cut
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=ACCT, equity=10_000.0))
        rig.proxy.cut()
        await drive(risk, admin, acked, LOAD_S)
    assert await eventually(lambda: spooled(rig.spool, "trade") == len(acked.trades)
                            and spooled(rig.spool, "event") == len(acked.events), timeout=20), \
        (spooled(rig.spool, "trade"), len(acked.trades), spooled(rig.spool, "event"), len(acked.events))
    return sp


async def restart_still_down(rig: Rig, name: str) -> SidecarProcess:
    """Start again, the database still unreachable: the paused traders are paused, from the spool."""
    sp = await rig.spawn(name)
    assert "traders answered from the local spool's latest states" in sp.log()
    async with grpc.aio.insecure_channel(sp.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        breach = await risk.CanTrade(rs.CanTradeRequest(trader_id=BREACH, account_id=ACCT, order=order("after-1")))
        kill = await risk.CanTrade(rs.CanTradeRequest(trader_id=KILL, account_id=ACCT, order=order("after-2")))
    assert not breach.allowed and breach.code == t.DECISION_CODE_DAILY_LOSS_LIMIT, breach
    assert breach.paused_until.seconds > time.time() + 3_000  # the breach's pause (600 minutes), not the gate
    assert not kill.allowed and kill.trading_state == t.TRADING_STATE_HALTED, kill
    return sp


def check_database(rig: Rig, acked: Acked) -> dict[str, int]:
    """Everything acknowledged before the kill is in the database, exactly once."""
    trades = sql(rig.url, "SELECT trader_id, trade_id FROM trade_reports")
    assert len(trades) == len(set(trades))
    assert {(str(a), str(b)) for a, b in trades} == acked.trades
    events = [str(r[0]) for r in sql(rig.url, "SELECT id FROM circuit_breaker_events")]
    assert len(events) == len(set(events)) and set(events) == acked.events
    states = {str(r[0]): r for r in sql(rig.url, "SELECT trader_id, current_equity, pending_orders::text, "
                                                 "trading_state, pauses::text FROM risk_state")}
    for trader, equity in acked.equity.items():
        assert states[trader][1] == equity, (trader, states[trader][1], equity)
    pending = 0
    for trader, orders in acked.orders.items():
        stored = {o["client_order_id"] for o in json.loads(str(states[trader][2]))}
        assert stored == orders, trader
        pending += len(stored)
    assert states[BREACH][3] == "REDUCING" and states[KILL][3] == "HALTED"
    dup = sql(rig.url, "SELECT count(*) FROM (SELECT trader_id, version FROM risk_state_history "
                       "GROUP BY trader_id, version HAVING count(*) > 1) d")
    assert dup[0][0] == 0, "a history row written twice"
    return {"trades": len(trades), "events": len(events), "states": len(states), "pending_orders": pending,
            "history": int(sql(rig.url, "SELECT count(*) FROM risk_state_history")[0][0])}


async def recover(rig: Rig, sp: SidecarProcess) -> None:
    rig.proxy.restore()
    assert await eventually(lambda: "stored state loaded late" in sp.log(), timeout=60), sp.log()[-3000:]
    assert spooled(rig.spool, "state") == spooled(rig.spool, "trade") == 0


async def stop(sp: SidecarProcess) -> int:
    # in a thread: the proxy runs on this event loop and must keep answering while the sidecar drains
    return await asyncio.to_thread(sp.terminate, signal.SIGTERM, 30)


async def test_sigkill_during_an_outage_then_a_start_with_the_database_still_down_loses_nothing(rig: Rig) -> None:
    acked = Acked()
    first = await outage_with_load(rig, acked)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    second = await restart_still_down(rig, "second")
    try:
        await recover(rig, second)
        figures = check_database(rig, acked)
    finally:
        assert await stop(second) == 0
    print(f"FIGURE spool sigkill: {acked.calls} load steps in {LOAD_S:g} s; in the database exactly once: {figures}")


async def test_sigkill_during_the_replay_then_the_next_start_finishes_it_exactly_once(rig: Rig) -> None:
    acked = Acked()
    first = await outage_with_load(rig, acked)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    second = await restart_still_down(rig, "second")
    total = sum(spooled(rig.spool, k) for k in ("state", "history", "trade", "event"))
    rig.proxy.restore()

    def replay_started() -> bool:
        left = sum(spooled(rig.spool, k) for k in ("state", "history", "trade", "event"))
        return left < total

    assert await eventually(replay_started, timeout=30, interval=0.002)
    os.kill(second.proc.pid, signal.SIGKILL)
    second.proc.wait(timeout=10)
    left = sum(spooled(rig.spool, k) for k in ("state", "history", "trade", "event"))
    assert 0 < left < total, (left, total)  # killed half-way through the replay
    third = await rig.spawn("third")
    try:
        assert await eventually(lambda: "stored state loaded" in third.log(), timeout=60), third.log()[-3000:]
        figures = check_database(rig, acked)
    finally:
        assert await stop(third) == 0
    print(f"FIGURE spool kill during replay: {total - left} of {total} spool records replayed at the kill; "
          f"in the database exactly once: {figures}")


async def test_sigterm_during_an_outage_spools_the_backlog_exits_0_and_says_so(rig: Rig) -> None:
    acked = Acked()
    first = await outage_with_load(rig, acked)
    assert await stop(first) == 0
    assert f"items spooled to {rig.spool}" in first.log(), first.log()[-3000:]
    second = await restart_still_down(rig, "second")
    try:
        await recover(rig, second)
        figures = check_database(rig, acked)
    finally:
        assert await stop(second) == 0
    print(f"FIGURE spool sigterm: in the database exactly once: {figures}")
