"""RiskEngine.restore_to (engine.restore): what a history record holds comes back exactly; the order book, the
account and every-account kill switches and what history does not record stay as they are; listeners hear it."""

from __future__ import annotations

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.events import StateChanged
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.snapshot import to_record
from tradeguard_server.engine.state import Pause
from tradeguard_server.engine.types import ClosedTrade, DecisionCode, OrderIntent, Position, Side, TradingState

BUY = OrderIntent("BTCUSDT", Side.BUY, 0.01, 50_000.0)


def test_restore_puts_back_the_recorded_numbers_pauses_and_positions_and_keeps_the_orders(clock: ManualClock) -> None:
    heard: list[StateChanged] = []
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=5.0), listeners=[heard.append])
    engine.report_equity("t1", "a1", 10_000.0, None)
    engine.report_positions("t1", "a1", [Position("BTCUSDT", Side.BUY, 0.1, 50_000.0, 50_100.0)])
    engine.pause("t1", "a1", TradingState.REDUCING, 3600.0, "maintenance")
    point = to_record(engine.traders["t1"])
    clock.advance(60)
    engine.resume("t1", "a1")
    allowed, _ = engine.can_trade("t1", "a1", BUY, "order-1")  # pending from now on
    assert allowed.allowed
    engine.report_trade("t1", "a1", ClosedTrade("tr-1", "BTCUSDT", "", Side.SELL, -5.0, clock.now()))
    engine.report_positions("t1", "a1", [])
    engine.report_equity("t1", "a1", 100.0, None)  # the bad report: a breach
    st = engine.traders["t1"]
    st.pauses.append(Pause(TradingState.HALTED, None, DecisionCode.KILL_SWITCH, "account halt", "account", since=0))
    version = st.version
    heard.clear()

    restored = engine.restore_to(point, "restore: bad report")

    assert restored is st  # the live state, in place: watchers and ownership see the same object
    assert (st.current_equity, st.peak_equity, st.day_start_equity, st.last_equity_at) == (
        point.current_equity, point.peak_equity, point.day_start_equity, point.last_equity_at)
    assert st.consecutive_losses == point.consecutive_losses == 0
    assert list(st.positions.values()) == list(point.positions)
    own = [p for p in st.pauses if p.source == "manual"]
    assert [(p.state, p.until, p.reason) for p in own] == [(q.state, q.until, q.reason) for q in point.pauses]
    assert not [p for p in st.pauses if p.source == "limit"]  # the breach came after the restore point
    assert [p.reason for p in st.pauses if p.source == "account"] == ["account halt"]  # the scope's pause stays
    assert list(st.orders) == ["order-1"]  # allowed after the point, still at the venue: still pending
    assert "tr-1" in st.seen_trade_ids  # a retried report of that trade stays a duplicate
    assert st.version > version
    assert [e.reason for e in heard] == ["restore: bad report"]


def test_a_trader_not_in_memory_is_made_from_the_record(clock: ManualClock) -> None:
    engine = RiskEngine(clock)
    engine.report_equity("t1", "a1", 5_000.0, None)
    point = to_record(engine.traders.pop("t1"))

    st = engine.restore_to(point, "restore")

    assert engine.traders["t1"] is st and st.current_equity == 5_000.0 and st.equity_reported
