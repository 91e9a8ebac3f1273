"""The restart test (issue 13, "What it must show" 2): 205 restarts on real PostgreSQL with a bot calling
from the first moment the port answers, normal starts and starts with the database down or slow: 0 lost
pauses, 0 wrong allows.

Before the restarts, trader `breached` is at -6 % (daily loss pause, REDUCING for 30 minutes) and trader
`halted` is under a kill switch until resumed. Each restart, a bot waits on the port (wait_for_ready: its
first call goes out the moment the port answers) and loops: ReportEquity 9,400 for `breached` (the bot's next
report, which on an empty memory would start a fresh day), then CanTrade with an opening order for both. Every
answer must deny. Once health `tradeguard.state` says the stored state is installed, both traders must still
be paused (else a lost pause). Database modes per restart, through a TCP proxy: up; down at start (restored
after the bot had answers); slow (each connection held longer than store_call_timeout_s, so the load finishes
late); slow within the bound.

30 restarts are `tradeguard serve` processes stopped by SIGTERM (15) or SIGKILL (15); the other 175 are
in-process Sidecars on the same database, stopped as SIGTERM stops one (faster: no interpreter start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.databases import closed_port
from tests.support.proxy import FaultProxy
from tests.support.sidecar import BIN, running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IN_PROCESS_RESTARTS = int(os.environ.get("TG_RESTARTS_IN_PROCESS", "175"))
PROCESS_RESTARTS = int(os.environ.get("TG_RESTARTS_PROCESS", "30"))  # half SIGTERM, half SIGKILL
MODES = ("up", "down", "slow", "slow-within-bound")
LOAD_BOUND_S = 0.2  # store_call_timeout_s: how long a start waits for the load
BREACHED = {"trader_id": "breached", "account_id": "acct"}
HALTED = {"trader_id": "halted", "account_id": "acct"}
BUY = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                   ("grpc.max_reconnect_backoff_ms", 50)]


@dataclass
class Tally:
    """What the bots saw, over every restart."""

    answers: int = 0
    wrong_allows: list[str] = field(default_factory=list)
    lost_pauses: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    first_answer_s: list[float] = field(default_factory=list)  # start of the restart -> first answer
    loaded_s: list[float] = field(default_factory=list)  # start of the restart -> stored state installed
    late_loads: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, label: str, trader: str, reply: rs.CanTradeResponse) -> None:
        self.answers += 1
        self.codes[t.DecisionCode.Name(reply.code)] += 1
        if reply.allowed:
            self.wrong_allows.append(f"{label} {trader}: {reply.reason}")


async def bot(address: str, label: str, started: float, tally: Tally, stop: asyncio.Event) -> None:
    """Calls from the first moment the port answers until told to stop; every answer must deny."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        risk = rsg.RiskServiceStub(ch)
        first = True
        while not stop.is_set():
            try:
                await risk.ReportEquity(rs.ReportEquityRequest(**BREACHED, equity=9_400), wait_for_ready=True,
                                        timeout=10)
                if first:
                    tally.first_answer_s.append(time.monotonic() - started)
                    first = False
                a = await risk.CanTrade(rs.CanTradeRequest(**BREACHED, order=BUY), timeout=5)
                b = await risk.CanTrade(rs.CanTradeRequest(**HALTED, order=BUY), timeout=5)
            except grpc.aio.AioRpcError as exc:  # the server went away (stop, SIGKILL): wait for the next one
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.CANCELLED):
                    raise
                continue
            tally.note(label, "breached", a)
            tally.note(label, "halted", b)
            tally.changed.set()


async def answers_reach(tally: Tally, n: int, timeout: float = 30.0) -> None:
    async def wait() -> None:
        while tally.answers < n:
            tally.changed.clear()
            await tally.changed.wait()

    await asyncio.wait_for(wait(), timeout)


async def stored_state_installed(address: str, timeout: float = 30.0) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="tradeguard.state"),
                                                     wait_for_ready=True, timeout=timeout)
        async for update in watch:
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        watch.cancel()


async def check_pauses(address: str, label: str, tally: Tally) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for ids, expected in ((BREACHED, t.TRADING_STATE_REDUCING), (HALTED, t.TRADING_STATE_HALTED)):
            state = (await risk.GetRiskState(rs.GetRiskStateRequest(**ids), timeout=5)).state
            if state.trading_state != expected:
                tally.lost_pauses.append(f"{label} {ids['trader_id']}: {t.TradingState.Name(state.trading_state)}")


@contextlib.asynccontextmanager
async def database_mode(proxy: FaultProxy, mode: str) -> AsyncIterator[None]:
    proxy.accept_delay = {"slow": 3 * LOAD_BOUND_S, "slow-within-bound": LOAD_BOUND_S / 6}.get(mode, 0.0)
    if mode == "down":
        proxy.cut()
    try:
        yield
    finally:
        proxy.restore()
        proxy.accept_delay = 0.0


async def one_restart(label: str, mode: str, address: str, proxy: FaultProxy, tally: Tally,
                      start: Awaitable[object], started: float) -> None:
    """Run the bot against a starting sidecar (`start` returns once it has started), bring the database back,
    check the pauses."""
    stop = asyncio.Event()
    runner = asyncio.create_task(bot(address, label, started, tally, stop))
    try:
        async with database_mode(proxy, mode):
            await start
            if mode == "down":
                await answers_reach(tally, tally.answers + 4)  # answered while the store is unreachable
        await stored_state_installed(address)
        tally.loaded_s.append(time.monotonic() - started)
        await answers_reach(tally, tally.answers + 4)  # answered from the installed state
        await check_pauses(address, label, tally)
    finally:
        stop.set()
        await runner


async def test_restarts_with_a_bot_calling_from_the_first_moment_lose_no_pause_and_allow_nothing(
        pg_url: str, tmp_path: Path) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as first, \
            grpc.aio.insecure_channel(first.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for ids in (BREACHED, HALTED):
            await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
        breached = await risk.ReportEquity(rs.ReportEquityRequest(**BREACHED, equity=9_400))
        await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(**HALTED,
                                                                            trading_state=t.TRADING_STATE_HALTED))
    assert breached.state.trading_state == t.TRADING_STATE_REDUCING

    proxy = await FaultProxy().start()
    url = proxy.url_for(pg_url)
    tally = Tally()
    began = time.monotonic()
    try:
        port = closed_port()
        address = f"127.0.0.1:{port}"
        settings = load_settings({}, {"listen": address, "database_url": url, "uvloop": False, "metrics_listen": "",
                                      "http_listen": "",
                                      "store_call_timeout_s": LOAD_BOUND_S, "shutdown_grace_s": 1.0,
                                      "state_dir": str(tmp_path)})  # its admin token: not in the working directory
        for i in range(IN_PROCESS_RESTARTS):
            mode = MODES[i % len(MODES)]
            sidecar = Sidecar(settings)

            async def start(sidecar: Sidecar = sidecar) -> None:
                await sidecar.start()
                tally.late_loads += not sidecar.persistence.loaded

            try:
                await one_restart(f"in-process #{i} ({mode})", mode, address, proxy, tally, start(),
                                  time.monotonic())
            finally:
                await sidecar.stop()  # what SIGTERM does: health NOT_SERVING, calls finished, queue drained
        in_process_s = time.monotonic() - began

        began_processes = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEGUARD_", "DB_"))}
        for i in range(PROCESS_RESTARTS):
            mode = MODES[i % len(MODES)]
            how = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
            port = closed_port()
            address = f"127.0.0.1:{port}"
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "tradeguard"), "serve", "--listen", address, "--database-url", url, "--metrics-listen", "",
                "--http-listen", "",
                "--store-call-timeout-s", str(LOAD_BOUND_S), "--shutdown-grace-s", "1", "--log-level", "WARNING",
                env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                # started: once it answers (the proxy keeps the mode until then)
                await one_restart(f"process #{i} ({mode}, {how.name})", mode, address, proxy, tally,
                                  answers_reach(tally, tally.answers + 2), started)
            finally:
                if proc.returncode is None:
                    proc.send_signal(how)
                code = await asyncio.wait_for(proc.wait(), 30)
            assert code == (0 if how is signal.SIGTERM else -signal.SIGKILL)
        processes_s = time.monotonic() - began_processes
    finally:
        await proxy.close()

    restarts = IN_PROCESS_RESTARTS + PROCESS_RESTARTS
    print(f"\n[restart test] {restarts} restarts ({IN_PROCESS_RESTARTS} in-process in {in_process_s:.1f} s, "
          f"{PROCESS_RESTARTS} processes (SIGTERM/SIGKILL) in {processes_s:.1f} s); modes {MODES}; "
          f"{tally.answers} CanTrade answers, codes {dict(tally.codes)}; first answer after start: median "
          f"{statistics.median(tally.first_answer_s) * 1e3:.0f} ms, max {max(tally.first_answer_s) * 1e3:.0f} ms; "
          f"stored state installed after: median {statistics.median(tally.loaded_s) * 1e3:.0f} ms, "
          f"max {max(tally.loaded_s) * 1e3:.0f} ms; in-process late loads {tally.late_loads}; "
          f"lost pauses {len(tally.lost_pauses)}; wrong allows {len(tally.wrong_allows)}")
    assert len(tally.first_answer_s) == restarts  # the bot got answers in every run
    assert tally.codes["DECISION_CODE_STATE_NOT_LOADED"] > 0  # and some came before the stored state loaded
    assert tally.lost_pauses == []
    assert tally.wrong_allows == []
