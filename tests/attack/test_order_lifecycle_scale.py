"""A bot that keeps thousands of orders pending (no max_open_orders configured, the default): latency of CanTrade
as they pile up and as the TTL releases them one by one, and what the store writes per change.

Figures are printed (FIGURE lines) and asserted against generous bounds.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from tests.attack.support import figure, percentile
from tests.attack.test_order_lifecycle_attacks import Bot
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

N = int(os.environ.get("TG_ATTACK_PENDING", "10000"))
SYMBOLS = 5000


async def _timed_asks(b: Bot, first: int, count: int, clock: ManualClock | None = None, step: float = 0.0,
                      ) -> list[float]:
    out = []
    for i in range(first, first + count):
        if clock is not None and step:
            clock.advance(step)
        started = time.perf_counter()
        answer = await b.ask(f"o-{i}", quantity=0.0001, price=50_000.0 + i * 0.01)
        out.append((time.perf_counter() - started) * 1e6)
        assert answer.allowed, answer.reason
    return out


async def test_can_trade_latency_stays_flat_as_pending_orders_pile_up_and_expire(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=30, max_position_size_percentage=100.0)
        await b.equity(1e12)
        empty = await _timed_asks(b, 0, 300)
        await _timed_asks(b, 300, N)  # N more pending, none expired (the clock stands still)
        full = await _timed_asks(b, 300 + N, 300)
        clock.advance(31)
        await _timed_asks(b, 600 + N, N, clock, step=30.0 / N)  # staggered: they expire one by one from here
        # Steady state: one order in and ~one out by the TTL on every call (each release scans every order).
        churn = await _timed_asks(b, 600 + 2 * N, 1000, clock, step=30.0 / N)
        state = await b.state()

    p50_empty, p50_full, p50_churn = percentile(empty, 0.5), percentile(full, 0.5), percentile(churn, 0.5)
    figure("orders-scale", "CanTrade p50 us, 0 pending", p50_empty)
    figure("orders-scale", f"CanTrade p50 us, {N} pending", p50_full)
    figure("orders-scale", f"CanTrade p50 us, ~{N} pending, TTL releasing one per call", p50_churn)
    figure("orders-scale", "pending after churn", state.pending_order_count)
    assert p50_full < 3 * p50_empty + 500
    assert p50_churn < 1.5 * p50_full, "every call walks every pending order (twice) once the TTL releases them"


async def test_history_rows_do_not_copy_every_pending_order_on_every_audited_change(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A bot with 1,000 orders pending that keeps asking and reporting equity: each audited row (equity) after an
    order was allowed copies the whole list of pending orders, unless the history holds only what changed."""
    db = tmp_path / "hist.db"
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{db}", enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=3600, max_position_size_percentage=100.0)
        await b.equity(1e12)
        await _timed_asks(b, 0, 1000)
        rounds = 50
        for i in range(rounds):
            clock.advance(1)
            await b.ask(f"n-{i}", quantity=0.0001, price=60_000.0 + i)
            await b.equity(1e12 + i + 1)
        await b.admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(**b.ids, page_size=5))
    with sqlite3.connect(db) as conn:
        sizes = [r[0] for r in conn.execute(
            "SELECT length(state) FROM risk_state_history WHERE trader_id = 'bot-1' ORDER BY id DESC LIMIT ?",
            (rounds,))]
        row = conn.execute("SELECT * FROM risk_state WHERE trader_id = 'bot-1'").fetchone()
        snapshot = (sum(len(str(v)) for v in row),) if row else None
    per_row = sum(sizes) / len(sizes)
    figure("orders-scale", "history row bytes, 1,000 pending, one new order between rows", per_row)
    figure("orders-scale", "risk_state row bytes with 1,050 pending", snapshot[0] if snapshot else -1)
    assert per_row < 20_000, f"each history row copies every pending order ({per_row:.0f} bytes a row)"


async def test_a_watcher_does_not_make_every_can_trade_copy_every_pending_order(clock: ManualClock) -> None:
    """The hot path's answers carry pending_order_count, not the list (README: copying every pending order cost
    ~1.4 us an order). A watch update carries the list; with one watcher every allowed order builds one."""
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=3600, max_position_size_percentage=100.0)
        await b.equity(1e12)
        await _timed_asks(b, 0, 3000)
        alone = await _timed_asks(b, 3000, 300)
        stream = b.risk.WatchRiskState(rs.WatchRiskStateRequest(**b.ids))
        await stream.read()
        # Nothing reads the stream: what is measured is the sidecar's cost (the test's client shares its loop).
        watched = await _timed_asks(b, 3300, 300)
        stream.cancel()

    p50_alone, p50_watched = percentile(alone, 0.5), percentile(watched, 0.5)
    figure("orders-scale", "CanTrade p50 us, 3,000 pending, no watcher", p50_alone)
    figure("orders-scale", "CanTrade p50 us, 3,000 pending, one watcher", p50_watched)
    assert p50_watched < 2 * p50_alone, "one watcher makes every CanTrade build a 3,000-order RiskState"


async def test_pending_orders_on_many_symbols_do_not_slow_every_can_trade(clock: ManualClock) -> None:
    """position_size, position_quantity and correlated_exposure walk the per-venue pending sums on every order: a
    bot with orders resting on thousands of symbols (a market maker, or a loop over a symbol list) pays for all."""
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=3600, max_position_size_percentage=100.0,
                          max_position_quantity=1e6, max_correlated_exposure_percentage=100.0)
        await b.equity(1e12)
        first = await _timed_asks(b, 0, 300)
        for i in range(SYMBOLS):
            answer = await b.ask(f"s-{i}", symbol=f"SYM{i}USDT", quantity=1.0, price=10.0)
            assert answer.allowed, answer.reason
        later = await _timed_asks(b, 300, 300)

    p50_first, p50_later = percentile(first, 0.5), percentile(later, 0.5)
    figure("orders-scale", "CanTrade p50 us, 300 pending in one symbol", p50_first)
    figure("orders-scale", f"CanTrade p50 us, +{SYMBOLS} pending on {SYMBOLS} symbols", p50_later)
    assert p50_later < 2 * p50_first, "every CanTrade walks every symbol with a pending order"
