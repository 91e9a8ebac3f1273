"""The order lifecycle under review (issue 16): each test pins a behaviour a reviewer found broken (each failed
before its fix): resting orders kept counting across a restart, fills a positions report may already hold,
retries in shadow mode, under a pause and while halted, and cancel_all_orders lists that never go stale."""

from __future__ import annotations

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.events import Firing
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.snapshot import from_record, to_record
from tradeguard_server.engine.state import Pause
from tradeguard_server.engine.types import (
    ActionType,
    DecisionCode,
    Flags,
    OrderIntent,
    OrderStatus,
    Position,
    Side,
    TradingState,
)

LIM = dict(max_position_size_percentage=5.0, pending_order_ttl_seconds=60)  # 500 notional at equity 10,000


def _o(side: Side, q: float = 0.008) -> OrderIntent:
    return OrderIntent("BTCUSDT", side, q, 50_000.0)


def _engine(clock: ManualClock, records: list | None = None, **kw: object) -> RiskEngine:
    listeners = [] if records is None else [lambda ev: records.append(to_record(ev.state))]
    e = RiskEngine(clock, defaults=Limits(**{**LIM, **kw}), listeners=listeners)
    e.report_equity("t", "a", 10_000.0, None)
    return e


def test_heartbeat_accepted_report_is_stored(clock: ManualClock) -> None:
    """A re-reported ACCEPTED keeps the order counting in memory, but no event is sent: the store keeps the old
    expiry, and after a restart the resting order is released at once (its exposure stops counting)."""
    recs: list = []
    e = _engine(clock, recs)
    assert e.can_trade("t", "a", _o(Side.BUY), "o1")[0].allowed
    clock.advance(10)
    e.report_order("t", "a", "o1", OrderStatus.ACCEPTED, 0, 0)
    clock.advance(40)
    e.report_order("t", "a", "o1", OrderStatus.ACCEPTED, 0, 0)  # heartbeat: expires at +110
    clock.advance(30)                                                               # t+80
    assert not e.can_trade("t", "a", _o(Side.BUY), "o2")[0].allowed                 # memory: 800 > 500
    restarted = RiskEngine(clock, defaults=Limits(**LIM))
    restarted.restore(from_record(recs[-1]))
    assert not restarted.can_trade("t", "a", _o(Side.BUY), "o3")[0].allowed


def test_late_filled_on_a_released_order_counts_the_whole_order(clock: ManualClock) -> None:
    """FILLED means the whole order for a live order, but on a TTL-released (or cancelled) one a FILLED with the
    client's default filled_quantity=0 moves nothing and answers duplicate."""
    e = _engine(clock)
    e.can_trade("t", "a", _o(Side.BUY), "o1")
    clock.advance(61)
    e.can_trade("t", "a", None)
    out = e.report_order("t", "a", "o1", OrderStatus.FILLED, 0, 0)
    assert out.changed and e.traders["t"].positions


def test_fill_reported_after_positions_never_makes_an_adding_order_look_reducing(clock: ManualClock) -> None:
    """The module doc promises an over-count only; but the doubled long makes a SELL that opens a short pass as
    'reducing' (every exposure limit PASS, REDUCING/loss pauses let it through)."""
    e = _engine(clock)
    assert e.can_trade("t", "a", _o(Side.BUY), "b1")[0].allowed
    e.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, 0.008, 50_000, 50_000)])
    e.report_order("t", "a", "b1", OrderStatus.FILLED, 0.008, 50_000)               # position now 0.016 (double)
    assert e.can_trade("t", "a", _o(Side.SELL, 0.016), "s1")[0].allowed             # true holding: short 0.008 after
    d = e.can_trade("t", "a", _o(Side.SELL, 0.008), "s2")[0]                        # true: short 0.016 = 800 > 500
    assert not d.allowed


def test_shadow_would_deny_retried_after_enforcement_is_not_allowed(clock: ManualClock) -> None:
    e = _engine(clock)
    e.flags = Flags(enable_risk_enforcement=False)
    assert e.can_trade("t", "a", _o(Side.BUY, 0.02), "big")[0].would_deny            # 1,000 > 500, shadow
    e.flags = Flags(enable_risk_enforcement=True)
    clock.advance(1)
    assert not e.can_trade("t", "a", _o(Side.BUY, 0.02), "big")[0].allowed


def test_retry_of_a_pending_reducing_order_under_a_loss_pause_is_allowed(clock: ManualClock) -> None:
    e = _engine(clock)
    e.report_positions("t", "a", [Position("BTCUSDT", Side.BUY, 0.008, 50_000, 50_000)])
    assert e.can_trade("t", "a", _o(Side.SELL), "r1")[0].allowed
    e.traders["t"].pauses.append(Pause(TradingState.REDUCING, None, DecisionCode.DAILY_LOSS_LIMIT, "loss", "limit"))
    e.pause("t", "a", TradingState.REDUCING, 60, "bump version")
    assert e.can_trade("t", "a", _o(Side.SELL), "r1")[0].allowed


def test_retried_denial_while_halted_carries_cancel_all_orders(clock: ManualClock) -> None:
    e = _engine(clock)
    assert e.can_trade("t", "a", _o(Side.BUY), "ok")[0].allowed
    assert not e.can_trade("t", "a", _o(Side.BUY), "den")[0].allowed
    e.pause("t", "a", TradingState.HALTED, None, "ops")
    clock.advance(1)
    d = e.can_trade("t", "a", _o(Side.BUY), "den")[0]
    assert d.trading_state is TradingState.HALTED
    assert any(a.type is ActionType.CANCEL_ALL_ORDERS for a in d.actions)


def test_cancel_ids_not_stale_after_restore_of_a_halted_trader(clock: ManualClock) -> None:
    recs: list = []
    e = _engine(clock, recs)
    e.can_trade("t", "a", _o(Side.BUY, 0.001), "x1")
    e.can_trade("t", "a", _o(Side.BUY, 0.002), "x2")
    e.pause("t", "a", TradingState.HALTED, None, "ops")
    e2 = RiskEngine(clock, defaults=Limits(**LIM))
    e2.restore(from_record(recs[-1]))
    e2.can_trade("t", "a", None)
    e2.report_order("t", "a", "x1", OrderStatus.CANCELLED, 0, 0)
    d = e2.can_trade("t", "a", None)[0]
    assert [a.client_order_ids for a in d.actions] == [("x2",)]


class _HaltOnOrder:
    """A breaker that halts the trader on the first CanTrade with an order (as order_rate + pause_trading)."""

    def evaluate(self, st, limits, now, enforce, symbols):  # type: ignore[no-untyped-def]
        if not symbols or st.pauses:
            return []
        st.pauses.append(Pause(TradingState.HALTED, None, DecisionCode.CIRCUIT_BREAKER, "brk", "breaker:b", now))
        return [Firing("b", "b", "order_rate", "pause_trading", {}, {}, [], [], False, now)]


def test_the_answer_whose_breaker_halts_carries_cancel_all_orders(clock: ManualClock) -> None:
    e = _engine(clock)
    assert e.can_trade("t", "a", _o(Side.BUY, 0.001))[0].allowed                    # one pending order
    e.breakers = _HaltOnOrder()
    d = e.can_trade("t", "a", _o(Side.BUY, 0.001))[0]
    assert d.trading_state is TradingState.HALTED
    assert any(a.type is ActionType.CANCEL_ALL_ORDERS for a in d.actions)
