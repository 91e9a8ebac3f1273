"""A bot that keeps thousands of orders pending (no max_open_orders configured, the default): what each CanTrade
costs as they pile up, as the TTL releases them one by one, with a watcher, on many symbols; and what the store
writes per change.

The machine is shared and noisy, so every latency comparison is between two traders of one sidecar asked in
turn (a lean one and a heavy one): noise hits both alike. Figures are printed (FIGURE lines).
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
ROUNDS = 400
ATTEMPTS = 3


async def _timed(b: Bot, coid: str, **order: object) -> float:
    started = time.perf_counter()
    answer = await b.ask(coid, **order)
    elapsed = (time.perf_counter() - started) * 1e6
    assert answer.allowed, answer.reason
    return elapsed


async def _fill(b: Bot, prefix: str, count: int, clock: ManualClock | None = None, step: float = 0.0) -> None:
    for i in range(count):
        if clock is not None and step:
            clock.advance(step)
        await _timed(b, f"{prefix}-{i}", quantity=0.0001, price=50_000.0 + i * 0.01)


async def _in_turn(lean: Bot, heavy: Bot, bound: float, clock: ManualClock | None = None, step: float = 0.0,
                   ) -> tuple[float, float]:
    """p50 of CanTrade for each trader, asked alternately ROUNDS times each, the first of the pair alternating.

    Up to ATTEMPTS runs, stopping at the first whose heavy/lean ratio is under `bound`; the pair returned is the
    run with the lowest ratio. A load spike from another process on this shared machine lands on one run; a cost
    that grows with the pending orders lands on every run.
    """
    best: tuple[float, float] | None = None
    for attempt in range(ATTEMPTS):
        a: list[float] = []
        b: list[float] = []
        for i in range(ROUNDS):
            if clock is not None and step:
                clock.advance(step)
            order = {"quantity": 0.0001, "price": 40_000.0 + i * 0.01}
            coid = f"x{attempt}-{i}"
            if i % 2:
                b.append(await _timed(heavy, coid, **order))
                a.append(await _timed(lean, coid, **order))
            else:
                a.append(await _timed(lean, coid, **order))
                b.append(await _timed(heavy, coid, **order))
        pair = percentile(a, 0.5), percentile(b, 0.5)
        if best is None or pair[1] / pair[0] < best[1] / best[0]:
            best = pair
        if best[1] < bound * best[0]:
            break
    assert best is not None
    return best


async def _two_bots(ch: grpc.aio.Channel, **config: object) -> tuple[Bot, Bot]:
    lean, heavy = Bot(ch, trader_id="lean"), Bot(ch, trader_id="heavy")
    await lean.configure(max_position_size_percentage=100.0, **config)
    for b in (lean, heavy):
        await b.equity(1e12)
    return lean, heavy


async def test_can_trade_with_thousands_of_pending_orders_costs_about_what_it_costs_with_none(
    clock: ManualClock,
) -> None:
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        lean, heavy = await _two_bots(ch, pending_order_ttl_seconds=3600)
        await _fill(heavy, "p", N)
        p50_lean, p50_heavy = await _in_turn(lean, heavy, 1.5)

    figure("orders-scale", "CanTrade p50 us, lean trader", p50_lean)
    figure("orders-scale", f"CanTrade p50 us, {N} pending", p50_heavy)
    assert p50_heavy < 1.5 * p50_lean


async def test_the_ttl_releasing_one_order_per_call_does_not_walk_every_pending_order(clock: ManualClock) -> None:
    """Steady state of a busy bot: one order in and about one out by the TTL on every call. Each release scans
    every pending order (orders.expire, then next_expiry): O(pending) per CanTrade."""
    ttl = 3600
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        lean, heavy = await _two_bots(ch, pending_order_ttl_seconds=ttl)
        await _fill(heavy, "p", N, clock, step=ttl / N)  # staggered: from now on they expire one by one
        await _fill(lean, "p", 10, clock)
        p50_lean, p50_heavy = await _in_turn(lean, heavy, 1.5, clock, step=ttl / N)
        state = await heavy.state()

    figure("orders-scale", "CanTrade p50 us, lean trader (TTL churn)", p50_lean)
    figure("orders-scale", f"CanTrade p50 us, ~{state.pending_order_count} pending, TTL releasing one per call",
           p50_heavy)
    assert p50_heavy < 1.5 * p50_lean, "every call walks every pending order (twice) once the TTL releases them"


async def test_a_watcher_does_not_make_every_can_trade_copy_every_pending_order(clock: ManualClock) -> None:
    """The hot path's answers carry pending_order_count, not the list (README: copying every pending order cost
    ~1.4 us an order). A watch update carries the list; with one watcher every allowed order builds one, on the
    CanTrade path (the engine's listeners run synchronously)."""
    pending = 3000
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        lean, heavy = await _two_bots(ch, pending_order_ttl_seconds=3600)
        await _fill(lean, "p", pending)
        await _fill(heavy, "p", pending)
        stream = heavy.risk.WatchRiskState(rs.WatchRiskStateRequest(**heavy.ids))
        await stream.read()
        # Nothing reads the stream: what is measured is the sidecar's cost (the test's client shares its loop).
        p50_lean, p50_heavy = await _in_turn(lean, heavy, 2)
        stream.cancel()

    figure("orders-scale", f"CanTrade p50 us, {pending} pending, no watcher", p50_lean)
    figure("orders-scale", f"CanTrade p50 us, {pending} pending, one watcher", p50_heavy)
    assert p50_heavy < 2 * p50_lean, f"one watcher makes every CanTrade build a {pending}-order RiskState"


async def test_pending_orders_on_many_symbols_do_not_slow_every_can_trade(clock: ManualClock) -> None:
    """position_size, position_quantity and correlated_exposure walk the per-venue pending sums on every order: a
    bot with orders resting on thousands of symbols (a market maker, a loop over a symbol list) pays for all."""
    async with running_sidecar(clock=clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        lean, heavy = await _two_bots(ch, pending_order_ttl_seconds=3600, max_position_quantity=1e6,
                                      max_correlated_exposure_percentage=100.0)
        for i in range(SYMBOLS):
            await _timed(heavy, f"s-{i}", symbol=f"SYM{i}USDT", quantity=1.0, price=10.0)
        p50_lean, p50_heavy = await _in_turn(lean, heavy, 2)

    figure("orders-scale", "CanTrade p50 us, lean trader (symbols)", p50_lean)
    figure("orders-scale", f"CanTrade p50 us, pending on {SYMBOLS} symbols", p50_heavy)
    assert p50_heavy < 2 * p50_lean, "every CanTrade walks every symbol with a pending order"


@pytest.mark.xfail(strict=True, reason=(
    'known limit (README Orders): a history row holds the whole pending '
    "list when it changed since the trader's last row"))
async def test_history_rows_do_not_copy_every_pending_order_on_every_audited_change(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A bot with 1,000 orders pending that keeps asking and reporting equity: each audited row (equity) after an
    order was allowed copies the whole list of pending orders (the history's delta keeps a map only while it is
    unchanged, and the list changes with every order)."""
    db = tmp_path / "hist.db"
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{db}", enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=3600, max_position_size_percentage=100.0)
        await b.equity(1e12)
        await _fill(b, "p", 1000)
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
    per_row = sum(sizes) / len(sizes)
    figure("orders-scale", "history row bytes, 1,000 pending, one new order between rows", per_row)
    figure("orders-scale", "risk_state row bytes with 1,050 pending", sum(len(str(v)) for v in row) if row else -1)
    assert per_row < 20_000, f"each history row copies every pending order ({per_row:.0f} bytes a row)"
