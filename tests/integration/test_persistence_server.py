"""Durable state through the whole sidecar, against the real PostgreSQL (a fresh database per test).

Restart keeps pauses; a database outage under load fails no call and loses no latest state; shutdown
under load drains the queue. Figures (latencies, counts) are printed, and the assertions are on them: the median
latency and the call count are compared with a memory-only sidecar driven at the same time in the same process,
never with a fixed bound; the one bound in seconds is the behaviour itself (no call waits a third of the outage).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from tests.support.pg import fresh_database, plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar, start_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import Sidecar
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute(query).fetchall())


def test_breach_survives_a_restart_with_the_same_paused_until(tmp_path: Path, pg_url: str) -> None:
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    with start_sidecar(tmp_path, "--database-url", pg_url, name="first") as first:
        with grpc.insecure_channel(first.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
            risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_400))
            before = risk.CanTrade(rs.CanTradeRequest(**ids))
        assert first.terminate() == 0

    with start_sidecar(tmp_path, "--database-url", pg_url, name="second") as second, \
            grpc.insecure_channel(second.address) as ch:
        after = rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**ids))

    assert not before.allowed and before.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert after.paused_until == before.paused_until
    assert after.state.current_equity == 9_400 and after.state.peak_equity == 10_000


def test_pause_restored_after_restart_ends_at_paused_until_and_trading_resumes(tmp_path: Path, pg_url: str) -> None:
    ids = {"trader_id": "bot-2", "account_id": "acct-1"}
    order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, price=50_000)
    with start_sidecar(tmp_path, "--database-url", pg_url, name="first") as first:
        with grpc.insecure_channel(first.address) as ch:
            rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
            paused = adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                **ids, trading_state=t.TRADING_STATE_HALTED, duration={"seconds": 8}))  # outlives a slow restart
        assert first.terminate() == 0

    with start_sidecar(tmp_path, "--database-url", pg_url, name="second") as second, \
            grpc.insecure_channel(second.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        still = risk.CanTrade(rs.CanTradeRequest(**ids, order=order))
        stream = risk.WatchRiskState(rs.WatchRiskStateRequest(**ids), timeout=20)
        updates = [next(stream)]
        while updates[-1].state.trading_state != t.TRADING_STATE_ACTIVE:
            updates.append(next(stream))  # the stream says when the pause ends; no sleeping here
        stream.cancel()
        resumed = risk.CanTrade(rs.CanTradeRequest(**ids, order=order))

    assert not still.allowed and still.code == t.DECISION_CODE_KILL_SWITCH
    assert still.paused_until == paused.state.paused_until
    assert updates[-1].reason == "pause_expired"
    assert resumed.allowed


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[Sidecar, FaultProxy, str]]:
    proxy = await FaultProxy().start()
    url = proxy.url_for(pg_url)
    async with running_sidecar(database_url=url, enable_persistence=True) as sidecar:
        assert await sidecar.store.flush(timeout=10)
        yield sidecar, proxy, pg_url
    await proxy.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def drive(risk: rsg.RiskServiceStub, traders: int, seconds: float, equities: dict[str, float],
                latencies: list[float], failures: list[BaseException]) -> None:
    """A steady stream of ReportEquity + CanTrade from `traders` bots for `seconds`."""
    deadline = time.monotonic() + seconds

    async def bot(i: int) -> None:
        trader = f"bot-{i}"
        equity = 10_000.0
        while time.monotonic() < deadline:
            equity += 1.0
            try:
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id="acct", equity=equity))
                equities[trader] = equity
                started = time.perf_counter()
                await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id="acct"))
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    await asyncio.gather(*(bot(i) for i in range(traders)))


async def test_database_outage_under_load_fails_no_call_and_keeps_every_latest_state(
    proxied: tuple[Sidecar, FaultProxy, str], gc_pauses: list[float],
) -> None:
    sidecar, proxy, pg_url = proxied
    store = sidecar.store
    assert isinstance(store, RiskStore)
    equities: dict[str, float] = {}
    up: list[float] = []
    down: list[float] = []
    control: list[float] = []  # a memory-only sidecar driven alongside during the outage: same process, same loop
    failures: list[BaseException] = []
    outage_s = 4.5
    async with running_sidecar() as memory_only, grpc.aio.insecure_channel(sidecar.address) as ch, \
            grpc.aio.insecure_channel(memory_only.address) as control_ch:
        risk = rsg.RiskServiceStub(ch)
        await drive(risk, 8, 1.5, equities, up, failures)
        proxy.cut()
        await asyncio.gather(drive(risk, 8, outage_s, equities, down, failures),
                             drive(rsg.RiskServiceStub(control_ch), 8, outage_s, {}, control, failures))
        health = await ch.unary_unary("/grpc.health.v1.Health/Check")(b"\n\x10tradeguard.store")
        unhealthy_seen = not store.healthy
        proxy.restore()
        recovered_at = time.monotonic()
        assert await store.flush(timeout=30)
        recovery_s = time.monotonic() - recovered_at

    stored = dict(rows(pg_url, "SELECT trader_id, current_equity FROM risk_state"))
    history = rows(pg_url, "SELECT count(*) FROM risk_state_history")[0][0]
    p50_up, p50_down, p50_control = (statistics.median(x) * 1e3 for x in (up, down, control))
    print(f"\noutage: calls up={len(up)} down={len(down)} memory-only alongside={len(control)} failed={len(failures)}; "
          f"CanTrade p50/p99 ms up={p50_up:.2f}/{percentile(up, 0.99) * 1e3:.2f} "
          f"down={p50_down:.2f}/{percentile(down, 0.99) * 1e3:.2f} "
          f"memory-only={p50_control:.2f}/{percentile(control, 0.99) * 1e3:.2f}; max down {max(down) * 1e3:.0f} ms; "
          f"backlog written in {recovery_s:.2f}s; history enqueued={store.enqueued['history']} written={history} "
          f"dropped={store.dropped_history}; GC pauses {len(gc_pauses)}, longest "
          f"{max(gc_pauses, default=0.0) * 1e3:.0f} ms")

    assert failures == []
    assert unhealthy_seen and health  # the store was reported down while the calls went on
    assert stored == equities  # every trader's newest state, exactly
    assert history == store.enqueued["history"] - store.dropped_history
    assert store.dropped_history == 0  # 4.5 s of 8 bots fit in the history backlog (queue_size): none lost
    # The hot path did not wait on the database: during the outage the durable sidecar answered like a
    # memory-only one measured at the same moments (the baseline: both are served by the same event loop, so
    # CPU starvation of the process and GC pauses hit both alike), as fast and about as often.
    assert p50_down < 3 * p50_control and len(down) > len(control) / 3
    # The behaviour bound: no call waited a sizeable part of the outage. Not relaxed by the memory-only
    # sidecar's longest call: a database call blocking the shared event loop would stall both sidecars alike.
    assert max(down) < outage_s / 3


async def test_shutdown_under_load_drains_the_queue(pg_url: str) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as sidecar:
        store = sidecar.store
        assert isinstance(store, RiskStore)
        equities: dict[str, float] = {}
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            await drive(rsg.RiskServiceStub(ch), 16, 1.0, equities, [], [])
    # running_sidecar stopped the sidecar: the server finished its calls, then the store drained.

    stored = dict(rows(pg_url, "SELECT trader_id, current_equity FROM risk_state"))
    history = rows(pg_url, "SELECT count(*) FROM risk_state_history")[0][0]
    print(f"\nshutdown: history enqueued={store.enqueued['history']} written={history} "
          f"dropped={store.dropped_history}; states={len(stored)}")

    assert stored == equities
    assert history == store.enqueued["history"] - store.dropped_history
    assert store.queue_depth == 0
