"""The Python clients over the Session stream (issue 18): one session per client, the same answers as unary,
cancel-on-disconnect declared by the client, a clean close, and a sidecar restart under clients in a loop (calls fail
closed, the clients reconnect, no call outlives its deadline)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.support.sidecar import running_sidecar, spawn_sidecar
from tests.support.wait import eventually
from tradeguard_client import AsyncRiskClient, Order, RiskClient
from tradeguard_client._session import OnDisconnect
from tradeguard_server.engine.types import TradingState
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BOT = ("bot-1", "acct-1")
ORDER = Order("BTCUSDT", "BUY", 0.01, 50_000, exchange="binance")


def paused(sidecar: Sidecar, trader: str = "bot-1") -> TradingState | None:
    st = sidecar.engine.traders.get(trader)
    pause = None if st is None else st.effective_pause(sidecar.engine.clock.now())
    return None if pause is None else pause.state


async def test_both_clients_keep_one_session_and_answer_as_unary() -> None:
    async with running_sidecar() as sc:
        async with AsyncRiskClient(sc.address) as guard, AsyncRiskClient(sc.address, session=False) as unary:
            first = await guard.can_trade(*BOT)
            assert sc.session.open_sessions == 1
            await guard.report_equity(*BOT, 10_000)
            decision = await guard.can_trade(*BOT, ORDER)
            again = await unary.can_trade(*BOT)
            await guard.report_order(*BOT, decision.client_order_id, "FILLED", filled_quantity=0.01)
            accepted = await guard.report_prices(*BOT, {"ETHUSDT": 3000.0})
            assert sc.session.open_sessions == 1

        def sync_scenario() -> tuple[str, int]:
            with RiskClient(sc.address) as sync_guard:
                code = sync_guard.can_trade(*BOT).code
                return code, sc.session.open_sessions

        sync_code, sync_sessions = await asyncio.to_thread(sync_scenario)
        assert await eventually(lambda: sc.session.open_sessions == 0, timeout=5)

    assert first.code == "NO_EQUITY_REPORTED" and decision.allowed and again.allowed and accepted == 1
    assert sync_code == "ALLOWED" and sync_sessions == 1


async def test_a_client_declaring_on_disconnect_pauses_nothing_when_closed_cleanly(tmp_path: Path) -> None:
    async with running_sidecar() as sc:
        async with AsyncRiskClient(sc.address, on_disconnect=OnDisconnect(*BOT, "HALTED")) as guard:
            await guard.report_equity(*BOT, 10_000)
            assert (await guard.can_trade(*BOT)).allowed
        assert await eventually(lambda: sc.session.open_sessions == 0, timeout=5)
        await asyncio.sleep(0.1)
        assert paused(sc) is None


async def test_a_sidecar_restart_under_clients_in_a_loop_fails_closed_and_they_reconnect(
        tmp_path: Path, gc_pauses: list[float]) -> None:
    """Every call, across the SIGKILL and the restart, returns by its deadline plus 80% of it (the margin of
    tests/support/adversary.py's latest_return): before a second deadline could pass, so a client that ignored its
    deadline or retried past it still fails, while a busy CI machine's late timer does not (it was deadline +
    0.25 s). The clients run in this long pytest process: the earlier tests' objects are frozen out of the
    collector (gc_pauses), whose full collection over them stalled every thread of the process for ~1 s in CI."""
    args = ("--database-url", "memory", "--no-enable-persistence", "--no-uvloop")
    first = spawn_sidecar(tmp_path, *args, name="first")
    address = first.address
    deadline = 0.5
    async_lat: list[float] = []
    sync_lat: list[float] = []
    codes: list[str] = []
    stop = asyncio.Event()

    async def async_loop() -> None:
        async with AsyncRiskClient(address, timeout=deadline) as guard:
            while not stop.is_set():
                started = time.monotonic()
                decision = await guard.can_trade(*BOT)
                async_lat.append(time.monotonic() - started)
                codes.append(decision.code)
                await asyncio.sleep(0.005)

    def sync_loop() -> None:
        with RiskClient(address, timeout=deadline) as guard:
            while not stop.is_set():
                started = time.monotonic()
                decision = guard.can_trade("bot-2", "acct-1")
                sync_lat.append(time.monotonic() - started)
                codes.append(decision.code)
                time.sleep(0.005)

    running = [asyncio.create_task(async_loop()), asyncio.create_task(asyncio.to_thread(sync_loop))]
    second = None
    try:
        assert await eventually(lambda: codes.count("NO_EQUITY_REPORTED") >= 10, timeout=10)
        first.terminate(signal.SIGKILL)
        assert await eventually(lambda: codes[-1] == "SIDECAR_UNAVAILABLE", timeout=10)
        before = len(codes)
        second = await asyncio.to_thread(spawn_sidecar, tmp_path, *args, "--listen", address, name="second")
        assert await eventually(lambda: codes[before:].count("NO_EQUITY_REPORTED") >= 10, timeout=15)
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for sp in (first, second):
            if sp is not None:
                sp.terminate(signal.SIGKILL)

    assert "SIDECAR_UNAVAILABLE" in codes  # failed closed while the sidecar was down
    assert set(codes) <= {"NO_EQUITY_REPORTED", "SIDECAR_UNAVAILABLE"}
    latest = deadline + 0.8 * deadline
    print(f"\nslowest call: async {max(async_lat):.3f} s, sync {max(sync_lat):.3f} s (bound {latest:.2f} s); "
          f"{len(gc_pauses)} GC pauses, longest {max(gc_pauses, default=0.0) * 1e3:.0f} ms")
    assert max(async_lat) < latest and max(sync_lat) < latest, (max(async_lat), max(sync_lat))
