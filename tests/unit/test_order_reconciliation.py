"""A late fill of an order that finished before a ReportPositions (issue 16; README "Orders": "A fill of an order
allowed before the last ReportPositions may already be in it: such a fill is kept apart ... until the next
ReportPositions").

A bot often learns that an order was cancelled (or the sidecar releases it after its TTL) before its fill stream
catches up; the next position snapshot then already holds the fill. Such a fill must not move into the reported
position a second time: moved, a SELL's fill shrinks a long that in truth did not shrink, and the exposure is
under-counted (a BUY beyond the limit passes).
"""

from __future__ import annotations

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import DecisionCode, OrderIntent, OrderStatus, Position, Side

T0 = 1_767_268_800.0


def engine_holding(long_qty: float, limits: Limits) -> tuple[RiskEngine, ManualClock]:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=limits)
    engine.report_equity("t", "a", 10_000.0, None)
    engine.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, long_qty, 100.0, 100.0)])
    return engine, clock


def net_position(engine: RiskEngine) -> float:
    return sum(p.quantity if p.side is Side.BUY else -p.quantity for p in engine.traders["t"].positions.values())


def test_a_late_fill_of_an_order_cancelled_before_the_positions_report_is_not_moved_into_that_position_again() -> None:
    engine, _clock = engine_holding(1.0, Limits(max_position_quantity=1.0))
    sell, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 0.4, 100.0), "s-1")
    engine.report_order("t", "a", "s-1", OrderStatus.CANCELLED, 0.0, 0.0)  # the cancel is heard first
    engine.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, 0.6, 100.0, 100.0)])  # holds the 0.4 sold

    engine.report_order("t", "a", "s-1", OrderStatus.CANCELLED, 0.4, 100.0)  # the fill, late
    buy, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, 0.8, 100.0), "b-1")

    assert sell.allowed
    assert net_position(engine) >= 0.6 - 1e-9, f"the late fill shrank the reported long to {net_position(engine)}"
    assert not buy.allowed and buy.code is DecisionCode.POSITION_QUANTITY_LIMIT, buy.reason  # truly long 0.6 + 0.8


def test_a_late_fill_of_an_order_released_by_its_ttl_before_the_positions_report_is_not_moved_into_it_again() -> None:
    engine, clock = engine_holding(1.0, Limits(max_position_quantity=1.0, pending_order_ttl_seconds=30))
    engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 0.4, 100.0), "s-1")
    clock.advance(30.0)  # released: nothing was reported on it
    engine.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, 0.6, 100.0, 100.0)])  # holds the 0.4 sold

    engine.report_order("t", "a", "s-1", OrderStatus.FILLED, 0.4, 100.0)  # the fill, late
    buy, _ = engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.BUY, 0.8, 100.0), "b-1")

    assert net_position(engine) >= 0.6 - 1e-9, f"the late fill shrank the reported long to {net_position(engine)}"
    assert not buy.allowed and buy.code is DecisionCode.POSITION_QUANTITY_LIMIT, buy.reason


def test_a_late_fill_of_an_order_finished_after_the_positions_report_still_moves_into_the_position() -> None:
    """The other side of the rule: an order allowed after the last ReportPositions cannot be in it."""
    engine, _clock = engine_holding(1.0, Limits(max_position_quantity=2.0))
    engine.can_trade("t", "a", OrderIntent("BTCUSDT", Side.SELL, 0.4, 100.0), "s-1")
    engine.report_order("t", "a", "s-1", OrderStatus.CANCELLED, 0.0, 0.0)

    engine.report_order("t", "a", "s-1", OrderStatus.CANCELLED, 0.4, 100.0)

    assert abs(net_position(engine) - 0.6) <= 1e-9
