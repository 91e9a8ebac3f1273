"""The pre-trade controls of issue 16 through the gRPC API ("What it must show" 3), configured with SaveConfig.

Table-driven: for every new limit, one order just inside (a value equal to the limit passes) and one just outside,
each asserting `allowed`, the DecisionCode and the check's status, value and limit. The sidecar is a real server on
127.0.0.1:0 (tests/integration/conftest.py) on the `clock` fixture: a ManualClock at T0, Thursday 2026-01-01 12:00
UTC. Equity 10,000; BTCUSDT trades at 100.

Then the reference price of the price collar: missing or stale, it denies new exposure
(DECISION_CODE_NO_REFERENCE_PRICE) and lets a reduce-only order that closes a position through; and the fill
throttle: max_fills_per_window fills halt the trader, with a cancel_all_orders action naming its pending orders,
until ResumeTrading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

ACCOUNT = "acct-controls"
EQUITY = 10_000.0
PASS, FAIL = t.CHECK_STATUS_PASS, t.CHECK_STATUS_FAIL


def buy(quantity: float, price: float = 100.0, symbol: str = "BTCUSDT", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "side": t.SIDE_BUY, "quantity": quantity, "price": price, **extra}


def sell(quantity: float, price: float = 100.0, symbol: str = "BTCUSDT", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "side": t.SIDE_SELL, "quantity": quantity, "price": price, **extra}


@dataclass
class Case:
    """One limit: `before` (orders that must be allowed first, each on the trader that then asks), the order just
    inside, the order just outside, and the check both are judged by.

    `after`: the outside order is asked by the same trader after the inside one was allowed: for the limits that
    count what was allowed before (open orders, daily sums, duplicates, windows in time). Otherwise each is asked
    by its own trader, after the same `before`. The clock moves `settle` seconds before the inside order and `wait`
    seconds before the outside one."""

    name: str
    config: dict[str, Any]
    check: str
    code: int
    inside: dict[str, Any]
    outside: dict[str, Any]
    inside_value: float
    outside_value: float
    limit: float
    before: list[dict[str, Any]] = field(default_factory=list)
    positions: list[t.Position] = field(default_factory=list)
    prices: dict[str, float] = field(default_factory=dict)
    after: bool = False
    settle: float = 0.0
    wait: float = 0.0


WINDOW = t.TradingWindow(weekdays=[4], start="12:00", end="13:00")  # Thursdays; T0 is Thursday 12:00

CASES = [
    Case("max_order_quantity", {"max_order_quantity": 2.0}, "order_quantity", t.DECISION_CODE_ORDER_QUANTITY_LIMIT,
         buy(2.0), buy(2.01), 2.0, 2.01, 2.0),
    Case("max_order_quantity (symbol override)",
         {"max_order_quantity": 10.0,
          "symbol_configs": [t.SymbolRiskConfiguration(symbol="BTCUSDT", max_order_quantity=1.5)]},
         "order_quantity", t.DECISION_CODE_ORDER_QUANTITY_LIMIT, buy(1.5), buy(1.51), 1.5, 1.51, 1.5),
    Case("max_position_quantity: position + pending + the order",
         {"max_position_quantity": 3.0}, "position_quantity", t.DECISION_CODE_POSITION_QUANTITY_LIMIT,
         buy(1.0), buy(1.25), 3.0, 3.25, 3.0, before=[buy(1.0)],
         positions=[t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1.0, entry_price=100, mark_price=100)]),
    Case("max_position_quantity (symbol override)",
         {"max_position_quantity": 100.0,
          "symbol_configs": [t.SymbolRiskConfiguration(symbol="BTCUSDT", max_position_quantity=2.0)]},
         "position_quantity", t.DECISION_CODE_POSITION_QUANTITY_LIMIT, buy(1.5), buy(1.75), 2.0, 2.25, 2.0,
         before=[buy(0.5)]),
    Case("max_open_orders", {"max_open_orders": 2}, "open_orders", t.DECISION_CODE_OPEN_ORDERS_LIMIT,
         buy(0.1), buy(0.2), 2.0, 3.0, 2.0, before=[buy(0.3)], after=True),
    Case("max_open_orders (symbol override)",
         {"max_open_orders": 10, "symbol_configs": [t.SymbolRiskConfiguration(symbol="BTCUSDT", max_open_orders=2)]},
         "open_orders", t.DECISION_CODE_OPEN_ORDERS_LIMIT, buy(0.1), buy(0.2), 2.0, 3.0, 2.0,
         before=[buy(0.3), buy(1.0, symbol="ETHUSDT"), buy(2.0, symbol="ETHUSDT")], after=True),
    Case("price_collar_percentage", {"price_collar_percentage": 2.0}, "price_collar", t.DECISION_CODE_PRICE_COLLAR,
         buy(1.0, price=102.0), sell(1.0, price=97.9), 2.0, 2.1, 2.0, prices={"BTCUSDT": 100.0}),
    Case("price_collar_percentage (symbol override)",
         {"price_collar_percentage": 5.0,
          "symbol_configs": [t.SymbolRiskConfiguration(symbol="BTCUSDT", price_collar_percentage=1.0)]},
         "price_collar", t.DECISION_CODE_PRICE_COLLAR, buy(1.0, price=99.0), buy(1.0, price=101.01), 1.0, 1.01, 1.0,
         prices={"BTCUSDT": 100.0}),
    Case("duplicate_order_window_ms: an equal order, a new client_order_id", {"duplicate_order_window_ms": 1_000},
         "duplicate_order", t.DECISION_CODE_DUPLICATE_ORDER, buy(1.0), buy(1.0), 1_000.0, 999.0, 1_000.0,
         before=[buy(1.0)], after=True, settle=1.0, wait=0.999),
    Case("allowed_symbols", {"allowed_symbols": ["BTCUSDT", "SOLUSDT"]}, "symbol_permission",
         t.DECISION_CODE_SYMBOL_NOT_ALLOWED, buy(1.0), buy(1.0, symbol="ETHUSDT"), 0.0, 0.0, 0.0),
    Case("blocked_symbols", {"blocked_symbols": ["ETHUSDT"]}, "symbol_permission",
         t.DECISION_CODE_SYMBOL_NOT_ALLOWED, buy(1.0), buy(1.0, symbol="ETHUSDT"), 0.0, 0.0, 0.0),
    Case("trading_windows: the start passes, the end does not", {"trading_windows": [WINDOW]}, "trading_window",
         t.DECISION_CODE_OUTSIDE_TRADING_WINDOW, buy(1.0), buy(1.0), 0.0, 0.0, 0.0, after=True, wait=3_600.0),
    Case("max_daily_notional", {"max_daily_notional": 1_000.0}, "daily_notional", t.DECISION_CODE_DAILY_NOTIONAL_LIMIT,
         buy(4.0), buy(0.01), 1_000.0, 1_001.0, 1_000.0, before=[buy(6.0)], after=True),
    Case("max_daily_orders", {"max_daily_orders": 2}, "daily_orders", t.DECISION_CODE_DAILY_ORDERS_LIMIT,
         buy(0.1), buy(0.2), 2.0, 3.0, 2.0, before=[buy(0.3)], after=True),
]


class Bot:
    """One trader of ACCOUNT talking to the sidecar."""

    def __init__(self, risk: rsg.RiskServiceStub, trader_id: str) -> None:
        self.risk, self.ids, self.n = risk, {"trader_id": trader_id, "account_id": ACCOUNT}, 0

    async def ask(self, order: dict[str, Any], coid: str = "") -> rs.CanTradeResponse:
        self.n += 1
        intent = t.OrderIntent(**order, client_order_id=coid or f"{self.ids['trader_id']}-{self.n}")
        answer: rs.CanTradeResponse = await self.risk.CanTrade(rs.CanTradeRequest(**self.ids, order=intent))
        return answer

    async def equity(self, equity: float = EQUITY) -> None:
        await self.risk.ReportEquity(rs.ReportEquityRequest(**self.ids, equity=equity))

    async def positions(self, *positions: t.Position) -> None:
        await self.risk.ReportPositions(rs.ReportPositionsRequest(**self.ids, positions=list(positions)))

    async def prices(self, prices: dict[str, float]) -> None:
        marks = [t.PriceMark(symbol=s, price=p) for s, p in prices.items()]
        await self.risk.ReportPrices(rs.ReportPricesRequest(**self.ids, prices=marks))

    async def report(self, coid: str, status: int, filled: float = 0.0, price: float = 0.0) -> rs.ReportOrderResponse:
        answer: rs.ReportOrderResponse = await self.risk.ReportOrder(rs.ReportOrderRequest(
            **self.ids, client_order_id=coid, status=status, filled_quantity=filled, average_price=price))
        return answer

    async def state(self) -> t.RiskState:
        return (await self.risk.GetRiskState(rs.GetRiskStateRequest(**self.ids))).state


async def configure(admin: adg.AdminServiceStub, **fields: Any) -> None:
    """SaveConfig, as a user configures the account (and the answer shows what was saved)."""
    config = t.RiskConfiguration(account_id=ACCOUNT, config_id="controls", is_active=True, **fields)
    saved = await admin.SaveConfig(ad.SaveConfigRequest(config=config))
    for name in fields:
        if name != "symbol_configs":
            assert getattr(saved.config, name) == getattr(config, name), f"SaveConfig did not keep {name}"


def check(answer: rs.CanTradeResponse, name: str) -> t.CheckResult:
    found = [c for c in answer.checks if c.name == name]
    assert len(found) == 1, f"no single {name} check in {[c.name for c in answer.checks]}"
    return found[0]


async def prepared(risk: rsg.RiskServiceStub, trader_id: str, case: Case) -> Bot:
    bot = Bot(risk, trader_id)
    await bot.equity()
    if case.positions:
        await bot.positions(*case.positions)
    if case.prices:
        await bot.prices(case.prices)
    for order in case.before:
        first = await bot.ask(order)
        assert first.allowed, f"{case.name}: the order before was denied: {first.reason}"
    return bot


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_an_order_at_a_limit_is_allowed_and_one_beyond_it_is_denied_with_the_numbers(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock, case: Case
) -> None:
    await configure(admin, **case.config)
    bot = await prepared(risk, "inside", case)
    other = bot if case.after else await prepared(risk, "outside", case)

    clock.advance(case.settle)
    inside = await bot.ask(case.inside)
    clock.advance(case.wait)
    outside = await other.ask(case.outside)

    assert inside.allowed and inside.code == t.DECISION_CODE_ALLOWED, inside.reason
    ok = check(inside, case.check)
    assert (ok.status, ok.code) == (PASS, case.code)
    assert (ok.value, ok.limit) == (pytest.approx(case.inside_value), pytest.approx(case.limit))
    assert not outside.allowed and outside.code == case.code, outside.reason
    failed = check(outside, case.check)
    assert (failed.status, failed.code) == (FAIL, case.code)
    assert (failed.value, failed.limit) == (pytest.approx(case.outside_value), pytest.approx(case.limit))
    assert t.DecisionCode.Name(case.code).removeprefix("DECISION_CODE_") in outside.reason


async def test_a_duplicate_order_is_judged_by_its_numbers_whatever_its_client_order_id(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await configure(admin, duplicate_order_window_ms=1_000)
    bot = Bot(risk, "dup")
    await bot.equity()

    first = await bot.ask(buy(1.0), "a")
    same_id = await bot.ask(buy(1.0), "a")  # a retry of the same order: the same answer, counted once
    new_id = await bot.ask(buy(1.0), "b")
    other_price = await bot.ask(buy(1.0, price=100.5), "c")
    clock.advance(1.001)
    later = await bot.ask(buy(1.0), "d")

    assert first.allowed and same_id.allowed
    assert not new_id.allowed and new_id.code == t.DECISION_CODE_DUPLICATE_ORDER
    assert check(new_id, "duplicate_order").value == pytest.approx(0.0)
    assert other_price.allowed and later.allowed
    assert [o.client_order_id for o in (await bot.state()).pending_orders] == ["a", "c", "d"]
    passed = check(later, "duplicate_order")  # a PASS shows its numbers too: the equal order's age, the window
    assert (passed.status, passed.value, passed.limit) == (PASS, pytest.approx(1_001.0), 1_000.0)


async def test_the_symbol_permissions_and_the_trading_windows_let_an_order_that_closes_a_position_through(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await configure(admin, blocked_symbols=["ETHUSDT"], trading_windows=[WINDOW])
    bot = Bot(risk, "closer")
    await bot.equity()
    await bot.positions(t.Position(symbol="ETHUSDT", side=t.SIDE_BUY, quantity=2.0, entry_price=50, mark_price=50))
    clock.advance(3_600.0)  # 13:00: outside the window

    closing = await bot.ask(sell(2.0, price=50.0, symbol="ETHUSDT", reduce_only=True))
    adding = await bot.ask(buy(0.1, price=50.0, symbol="ETHUSDT"))

    assert closing.allowed, closing.reason
    assert check(closing, "symbol_permission").status == PASS and check(closing, "trading_window").status == PASS
    assert not adding.allowed and adding.code == t.DECISION_CODE_SYMBOL_NOT_ALLOWED
    assert check(adding, "trading_window").status == FAIL


async def test_orders_that_close_a_position_pass_every_quantity_count_and_daily_control_and_one_more_is_denied(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await configure(admin, max_order_quantity=1.0, max_position_quantity=1.0, max_open_orders=1, max_daily_orders=1,
                    max_daily_notional=100.0)
    bot = Bot(risk, "unwinder")
    await bot.equity()
    await bot.positions(t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=3.0, entry_price=100, mark_price=100))

    first = await bot.ask(sell(1.0, reduce_only=True))  # pending from now on: it uses up 1 of the 3 held
    rest = await bot.ask(sell(2.0, reduce_only=True))  # closes the other 2: quantity, count and sums over, reducing
    beyond = await bot.ask(sell(0.1, reduce_only=True))  # nothing left to reduce: it opens a short
    adding = await bot.ask(buy(0.1))

    assert first.allowed and rest.allowed, rest.reason
    assert {c.name: c.status for c in rest.checks if c.name in (
        "order_quantity", "position_quantity", "open_orders", "daily_orders", "daily_notional")} == dict.fromkeys(
        ("order_quantity", "position_quantity", "open_orders", "daily_orders", "daily_notional"), PASS)
    assert not beyond.allowed and beyond.code == t.DECISION_CODE_DAILY_ORDERS_LIMIT, beyond.reason  # (the first)
    assert not adding.allowed, adding.reason
    assert (await bot.state()).pending_order_count == 2


async def test_without_a_reference_price_the_collar_denies_new_exposure_and_never_skips(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub
) -> None:
    await configure(admin, price_collar_percentage=5.0)
    bot = Bot(risk, "no-ref")
    await bot.equity()

    answer = await bot.ask(buy(1.0))

    assert not answer.allowed and answer.code == t.DECISION_CODE_NO_REFERENCE_PRICE, answer.reason
    collar = check(answer, "price_collar")
    assert (collar.status, collar.code) == (FAIL, t.DECISION_CODE_NO_REFERENCE_PRICE)
    assert "no reference price for BTCUSDT" in answer.reason


async def test_a_reference_price_as_old_as_the_maximum_age_counts_and_an_older_one_denies_new_exposure(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await configure(admin, price_collar_percentage=5.0, reference_price_max_age_seconds=30)
    bot = Bot(risk, "stale")
    await bot.equity()
    await bot.prices({"BTCUSDT": 100.0})

    clock.advance(30.0)
    at_the_age = await bot.ask(buy(1.0))
    clock.advance(1.0)
    older = await bot.ask(buy(1.0, price=100.5))
    await bot.prices({"BTCUSDT": 101.0})
    refreshed = await bot.ask(buy(1.0, price=100.7))

    assert at_the_age.allowed and check(at_the_age, "price_collar").code == t.DECISION_CODE_PRICE_COLLAR
    assert not older.allowed and older.code == t.DECISION_CODE_NO_REFERENCE_PRICE, older.reason
    assert "31s old (max 30s)" in older.reason
    assert refreshed.allowed, refreshed.reason


async def test_a_stale_reference_price_still_lets_a_reduce_only_order_close_the_position(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await configure(admin, price_collar_percentage=2.0, reference_price_max_age_seconds=60)
    bot = Bot(risk, "closing")
    await bot.equity()
    await bot.positions(t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1.0, entry_price=100, mark_price=100))
    clock.advance(61.0)  # the mark of the position report is the reference: now stale

    adding = await bot.ask(buy(0.5))
    closing = await bot.ask(sell(1.0, reduce_only=True))

    assert not adding.allowed and adding.code == t.DECISION_CODE_NO_REFERENCE_PRICE, adding.reason
    assert closing.allowed, closing.reason
    collar = check(closing, "price_collar")
    assert (collar.status, collar.code) == (PASS, t.DECISION_CODE_NO_REFERENCE_PRICE)


async def test_after_a_restart_no_reference_price_is_known_and_only_the_order_closing_the_position_is_allowed(
    clock: ManualClock, tmp_path: Path
) -> None:
    """Reference prices are memory only; the positions are restored. Missing, the reference denies new exposure
    and lets the closing order through."""
    database = f"sqlite:///{tmp_path / 'collar.db'}"
    async with running_sidecar(clock=clock, database_url=database, enable_persistence=True) as first, \
            grpc.aio.insecure_channel(first.address) as ch:
        await configure(adg.AdminServiceStub(ch), price_collar_percentage=2.0)
        bot = Bot(rsg.RiskServiceStub(ch), "restarted")
        await bot.equity()
        await bot.positions(t.Position(symbol="BTCUSDT", side=t.SIDE_SELL, quantity=2.0, entry_price=100,
                                       mark_price=100))
        before = await bot.ask(buy(0.5, price=101.0))
    async with running_sidecar(clock=clock, database_url=database, enable_persistence=True) as second, \
            grpc.aio.insecure_channel(second.address) as ch:
        bot = Bot(rsg.RiskServiceStub(ch), "restarted")
        adding = await bot.ask(sell(0.1), "after-1")
        closing = await bot.ask(buy(1.5, reduce_only=True), "after-2")  # closes the rest (0.5 is pending)

    assert before.allowed, before.reason  # a BUY that reduces the short, within the collar
    assert not adding.allowed and adding.code == t.DECISION_CODE_NO_REFERENCE_PRICE, adding.reason
    assert "no reference price for BTCUSDT" in adding.reason
    assert closing.allowed, closing.reason
    collar = check(closing, "price_collar")
    assert (collar.status, collar.code) == (PASS, t.DECISION_CODE_NO_REFERENCE_PRICE)


async def test_max_fills_per_window_halts_the_trader_cancels_its_orders_and_waits_for_a_person(
    risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock
) -> None:
    await configure(admin, max_fills_per_window=2, fill_window_seconds=60)
    bot = Bot(risk, "filler")
    await bot.equity()
    for coid in ("f-1", "f-2", "f-3"):
        assert (await bot.ask(buy(0.1), coid)).allowed

    await bot.report("f-1", t.ORDER_STATUS_FILLED, 0.1, 100.0)
    inside = await bot.ask(buy(0.1), "f-4")  # one fill in the window: under the limit
    halting = await bot.report("f-2", t.ORDER_STATUS_PARTIALLY_FILLED, 0.05, 100.0)
    halted = await bot.ask(buy(0.1), "f-5")
    clock.advance(3_600.0)  # the window passes; a person still has to resume
    still = await bot.ask(buy(0.1), "f-6")
    resumed = await admin.ResumeTrading(ad.ResumeTradingRequest(trader_id="filler", account_id=ACCOUNT))
    again = await bot.ask(buy(0.1), "f-7")

    assert inside.allowed
    ok = check(inside, "fill_rate")
    assert (ok.status, ok.value, ok.limit) == (PASS, 1.0, 2.0)
    assert halting.state.trading_state == t.TRADING_STATE_HALTED
    cancel = [a for a in halting.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS]
    assert [sorted(a.client_order_ids) for a in cancel] == [["f-2", "f-3", "f-4"]]
    assert not halted.allowed and halted.code == t.DECISION_CODE_FILL_RATE_LIMIT, halted.reason
    failed = check(halted, "fill_rate")
    assert (failed.status, failed.code, failed.value, failed.limit) == (FAIL, t.DECISION_CODE_FILL_RATE_LIMIT, 2.0, 2.0)
    assert [sorted(a.client_order_ids) for a in halted.actions if a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS] == \
        [["f-2", "f-3", "f-4"]]  # in every answer while HALTED with pending orders
    assert not still.allowed and still.trading_state == t.TRADING_STATE_HALTED
    assert resumed.state.trading_state == t.TRADING_STATE_ACTIVE
    assert again.allowed, again.reason
