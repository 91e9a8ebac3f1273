"""tradeguard_client and the order lifecycle (issue 16) against a real sidecar on port 0: ask, report what
happened to the order, react to cancel_all_orders."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.integration.test_python_client import flaky_front
from tradeguard_client import (
    AsyncAdminClient,
    AsyncRiskClient,
    Order,
    Position,
    PriceMark,
    RiskClient,
    StateUpdate,
    TradeGuardError,
)
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BOT = ("bot-1", "acct-1")
BUY = Order("BTCUSDT", "BUY", 0.01, 50_000, exchange="binance")


async def test_async_allowed_order_is_pending_until_reported_filled_then_repeats_are_duplicates(
    sidecar: Sidecar,
) -> None:
    async with AsyncRiskClient(sidecar.address) as guard:
        await guard.report_equity(*BOT, 10_000)
        decision = await guard.can_trade(*BOT, BUY)
        before = await guard.get_risk_state(*BOT)
        filled = await guard.report_order(*BOT, decision.client_order_id, "FILLED", filled_quantity=0.01,
                                          average_price=50_010)
        again = await guard.report_order(*BOT, decision.client_order_id, "FILLED", filled_quantity=0.01,
                                         average_price=50_010)
        positions = await guard.report_positions(*BOT, [Position("BTCUSDT", "BUY", 0.01, 50_010, 50_000,
                                                                 exchange="binance")])

    assert decision and decision.client_order_id.startswith("tg-")
    assert [o.client_order_id for o in before.pending_orders] == [decision.client_order_id]
    assert before.pending_orders[0].status == "ALLOWED" and before.pending_orders[0].quantity == 0.01
    assert not filled.duplicate and filled.order is not None
    assert filled.order.client_order_id == decision.client_order_id
    assert filled.order.status == "FILLED" and filled.order.filled_quantity == 0.01
    assert filled.state is not None and filled.state.pending_order_count == 0
    assert again.duplicate and again.order is not None and again.order.status == "FILLED"
    assert positions.state is not None and positions.state.pending_order_count == 0
    assert [(p.symbol, p.quantity) for p in positions.state.positions] == [("BTCUSDT", 0.01)]


async def test_sync_order_with_its_own_id_reported_cancelled_and_an_unknown_id_is_not_found(
    sidecar: Sidecar,
) -> None:
    def scenario() -> None:
        with RiskClient(sidecar.address) as guard:
            guard.report_equity(*BOT, 10_000)
            decision = guard.can_trade(*BOT, Order("ETHUSDT", "SELL", 0.5, 3_000, client_order_id="my-order-1"))
            accepted = guard.report_order(*BOT, "my-order-1", "ACCEPTED")
            cancelled = guard.report_order(*BOT, "my-order-1", "cancelled")
            with pytest.raises(TradeGuardError) as err:
                guard.report_order(*BOT, "never-asked-for", "FILLED", filled_quantity=1.0)

        assert decision and decision.client_order_id == "my-order-1"
        assert accepted.order is not None and accepted.order.status == "ACCEPTED" and not accepted.order.finished
        assert accepted.state is not None and accepted.state.pending_order_count == 1  # (the list: get_risk_state)
        assert cancelled.order is not None and cancelled.order.status == "CANCELLED" and cancelled.order.finished
        assert cancelled.state is not None and cancelled.state.pending_order_count == 0
        assert cancelled.state.positions == ()
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.method == "ReportOrder"
        assert err.value.attempts == 1

    await asyncio.to_thread(scenario)


async def test_report_prices_answers_how_many_became_the_reference(sidecar: Sidecar) -> None:
    async with AsyncRiskClient(sidecar.address) as guard:
        accepted = await guard.report_prices(*BOT, {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0})
        marks = await guard.report_prices(*BOT, [PriceMark("SOLUSDT", 150.0, exchange="binance")])

    assert (accepted, marks) == (2, 1)


async def test_report_order_is_retried_on_unavailable_and_counted_once(sidecar: Sidecar) -> None:
    async with AsyncRiskClient(sidecar.address) as direct:
        await direct.report_equity(*BOT, 10_000)
        decision = await direct.can_trade(*BOT, BUY)
    async with flaky_front(sidecar.address, failures=2) as (target, front), \
            AsyncRiskClient(target, session=False) as guard:
        report = await guard.report_order(*BOT, decision.client_order_id, "FILLED", filled_quantity=0.01)

    assert front.calls["ReportOrder"] == 3
    assert not report.duplicate and report.order is not None and report.order.status == "FILLED"


async def test_kill_switch_asks_the_bot_to_cancel_its_pending_orders_and_cancelled_ones_are_released(
    sidecar: Sidecar,
) -> None:
    async with AsyncRiskClient(sidecar.address) as guard, AsyncAdminClient(sidecar.address) as admin:
        await guard.report_equity(*BOT, 10_000)
        decision = await guard.can_trade(*BOT, BUY)
        await guard.report_order(*BOT, decision.client_order_id, "ACCEPTED")
        async with guard.watch_risk_state(*BOT) as stream:
            await anext(stream)  # the initial state
            await admin.pause_trading(*BOT, trading_state="HALTED", reason="operator kill switch")
            update: StateUpdate = await asyncio.wait_for(anext(stream), 5)
            while not update.cancel_all_orders:
                update = await asyncio.wait_for(anext(stream), 5)
        # The bot cancels each order at the venue, then reports it.
        reports = [await guard.report_order(*BOT, order_id, "CANCELLED") for order_id in update.cancel_order_ids]

    assert update.cancel_order_ids == (decision.client_order_id,)
    assert update.state is not None and update.state.trading_state == "HALTED"
    assert reports[-1].state is not None and reports[-1].state.pending_order_count == 0
