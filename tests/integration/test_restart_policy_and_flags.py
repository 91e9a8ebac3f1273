"""What new exposure gets while the stored state is not loaded (`unloaded_state_policy`), and one precedence
for feature flags across restarts and outages (issue 13, items 1 and 14).

Policy tests use the in-memory store twin made unavailable before the start (the policy is the sidecar's
logic, not the database's); flag tests use real PostgreSQL behind a proxy that a test cuts.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest

from tests.integration.test_restart_unloaded import BUY, IDS, database_down_at_start, sidecar_on, state_loaded
from tests.support.pg import plain_dsn
from tests.support.proxy import FaultProxy
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server import persistence
from tradeguard_server.settings import SettingsError, load_settings
from tradeguard_server.sidecar import Sidecar
from tradeguard_server.store.memory import MemoryStore

pytestmark = pytest.mark.integration

LONG = t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=1.0, entry_price=50_000,
                  mark_price=50_000)
SELL_HALF = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_SELL, quantity=0.5, price=50_000)


@contextlib.asynccontextmanager
async def unloaded(**overrides: Any) -> AsyncIterator[tuple[Sidecar, rsg.RiskServiceStub]]:
    """A sidecar whose store cannot be read at start; the bot has reported equity and a long 1 BTC since."""
    state = tempfile.TemporaryDirectory(prefix="tradeguard-state-")  # its admin token: not in the working directory
    overrides = {"listen": "127.0.0.1:0", "uvloop": False, "metrics_listen": "", "http_listen": "",
                 "database_url": "memory",
                 "enable_persistence": False, "state_dir": state.name, **overrides}
    sidecar = Sidecar(load_settings({}, overrides))
    assert isinstance(sidecar.store, MemoryStore)
    sidecar.store.available = False
    await sidecar.start()
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
            await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=[LONG]))
            yield sidecar, risk
    finally:
        await sidecar.stop()
        state.cleanup()


async def answers(risk: rsg.RiskServiceStub) -> tuple[rs.CanTradeResponse, rs.CanTradeResponse,
                                                      rs.CanTradeResponse]:
    opening = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=BUY))
    reducing = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=SELL_HALF))
    cycle = await risk.CanTrade(rs.CanTradeRequest(**IDS))
    return opening, reducing, cycle


async def test_reduce_only_by_default_while_unloaded_lets_only_reducing_orders_through() -> None:
    async with unloaded() as (_sidecar, risk):
        opening, reducing, cycle = await answers(risk)

    assert not opening.allowed and opening.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert opening.trading_state == t.TRADING_STATE_REDUCING
    assert "unloaded_state_policy=reduce_only" in opening.reason
    assert reducing.allowed and "STATE_NOT_LOADED" in reducing.reason  # said in every decision's reason
    assert not cycle.allowed and cycle.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert [c.name for c in opening.checks][-1] == "state_loaded"


async def test_halted_policy_while_unloaded_lets_nothing_through() -> None:
    async with unloaded(unloaded_state_policy="halted") as (_sidecar, risk):
        opening, reducing, _cycle = await answers(risk)

    assert not opening.allowed and opening.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert not reducing.allowed and reducing.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert reducing.trading_state == t.TRADING_STATE_HALTED


async def test_memory_policy_answers_from_memory_and_says_so() -> None:
    async with unloaded(unloaded_state_policy="memory") as (_sidecar, risk):
        opening, reducing, _cycle = await answers(risk)

    assert opening.allowed and reducing.allowed
    assert "unloaded_state_policy=memory" in opening.reason


async def test_shadow_mode_while_unloaded_would_deny_with_state_not_loaded() -> None:
    async with unloaded(enable_risk_enforcement=False) as (_sidecar, risk):
        opening, reducing, _cycle = await answers(risk)

    assert opening.allowed and opening.would_deny and opening.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert reducing.allowed and not reducing.would_deny


async def test_the_policy_ends_when_the_store_loads_and_the_reports_are_replayed() -> None:
    async with unloaded() as (sidecar, risk):
        assert isinstance(sidecar.store, MemoryStore)
        sidecar.store.available = True
        ch = grpc.aio.insecure_channel(sidecar.address)
        async with ch:
            await state_loaded(ch)
        opening, _reducing, _cycle = await answers(risk)
        state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state

    assert opening.allowed and "STATE_NOT_LOADED" not in opening.reason
    assert sidecar.persistence.replayed == 2 and state.current_equity == 10_000


def test_a_full_journal_drops_the_oldest_levels_and_keeps_trades_and_each_traders_newest_level(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistence, "JOURNAL_MAX", 10)
    journal = persistence.Journal()
    for i in range(12):
        journal.append((float(i), "report_equity", (f"bot-{i % 2}", "acct", 10_000.0 - i, None)))
        if i % 4 == 0:
            journal.append((float(i), "report_trade", ("bot-0", "acct", f"T-{i}")))

    kept = [(op, args[0], args[2]) for _at, op, args in journal]
    assert len(journal) <= 10 and journal.dropped > 0
    assert [x for x in kept if x[0] == "report_trade"] == [("report_trade", "bot-0", f"T-{i}") for i in (0, 4, 8)]
    assert ("report_equity", "bot-0", 10_000.0 - 10) in kept and ("report_equity", "bot-1", 10_000.0 - 11) in kept


def test_an_unknown_policy_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="unloaded_state_policy"):
        load_settings({"TRADEGUARD_UNLOADED_STATE_POLICY": "yolo"})


# ---- feature flags --------------------------------------------------------------------------------------------

def stored_flags(url: str) -> list[tuple[Any, ...]]:
    """[(enable_risk_enforcement, enable_persistence)] as stored, or [] when never stored."""
    with psycopg.connect(plain_dsn(url)) as conn:
        stored = dict(conn.execute("SELECT name, value FROM feature_flags").fetchall())
    return [(stored["enable_risk_enforcement"], stored["enable_persistence"])] if stored else []


async def get_flags(ch: grpc.aio.Channel) -> tuple[bool, bool]:
    f = (await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest())).flags
    return f.enable_risk_enforcement, f.enable_persistence


async def set_enforcement(ch: grpc.aio.Channel, on: bool) -> tuple[ad.SetFeatureFlagsResponse, str]:
    call = adg.AdminServiceStub(ch).SetFeatureFlags(
        ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=on)))
    reply = await call
    trailing = dict(await call.trailing_metadata() or ())
    return reply, str(trailing.get("tradeguard-flags-stored"))


async def test_a_flag_given_at_start_beats_the_stored_one_and_the_stored_one_beats_the_default(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with sidecar_on(pg_url) as (_sidecar, ch):
        _reply, stored = await set_enforcement(ch, False)
    with caplog.at_level(logging.WARNING, logger="tradeguard.persistence"):
        async with sidecar_on(pg_url, enable_risk_enforcement=True) as (_sidecar, ch):
            given = await get_flags(ch)
    async with sidecar_on(pg_url) as (_sidecar, ch):
        defaulted = await get_flags(ch)

    assert stored == "true"
    assert given == (True, True)
    assert "enable_risk_enforcement=True given at start overrides the stored value False" in caplog.text
    assert defaulted == (False, True)
    assert stored_flags(pg_url) == [(False, True)]  # a start-time value is not a call: nothing is written


async def test_set_feature_flags_during_an_outage_applies_now_says_not_stored_and_is_written_on_return(
        pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with sidecar_on(proxy.url_for(pg_url)) as (sidecar, ch):
            proxy.cut()
            reply, stored = await set_enforcement(ch, False)
            in_force = await get_flags(ch)
            during = stored_flags(pg_url)
            proxy.restore()
            assert await sidecar.persistence.flags_stored()  # the retry that writes them once the database answers
    finally:
        await proxy.close()
    async with sidecar_on(pg_url) as (_sidecar, ch):
        after_restart = await get_flags(ch)

    assert not reply.flags.enable_risk_enforcement and stored == "false"
    assert in_force == (False, True)
    assert during == []
    assert stored_flags(pg_url) == [(False, True)]
    assert after_restart == (False, True)


async def test_a_late_load_never_changes_a_flag(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with sidecar_on(pg_url) as (_sidecar, ch):
        await set_enforcement(ch, False)  # stored: shadow mode
    with caplog.at_level(logging.WARNING, logger="tradeguard.persistence"):
        async with database_down_at_start(pg_url) as (_sidecar, ch, proxy):
            before = await get_flags(ch)
            proxy.restore()
            await state_loaded(ch)
            after = await get_flags(ch)

    assert before == after == (True, True)  # the default in force since the start stays: no flip by itself
    assert "a late load never changes a flag" in caplog.text


async def test_set_feature_flags_before_a_late_load_is_kept_and_stored(pg_url: str) -> None:
    async with database_down_at_start(pg_url) as (sidecar, ch, proxy):
        _reply, stored = await set_enforcement(ch, False)
        proxy.restore()
        await state_loaded(ch)
        assert await sidecar.persistence.flags_stored()
        after = await get_flags(ch)

    assert stored == "false"
    assert after == (False, True)
    assert stored_flags(pg_url) == [(False, True)]
