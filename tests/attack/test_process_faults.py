"""Process faults: SIGKILL a `tradeguard serve` subprocess (PostgreSQL store) under load, restart it on the
same database, three times over.

After each restart:
- every trader's restored equity is one the bots were acknowledged (nothing corrupt, nothing invented), and
  what was lost is within the documented bound (README "Persistence": what was queued and not committed, one
  batch in normal operation) - measured as acknowledged reports lost per trader and as the time window they
  cover (from the restored report's acknowledgement to the last one before the kill);
- a trader paused with the kill switch just before the kill is still paused (kill-switch pauses are written
  through: PauseTrading answers after the commit);
- a trader that breached a loss limit just before the kill is consistent: either the breaching report and
  its pause were both kept, or both lost with the report (never a loss beyond the limit without the pause);
- every row in risk_state and risk_state_history parses, and the sidecar loads with no error.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from tests.attack.support import figure
from tests.support.pg import plain_dsn
from tests.support.sidecar import spawn_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

BOTS = 8
CYCLES = 3
LOAD_S = 1.5


@dataclass
class Acks:
    """Per trader: the levels acknowledged to the bot, with when."""

    by_trader: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, trader: str, equity: float) -> None:
        self.by_trader.setdefault(trader, []).append((equity, time.monotonic()))


@dataclass
class Figures:
    lost_reports: list[int] = field(default_factory=list)
    staleness_ms: list[float] = field(default_factory=list)
    corrupt: int = 0
    unpaused_kill_switch: int = 0
    inconsistent_breach: int = 0
    restarts: int = 0
    reports: int = 0


async def load(risk: rsg.RiskServiceStub, acks: Acks, base: float, stop: asyncio.Event) -> int:
    sent = 0

    async def bot(i: int) -> None:
        nonlocal sent
        trader, step = f"bot-{i}", 0
        while not stop.is_set():
            step += 1
            equity = base + step
            try:
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id="acct", equity=equity),
                                        timeout=2)
            except grpc.aio.AioRpcError:
                return  # killed
            acks.add(trader, equity)
            sent += 1

    await asyncio.gather(*(bot(i) for i in range(BOTS)))
    return sent


def check_restored(address: str, acks: Acks, cycle: int, figures: Figures) -> None:
    with grpc.insecure_channel(address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for trader, acked in acks.by_trader.items():
            state = risk.GetRiskState(rs.GetRiskStateRequest(trader_id=trader, account_id="acct"), timeout=5).state
            levels = [e for e, _at in acked]
            if state.current_equity not in levels:
                figures.corrupt += 1
                continue
            i = levels.index(state.current_equity)
            figures.lost_reports.append(len(levels) - 1 - i)
            figures.staleness_ms.append((acked[-1][1] - acked[i][1]) * 1e3)  # the acknowledged tail that was lost
        kill = risk.GetRiskState(rs.GetRiskStateRequest(trader_id=f"kill-{cycle}", account_id="acct"), timeout=5)
        if kill.state.trading_state != t.TRADING_STATE_HALTED:
            figures.unpaused_kill_switch += 1
        breach = risk.GetRiskState(rs.GetRiskStateRequest(trader_id=f"breach-{cycle}", account_id="acct"),
                                   timeout=5).state
        consistent = (
            (breach.current_equity == 9_000.0 and breach.trading_state == t.TRADING_STATE_REDUCING)
            or (breach.current_equity in (0.0, 10_000.0) and breach.trading_state == t.TRADING_STATE_ACTIVE)
        )
        if not consistent:
            figures.inconsistent_breach += 1


def check_rows(url: str) -> int:
    """Rows whose JSON does not parse (a torn write would show here)."""
    bad = 0
    with psycopg.connect(plain_dsn(url)) as conn:
        for row in conn.execute("SELECT pauses::text, positions::text, symbol_stats::text FROM risk_state"):
            for value in row:
                try:
                    json.loads(value)
                except (TypeError, ValueError):
                    bad += 1
        for (value,) in conn.execute("SELECT state::text FROM risk_state_history"):
            try:
                json.loads(value)
            except (TypeError, ValueError):
                bad += 1
    return bad


async def test_sigkill_under_load_loses_at_most_a_batch_and_never_a_kill_switch(tmp_path: Path, pg_url: str) -> None:
    figures = Figures()
    acks = Acks()
    logs: list[str] = []
    previous: int | None = None  # the cycle whose sidecar was killed
    for cycle in range(CYCLES + 1):
        sp = spawn_sidecar(tmp_path, "--database-url", pg_url, name=f"run-{cycle}")
        try:
            if previous is not None:
                figures.restarts += 1
                await asyncio.to_thread(check_restored, sp.address, acks, previous, figures)
            if cycle == CYCLES:
                break
            async with grpc.aio.insecure_channel(sp.address) as ch:
                risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
                stop = asyncio.Event()
                bots = asyncio.create_task(load(risk, acks, 10_000.0 + cycle * 100_000.0, stop))
                await asyncio.sleep(LOAD_S)  # the bots' load runs this long before the kill (real time)
                # Right before the kill, under load: a kill switch, and a loss-limit breach.
                await admin.PauseTrading(ad.PauseTradingRequest(
                    trader_id=f"kill-{cycle}", account_id="acct", trading_state=t.TRADING_STATE_HALTED,
                    reason="incident"))
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=f"breach-{cycle}", account_id="acct",
                                                               equity=10_000.0))
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=f"breach-{cycle}", account_id="acct",
                                                               equity=9_000.0))
                os.kill(sp.proc.pid, signal.SIGKILL)
                stop.set()
                figures.reports += await bots
            sp.proc.wait(timeout=10)
            previous = cycle
        finally:
            if sp.proc.poll() is None:
                sp.terminate()
            logs.append(sp.log())
    corrupt_rows = check_rows(pg_url)
    load_errors = [line for line in logs[1:] for line in line.splitlines() if " ERROR " in line]

    staleness = sorted(figures.staleness_ms)
    figure("sigkill", "kills under load / restarts / reports acknowledged",
           f"{CYCLES} / {figures.restarts} / {figures.reports}")
    figure("sigkill", "acknowledged reports lost per trader (max / mean)",
           f"{max(figures.lost_reports)} / {sum(figures.lost_reports) / len(figures.lost_reports):.1f}")
    figure("sigkill", "acknowledged updates lost, as a window before the last ack, ms (median / max)",
           f"{staleness[len(staleness) // 2]:.1f} / {staleness[-1]:.1f}")
    figure("sigkill", "restored levels never acknowledged (corrupt)", figures.corrupt)
    figure("sigkill", "kill-switch pauses lost", figures.unpaused_kill_switch)
    figure("sigkill", "breaches restored inconsistently", figures.inconsistent_breach)
    figure("sigkill", "rows that do not parse / ERROR lines at load", f"{corrupt_rows} / {len(load_errors)}")
    assert figures.corrupt == 0 and corrupt_rows == 0 and load_errors == []
    assert figures.unpaused_kill_switch == 0
    assert figures.inconsistent_breach == 0
    assert staleness[-1] < 1_000.0  # the batch in flight: tens of ms, a few hundred on a saturated 2-core box
