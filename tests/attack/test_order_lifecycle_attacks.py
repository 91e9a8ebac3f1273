"""Attacks on the order lifecycle of issue 16 (pending orders, ReportOrder, ReportPrices, TTL release,
cancel_all_orders on HALTED, the pre-trade controls), through the public gRPC API of a real sidecar.

Each test names the behaviour it expects. A failing test here is a finding: a wrong "allowed" (exposure beyond a
configured limit once pending orders are counted), an untrue record (state, history, metrics, watch updates that
do not match what happened), a crash, or lost pending orders. Passing tests pin behaviour that held under attack.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

ACCOUNT = "acct-atk"
IDS = {"trader_id": "bot-1", "account_id": ACCOUNT}
BUY_400 = {"symbol": "BTCUSDT", "side": t.SIDE_BUY, "quantity": 0.008, "price": 50_000.0}  # 400 notional


class Bot:
    """A bot and an operator on one channel."""

    def __init__(self, ch: grpc.aio.Channel, trader_id: str = "bot-1", account_id: str = ACCOUNT) -> None:
        self.risk = rsg.RiskServiceStub(ch)
        self.admin = adg.AdminServiceStub(ch)
        self.ids = {"trader_id": trader_id, "account_id": account_id}

    async def configure(self, **fields: Any) -> None:
        config = t.RiskConfiguration(account_id=self.ids["account_id"], config_id="c1", is_active=True, **fields)
        await self.admin.SaveConfig(ad.SaveConfigRequest(config=config))

    async def equity(self, equity: float = 10_000.0) -> None:
        await self.risk.ReportEquity(rs.ReportEquityRequest(**self.ids, equity=equity))

    async def ask(self, coid: str = "", **order: Any) -> rs.CanTradeResponse:
        intent = t.OrderIntent(**{**BUY_400, **order}, client_order_id=coid)
        answer: rs.CanTradeResponse = await self.risk.CanTrade(rs.CanTradeRequest(**self.ids, order=intent))
        return answer

    async def report(self, coid: str, status: int, filled: float = 0.0, price: float = 0.0) -> rs.ReportOrderResponse:
        answer: rs.ReportOrderResponse = await self.risk.ReportOrder(rs.ReportOrderRequest(
            **self.ids, client_order_id=coid, status=status, filled_quantity=filled, average_price=price))
        return answer

    async def positions(self, *positions: t.Position) -> rs.ReportPositionsResponse:
        answer: rs.ReportPositionsResponse = await self.risk.ReportPositions(
            rs.ReportPositionsRequest(**self.ids, positions=list(positions)))
        return answer

    async def state(self) -> t.RiskState:
        return (await self.risk.GetRiskState(rs.GetRiskStateRequest(**self.ids))).state


def long(qty: float, exchange: str = "", symbol: str = "BTCUSDT", price: float = 50_000.0) -> t.Position:
    return t.Position(symbol=symbol, exchange=exchange, side=t.SIDE_BUY, quantity=qty, entry_price=price,
                      mark_price=price)


def check(answer: rs.CanTradeResponse, name: str) -> t.CheckResult:
    return next(c for c in answer.checks if c.name == name)


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = float(s.value)
    return out


@pytest.fixture
async def sc(clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock, metrics_listen="127.0.0.1:0") as sidecar:
        yield sidecar


@pytest.fixture
async def bot(sc: Sidecar) -> AsyncIterator[Bot]:
    async with grpc.aio.insecure_channel(sc.address) as ch:
        yield Bot(ch)


# ---- TTL release and what reports it ---------------------------------------------------------------------------


async def test_pending_orders_gauge_and_expired_counter_follow_the_ttl_without_a_call(
    sc: Sidecar, bot: Bot, clock: ManualClock
) -> None:
    """tradeguard_pending_orders must not keep counting orders whose TTL passed (they no longer count anywhere)."""
    await bot.configure(pending_order_ttl_seconds=10)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    before = await asyncio.to_thread(scrape, sc.metrics_address)
    clock.advance(11)  # the order is released: nothing counts it any more

    after = await asyncio.to_thread(scrape, sc.metrics_address)

    assert before["tradeguard_pending_orders"] == 1.0
    assert after["tradeguard_pending_orders"] == 0.0, "gauge still counts an order released by its TTL"
    assert after["tradeguard_pending_orders_expired_total"] == 1.0


async def test_an_order_counts_until_just_before_its_ttl_and_is_released_at_it(bot: Bot, clock: ManualClock) -> None:
    await bot.configure(pending_order_ttl_seconds=10, max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    clock.advance(9.999)
    inside = await bot.ask("o-2")
    clock.advance(0.001)
    at_ttl = await bot.ask("o-3")

    assert not inside.allowed and inside.code == t.DECISION_CODE_POSITION_SIZE_LIMIT
    assert at_ttl.allowed, at_ttl.reason


async def test_a_late_filled_report_without_quantity_after_the_ttl_moves_the_whole_order_into_the_position(
    bot: Bot, clock: ManualClock
) -> None:
    """FILLED means the whole order (README). A bot slower than the TTL reports FILLED (no quantity): the order
    did fill, so its 400 must be in the position, or the next 400 is wrongly allowed (800 > 500)."""
    await bot.configure(pending_order_ttl_seconds=10, max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    clock.advance(11)  # released by the TTL
    filled = await bot.report("o-1", t.ORDER_STATUS_FILLED)
    nxt = await bot.ask("o-2")

    assert [p.quantity for p in filled.state.positions] == [pytest.approx(0.008)], filled
    assert not nxt.allowed, "400 filled + 400 > 500 allowed: the late FILLED moved nothing"


async def test_a_filled_report_without_quantity_after_a_cancel_moves_the_whole_order_into_the_position(
    bot: Bot,
) -> None:
    """The cancel lost the race at the exchange: the order filled. FILLED (whole order) after CANCELLED must move
    the fill into the position, as it does for a live order."""
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    await bot.report("o-1", t.ORDER_STATUS_CANCELLED)
    filled = await bot.report("o-1", t.ORDER_STATUS_FILLED)
    nxt = await bot.ask("o-2")

    assert [p.quantity for p in filled.state.positions] == [pytest.approx(0.008)], filled
    assert not nxt.allowed


async def test_a_late_fill_with_quantity_after_the_ttl_moves_into_the_position(bot: Bot, clock: ManualClock) -> None:
    await bot.configure(pending_order_ttl_seconds=10, max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    clock.advance(11)
    filled = await bot.report("o-1", t.ORDER_STATUS_FILLED, 0.008, 50_000)
    nxt = await bot.ask("o-2")

    assert [p.quantity for p in filled.state.positions] == [pytest.approx(0.008)]
    assert not nxt.allowed


# ---- client_order_id reuse ------------------------------------------------------------------------------------


async def test_a_retried_cancel_of_a_finished_order_does_not_cancel_a_new_order_under_the_same_id(bot: Bot) -> None:
    """The README lets a finished order's id be asked again (a new order under the old id). A retry of the first
    order's CANCELLED report (a lost answer) must then not release the new order's reservation."""
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    cancel = rs.ReportOrderRequest(**bot.ids, client_order_id="o-1", status=t.ORDER_STATUS_CANCELLED)
    await bot.risk.ReportOrder(cancel)
    again = await bot.ask("o-1")  # a new order under the old id: counts anew
    retried = await bot.risk.ReportOrder(cancel)  # the first cancel's retry (its answer was lost)
    nxt = await bot.ask("o-2")

    assert again.allowed
    assert retried.duplicate or retried.state.pending_order_count == 1
    assert not nxt.allowed, "the new o-1 (400 pending) was released by the old order's retried CANCELLED"


async def test_the_same_id_with_another_exchange_is_refused_also_after_its_answer_is_forgotten(bot: Bot) -> None:
    """Same id, different order (another venue): INVALID_ARGUMENT while the answer is remembered; it must stay so
    while the order is pending, also once 1,000 newer ids pushed its remembered answer out."""
    await bot.configure()
    await bot.equity(1e9)
    assert (await bot.ask("o-0", exchange="binance")).allowed
    for i in range(1, 1002):
        await bot.ask(f"f-{i}", quantity=0.001, price=1000.0 + i)
    state = await bot.state()
    assert "o-0" in {o.client_order_id for o in state.pending_orders}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bot.ask("o-0", exchange="okx")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
