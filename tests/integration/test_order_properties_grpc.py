"""The order-lifecycle property test (issue 16, "What it must show" 2) through gRPC, with real restarts.

The interleavings and the model of tests/unit/test_order_properties.py (tests/support/order_model.py), sent to a
real sidecar in process on 127.0.0.1:0 with a ManualClock and a SQLite file: the configuration goes in with
SaveConfig, every step is an RPC (CanTrade, ReportOrder, ReportPositions, ReportPrices, ReportEquity,
ResumeTrading, GetRiskState), and a restart stops the sidecar (graceful: the store queue drains) and starts a new
one on the same file, which loads the stored states (pending and finished orders, daily sums, pauses) before it
answers. After every step GetRiskState must show the model's pending orders and positions, none past its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, settings

from tests.support import order_model as om
from tests.support.clock import T0
from tests.support.order_model import ACCOUNT, PRICES, SYMBOLS, TRADERS, Model, Op
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.api.config_rules import limits_from_config
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import OrderIntent, OrderStatus, Side, TradingWindow
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _quiet_engine() -> Iterator[None]:
    """The engine logs every TTL release and resume at WARNING."""
    logger = logging.getLogger("tradeguard.engine")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def config_of(limits: Limits) -> t.RiskConfiguration:
    """The RiskConfiguration a user saves for these limits."""
    fields: dict[str, Any] = {}
    for name in ("max_position_size_percentage", "max_correlated_exposure_percentage", "max_order_quantity",
                 "max_position_quantity", "max_open_orders", "price_collar_percentage",
                 "reference_price_max_age_seconds", "duplicate_order_window_ms", "max_daily_notional",
                 "max_daily_orders", "max_fills_per_window", "fill_window_seconds", "pending_order_ttl_seconds"):
        value = getattr(limits, name)
        if value is not None:
            fields[name] = value
    symbol_configs = []
    for sym in limits.symbols.values():
        overrides = {name: getattr(sym, name) for name in (
            "max_position_size_percentage", "max_order_quantity", "max_position_quantity", "max_open_orders",
            "price_collar_percentage") if getattr(sym, name) is not None}
        symbol_configs.append(t.SymbolRiskConfiguration(symbol=sym.symbol, **overrides))
    windows = [t.TradingWindow(weekdays=sorted(w.weekdays), start=_hhmm(w.start_minute), end=_hhmm(w.end_minute))
               for w in limits.trading_windows]
    return t.RiskConfiguration(
        account_id=ACCOUNT, config_id="props", is_active=True, **fields,
        correlation_groups=[t.CorrelationGroup(name=n, symbols=sorted(s)) for n, s in limits.correlation_groups],
        allowed_symbols=sorted(limits.allowed_symbols), blocked_symbols=sorted(limits.blocked_symbols),
        trading_windows=windows, symbol_configs=symbol_configs,
        # no loss limits: equity moves between 8,000 and 12,000 here (a pause would only deny more)
        daily_max_drawdown_percentage=100.0, max_drawdown_percentage=100.0)


def intent(order: OrderIntent, coid: str) -> t.OrderIntent:
    return t.OrderIntent(symbol=order.symbol, side=int(order.side), quantity=order.quantity, price=order.price,
                         reduce_only=order.reduce_only, client_order_id=coid)


def stamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(at * 1e9))
    return ts


class Run:
    """One sequence against a sidecar on one SQLite file, restarted on it."""

    def __init__(self, limits: Limits, path: Path) -> None:
        self.limits, self.model, self.clock = limits, Model(limits), ManualClock(T0)
        self.url = f"sqlite:///{path}"
        self.sidecar: Sidecar | None = None
        self.channel: grpc.aio.Channel | None = None
        self.context: Any = None

    async def start(self) -> None:
        self.context = running_sidecar(clock=self.clock, database_url=self.url, enable_persistence=True)
        self.sidecar = await self.context.__aenter__()
        assert self.sidecar.persistence.loaded, "the stored state was not loaded before the first call"
        self.channel = grpc.aio.insecure_channel(self.sidecar.address)
        self.risk, self.admin = rsg.RiskServiceStub(self.channel), adg.AdminServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.context is not None:
            await self.context.__aexit__(None, None, None)
            self.context = self.sidecar = None

    def ids(self, trader: str) -> dict[str, str]:
        return {"trader_id": trader, "account_id": ACCOUNT}

    async def step(self, step: int, op: Op) -> None:
        model, now = self.model, self.clock.now()
        if isinstance(op, om.Ask):
            trader = TRADERS[op.trader]
            coid, order = model.order_of(op)
            try:
                answer = await self.risk.CanTrade(rs.CanTradeRequest(**self.ids(trader), order=intent(order, coid)))
            except grpc.aio.AioRpcError as exc:
                refusal: grpc.aio.AioRpcError | None = exc
            else:
                refusal = None
            if refusal is not None:
                assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT, refusal
                wrong = model.refused(trader, coid, order, now)
                assert not wrong, f"step {step}: {wrong}: {refusal.details()}"
                return
            event(f"CanTrade answered {t.DecisionCode.Name(answer.code)}")
            broken = model.answered(trader, coid, order, answer.allowed, now)
            assert not broken, f"step {step}: {order} under {coid} allowed ({answer.reason}) but {broken}"
        elif isinstance(op, om.Report):
            trader = TRADERS[op.trader]
            coid, filled, avg = model.report_of(op)
            try:
                await self.risk.ReportOrder(rs.ReportOrderRequest(
                    **self.ids(trader), client_order_id=coid, status=int(op.status), filled_quantity=filled,
                    average_price=avg))
            except grpc.aio.AioRpcError as exc:
                refusal = exc
            else:
                refusal = None
            if refusal is not None:
                assert refusal.code() == grpc.StatusCode.NOT_FOUND, refusal
                assert coid not in model.traders[trader].orders, f"step {step}: allowed order {coid} not found"
                return
            assert coid in model.traders[trader].orders, f"step {step}: a report on {coid}, never allowed, taken"
            model.reported(trader, coid, op.status, filled, avg, now)
        elif isinstance(op, om.Wait):
            self.clock.advance(op.seconds)
        elif isinstance(op, om.Positions):
            trader = TRADERS[op.trader]
            listed = [(s, q, PRICES[s] * f) for s, q, f in op.positions]
            await self.risk.ReportPositions(rs.ReportPositionsRequest(**self.ids(trader), positions=[
                t.Position(symbol=s, side=t.SIDE_BUY if q > 0 else t.SIDE_SELL, quantity=abs(q), entry_price=PRICES[s],
                           mark_price=mark) for s, q, mark in listed]))
            model.positions_reported(trader, listed, now)
        elif isinstance(op, om.Prices):
            marks = [t.PriceMark(symbol=s, price=PRICES[s] * f, observed_at=stamp(now - age) if age else None)
                     for s, f, age in op.marks]
            await self.risk.ReportPrices(rs.ReportPricesRequest(**self.ids(TRADERS[0]), prices=marks))
            model.prices_reported((m.symbol, m.price, (m.observed_at.seconds + m.observed_at.nanos / 1e9)
                                   if m.HasField("observed_at") else now) for m in marks)
        elif isinstance(op, om.Equity):
            await self.risk.ReportEquity(rs.ReportEquityRequest(**self.ids(TRADERS[op.trader]), equity=op.equity))
            model.traders[TRADERS[op.trader]].equity = op.equity
        elif isinstance(op, om.Resume):
            await self.admin.ResumeTrading(ad.ResumeTradingRequest(**self.ids(TRADERS[op.trader])))
            model.resumed(TRADERS[op.trader])
        elif isinstance(op, om.Restart):
            await self.stop()
            await self.start()
            model.restarted()
            event("restarted")
        await self.compare(step)

    async def compare(self, step: int) -> None:
        """(b) and (c) as GetRiskState shows them: the model's pending orders and positions, none past its TTL."""
        now = self.clock.now()
        self.model.expire(now)
        for trader, m in self.model.traders.items():
            state = (await self.risk.GetRiskState(rs.GetRiskStateRequest(**self.ids(trader)))).state
            theirs = {o.client_order_id: o for o in state.pending_orders}
            mine = {o.coid: o for o in m.live(now)}
            assert theirs.keys() == mine.keys(), f"step {step} {trader}: pending {sorted(theirs)} != {sorted(mine)}"
            for coid, o in mine.items():
                e = theirs[coid]
                expires = e.expires_at.seconds + e.expires_at.nanos / 1e9
                assert expires > now, f"step {step}: {coid} still pending past its TTL"
                assert abs(e.filled_quantity - o.filled) <= 1e-9 and OrderStatus(e.status) is o.status, \
                    f"step {step}: {coid} {e} != {o}"
            net = dict.fromkeys(SYMBOLS, 0.0)
            for p in state.positions:
                net[p.symbol] += p.quantity if p.side == t.SIDE_BUY else -p.quantity
            for s in SYMBOLS:
                assert abs(net[s] - m.net.get(s, 0.0)) <= 1e-9, \
                    f"step {step} {trader}: position {s} {net[s]} != model {m.net.get(s, 0.0)}"

    async def run(self, ops: list[Op]) -> None:
        await self.start()
        try:
            await self.admin.SaveConfig(ad.SaveConfigRequest(config=config_of(self.limits)))
            await self.risk.ReportPrices(rs.ReportPricesRequest(**self.ids(TRADERS[0]), prices=[
                t.PriceMark(symbol=s, price=p) for s, p in PRICES.items()]))
            self.model.prices_reported((s, p, T0) for s, p in PRICES.items())
            for trader in TRADERS:
                await self.risk.ReportEquity(rs.ReportEquityRequest(**self.ids(trader), equity=om.EQUITY))
            for step, op in enumerate(ops):
                await self.step(step, op)
            self.clock.advance(self.limits.pending_order_ttl_seconds)
            await self.compare(len(ops))  # nothing stays pending once every TTL has passed
            assert not any(m.live(self.clock.now()) for m in self.model.traders.values())
        finally:
            await self.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(om.limits_strategy(), om.operations(min_size=15, max_size=40))
def test_through_grpc_and_restarts_on_sqlite_allowed_orders_stay_within_the_limits_and_nothing_stays_pending(
    limits: Limits, ops: list[Op],
) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-orders-") as tmp:
        asyncio.run(Run(limits, Path(tmp) / "orders.db").run(ops))


def test_the_configuration_of_the_property_test_saves_as_drawn() -> None:
    """config_of is what a user would save: the sidecar's limits from it are the drawn ones (spot check)."""
    drawn = Limits(max_open_orders=2, price_collar_percentage=1.0, trading_windows=(om.WINDOW,),
                   allowed_symbols=frozenset({"BTCUSDT"}), pending_order_ttl_seconds=30)
    back = limits_from_config(config_of(drawn), Limits())
    assert back.trading_windows == (TradingWindow(frozenset({4}), 720, 740),)
    assert (back.max_open_orders, back.price_collar_percentage, back.pending_order_ttl_seconds) == (2, 1.0, 30)
    assert back.allowed_symbols == frozenset({"BTCUSDT"}) and Side.BUY is Side(t.SIDE_BUY)
