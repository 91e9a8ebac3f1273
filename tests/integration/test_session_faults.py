"""Cancel-on-disconnect with a real bot process (issue 18): SIGKILLed with a declared on_disconnect -> its trader is
HALTED within 1 s; a clean close (half-close, exit) -> no pause."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.support.sidecar import REPO, running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.engine.types import TradingState
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BOT = Path(__file__).resolve().parents[1] / "support" / "session_bot.py"


def state_of(sidecar: Sidecar, trader: str) -> TradingState | None:
    st = sidecar.engine.traders.get(trader)
    if st is None:
        return None
    pause = st.effective_pause(sidecar.engine.clock.now())
    return None if pause is None else pause.state


async def start_bot(address: str, trader: str, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bot = subprocess.Popen([sys.executable, str(BOT), address, trader, "acct-1", mode], stdout=subprocess.PIPE,
                           env=env)
    assert bot.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(bot.stdout.readline), 30)
    assert line.strip() == b"ready"
    return bot


async def test_a_sigkilled_bot_with_a_declared_on_disconnect_is_halted_within_one_second(
        gc_pauses: list[float]) -> None:
    """The issue's bound, 1 s from the SIGKILL to HALTED (the kernel resets the bot's connection at once; a sidecar
    that waited for keep-alive would take keepalive_time_s). The sidecar runs in this long pytest process: the
    earlier tests' objects are frozen out of the collector (gc_pauses), whose full collection over them stalled
    the process for ~1 s in CI, and the bot is reaped off the event loop, which must notice the reset meanwhile."""
    async with running_sidecar() as sidecar, grpc.aio.insecure_channel(sidecar.address) as ch:
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(trader_id="bot-k", account_id="acct-1",
                                                                          equity=10_000))
        bot = await start_bot(sidecar.address, "bot-k", "wait")
        assert state_of(sidecar, "bot-k") is None

        bot.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(bot.wait, 10)
        assert bot.stdout is not None
        bot.stdout.close()

        assert await eventually(lambda: state_of(sidecar, "bot-k") is TradingState.HALTED, timeout=5)
        took = time.monotonic() - killed
        print(f"paused {took * 1000:.0f} ms after SIGKILL; {len(gc_pauses)} GC pauses, longest "
              f"{max(gc_pauses, default=0.0) * 1e3:.0f} ms")
        assert took < 1.0, f"paused {took:.3f}s after the kill"
        assert "cancel-on-disconnect" in sidecar.engine.traders["bot-k"].pauses[-1].reason


async def test_a_bot_that_closes_its_session_cleanly_is_not_paused() -> None:
    async with running_sidecar() as sidecar:
        bot = await start_bot(sidecar.address, "bot-c", "clean")
        assert await asyncio.to_thread(bot.wait, 10) == 0
        assert bot.stdout is not None
        bot.stdout.close()
        # The session's end is an event the sidecar counts: awaited, not slept for (a fixed 0.3 s was a guess on a
        # loaded machine). Then a wrong pause, decided with the session's end, has had 0.3 s more to land.
        assert await eventually(lambda: sidecar.session.open_sessions == 0, timeout=10)
        await asyncio.sleep(0.3)

        assert state_of(sidecar, "bot-c") is None
