"""Property tests of the order lifecycle (issue 16, "What it must show" 2), against an independent model.

Hypothesis draws a configuration (every exposure limit and pre-trade control either unset or set, some per
symbol) and a random interleaving of CanTrade (random symbols, sides, quantities, prices; some reduce-only; some
repeating an earlier client_order_id with the same order or another; some repeating the previous order under a new
id), ReportOrder (any status, cumulative fills that repeat, shrink or grow, on live, finished and unknown orders),
time passing (past the TTL too), ReportPositions, ReportPrices, ReportEquity, ResumeTrading and restarts: every
trader state goes through snapshot.to_record / from_record into a new RiskEngine, as persistence restores it
(memory-only things, such as reference prices, are lost). The model is tests/support/order_model.py.

(a) when an order is allowed, the model's worst case (position + fills since + every unfilled pending quantity in
    the order's direction + the order) is within every configured limit, and so are the pre-trade controls;
(b) nothing stays pending past pending_order_ttl_seconds after its last report: the engine's pending orders are
    the model's live ones after every step, a look at a trader (GetRiskState's peek) shows none past its expiry,
    and every release is counted (orders_expired);
(c) a final status is never undone and a fill never counts twice: every order's status and cumulative fill, and
    every position, equal the model's after every step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings

from tests.support import order_model as om
from tests.support.order_model import ACCOUNT, PRICES, SYMBOLS, TRADERS, Model, Op
from tradeguard_server.engine import snapshot
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import OrderIdReusedError, RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.orders import UnknownOrderError
from tradeguard_server.engine.types import OrderStatus, Position, PriceMark, Side

T0 = 1_767_268_800.0  # Thursday 2026-01-01 12:00 UTC


@pytest.fixture(autouse=True)
def _quiet_engine() -> Iterator[None]:
    """The engine logs every TTL release and resume at WARNING: thousands per run."""
    logger = logging.getLogger("tradeguard.engine")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def restarted(engine: RiskEngine, clock: ManualClock, limits: Limits) -> RiskEngine:
    """A new engine with every trader's state restored from its record (what persistence stores and loads)."""
    records = [snapshot.to_record(st) for st in engine.traders.values()]
    fresh = RiskEngine(clock, defaults=Limits())
    fresh.set_account_limits(ACCOUNT, limits)
    for rec in records:
        fresh.restore(snapshot.from_record(rec))
    return fresh


def assert_same_books(engine: RiskEngine, model: Model, now: float, step: int) -> None:
    """(b) and (c): the engine's pending orders, finished orders and positions are the model's."""
    for trader, m in model.traders.items():
        st = engine.traders[trader]
        mine = {o.coid: o for o in m.live(now)}
        theirs = {k: o for k, o in st.orders.items() if o.expires_at > now}  # (past it: released at the next look)
        assert theirs.keys() == mine.keys(), f"step {step} {trader}: pending {sorted(theirs)} != model {sorted(mine)}"
        for coid, o in mine.items():
            e = theirs[coid]
            assert abs(e.remaining - o.remaining) <= 1e-9, f"step {step}: {coid} remaining {e.remaining} != {o}"
            assert abs(e.unreconciled - o.unreconciled) <= 1e-9, f"step {step}: {coid} {e} != {o}"
            assert e.status is o.status, f"step {step}: {coid} status {e.status.name} != {o.status.name}"
            assert abs(e.expires_at - o.expires_at) <= 1e-6, f"step {step}: {coid} expires {e.expires_at} != {o}"
        for coid, o in m.orders.items():
            if not o.final:
                continue
            done = st.orders.get(coid) or st.finished_orders.get(coid)
            assert done is not None, f"step {step}: the final order {coid} was forgotten"
            status = OrderStatus.EXPIRED if coid in st.orders else done.status  # past its TTL, not yet looked at
            assert status is o.status, f"step {step}: {coid} final {o.status.name} became {status.name}"
            assert abs(done.filled - o.filled) <= 1e-9, f"step {step}: {coid} filled {done.filled} != {o.filled}"
            assert abs(done.unreconciled - o.unreconciled) <= 1e-9, f"step {step}: {coid} {done} != {o}"
        net = dict.fromkeys(SYMBOLS, 0.0)
        for (s, _ex), p in st.positions.items():
            net[s] += p.quantity if p.side is Side.BUY else -p.quantity
        for s in SYMBOLS:
            assert abs(net[s] - m.net.get(s, 0.0)) <= 1e-9, \
                f"step {step} {trader}: position {s} {net[s]} != model {m.net.get(s, 0.0)} (a fill counted twice?)"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(om.limits_strategy(), om.operations())
def test_allowed_orders_never_take_the_worst_case_past_a_limit_nothing_stays_pending_and_fills_count_once(
    limits: Limits, ops: list[Op],
) -> None:
    clock = ManualClock(T0)
    engine = RiskEngine(clock, defaults=Limits())
    engine.set_account_limits(ACCOUNT, limits)
    model = Model(limits)
    engine.report_prices(ACCOUNT, [PriceMark(s, p, T0) for s, p in PRICES.items()])
    model.prices_reported((s, p, T0) for s, p in PRICES.items())
    for trader in TRADERS:
        engine.report_equity(trader, ACCOUNT, om.EQUITY, None)
    expired_before_restarts = 0

    for step, op in enumerate(ops):
        now = clock.now()
        if isinstance(op, om.Ask):
            trader = TRADERS[op.trader]
            coid, order = model.order_of(op)
            try:
                decision, _ = engine.can_trade(trader, ACCOUNT, order, coid)
            except OrderIdReusedError:
                wrong = model.refused(trader, coid, order, now)
                assert not wrong, f"step {step}: {wrong}"
                event("a reused client_order_id was refused")
                continue
            event(f"CanTrade answered {decision.code.name}")
            broken = model.answered(trader, coid, order, decision.allowed, now)
            assert not broken, f"step {step}: {order} under {coid} allowed ({decision.reason}) but {broken}"
        elif isinstance(op, om.Report):
            trader = TRADERS[op.trader]
            coid, filled, avg = model.report_of(op)
            try:
                engine.report_order(trader, ACCOUNT, coid, op.status, filled, avg)
            except UnknownOrderError:
                assert coid not in model.traders[trader].orders, f"step {step}: allowed order {coid} unknown"
                continue
            assert coid in model.traders[trader].orders, f"step {step}: a report on {coid}, never allowed, taken"
            model.reported(trader, coid, op.status, filled, avg, now)
        elif isinstance(op, om.Wait):
            clock.advance(op.seconds)
        elif isinstance(op, om.Positions):
            trader = TRADERS[op.trader]
            listed = [(s, q, PRICES[s] * f) for s, q, f in op.positions]
            engine.report_positions(trader, ACCOUNT, [
                Position(s, Side.BUY if q > 0 else Side.SELL, abs(q), PRICES[s], mark) for s, q, mark in listed])
            model.positions_reported(trader, listed, now)
        elif isinstance(op, om.Prices):
            marks = [(s, PRICES[s] * f, now - age) for s, f, age in op.marks]
            engine.report_prices(ACCOUNT, [PriceMark(s, p, at) for s, p, at in marks])
            model.prices_reported(marks)
        elif isinstance(op, om.Equity):
            engine.report_equity(TRADERS[op.trader], ACCOUNT, op.equity, None)
            model.traders[TRADERS[op.trader]].equity = op.equity
        elif isinstance(op, om.Resume):
            engine.resume(TRADERS[op.trader], ACCOUNT)
            model.resumed(TRADERS[op.trader])
        elif isinstance(op, om.Restart):
            expired_before_restarts += engine.orders_expired
            engine = restarted(engine, clock, limits)
            model.restarted()
            event("restarted")
        elif isinstance(op, om.Look):
            for trader in TRADERS:
                late = [o.client_order_id for o in engine.peek(trader, ACCOUNT).orders.values() if o.expires_at <= now]
                assert not late, f"step {step}: {late} still pending past their TTL"
        model.expire(clock.now())
        assert_same_books(engine, model, clock.now(), step)

    allowed = sum(len(m.orders) for m in model.traders.values())
    event(f"orders allowed: {'0' if not allowed else '1-4' if allowed < 5 else '5-9' if allowed < 10 else '10+'}")
    # (b) at the end: once every TTL has passed, a look releases everything nothing was reported on, and counts it.
    clock.advance(limits.pending_order_ttl_seconds)
    model.expire(clock.now())
    for trader in TRADERS:
        assert not engine.peek(trader, ACCOUNT).orders, f"{trader}: still pending after the TTL"
    assert expired_before_restarts + engine.orders_expired == sum(m.expired for m in model.traders.values())
