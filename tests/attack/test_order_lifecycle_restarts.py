"""Attacks on the order lifecycle across restarts: SIGKILL and SIGTERM after orders were allowed, the database
down at start (CanTrade answered before the stored pending orders are loaded), the TTL across a restart.

A failing test is a finding (see test_order_lifecycle_attacks.py); a passing one pins what held.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.attack.support import figure
from tests.attack.test_order_lifecycle_attacks import Bot, long, scrape
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar, start_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def bot_on(sidecar: Sidecar) -> AsyncIterator[Bot]:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        yield Bot(ch)


async def state_loaded(ch: grpc.aio.Channel, timeout: float = 30.0) -> None:
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="tradeguard.state"),
                                                 timeout=timeout)
    async for update in watch:
        if update.status == health_pb2.HealthCheckResponse.SERVING:
            break
    watch.cancel()


def sell(qty: float, exchange: str = "binance") -> dict[str, Any]:
    return {"side": t.SIDE_SELL, "quantity": qty, "exchange": exchange}


# ---- the database down at start ---------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "known limit (README Orders): while the stored state loads, 'reducing' "
    'is judged on memory alone, without the stored pending orders'))
async def test_a_reducing_order_allowed_before_the_stored_pending_orders_load_is_judged_with_them(pg_url: str) -> None:
    """Stored: long 0.01 on binance and a pending SELL 0.01 (o-1) that closes it. Restart with the database down
    (unloaded_state_policy reduce_only). SELL 0.01 (o-2) looks reducing to memory, but with o-1 counted it is a
    new 0.01 short, beyond max_position_quantity 0.005: the loaded sidecar denies it, so must the unloaded one."""
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_position_quantity=0.005)
        await b.equity()
        await b.positions(long(0.01, "binance"))
        assert (await b.ask("o-1", **sell(0.01))).allowed
        loaded_answer = await b.ask("o-x", **sell(0.01))  # what a sidecar that knows o-1 answers
        assert not loaded_answer.allowed and loaded_answer.code == t.DECISION_CODE_POSITION_QUANTITY_LIMIT

    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as second, \
                grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await b.equity()
            await b.positions(long(0.01, "binance"))
            unloaded = await b.ask("o-2", **sell(0.01))
            proxy.restore()
            await state_loaded(ch)
            state = await b.state()
    finally:
        await proxy.close()

    sells = sum(o.quantity - o.filled_quantity for o in state.pending_orders if o.side == t.SIDE_SELL)
    figure("orders-restart", "pending SELL after the load (long 0.01)", sells)
    assert not unloaded.allowed, (
        f"allowed while loading: after the load {sells:g} pending SELL against long 0.01 = short "
        f"{sells - 0.01:g} > max_position_quantity 0.005")


async def test_report_order_on_a_stored_order_while_loading_is_unavailable_and_applies_after_the_load(
    pg_url: str,
) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_position_size_percentage=5.0)
        await b.equity()
        assert (await b.ask("o-1")).allowed

    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as second, \
                grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await b.equity()
            with pytest.raises(grpc.aio.AioRpcError) as loading:
                await b.report("o-1", t.ORDER_STATUS_CANCELLED)
            denied = await b.ask("o-2")
            proxy.restore()
            await state_loaded(ch)
            before_cancel = await b.ask("o-3")
            await b.report("o-1", t.ORDER_STATUS_CANCELLED)
            after_cancel = await b.ask("o-4")
    finally:
        await proxy.close()

    assert loading.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not denied.allowed and denied.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert not before_cancel.allowed and before_cancel.code == t.DECISION_CODE_POSITION_SIZE_LIMIT
    assert after_cancel.allowed, after_cancel.reason


# ---- SIGKILL, SIGTERM -----------------------------------------------------------------------------------------------


async def _allow_then_signal(tmp_path: Path, sig: int, wait_s: float, name: str) -> tuple[bool, t.RiskState, bool]:
    db = f"sqlite:///{tmp_path / (name + '.db')}"
    with start_sidecar(tmp_path, "--database-url", db, name=name) as proc:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            b = Bot(ch)
            await b.configure(max_position_size_percentage=5.0)
            await b.equity()
            await asyncio.sleep(0.5)  # the equity is stored: only the order is at stake
            allowed = (await b.ask("o-1")).allowed
            if wait_s:
                await asyncio.sleep(wait_s)
            proc.terminate(sig)
    with start_sidecar(tmp_path, "--database-url", db, name=name + "-2") as proc:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            b = Bot(ch)
            state = await b.state()
            nxt = await b.ask("o-2")
    return allowed, state, nxt.allowed


async def test_orders_allowed_half_a_second_before_a_sigkill_are_pending_after_the_restart(tmp_path: Path) -> None:
    allowed, state, next_allowed = await _allow_then_signal(tmp_path, signal.SIGKILL, 0.5, "kill")
    assert allowed
    assert [o.client_order_id for o in state.pending_orders] == ["o-1"]
    assert not next_allowed


async def test_orders_allowed_just_before_a_sigterm_are_pending_after_the_restart(tmp_path: Path) -> None:
    allowed, state, next_allowed = await _allow_then_signal(tmp_path, signal.SIGTERM, 0.0, "term")
    assert allowed
    assert [o.client_order_id for o in state.pending_orders] == ["o-1"]
    assert not next_allowed


async def test_figure_orders_lost_by_a_sigkill_right_after_the_answer(tmp_path: Path) -> None:
    """Not a defect by the README (SIGKILL loses at most one batch, milliseconds): measured, not asserted."""
    started = time.perf_counter()
    allowed, state, next_allowed = await _allow_then_signal(tmp_path, signal.SIGKILL, 0.0, "kill0")
    figure("orders-restart", "o-1 pending after SIGKILL 0 ms after the answer", len(state.pending_orders))
    figure("orders-restart", "next 400 allowed after it (wrong allowed if 1)", int(next_allowed))
    assert allowed and time.perf_counter() - started < 60


# ---- the TTL across a restart -----------------------------------------------------------------------------------


async def test_after_a_restart_past_the_ttl_no_stale_pending_order_is_shown_or_counted(
    tmp_path: Path, clock: ManualClock
) -> None:
    db = f"sqlite:///{tmp_path / 'ttl.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(pending_order_ttl_seconds=10, max_position_size_percentage=5.0)
        await b.equity()
        assert (await b.ask("o-1")).allowed
    clock.advance(120)  # down for two minutes: o-1's TTL passed meanwhile
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True,
                               metrics_listen="127.0.0.1:0") as second:
        metrics = await asyncio.to_thread(scrape, second.metrics_address)
        async with bot_on(second) as b:
            state = await b.state()
            nxt = await b.ask("o-2")

    assert list(state.pending_orders) == [] and nxt.allowed
    assert metrics["tradeguard_pending_orders"] == 0.0, "the gauge counts an order released two minutes ago"


# ---- what a restart forgets ------------------------------------------------------------------------------------------


async def test_the_fill_throttle_still_counts_the_fills_before_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """max_fills_per_window 3 in 60 s (RTS 6 15(3)): two fills (two orders), a restart, a third fill within the
    minute are three fills in the window and must halt, as without the restart. (The stored orders give the fill
    window back: one fill per order, each at its latest fill; see the partial-fill tests below.)"""
    db = f"sqlite:///{tmp_path / 'fills.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_fills_per_window=3, fill_window_seconds=60)
        await b.equity(1e9)
        for i in range(4):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
        await b.report("o-0", t.ORDER_STATUS_FILLED)
        await b.report("o-1", t.ORDER_STATUS_FILLED)
    clock.advance(5)
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as second, bot_on(second) as b:
        await b.report("o-2", t.ORDER_STATUS_FILLED)
        third = await b.state()

    assert third.trading_state == t.TRADING_STATE_HALTED, "3 fills in 60 s, across a restart, did not halt"


async def test_an_id_reused_while_the_stored_state_loads_does_not_lose_the_order_it_allowed(pg_url: str) -> None:
    """A bot restarted with its sidecar restarts its id counter: ord-1 is asked again for a different order (a
    reducing SELL) while the stored state, which has ord-1 pending as a BUY, is not loaded. Memory allows it. After
    the load the SELL the sidecar allowed must count (or the reuse be refused), not vanish behind the stored BUY."""
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_position_size_percentage=50.0)
        await b.equity()
        assert (await b.ask("ord-1", quantity=0.008)).allowed  # BUY 0.008, pending

    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as second, \
                grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await b.equity()
            await b.positions(long(0.01, "binance"))
            reused = await b.ask("ord-1", **sell(0.01))
            proxy.restore()
            await state_loaded(ch)
            state = await b.state()
    finally:
        await proxy.close()

    orders = [(o.client_order_id, o.side, o.quantity) for o in state.pending_orders]
    figure("orders-restart", "pending after the load", orders)
    assert not reused.allowed or (t.SIDE_SELL, 0.01) in [(s, q) for _i, s, q in orders], (
        f"ord-1 SELL 0.01 was allowed while loading but after the load the sidecar holds {orders}")


async def test_a_halt_while_the_stored_state_loads_tells_watchers_to_cancel_the_stored_pending_orders(
    pg_url: str,
) -> None:
    """Incident at start: the database is down, the operator halts the bot. Its orders allowed before the restart
    are in the store. When the store answers, the bot (watching, as the README tells it to) must get
    cancel_all_orders naming them: they are working at the exchange while it is HALTED."""
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure()
        await b.equity()
        assert (await b.ask("o-1")).allowed
        assert (await b.ask("o-2", price=49_000.0)).allowed

    proxy = await FaultProxy().start()
    proxy.cut()
    got: list[list[str]] = []
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as second, \
                grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            stream = b.risk.WatchRiskState(rs.WatchRiskStateRequest(**b.ids))
            await stream.read()  # initial
            await b.admin.PauseTrading(ad.PauseTradingRequest(**b.ids, trading_state=t.TRADING_STATE_HALTED,
                                                              reason="incident"))
            proxy.restore()
            await state_loaded(ch)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                try:
                    update = await asyncio.wait_for(stream.read(), deadline - time.monotonic())
                except TimeoutError:
                    break
                got.extend(list(a.client_order_ids) for a in update.actions
                           if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS)
            stream.cancel()
            state = await b.state()
    finally:
        await proxy.close()

    assert state.trading_state == t.TRADING_STATE_HALTED
    assert sorted(o.client_order_id for o in state.pending_orders) == ["o-1", "o-2"]
    assert ["o-1", "o-2"] in [sorted(ids) for ids in got], f"watch got cancel_all_orders {got}"


async def test_the_duplicate_order_window_still_holds_across_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """duplicate_order_window_ms 60,000 (15c3-5 duplicative orders): the same order 5 s later is a duplicate,
    also when the sidecar restarted in between (a crash loop would otherwise let every duplicate through)."""
    db = f"sqlite:///{tmp_path / 'dup.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(duplicate_order_window_ms=60_000, max_position_size_percentage=50.0)
        await b.equity()
        assert (await b.ask("o-1")).allowed
    clock.advance(5)
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as second, bot_on(second) as b:
        dup = await b.ask("o-2")

    assert not dup.allowed and dup.code == t.DECISION_CODE_DUPLICATE_ORDER, dup.reason


async def test_the_order_rate_throttle_still_counts_the_orders_allowed_before_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max_orders_per_window 2 in 60 s (the throttle): two orders, a restart, a third within the minute is the
    third in the window and is denied, as without the restart; once the window has passed the first two, the
    next is allowed (the restored times do not deny for longer)."""
    db = f"sqlite:///{tmp_path / 'rate.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_orders_per_window=2, order_rate_window_seconds=60)
        await b.equity(1e9)
        for i in range(2):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
    clock.advance(5)
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as second, bot_on(second) as b:
        third = await b.ask("o-2", price=50_002.0)
        clock.advance(56)  # 61 s after the first two
        later = await b.ask("o-3", price=50_003.0)

    assert not third.allowed and third.code == t.DECISION_CODE_ORDER_RATE_LIMIT, third.reason
    assert later.allowed, later.reason


async def _partial_fills_then_restart(tmp_path: Path, clock: ManualClock, filled_after: int) -> t.RiskState:
    """max_fills_per_window 3 in 60 s: o-0 filled in two reports (two fills, one order), a restart, then
    `filled_after` more orders filled within the minute. The engine that never restarted halts at the first of
    them (three fills); the restored window holds one fill per order (o-0's latest)."""
    db = f"sqlite:///{tmp_path / f'partial-{filled_after}.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as first, bot_on(first) as b:
        await b.configure(max_fills_per_window=3, fill_window_seconds=60)
        await b.equity(1e9)
        for i in range(1 + filled_after):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
        await b.report("o-0", t.ORDER_STATUS_PARTIALLY_FILLED, filled=0.004)
        clock.advance(1)
        await b.report("o-0", t.ORDER_STATUS_FILLED)
        assert (await b.state()).trading_state == t.TRADING_STATE_ACTIVE
    clock.advance(5)
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True) as second, bot_on(second) as b:
        for i in range(1, 1 + filled_after):
            await b.report(f"o-{i}", t.ORDER_STATUS_FILLED)
        return await b.state()


async def test_the_fill_throttle_counts_at_least_one_fill_per_order_filled_before_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """The lower bound that holds: o-0's two partial fills count as one after the restart, so two more filled
    orders make three fills in the window: halted (one fill later than without the restart)."""
    state = await _partial_fills_then_restart(tmp_path, clock, filled_after=2)

    assert state.trading_state == t.TRADING_STATE_HALTED, "3 filled orders in 60 s, across a restart, did not halt"


async def test_the_fill_throttle_still_counts_every_partial_fill_before_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """o-0's two partial fills and o-1's fill are three fills in 60 s and must halt, as without the restart."""
    state = await _partial_fills_then_restart(tmp_path, clock, filled_after=1)

    assert state.trading_state == t.TRADING_STATE_HALTED, "3 fills in 60 s (2 of one order), across a restart"
