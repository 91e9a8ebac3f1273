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
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clock import T0
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


async def test_a_finished_orders_id_is_refused_for_a_new_order_so_an_old_report_cannot_release_it(bot: Bot) -> None:
    """Asking again under a finished order's id would let a retry of the old order's CANCELLED (a lost answer)
    release the new order's reservation. The id is refused (a new order needs a new id); the retry changes
    nothing."""
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    cancel = rs.ReportOrderRequest(**bot.ids, client_order_id="o-1", status=t.ORDER_STATUS_CANCELLED)
    await bot.risk.ReportOrder(cancel)
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await bot.ask("o-1")
    retried = await bot.risk.ReportOrder(cancel)  # the first cancel's retry (its answer was lost)
    fresh = await bot.ask("o-2")
    over = await bot.ask("o-3")

    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_order_id" in (reused.value.details() or "") and "finished" in (reused.value.details() or "")
    assert retried.duplicate
    assert fresh.allowed and not over.allowed


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


# ---- watch updates and cancel_all_orders ------------------------------------------------------------------------


async def _next_update(stream: Any, timeout: float = 3.0) -> rs.WatchRiskStateResponse:
    update: rs.WatchRiskStateResponse = await asyncio.wait_for(stream.read(), timeout)
    return update


async def test_a_watcher_hears_when_the_ttl_releases_the_pending_orders() -> None:
    """WatchRiskState lists the pending orders; once the TTL released them (they no longer count) a watcher must
    not be left believing they still count: it gets an update without them."""
    async with running_sidecar() as sidecar, grpc.aio.insecure_channel(sidecar.address) as ch:
        b = Bot(ch)
        await b.configure(pending_order_ttl_seconds=1)
        await b.equity()
        stream = b.risk.WatchRiskState(rs.WatchRiskStateRequest(**b.ids))
        await _next_update(stream)  # initial
        assert (await b.ask("o-1")).allowed
        seen = await _next_update(stream)  # order bookkeeping: the count (the list: GetRiskState, other updates)
        assert seen.state.pending_order_count == 1

        try:
            released = await _next_update(stream, timeout=4.0)
        except TimeoutError:
            pytest.fail("no watch update within 4 s of a 1 s TTL: the watcher still sees o-1 pending")
        finally:
            stream.cancel()
    assert list(released.state.pending_orders) == [] and released.state.pending_order_count == 0


async def test_halted_tells_watchers_to_cancel_every_pending_order_once_per_halt(bot: Bot) -> None:
    await bot.configure()
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    assert (await bot.ask("o-2", price=49_000.0)).allowed
    stream = bot.risk.WatchRiskState(rs.WatchRiskStateRequest(**bot.ids))
    await _next_update(stream)
    pause = ad.PauseTradingRequest(**bot.ids, trading_state=t.TRADING_STATE_HALTED, reason="incident")
    await bot.admin.PauseTrading(pause)
    first = await _next_update(stream)
    await bot.admin.PauseTrading(pause)  # an overlapping second halt: no second cancel
    second = await _next_update(stream)
    await bot.admin.ResumeTrading(ad.ResumeTradingRequest(**bot.ids))
    await _next_update(stream)
    await bot.report("o-1", t.ORDER_STATUS_CANCELLED)
    await _next_update(stream)
    await bot.admin.PauseTrading(pause)  # a new halt: the one order still pending
    third = await _next_update(stream)
    asked = await bot.ask("o-3")
    stream.cancel()

    def cancels(u: rs.WatchRiskStateResponse) -> list[list[str]]:
        return [list(a.client_order_ids) for a in u.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS]

    assert cancels(first) == [["o-1", "o-2"]]
    assert cancels(second) == []
    assert cancels(third) == [["o-2"]]
    assert [list(a.client_order_ids) for a in asked.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS] == [["o-2"]]


async def test_the_fill_that_trips_the_fill_throttle_answers_cancel_all_orders_with_the_rest(bot: Bot) -> None:
    await bot.configure(max_fills_per_window=2)
    await bot.equity()
    for i in range(3):
        assert (await bot.ask(f"o-{i}", price=50_000.0 + i)).allowed
    await bot.report("o-0", t.ORDER_STATUS_FILLED)
    tripped = await bot.report("o-1", t.ORDER_STATUS_FILLED)

    assert tripped.state.trading_state == t.TRADING_STATE_HALTED
    assert [list(a.client_order_ids) for a in tripped.actions
            if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS] == [["o-2"]]


async def test_a_shadow_mode_order_allowed_while_halted_is_in_the_cancel_all_orders_the_watcher_gets(
    bot: Bot,
) -> None:
    """Shadow mode allows (and reserves) while HALTED: the bot places the order. The watcher that waits for
    cancel_all_orders must learn of it too, or the order keeps working through the halt."""
    await bot.configure()
    await bot.equity()
    await bot.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(
        flags=t.FeatureFlags(enable_risk_enforcement=False, enable_persistence=False)))
    await bot.admin.PauseTrading(ad.PauseTradingRequest(**bot.ids, trading_state=t.TRADING_STATE_HALTED))
    stream = bot.risk.WatchRiskState(rs.WatchRiskStateRequest(**bot.ids))
    await _next_update(stream)
    shadow = await bot.ask("o-1")
    update = await _next_update(stream)
    stream.cancel()

    assert shadow.allowed and shadow.would_deny
    assert ["o-1"] in [list(a.client_order_ids) for a in update.actions
                       if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS], update


# ---- operators: rebinding, configuration changes, shadow mode --------------------------------------------------


async def test_rebinding_a_trader_with_pending_orders_does_not_silently_forget_them(bot: Bot) -> None:
    """RebindTrader resets the state. The trader's working orders are still at the exchange: dropping them with
    no cancel_all_orders (and no way to report them: NOT_FOUND) lets the same bot exceed its limit."""
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    stream = bot.risk.WatchRiskState(rs.WatchRiskStateRequest(**bot.ids))
    await _next_update(stream)
    await bot.admin.RebindTrader(ad.RebindTraderRequest(**bot.ids, reason="operator reset"))
    update = await _next_update(stream)
    stream.cancel()
    await bot.equity()
    nxt = await bot.ask("o-2")

    told_to_cancel = any(list(a.client_order_ids) == ["o-1"] for a in update.actions
                         if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS)
    assert told_to_cancel or not nxt.allowed, "o-1 (400 working) forgotten: 400 + 400 > 500 allowed"


async def test_orders_allowed_in_shadow_mode_count_once_enforcement_is_on_again(bot: Bot) -> None:
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    off = t.FeatureFlags(enable_risk_enforcement=False, enable_persistence=False)
    await bot.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=off))
    a = await bot.ask("o-1")
    b = await bot.ask("o-2")  # would deny: 800 > 500, placed anyway
    await bot.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(
        flags=t.FeatureFlags(enable_risk_enforcement=True, enable_persistence=False)))
    # The first answer to o-2 was lost, so the bot retries it now that enforcement is on: README "A remembered
    # shadow-mode allowed (would_deny) is decided afresh once enforcement is on again": 400 + 400 > 500 is denied.
    retry = await bot.ask("o-2")
    c = await bot.ask("o-3", quantity=0.0001)
    await bot.report("o-1", t.ORDER_STATUS_CANCELLED)
    d = await bot.ask("o-4", quantity=0.0001)  # 400 (o-2) + 5 <= 500

    assert a.allowed and not a.would_deny and b.allowed and b.would_deny
    assert not retry.allowed
    assert not c.allowed and check(c, "position_size").value == pytest.approx(805.0)
    assert d.allowed, d.reason
    assert (await bot.state()).pending_order_count == 2


async def test_lowering_a_limit_while_orders_are_pending_counts_them_against_the_new_limit(bot: Bot) -> None:
    await bot.configure(max_position_size_percentage=10.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    await bot.configure(max_position_size_percentage=5.0, max_open_orders=1)
    nxt = await bot.ask("o-2", quantity=0.002)

    assert not nxt.allowed and nxt.code == t.DECISION_CODE_OPEN_ORDERS_LIMIT
    assert check(nxt, "position_size").value == pytest.approx(500.0)  # 400 pending + 100: at the limit
    assert check(nxt, "open_orders").status == t.CHECK_STATUS_FAIL


# ---- reference prices ---------------------------------------------------------------------------------------------


async def test_another_accounts_bot_cannot_move_this_accounts_price_collar(bot: Bot, sc: Sidecar) -> None:
    """A hostile (or broken) bot of another account reports BTCUSDT at 10x: this account's fat-fingered order
    at 10x must still be caught by its 5 % collar."""
    await bot.configure(price_collar_percentage=5.0)
    await bot.equity(1e9)
    await bot.risk.ReportPrices(rs.ReportPricesRequest(**bot.ids, prices=[t.PriceMark(symbol="BTCUSDT",
                                                                                      price=50_000.0)]))
    async with grpc.aio.insecure_channel(sc.address) as ch:
        hostile = Bot(ch, trader_id="evil", account_id="acct-other")
        await hostile.risk.ReportPrices(rs.ReportPricesRequest(**hostile.ids, prices=[
            t.PriceMark(symbol="btcusdt", price=500_000.0)]))
    fat_finger = await bot.ask("o-1", price=500_000.0)

    assert not fat_finger.allowed, "the collar followed another account's price: a 10x order passed"


async def test_a_collar_with_a_zero_age_reference_and_odd_price_times_never_crashes(
    bot: Bot, clock: ManualClock
) -> None:
    await bot.configure(price_collar_percentage=5.0, reference_price_max_age_seconds=1)
    await bot.equity()
    future = t.PriceMark(symbol="BTCUSDT", price=50_000.0)
    future.observed_at.FromSeconds(int(clock.now()) + 4)  # within the clock skew: counts as now
    await bot.risk.ReportPrices(rs.ReportPricesRequest(**bot.ids, prices=[future]))
    past = t.PriceMark(symbol="BTCUSDT", price=1.0)
    past.observed_at.FromSeconds(int(clock.now()) - 3600)  # older than the known one: ignored
    taken = await bot.risk.ReportPrices(rs.ReportPricesRequest(**bot.ids, prices=[past]))
    ok = await bot.ask("o-1")
    clock.advance(1.5)
    stale = await bot.ask("o-2", price=50_100.0)
    far_future = t.PriceMark(symbol="BTCUSDT", price=50_000.0)
    far_future.observed_at.FromSeconds(int(clock.now()) + 3600)
    with pytest.raises(grpc.aio.AioRpcError) as far:
        await bot.risk.ReportPrices(rs.ReportPricesRequest(**bot.ids, prices=[far_future]))

    assert taken.accepted == 0
    assert ok.allowed, ok.reason
    assert not stale.allowed and stale.code == t.DECISION_CODE_NO_REFERENCE_PRICE
    assert far.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- hostile ReportOrder -----------------------------------------------------------------------------------------


async def test_report_order_abuse_is_refused_with_a_status_never_internal(bot: Bot, sc: Sidecar) -> None:
    await bot.configure()
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    codes = {}
    cases = {
        "nan": {"client_order_id": "o-1", "status": t.ORDER_STATUS_FILLED, "filled_quantity": float("nan")},
        "inf": {"client_order_id": "o-1", "status": t.ORDER_STATUS_FILLED, "filled_quantity": float("inf")},
        "negative": {"client_order_id": "o-1", "status": t.ORDER_STATUS_PARTIALLY_FILLED, "filled_quantity": -1.0},
        "overfill": {"client_order_id": "o-1", "status": t.ORDER_STATUS_PARTIALLY_FILLED, "filled_quantity": 0.009},
        "huge_price": {"client_order_id": "o-1", "status": t.ORDER_STATUS_PARTIALLY_FILLED,
                       "filled_quantity": 0.001, "average_price": 1e300},
        "allowed_status": {"client_order_id": "o-1", "status": t.ORDER_STATUS_ALLOWED},
        "unknown_status": {"client_order_id": "o-1", "status": 99},
        "long_id": {"client_order_id": "x" * 129, "status": t.ORDER_STATUS_FILLED},
        "space_id": {"client_order_id": "o -1", "status": t.ORDER_STATUS_FILLED},
    }
    for name, fields in cases.items():
        try:
            await bot.risk.ReportOrder(rs.ReportOrderRequest(**bot.ids, **fields))
            codes[name] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            codes[name] = exc.code()
    async with grpc.aio.insecure_channel(sc.address) as ch:
        other_trader = Bot(ch, trader_id="bot-2")
        other_account = Bot(ch, account_id="acct-x")
        await other_trader.equity()
        for name, who in (("other_trader", other_trader), ("other_account", other_account)):
            try:
                await who.report("o-1", t.ORDER_STATUS_CANCELLED)
                codes[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                codes[name] = exc.code()
    state = await bot.state()

    assert {k: v for k, v in codes.items() if v != grpc.StatusCode.INVALID_ARGUMENT} == {
        "other_trader": grpc.StatusCode.NOT_FOUND}
    assert [(o.client_order_id, o.status, o.filled_quantity) for o in state.pending_orders] == [
        ("o-1", t.ORDER_STATUS_ALLOWED, 0.0)]


# ---- the TTL is the sidecar's guess; the bot's report is a fact -----------------------------------------------------


async def test_an_accepted_report_after_the_ttl_released_the_order_makes_it_count_again(
    bot: Bot, clock: ManualClock
) -> None:
    """A resting order re-reported ACCEPTED a little after the TTL: the bot says it is working at the exchange.
    The release was the sidecar's guess (EXPIRED by TTL), not the exchange's: the order must count again, or the
    bot may place another 400 against the 500 limit while 400 rests."""
    await bot.configure(pending_order_ttl_seconds=10, max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    clock.advance(12)
    alive = await bot.report("o-1", t.ORDER_STATUS_ACCEPTED)
    nxt = await bot.ask("o-2")

    assert alive.order.status == t.ORDER_STATUS_ACCEPTED, alive.order
    assert not nxt.allowed, "o-1 rests at the exchange (reported ACCEPTED) yet no longer counts: 800 > 500 allowed"


# ---- odd spellings ------------------------------------------------------------------------------------------------


async def test_lower_case_orders_on_mixed_case_exchanges_count_against_the_same_venue(bot: Bot) -> None:
    await bot.configure(max_position_quantity=0.01, max_open_orders=5)
    await bot.equity(1e9)
    await bot.positions(long(0.004, "binance"))
    first = await bot.ask("o-1", symbol="btcusdt", exchange="Binance", quantity=0.004)
    second = await bot.ask("o-2", symbol="BtcUsdt", exchange="BINANCE", quantity=0.004)
    filled = await bot.report("o-1", t.ORDER_STATUS_FILLED)
    with pytest.raises(grpc.aio.AioRpcError) as spaced:
        await bot.ask("o-3", symbol="BTCUSDT ", exchange="binance")

    assert first.allowed, first.reason
    assert not second.allowed and second.code == t.DECISION_CODE_POSITION_QUANTITY_LIMIT  # 0.004 + 0.004 + 0.004
    assert [(p.symbol, p.exchange, p.quantity) for p in filled.state.positions] == [
        ("BTCUSDT", "binance", pytest.approx(0.008))]
    assert spaced.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_order_without_exchange_on_a_symbol_held_on_two_venues_counts_both(bot: Bot) -> None:
    await bot.configure(max_position_size_percentage=10.0)  # 1,000
    await bot.equity()
    await bot.positions(long(0.006, "binance"), long(0.006, "okx"))  # 600 held
    first = await bot.ask("o-1", quantity=0.006, exchange="")  # no venue of its own: adds, 600 + 300 = 900
    at_limit = await bot.ask("o-2", quantity=0.002, exchange="")  # + 100 = 1,000: at the limit passes
    over = await bot.ask("o-3", quantity=0.002, exchange="okx")  # + 100 on okx = 1,100

    assert first.allowed and at_limit.allowed, (first.reason, at_limit.reason)
    assert check(at_limit, "position_size").value == pytest.approx(1_000.0)
    assert not over.allowed and check(over, "position_size").value == pytest.approx(1_100.0)


# ---- positions, fills and the history -----------------------------------------------------------------------------


async def test_a_position_report_that_lags_a_reported_fill_does_not_erase_the_fill(bot: Bot) -> None:
    """Exchanges' position endpoints lag their fill streams. The bot reports the fill (ReportOrder FILLED), then a
    position snapshot taken before the fill (flat). ReportPositions replaces the positions: the 400 filled is
    gone and the next 400 is allowed (800 held against 500). README documents "ReportPositions is the truth";
    the opposite order is documented as an over-count, this one is an under-count."""
    await bot.configure(max_position_size_percentage=5.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    before_fill = Timestamp(seconds=int(T0) - 1)  # the snapshot was taken before the fill
    await bot.report("o-1", t.ORDER_STATUS_FILLED)
    await bot.risk.ReportPositions(rs.ReportPositionsRequest(**bot.ids, observed_at=before_fill))  # flat
    nxt = await bot.ask("o-2")

    assert not nxt.allowed, "a lagging position report erased a fill reported a moment before: 800 > 500 allowed"


async def test_the_history_shows_the_pending_orders_each_audited_row_had(tmp_path: Path, clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{tmp_path / 'h.db'}",
                               enable_persistence=True) as sidecar, grpc.aio.insecure_channel(sidecar.address) as ch:
        await _history_rounds(Bot(ch), clock)


async def _history_rounds(bot: Bot, clock: ManualClock) -> None:
    await bot.configure(max_position_size_percentage=50.0)
    await bot.equity()
    assert (await bot.ask("o-1")).allowed
    clock.advance(1)
    await bot.equity(10_001)  # row: o-1 pending
    await bot.report("o-1", t.ORDER_STATUS_CANCELLED)
    assert (await bot.ask("o-2", quantity=0.002)).allowed
    clock.advance(1)
    await bot.equity(10_002)  # row: o-2 pending, o-1 gone
    clock.advance(1)
    await bot.report("o-2", t.ORDER_STATUS_PARTIALLY_FILLED, 0.001)  # row: a fill moves the position
    history = await bot.admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(**bot.ids, page_size=10))

    rows = {e.state.current_equity: e for e in history.entries}
    fill = history.entries[-1]  # (oldest first)
    assert [o.client_order_id for o in rows[10_001].state.pending_orders] == ["o-1"]
    assert [o.client_order_id for o in rows[10_002].state.pending_orders] == ["o-2"]
    assert [(o.client_order_id, o.filled_quantity) for o in fill.state.pending_orders] == [("o-2", 0.001)]
    assert [p.quantity for p in fill.state.positions] == [pytest.approx(0.001)]


# ---- overrides and pauses against pending orders --------------------------------------------------------------------


async def test_a_symbol_override_of_max_open_orders_does_not_lift_the_traders_own_limit(bot: Bot) -> None:
    """max_open_orders 2 for the trader (README: "pending orders of the trader"), 5 for BTCUSDT. With 2 ETHUSDT
    orders pending, a BTCUSDT order is the trader's third: the override says how many BTCUSDT orders may rest, it
    does not let the trader hold 7."""
    await bot.configure(max_open_orders=2, symbol_configs=[t.SymbolRiskConfiguration(symbol="BTCUSDT",
                                                                                     max_open_orders=5)])
    await bot.equity(1e9)
    for i in range(2):
        assert (await bot.ask(f"e-{i}", symbol="ETHUSDT", price=3_000.0 + i, quantity=0.1)).allowed
    btc = [await bot.ask(f"b-{i}", price=50_000.0 + i, quantity=0.001) for i in range(5)]

    allowed = sum(a.allowed for a in btc)
    assert allowed == 0, f"{2 + allowed} orders pending against the trader's max_open_orders 2"


async def test_in_reducing_a_second_sell_that_the_pending_sell_already_covers_is_new_exposure(bot: Bot) -> None:
    await bot.configure()
    await bot.equity()
    await bot.positions(long(0.01, "binance"))
    await bot.admin.PauseTrading(ad.PauseTradingRequest(**bot.ids, trading_state=t.TRADING_STATE_REDUCING))
    first = await bot.ask("o-1", side=t.SIDE_SELL, quantity=0.01, exchange="binance", reduce_only=True)
    second = await bot.ask("o-2", side=t.SIDE_SELL, quantity=0.01, exchange="binance", reduce_only=True)
    no_venue = await bot.ask("o-3", side=t.SIDE_SELL, quantity=0.005, reduce_only=True)  # the only venue: binance
    await bot.report("o-1", t.ORDER_STATUS_CANCELLED)
    after_cancel = await bot.ask("o-4", side=t.SIDE_SELL, quantity=0.005, exchange="BINANCE")

    assert first.allowed, first.reason
    assert not second.allowed and not no_venue.allowed
    assert after_cancel.allowed, after_cancel.reason


async def test_the_can_trade_answer_whose_breaker_halts_the_trader_carries_cancel_all_orders(bot: Bot) -> None:
    """An order_rate breaker (pause_trading) fires on the third CanTrade: the trader is HALTED with two orders
    working. README: every answer to the trader while it is halted with pending orders carries cancel_all_orders;
    the answer that halted it is the first such answer (a bot that does not watch learns of the halt there)."""
    await bot.configure()
    await bot.equity()
    breaker = {"name": "burst", "account_id": ACCOUNT, "condition": "order_rate", "action": "pause_trading",
               "parameters": {"max_orders": 2, "window_seconds": 60}, "enabled": True}
    await bot.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(breaker, t.CircuitBreaker())))
    assert (await bot.ask("o-1")).allowed
    assert (await bot.ask("o-2", price=49_000.0)).allowed
    halting = await bot.ask("o-3", price=48_000.0)
    later = await bot.ask("o-4", price=47_000.0)

    def cancels(answer: rs.CanTradeResponse) -> list[list[str]]:
        return [list(a.client_order_ids) for a in answer.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS]

    assert not halting.allowed and halting.trading_state == t.TRADING_STATE_HALTED
    assert cancels(later) == [["o-1", "o-2"]]
    assert cancels(halting) == [["o-1", "o-2"]], f"the halting answer carries {list(halting.actions)}"
