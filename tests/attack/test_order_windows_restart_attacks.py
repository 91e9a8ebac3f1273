"""Attacks on the order windows rebuilt after a restart (743acf2: engine.orders.rebuild_windows / clamp_windows,
persistence's merge of the spooled order times): the duplicate-order window, the order-rate throttle and the fill
throttle, through the public API, as a careless bot, a hostile bot and an operator would combine them.

The yardstick of each test is the same setup without the restart: a wrong allow (an order that setup denies) or a
deny that outlasts its window is a finding (`xfail(strict=True)` with its severity); a plain test pins what held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.attack.test_order_lifecycle_attacks import Bot, check
from tests.attack.test_order_lifecycle_restarts import bot_on, state_loaded
from tests.support.proxy import FaultProxy
from tests.support.residency import evict_idle
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

WINDOW_S = 3600
DUP_MS = 60_000


@contextlib.asynccontextmanager
async def sqlite_bot(tmp_path: Path, clock: ManualClock, **settings: Any) -> AsyncIterator[tuple[Sidecar, Bot]]:
    db = f"sqlite:///{tmp_path / 'windows.db'}"
    async with running_sidecar(clock=clock, database_url=db, enable_persistence=True, **settings) as sc, \
            bot_on(sc) as b:
        yield sc, b


async def throttle(b: Bot, max_orders: int) -> None:
    await b.configure(max_orders_per_window=max_orders, order_rate_window_seconds=WINDOW_S,
                      duplicate_order_window_ms=DUP_MS, max_position_size_percentage=100.0)
    await b.equity(1e12)


def flags(enforce: bool) -> ad.SetFeatureFlagsRequest:
    return ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=enforce, enable_persistence=True))


# ---- a restart with a call in its first moment -----------------------------------------------------------------


async def test_a_duplicate_asked_at_the_very_instant_of_the_restart_is_denied(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """The clock does not move across the restart: the first call of the new process is the same order."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 100)
        assert (await b.ask("o-1")).allowed
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        dup = await b.ask("o-2")

    assert not dup.allowed and dup.code == t.DECISION_CODE_DUPLICATE_ORDER, dup.reason


async def test_the_throttle_counts_at_the_first_call_after_a_restart_and_a_denied_order_never(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 2 per hour: two allowed, a third denied (never placed: not counted). After a restart the next is still
    the third (denied), and once the hour has passed the first two the next is allowed: the denied ones do not
    extend the deny."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 2)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        clock.advance(10)
        assert (await b.ask("o-1", price=50_001.0)).allowed
        clock.advance(10)
        denied = await b.ask("o-2", price=50_002.0)
        assert not denied.allowed and denied.code == t.DECISION_CODE_ORDER_RATE_LIMIT
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        first = await b.ask("o-3", price=50_003.0)
        clock.advance(WINDOW_S - 20 + 1)  # past o-0 only: one slot free
        one = await b.ask("o-4", price=50_004.0)
        two = await b.ask("o-5", price=50_005.0)

    assert not first.allowed and first.code == t.DECISION_CODE_ORDER_RATE_LIMIT, first.reason
    assert one.allowed, one.reason
    assert not two.allowed and two.code == t.DECISION_CODE_ORDER_RATE_LIMIT, two.reason


# ---- odd prices and quantities, other venues --------------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "price"), [
    (0.1 + 0.2, 50_000.0),  # 0.30000000000000004
    (0.008, 0.1 + 0.7),  # 0.7999999999999999
    (1e-9, 123_456.789_012_345_67),
    (5e-324 * 2**60, 50_000.0),  # a tiny quantity near the bottom of the float range
])  # (a price or quantity of 0.0 or -0.0 is INVALID_ARGUMENT at the API: never a key)
async def test_odd_float_keys_of_the_duplicate_window_survive_the_restart(
    tmp_path: Path, clock: ManualClock, quantity: float, price: float,
) -> None:
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 100)
        await b.configure(duplicate_order_window_ms=DUP_MS)
        await b.equity(1e12)
        first = await b.ask("o-1", quantity=quantity, price=price)
        in_memory = await b.ask("o-x", quantity=quantity, price=price)
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        dup = await b.ask("o-2", quantity=quantity, price=price)

    assert first.allowed, first.reason
    assert not in_memory.allowed and in_memory.code == t.DECISION_CODE_DUPLICATE_ORDER
    assert not dup.allowed and dup.code == t.DECISION_CODE_DUPLICATE_ORDER, dup.reason


async def test_a_huge_price_and_quantity_key_survives_the_restart(tmp_path: Path, clock: ManualClock) -> None:
    """Whatever the first process answers to an order at the 1e15 bounds, the restarted one must not be more permissive
    for the same order asked again."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 100)
        first = await b.ask("o-1", quantity=1e15, price=1e15)
        again = await b.ask("o-x", quantity=1e15, price=1e15)
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        after = await b.ask("o-2", quantity=1e15, price=1e15)

    assert again.allowed or not after.allowed, (first.reason, again.reason, after.reason)
    if first.allowed:
        assert not after.allowed, after.reason


async def test_the_same_order_on_another_venue_is_still_a_duplicate_after_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """The duplicate key has no venue (as the engine builds it): memory denies BUY 0.008 @ 50,000 on okx after the
    same on binance; so must the restarted sidecar."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 100)
        assert (await b.ask("o-1", exchange="binance")).allowed
        in_memory = await b.ask("o-x", exchange="okx")
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        after = await b.ask("o-2", exchange="okx")

    assert not in_memory.allowed and in_memory.code == t.DECISION_CODE_DUPLICATE_ORDER
    assert not after.allowed and after.code == t.DECISION_CODE_DUPLICATE_ORDER, after.reason


# ---- the clock stepped across a restart ----------------------------------------------------------------------


async def test_a_clock_stepped_back_an_hour_across_a_restart_keeps_the_windows_for_one_window_only(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """Right after the restart the duplicate and the over-rate order are denied (the orders count, as now); a
    window later both are allowed again: the step back does not deny for an hour."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.configure(max_orders_per_window=2, order_rate_window_seconds=60, duplicate_order_window_ms=DUP_MS,
                          max_position_size_percentage=100.0)
        await b.equity(1e12)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        assert (await b.ask("o-1", price=50_001.0)).allowed
    clock.advance(-3600)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        dup = await b.ask("o-2", price=50_000.0)
        rate = await b.ask("o-3", price=50_009.0)
        clock.advance(61)
        dup_later = await b.ask("o-4", price=50_000.0)
        rate_later = await b.ask("o-5", price=50_008.0)

    assert not dup.allowed, dup.reason
    assert not rate.allowed and rate.code == t.DECISION_CODE_ORDER_RATE_LIMIT, rate.reason
    assert dup_later.allowed, dup_later.reason
    assert rate_later.allowed, rate_later.reason


async def test_a_clock_stepped_forward_past_the_windows_across_a_restart_frees_them(
    tmp_path: Path, clock: ManualClock,
) -> None:
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 1)
        assert (await b.ask("o-0")).allowed
    clock.advance(WINDOW_S + 1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        again = await b.ask("o-1")

    assert again.allowed, again.reason


# ---- shadow mode, resume, eviction ----------------------------------------------------------------------------


async def test_orders_placed_in_shadow_mode_count_in_the_windows_after_enforcement_is_on_and_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """Shadow mode: o-1 and its duplicate o-2 are both placed (allowed, o-2 would_deny). The operator turns
    enforcement on, the sidecar restarts: the same order is a duplicate and the throttle (max 2) counts both."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 2)
        await b.admin.SetFeatureFlags(flags(False))
        one = await b.ask("o-1")
        two = await b.ask("o-2")
        await b.admin.SetFeatureFlags(flags(True))
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        assert (await b.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest())).flags.enable_risk_enforcement
        dup = await b.ask("o-3")
        other = await b.ask("o-4", price=50_123.0)

    assert one.allowed and two.allowed and two.would_deny
    assert not dup.allowed and dup.code == t.DECISION_CODE_DUPLICATE_ORDER, dup.reason
    assert not other.allowed and other.code == t.DECISION_CODE_ORDER_RATE_LIMIT, other.reason


async def test_an_idle_trader_with_open_windows_is_not_evicted_and_keeps_them(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 2 per hour; both orders cancelled (no pending order pins the trader), then idle 10 minutes with
    trader_idle_evict_seconds 60: the open windows pin it (an eviction would rebuild them from the stored orders),
    the third order is denied; after the hour it is evicted and its reload allows the next one."""
    async with sqlite_bot(tmp_path, clock, trader_idle_evict_seconds=60.0) as (sc, b):
        await throttle(b, 2)
        for i in range(2):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
            await b.report(f"o-{i}", t.ORDER_STATUS_CANCELLED)
        clock.advance(600)
        evicted_early = await evict_idle(sc)
        third = await b.ask("o-2", price=50_002.0)
        clock.advance(WINDOW_S + 1)
        evicted_late = await evict_idle(sc)
        later = await b.ask("o-3", price=50_003.0)

    assert evicted_early == 0
    assert not third.allowed and third.code == t.DECISION_CODE_ORDER_RATE_LIMIT, third.reason
    assert evicted_late == 1
    assert later.allowed, later.reason


async def test_an_order_released_by_its_ttl_still_counts_in_the_throttle_after_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """pending_order_ttl_seconds 5 and a one-hour throttle of 2: both orders expire (finished, EXPIRED) long before
    the window ends; memory still counts them, so must the restarted sidecar."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 2)
        await b.configure(max_orders_per_window=2, order_rate_window_seconds=WINDOW_S, pending_order_ttl_seconds=5,
                          max_position_size_percentage=100.0)
        await b.equity(1e12)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        assert (await b.ask("o-1", price=50_001.0)).allowed
        clock.advance(30)
        in_memory = await b.ask("o-x", price=50_003.0)
    clock.advance(30)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        after = await b.ask("o-2", price=50_002.0)

    assert not in_memory.allowed and in_memory.code == t.DECISION_CODE_ORDER_RATE_LIMIT, in_memory.reason
    assert not after.allowed and after.code == t.DECISION_CODE_ORDER_RATE_LIMIT, after.reason


async def test_a_busy_bot_that_cancelled_80_orders_gets_no_extra_orders_after_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 100 per hour. 80 orders, each cancelled right away (a market maker re-quoting), then a restart: 20 more
    are allowed, the 101st in the hour is denied, as without the restart."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 100)
        for i in range(80):
            assert (await b.ask(f"q-{i}", price=50_000.0 + i)).allowed
            await b.report(f"q-{i}", t.ORDER_STATUS_CANCELLED)
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        answers = [await b.ask(f"r-{i}", price=60_000.0 + i) for i in range(21)]

    assert all(a.allowed for a in answers[:20])
    assert not answers[20].allowed, f"order {80 + 21} in the hour allowed after a restart"


# ---- the database down at start, another sidecar taking the trader over -----------------------------------------


async def test_an_order_allowed_while_the_database_is_down_at_start_counts_once_after_the_load(
    pg_url: str, clock: ManualClock,
) -> None:
    """max 4 per hour. Stored: o-0, o-1. The restart finds the database down (unloaded_state_policy memory): o-2
    is allowed from memory. After the
    load o-3 is the fourth (allowed: nothing counted twice) and o-4 the fifth (denied: nothing counted zero
    times)."""
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True) as first, \
            bot_on(first) as b:
        await throttle(b, 4)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        assert (await b.ask("o-1", price=50_001.0)).allowed
    clock.advance(1)
    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with running_sidecar(clock=clock, database_url=proxy.url_for(pg_url), enable_persistence=True,
                                   unloaded_state_policy="memory") as second, \
                grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await b.equity(1e12)
            meanwhile = await b.ask("o-2", price=50_002.0)
            proxy.restore()
            await state_loaded(ch)
            fourth = await b.ask("o-3", price=50_003.0)
            fifth = await b.ask("o-4", price=50_004.0)
            dup = await b.ask("o-5", price=50_000.0)
    finally:
        await proxy.close()

    assert meanwhile.allowed, meanwhile.reason
    assert fourth.allowed, f"counted twice: {fourth.reason}"
    assert not fifth.allowed and fifth.code == t.DECISION_CODE_ORDER_RATE_LIMIT, f"counted zero times: {fifth.reason}"
    assert not dup.allowed


async def test_windows_follow_the_trader_to_the_sidecar_that_takes_it_over(pg_url: str, clock: ManualClock) -> None:
    """Sidecar A allows o-0 and o-1 (max 2 per hour) and goes away; sidecar B (another sidecar_id) takes the trader
    over on its next call: the duplicate and the third order are denied there."""
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True, sidecar_id="A",
                               trader_lease_seconds=1) as a, bot_on(a) as b:
        await throttle(b, 2)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        assert (await b.ask("o-1", price=50_001.0)).allowed
    clock.advance(5)
    async with running_sidecar(clock=clock, database_url=pg_url, enable_persistence=True, sidecar_id="B",
                               trader_lease_seconds=1) as sc_b, bot_on(sc_b) as b:
        dup = await b.ask("o-2", price=50_000.0)
        third = await b.ask("o-3", price=50_002.0)

    assert not dup.allowed, dup.reason
    assert not third.allowed and third.code == t.DECISION_CODE_ORDER_RATE_LIMIT, third.reason


async def ask_until_owned(b: Bot, coid: str, price: float, timeout: float = 10.0) -> rs.CanTradeResponse:
    """CanTrade on a sidecar that must first take the trader over: refused (FAILED_PRECONDITION, owned elsewhere)
    until the previous owner's lease lapses; polled until the claim succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await b.ask(coid, price=price)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)  # (polling the lease's lapse, kept by the database's clock)


async def test_windows_follow_the_trader_when_a_live_sidecar_cut_off_loses_its_lease(pg_url: str) -> None:
    """A (behind a proxy) allows o-0 and o-1 (max 2 per hour), writes them, then loses the database while it runs;
    its lease (1 s) lapses and B, live all along, takes the trader over on the bot's next call: the duplicate and
    the third order are denied there."""
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True, sidecar_id="A",
                                   trader_lease_seconds=1, drain_timeout_s=1.0) as a, bot_on(a) as on_a, \
                running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="B",
                                trader_lease_seconds=1) as b_sc, bot_on(b_sc) as on_b:
            await throttle(on_a, 2)
            assert (await on_a.ask("o-0", price=50_000.0)).allowed
            assert (await on_a.ask("o-1", price=50_001.0)).allowed
            assert await a.store.flush(10.0)
            proxy.cut()
            dup = await ask_until_owned(on_b, "o-2", 50_000.0)
            third = await on_b.ask("o-3", price=50_002.0)
    finally:
        await proxy.close()

    assert not dup.allowed, dup.reason
    assert not third.allowed and third.code == t.DECISION_CODE_ORDER_RATE_LIMIT, third.reason


@pytest.mark.xfail(strict=True, reason=(
    "severity: medium (wrong allow; cluster-wide, not the windows' own: o-1 is missing from the row B loads, so "
    "its exposure presumably is too, not measured here): "
    "an order a cut-off sidecar allows within its still-valid lease stays in its memory and spool; the sidecar that "
    "takes the trader over after the lease lapses never sees it (the spooled row is fenced out by epoch), so neither "
    "its duplicate nor the throttle counts it"))
async def test_an_order_allowed_by_a_cut_off_owner_within_its_lease_counts_at_the_next_owner(pg_url: str) -> None:
    """max 2 per hour. A writes o-0, loses the database and, its lease still valid, allows o-1 (placed at the
    venue). B takes the trader over once the lease lapses: its first order is the third in the hour (denied), and
    o-1 asked again fails duplicate_order."""
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True, sidecar_id="A",
                                   trader_lease_seconds=1, drain_timeout_s=1.0) as a, bot_on(a) as on_a, \
                running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="B",
                                trader_lease_seconds=1) as b_sc, bot_on(b_sc) as on_b:
            await throttle(on_a, 2)
            assert (await on_a.ask("o-0", price=50_000.0)).allowed
            assert await a.store.flush(10.0)
            proxy.cut()
            within_lease = await on_a.ask("o-1", price=50_001.0)
            second = await ask_until_owned(on_b, "o-2", 50_002.0)  # the third order in the hour
            dup = await on_b.ask("o-3", price=50_001.0)  # o-1 again
    finally:
        await proxy.close()

    assert within_lease.allowed, within_lease.reason
    verdicts = (second.allowed, check(dup, "duplicate_order").status == t.CHECK_STATUS_FAIL)
    assert verdicts == (False, True), (second.reason, dup.reason)


@pytest.mark.parametrize("step", [0.0, 1.0, -3600.0], ids=["same-instant", "one-second-apart", "clock-back-an-hour"])
async def test_orders_from_the_database_the_spool_and_memory_each_count_once_after_the_load(
    pg_url: str, tmp_path: Path, clock: ManualClock, step: float,
) -> None:
    """max 5 per hour. o-0 and o-1 are written to the database; the database is cut and o-2 goes to the local
    spool; the sidecar stops. The next one (same sidecar_id and spool) starts with the database still down: it
    restores the trader from the spool and allows o-3 from memory (unloaded_state_policy memory). After the load
    o-4 is the fifth (allowed: nothing counted twice), o-5 the sixth (denied: nothing counted zero times).
    `step`: the clock between the orders (0: every order at one instant, equal times in the Counter merge) and
    across the restart (-3600: stepped back an hour, the restored times clamped)."""
    spool = str(tmp_path / "spool.db")
    proxy = await FaultProxy().start()
    try:
        settings: dict[str, Any] = {"clock": clock, "database_url": proxy.url_for(pg_url), "enable_persistence": True,
                                    "sidecar_id": "sc-s", "spool_path": spool, "unloaded_state_policy": "memory",
                                    "drain_timeout_s": 1.0}
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await throttle(b, 5)
            for i in range(2):
                assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
                clock.advance(max(step, 0.0))
            assert await first.store.flush(10.0)
            proxy.cut()
            spooled = await b.ask("o-2", price=50_002.0)
        clock.advance(step)
        async with running_sidecar(**settings) as second, grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            meanwhile = await b.ask("o-3", price=50_003.0)
            clock.advance(max(step, 0.0))
            proxy.restore()
            await state_loaded(ch)
            fifth = await b.ask("o-4", price=50_004.0)
            sixth = await b.ask("o-5", price=50_005.0)
            clock.advance(WINDOW_S + 10)
            later = await b.ask("o-6", price=50_006.0)
            pending = sorted(o.client_order_id for o in (await b.state()).pending_orders)
    finally:
        await proxy.close()

    assert spooled.allowed and meanwhile.allowed, (spooled.reason, meanwhile.reason)
    assert fifth.allowed, f"counted twice: {fifth.reason} (pending {pending})"
    assert not sixth.allowed and sixth.code == t.DECISION_CODE_ORDER_RATE_LIMIT, f"counted zero times: {sixth.reason}"
    assert later.allowed, f"a deny that outlasts the window: {later.reason}"


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (wrong allow relative to the restarted sidecar, documented tradeoff of clamp_windows): a clock "
    "stepped back across a restart and then corrected forward loses the orders of the last window: they were "
    "clamped to the stepped-back now and left the window before the clock came back"))
async def test_a_clock_stepped_back_across_a_restart_and_corrected_forward_still_counts_the_last_orders(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 2 per 60 s. Two orders at T, the host's clock is stepped back an hour and the sidecar restarts; NTP then
    corrects the clock to T + 10 s. Without the restart the two orders (at T) are 10 s old and the next is the
    third in the minute: denied. Restarted, they were clamped to T - 1 h and are long out of the window."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.configure(max_orders_per_window=2, order_rate_window_seconds=60, max_position_size_percentage=100.0)
        await b.equity(1e12)
        assert (await b.ask("o-0", price=50_000.0)).allowed
        assert (await b.ask("o-1", price=50_001.0)).allowed
    clock.advance(-3600)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.equity(1e12)  # a call while the clock is behind (the restored state is clamped at the restore)
        clock.advance(3610)
        third = await b.ask("o-2", price=50_002.0)

    assert not third.allowed and third.code == t.DECISION_CODE_ORDER_RATE_LIMIT, third.reason


# ---- RebindTrader -----------------------------------------------------------------------------------------------


async def _rebind_then_ask(b: Bot) -> tuple[bool, bool]:
    """max 2 per hour: o-0 and o-1 working; RebindTrader (same account, the orders keep counting). Then the
    duplicate of o-0 and a third order: (duplicate allowed, third allowed)."""
    await b.admin.RebindTrader(ad.RebindTraderRequest(**b.ids, reason="operator reset"))
    await b.equity(1e12)
    dup = await b.ask("o-2", price=50_000.0)
    third = await b.ask("o-3", price=50_009.0)
    return dup.allowed, third.allowed


async def test_after_a_rebind_and_a_restart_the_working_orders_count_in_the_windows(
    tmp_path: Path, clock: ManualClock,
) -> None:
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 2)
        for i in range(2):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
        await b.admin.RebindTrader(ad.RebindTraderRequest(**b.ids, reason="operator reset"))
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.equity(1e12)
        dup = await b.ask("o-2", price=50_000.0)
        third = await b.ask("o-3", price=50_009.0)

    assert not dup.allowed and not third.allowed, (dup.reason, third.reason)


async def test_after_a_rebind_without_a_restart_the_working_orders_count_in_the_windows(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """Fixed (was low, a wrong allow): RebindTrader kept the working orders but started the order windows empty, so
    a duplicate of a working order and an over-rate order passed that a restarted sidecar denies; rebind now keeps
    the windows with the orders."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 2)
        for i in range(2):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
        dup_allowed, third_allowed = await _rebind_then_ask(b)

    assert (dup_allowed, third_allowed) == (False, False)


# ---- ResumeTrading after a fill-throttle halt, then a restart -----------------------------------------------------


async def test_a_resume_after_a_fill_throttle_halt_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """max_fills_per_window 2 in 60 s: o-0 and o-1 fill, the trader halts; the operator resumes it; the sidecar
    restarts; o-2 is allowed and fills: one fill since the resume, as the running sidecar counts it. The trader
    must stay active."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.configure(max_fills_per_window=2, fill_window_seconds=60, max_position_size_percentage=100.0)
        await b.equity(1e12)
        for i in range(2):
            assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
            await b.report(f"o-{i}", t.ORDER_STATUS_FILLED)
        assert (await b.state()).trading_state == t.TRADING_STATE_HALTED
        await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
    clock.advance(5)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        third = await b.ask("o-2", price=50_002.0)
        await b.report("o-2", t.ORDER_STATUS_FILLED)
        state = await b.state()
        fourth = await b.ask("o-3", price=50_003.0)

    assert third.allowed, third.reason
    assert state.trading_state == t.TRADING_STATE_ACTIVE, "one fill since the resume halted the trader again"
    assert fourth.allowed, fourth.reason
