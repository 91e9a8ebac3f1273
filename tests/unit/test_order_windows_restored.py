"""The order windows restored when a trader's state is restored (engine.orders.rebuild_windows, called by
snapshot.from_record; RiskEngine.restore clamps times after its clock's now).

The duplicate-order window (recent_orders) is not in the snapshot written on every change: it comes back from the
orders the stored state holds anyway, the pending ones and the last FINISHED_ORDERS_KEPT finished ones. The
throttle's and order_rate breakers' window (order_times) and the fill throttle's window (fill_times) are stored,
their newest WINDOW_TIMES_STORED times each, merged at the restore with the orders' times (rows of older versions
hold no fill window: it is rebuilt from their orders, a lower bound). What that cannot give back is pinned here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict, deque
from typing import Any

from tradeguard_server.engine.breakers import Evaluator, Scope
from tradeguard_server.engine.breakers.conditions import order_rate
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.orders import clamp_windows, rebuild_windows
from tradeguard_server.engine.snapshot import StateRecord, from_record, to_record
from tradeguard_server.engine.state import FINISHED_ORDERS_KEPT, ORDER_IDS_KEPT, WINDOW_TIMES_STORED, TraderState
from tradeguard_server.engine.types import (
    DecisionCode,
    OrderIntent,
    OrderStatus,
    PendingOrder,
    Side,
    TradingState,
)
from tradeguard_server.persistence import Persistence
from tradeguard_server.services.breakers import BreakerService
from tradeguard_server.services.configs import ConfigService
from tradeguard_server.store.memory import MemoryStore

T0 = 1_767_268_800.0  # Thursday 2026-01-01 12:00 UTC
ACCOUNT = "acct-1"
TRADER = "t-1"
ALL_WINDOWS = Limits(max_orders_per_window=1_000, order_rate_window_seconds=60, duplicate_order_window_ms=1_000,
                     max_fills_per_window=1_000, fill_window_seconds=60)


def engine_with(clock: ManualClock, limits: Limits) -> RiskEngine:
    engine = RiskEngine(clock, defaults=Limits())
    engine.set_account_limits(ACCOUNT, limits)
    engine.report_equity(TRADER, ACCOUNT, 1e9, None)
    return engine


def restarted(engine: RiskEngine, clock: ManualClock) -> RiskEngine:
    """A new engine holding the trader's state as persistence stores and restores it."""
    fresh = RiskEngine(clock, defaults=Limits())
    fresh.set_account_limits(ACCOUNT, engine.limits_for(ACCOUNT))
    fresh.restore(from_record(to_record(engine.traders[TRADER])))
    return fresh


def buy(price: float, quantity: float = 0.01) -> OrderIntent:
    return OrderIntent("BTCUSDT", Side.BUY, quantity, price)


def allow(engine: RiskEngine, coid: str, order: OrderIntent) -> None:
    decision, _ = engine.can_trade(TRADER, ACCOUNT, order, coid)
    assert decision.allowed, decision.reason


def order(coid: str, allowed_at: float, price: float = 50_000.0, side: Side = Side.BUY, quantity: float = 0.01,
          **more: Any) -> PendingOrder:
    return PendingOrder(coid, "BTCUSDT", "", side, quantity, price, allowed_at, allowed_at + 60.0, **more)


# ---- what comes back ------------------------------------------------------------------------------------------


def test_the_rebuilt_windows_are_the_ones_memory_held_when_each_order_filled_at_most_once(clock: ManualClock) -> None:
    engine = engine_with(clock, ALL_WINDOWS)
    for i in range(6):
        allow(engine, f"o-{i}", buy(50_000.0 + i % 3))  # o-3..o-5 repeat o-0..o-2's keys, later
        clock.advance(1.5)
    engine.report_order(TRADER, ACCOUNT, "o-0", OrderStatus.FILLED, 0.0, 0.0)
    clock.advance(2)
    engine.report_order(TRADER, ACCOUNT, "o-4", OrderStatus.PARTIALLY_FILLED, 0.004, 0.0)
    engine.report_order(TRADER, ACCOUNT, "o-5", OrderStatus.CANCELLED, 0.0, 0.0)
    before = engine.traders[TRADER]

    after = restarted(engine, clock).traders[TRADER]

    assert list(after.recent_orders.items()) == list(before.recent_orders.items())  # same keys, times and order
    assert list(after.order_times) == list(before.order_times)
    assert list(after.fill_times) == list(before.fill_times) == [T0 + 9.0, T0 + 11.0]


def test_the_duplicate_key_is_the_one_the_check_reads() -> None:
    """(symbol, int(side), quantity, price), as RiskEngine._reserve writes it and controls.duplicate_order reads it."""
    st = TraderState(TRADER, ACCOUNT, orders={"o-1": order("o-1", T0, side=Side.SELL, quantity=0.5, price=3.25)})

    rebuild_windows(st)

    assert st.recent_orders == OrderedDict({("BTCUSDT", int(Side.SELL), 0.5, 3.25): T0})


def test_each_duplicate_key_keeps_its_latest_allowed_time_and_keys_stay_oldest_first() -> None:
    st = TraderState(TRADER, ACCOUNT)
    st.finished_orders = OrderedDict(
        (o.client_order_id, o) for o in (order("f-1", T0 + 1, price=1.0, status=OrderStatus.CANCELLED),
                                         order("f-2", T0 + 3, price=2.0, status=OrderStatus.FILLED)))
    st.orders = {"p-1": order("p-1", T0 + 4, price=1.0), "p-0": order("p-0", T0, price=3.0)}

    rebuild_windows(st)

    assert [(key[3], at) for key, at in st.recent_orders.items()] == [(3.0, T0), (2.0, T0 + 3), (1.0, T0 + 4)]
    assert list(st.order_times) == [T0, T0 + 1, T0 + 3, T0 + 4]


def test_the_duplicate_window_keeps_the_newest_order_ids_kept_keys_as_the_engine_does() -> None:
    st = TraderState(TRADER, ACCOUNT)
    st.orders = {f"o-{i}": order(f"o-{i}", T0 + i, price=1.0 + i) for i in range(ORDER_IDS_KEPT + 20)}

    rebuild_windows(st)

    assert len(st.recent_orders) == ORDER_IDS_KEPT
    assert next(iter(st.recent_orders.values())) == T0 + 20
    assert len(st.order_times) == ORDER_IDS_KEPT + 20  # (the order-rate window counts them all)


def test_an_order_filled_in_several_reports_counts_every_fill_after_a_restart(clock: ManualClock) -> None:
    engine = engine_with(clock, ALL_WINDOWS)
    allow(engine, "o-1", buy(50_000.0))
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.PARTIALLY_FILLED, 0.004, 0.0)
    clock.advance(2)
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.FILLED, 0.0, 0.0)
    assert list(engine.traders[TRADER].fill_times) == [T0, T0 + 2]

    after = restarted(engine, clock).traders[TRADER]

    assert list(after.fill_times) == [T0, T0 + 2]  # the stored fill window, not the order's latest fill alone


def test_finished_orders_beyond_the_kept_ones_still_count_after_a_restart(clock: ManualClock) -> None:
    engine = engine_with(clock, ALL_WINDOWS)
    for i in range(FINISHED_ORDERS_KEPT + 6):
        allow(engine, f"o-{i}", buy(50_000.0 + i))
        engine.report_order(TRADER, ACCOUNT, f"o-{i}", OrderStatus.CANCELLED, 0.0, 0.0)
    allow(engine, "live", buy(1.0))
    assert len(engine.traders[TRADER].order_times) == FINISHED_ORDERS_KEPT + 7

    after = restarted(engine, clock).traders[TRADER]

    assert list(after.order_times) == list(engine.traders[TRADER].order_times)  # the stored window


def test_beyond_the_stored_times_the_window_is_a_lower_bound_of_the_newest_ones(clock: ManualClock) -> None:
    """1,100 orders at one instant, each cancelled: the stored window holds the newest WINDOW_TIMES_STORED, and the
    rebuilt one holds at least those (never more than memory held)."""
    engine = engine_with(clock, Limits(max_orders_per_window=1_000_000))
    for i in range(WINDOW_TIMES_STORED + 100):
        allow(engine, f"o-{i}", buy(50_000.0 + i))
        engine.report_order(TRADER, ACCOUNT, f"o-{i}", OrderStatus.CANCELLED, 0.0, 0.0)

    after = restarted(engine, clock).traders[TRADER]

    assert len(after.order_times) == WINDOW_TIMES_STORED


def test_order_times_of_rows_written_by_older_versions_merge_with_the_rebuilt_ones_each_order_once() -> None:
    """Rows written before 0cf77f5 hold their order times: an order in them and among the orders counts once."""
    rec = StateRecord(TRADER, ACCOUNT, order_times=(T0 - 30.0, T0, T0),
                      pending_orders=(order("o-1", T0), order("o-2", T0), order("o-3", T0 + 1.0)))

    st = from_record(rec)

    assert list(st.order_times) == [T0 - 30.0, T0, T0, T0 + 1.0]


def test_orders_without_a_fill_and_fills_without_a_time_give_no_fill() -> None:
    """A fill stored by a version before last_fill_at (0) has no time to count at."""
    st = TraderState(TRADER, ACCOUNT, orders={
        "o-1": order("o-1", T0),
        "o-2": order("o-2", T0, filled=0.01, status=OrderStatus.PARTIALLY_FILLED),
        "o-3": order("o-3", T0, filled=0.01, status=OrderStatus.PARTIALLY_FILLED, last_fill_at=T0 + 5.0)})

    rebuild_windows(st)

    assert list(st.fill_times) == [T0 + 5.0]


def test_the_snapshot_carries_the_order_and_fill_windows_and_no_duplicate_key(clock: ManualClock) -> None:
    engine = engine_with(clock, ALL_WINDOWS)
    allow(engine, "o-1", buy(50_000.0))
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.FILLED, 0.0, 0.0)
    st = engine.traders[TRADER]
    assert st.order_times and st.fill_times and st.recent_orders

    rec = to_record(st)

    assert (rec.order_times, rec.fill_times, rec.windows_stored) == ((T0,), (T0,), True)
    assert "recent_orders" not in {f.name for f in dataclasses.fields(StateRecord)}


def test_fills_of_a_row_of_an_older_version_are_rebuilt_from_its_orders() -> None:
    rec = StateRecord(TRADER, ACCOUNT, pending_orders=(
        order("o-1", T0, filled=0.01, status=OrderStatus.PARTIALLY_FILLED, last_fill_at=T0 + 5.0),))

    assert list(from_record(rec).fill_times) == [T0 + 5.0]
    assert list(from_record(dataclasses.replace(rec, windows_stored=True)).fill_times) == []  # (a stored, empty window)


# ---- the checks, after a restart ------------------------------------------------------------------------------


def test_an_equal_order_after_a_restart_is_a_duplicate_within_the_window_and_allowed_after_it(
    clock: ManualClock,
) -> None:
    engine = engine_with(clock, Limits(duplicate_order_window_ms=60_000))
    allow(engine, "o-1", buy(50_000.0))
    clock.advance(5)
    engine = restarted(engine, clock)

    dup, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_000.0), "o-2")
    clock.advance(55)  # 60 s after o-1: outside the window
    later, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_000.0), "o-3")

    assert not dup.allowed and dup.code is DecisionCode.DUPLICATE_ORDER, dup.reason
    assert later.allowed, later.reason


def test_the_order_rate_throttle_counts_the_orders_allowed_before_a_restart(clock: ManualClock) -> None:
    engine = engine_with(clock, Limits(max_orders_per_window=2, order_rate_window_seconds=60))
    allow(engine, "o-1", buy(50_000.0))
    allow(engine, "o-2", buy(50_001.0))
    clock.advance(5)
    engine = restarted(engine, clock)

    third, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_002.0), "o-3")
    clock.advance(55)
    later, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_003.0), "o-4")

    assert not third.allowed and third.code is DecisionCode.ORDER_RATE_LIMIT, third.reason
    assert later.allowed, later.reason


def test_the_order_rate_breaker_counts_the_orders_allowed_before_a_restart(clock: ManualClock) -> None:
    """The order_rate breakers read the same window: restored, it fires on the order that is one too many."""
    engine = engine_with(clock, Limits())
    for i in range(3):
        allow(engine, f"o-{i}", buy(50_000.0 + i))
    clock.advance(5)
    st = restarted(engine, clock).traders[TRADER]

    fired = order_rate.evaluate(st, {"max_orders": 2, "window_seconds": 60}, clock.now(), Scope())

    assert fired is not None and fired.values["orders"] == 3.0


def test_the_fill_throttle_counts_the_fills_before_a_restart(clock: ManualClock) -> None:
    engine = engine_with(clock, Limits(max_fills_per_window=3, fill_window_seconds=60))
    for i in range(3):
        allow(engine, f"o-{i}", buy(50_000.0 + i))
    engine.report_order(TRADER, ACCOUNT, "o-0", OrderStatus.FILLED, 0.0, 0.0)
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.FILLED, 0.0, 0.0)
    clock.advance(5)
    engine = restarted(engine, clock)

    engine.report_order(TRADER, ACCOUNT, "o-2", OrderStatus.FILLED, 0.0, 0.0)

    assert engine.traders[TRADER].trading_state(clock.now()) is TradingState.HALTED


def test_a_resume_before_a_restart_still_starts_the_fill_window_again(clock: ManualClock) -> None:
    engine = engine_with(clock, Limits(max_fills_per_window=2, fill_window_seconds=60))
    for i in range(3):
        allow(engine, f"o-{i}", buy(50_000.0 + i))
    engine.report_order(TRADER, ACCOUNT, "o-0", OrderStatus.FILLED, 0.0, 0.0)
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.FILLED, 0.0, 0.0)  # halted
    engine.resume(TRADER, ACCOUNT)
    clock.advance(5)
    engine = restarted(engine, clock)

    engine.report_order(TRADER, ACCOUNT, "o-2", OrderStatus.FILLED, 0.0, 0.0)  # the first fill since the resume

    assert engine.traders[TRADER].trading_state(clock.now()) is TradingState.ACTIVE


# ---- a clock stepped back across the restart ------------------------------------------------------------------


def test_restored_times_after_now_count_as_now(clock: ManualClock) -> None:
    """The clock stepped back an hour across the restart: the restored order and fill count as made at the restart,
    so a duplicate is denied for one window from then, not for the hour of the step as well."""
    engine = engine_with(clock, Limits(duplicate_order_window_ms=60_000, max_orders_per_window=1,
                                       order_rate_window_seconds=60))
    allow(engine, "o-1", buy(50_000.0))
    engine.report_order(TRADER, ACCOUNT, "o-1", OrderStatus.FILLED, 0.0, 0.0)
    clock.set(T0 - 3_600.0)
    engine = restarted(engine, clock)
    st = engine.traders[TRADER]
    assert list(st.order_times) == list(st.fill_times) == [T0 - 3_600.0]
    assert list(st.recent_orders.values()) == [T0 - 3_600.0]

    dup, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_000.0), "o-2")
    clock.advance(60)
    later, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_000.0), "o-3")

    assert not dup.allowed and dup.code is DecisionCode.DUPLICATE_ORDER, dup.reason
    assert later.allowed, later.reason


def test_clamping_keeps_times_sorted_and_keys_in_order() -> None:
    st = TraderState(TRADER, ACCOUNT)
    st.order_times = deque([T0 - 5, T0 + 5, T0 + 10], maxlen=10)
    st.fill_times = deque([T0 - 1, T0 + 1], maxlen=10)
    st.recent_orders = OrderedDict({("A", 1, 1.0, 1.0): T0 - 5, ("B", 1, 1.0, 1.0): T0 + 10})

    clamp_windows(st, T0)

    assert list(st.order_times) == [T0 - 5, T0, T0]
    assert st.order_times.maxlen == 10
    assert list(st.fill_times) == [T0 - 1, T0]
    assert list(st.recent_orders.items()) == [(("A", 1, 1.0, 1.0), T0 - 5), (("B", 1, 1.0, 1.0), T0)]


# ---- the load after a start from the spool ----------------------------------------------------------------------


class _SpoolingStore(MemoryStore):
    """A memory store unreachable at start whose local spool holds `spooled` (store.store.Store.spooled_states)."""

    def __init__(self, spooled: list[StateRecord], clock: ManualClock) -> None:
        super().__init__(clock=clock.now)
        self.spooled = spooled

    async def spooled_states(self) -> tuple[list[StateRecord], dict[str, list[str]]]:
        return self.spooled, {}


async def test_a_load_after_a_start_from_the_spool_counts_each_stored_order_once(clock: ManualClock) -> None:
    """Database down at start: the spooled state's windows are rebuilt from its orders, and the stored state's
    from the same orders when the load succeeds. An order allowed meanwhile is added; the stored ones count once."""
    limits = Limits(max_orders_per_window=4, order_rate_window_seconds=60)
    first = engine_with(clock, limits)
    allow(first, "o-1", buy(50_000.0))
    clock.advance(1)
    allow(first, "o-2", buy(50_001.0))
    rec = to_record(first.traders[TRADER])
    clock.advance(5)

    store = _SpoolingStore([rec], clock)
    store.states[TRADER] = rec  # (the spool is replayed into the database before the load reads it)
    store.available = False
    engine = RiskEngine(clock, defaults=Limits())
    engine.set_account_limits(ACCOUNT, limits)
    evaluator = Evaluator()
    persistence = Persistence(store, engine, ConfigService(engine, store, True),
                              BreakerService(evaluator, store, clock=clock), lambda: None, unloaded_policy="memory")
    await persistence.start()
    assert not persistence.loaded
    allow(engine, "o-3", buy(50_002.0))  # answered from the spooled state (policy memory)
    assert list(engine.traders[TRADER].order_times) == [T0, T0 + 1, T0 + 6]

    store.available = True
    persistence.on_health_change(True)
    for _ in range(200):
        if persistence.loaded:
            break
        await asyncio.sleep(0.01)
    assert persistence.loaded
    st = engine.traders[TRADER]

    assert list(st.order_times) == [T0, T0 + 1, T0 + 6]  # not [T0, T0, T0 + 1, T0 + 1, T0 + 6]
    assert sorted(st.orders) == ["o-1", "o-2", "o-3"]
    fourth, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_003.0), "o-4")
    assert fourth.allowed, fourth.reason  # the fourth of max_orders_per_window 4
    fifth, _ = engine.can_trade(TRADER, ACCOUNT, buy(50_004.0), "o-5")
    assert not fifth.allowed and fifth.code is DecisionCode.ORDER_RATE_LIMIT, fifth.reason
    await persistence.close(1.0)
