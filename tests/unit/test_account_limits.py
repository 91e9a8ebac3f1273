"""Account-wide limits (issue 17): the pure math of engine.account_limits, and the engine's account_checks hook with
the single-sidecar view (cluster.account_view in memory) and its once-per-episode pause."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard_server.cluster.account_view import AccountView, LocalAccountPauser
from tradeguard_server.engine.account_limits import (
    DAILY_LOSS,
    DRAWDOWN,
    GROSS,
    NET,
    AccountFigures,
    OrderEffect,
    TraderFigures,
    aggregate,
    daily_loss_pct,
    drawdown_pct,
    evaluate,
    exposure,
    figures_of_row,
    figures_of_state,
)
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import CheckStatus, DecisionCode, OrderIntent, Position, Side, TradingState

PASS, FAIL = CheckStatus.PASS, CheckStatus.FAIL
ALL = Limits(account_daily_loss_percentage=5.0, account_max_drawdown_percentage=10.0,
             account_max_gross_exposure=100_000.0, account_max_net_exposure=50_000.0)


def fig(tid: str, equity: float, start: float, long: float = 0.0, short: float = 0.0) -> TraderFigures:
    return TraderFigures(tid, equity, start, equity - start, long + short, long - short)


def by_name(checks: tuple) -> dict:  # type: ignore[type-arg]
    return {c.name: c for c in checks}


# ---- the math ---------------------------------------------------------------------------------------

def test_daily_loss_is_summed_pnl_over_summed_day_start_equity_and_a_gain_is_no_loss() -> None:
    a = aggregate([fig("t1", 9_800, 10_000), fig("t2", 9_700, 10_000), fig("t3", 10_100, 10_000)])

    assert (a.daily_pnl, a.day_start_equity, a.traders) == (-400.0, 30_000.0, 3)
    assert a.daily_loss_pct == pytest.approx(400 / 30_000 * 100)
    assert daily_loss_pct(+50.0, 1_000.0) == 0.0 and daily_loss_pct(-50.0, 0.0) == 0.0


def test_drawdown_is_summed_equity_below_the_peak() -> None:
    assert drawdown_pct(27_000.0, 30_000.0) == pytest.approx(10.0)
    assert drawdown_pct(31_000.0, 30_000.0) == 0.0 and drawdown_pct(5.0, 0.0) == 0.0


def test_losses_spread_over_traders_breach_the_account_though_none_breaches_its_own_limit() -> None:
    # 4%, 3.5% and 2% lost: each under a per-trader 5% limit; the account lost 3.17%, over its 3% limit
    a = aggregate([fig("t1", 9_600, 10_000), fig("t2", 9_650, 10_000), fig("t3", 9_800, 10_000)])
    verdict = evaluate(a, 30_000.0, ALL.with_changes(account_daily_loss_percentage=3.0), 0.3)

    loss = by_name(verdict.checks)[DAILY_LOSS]
    assert loss.status is FAIL and loss.code is DecisionCode.ACCOUNT_LIMIT
    assert (loss.value, loss.limit) == (pytest.approx(950 / 30_000 * 100), 3.0)
    assert "view 0.3s old" in loss.detail and "3 traders" in loss.detail
    assert [b.rule for b in verdict.breaches] == [DAILY_LOSS]


def test_a_breach_lets_an_order_that_only_reduces_pass() -> None:
    a = aggregate([fig("t1", 9_000, 10_000)])
    reducing = evaluate(a, 10_000.0, ALL, 0.0, OrderEffect(adding=0.0, signed=-5_000.0))
    adding = evaluate(a, 10_000.0, ALL, 0.0, OrderEffect(adding=5_000.0, signed=5_000.0))

    assert by_name(reducing.checks)[DAILY_LOSS].status is PASS
    assert by_name(adding.checks)[DAILY_LOSS].status is FAIL
    assert [b.rule for b in reducing.breaches] == [DAILY_LOSS, DRAWDOWN]  # the account still breaches


def test_gross_counts_the_order_adding_and_denies_beyond_the_limit() -> None:
    a = aggregate([fig("t1", 10_000, 10_000, long=60_000), fig("t2", 10_000, 10_000, short=30_000)])
    ok = by_name(evaluate(a, 20_000.0, ALL, 0.0, OrderEffect(10_000.0, 10_000.0)).checks)[GROSS]
    over = by_name(evaluate(a, 20_000.0, ALL, 0.0, OrderEffect(10_000.01, -10_000.01)).checks)[GROSS]

    assert (ok.status, ok.value, ok.limit) == (PASS, 100_000.0, 100_000.0)
    assert (over.status, over.value) == (FAIL, pytest.approx(100_000.01))
    assert "after the order" in over.detail


def test_net_denies_only_an_order_that_takes_it_beyond_the_limit_and_further_from_zero() -> None:
    a = aggregate([fig("t1", 10_000, 10_000, long=70_000), fig("t2", 10_000, 10_000, short=10_000)])  # net 60k
    buy = by_name(evaluate(a, 0.0, ALL, 0.0, OrderEffect(1_000.0, 1_000.0)).checks)[NET]
    sell = by_name(evaluate(a, 0.0, ALL, 0.0, OrderEffect(1_000.0, -1_000.0)).checks)[NET]

    assert (buy.status, buy.value) == (FAIL, 61_000.0)
    assert (sell.status, sell.value) == (PASS, 59_000.0)  # still over, but closer: allowed


def test_without_an_order_exposure_checks_show_the_numbers_and_pass() -> None:
    a = aggregate([fig("t1", 10_000, 10_000, long=200_000)])
    checks = by_name(evaluate(a, 0.0, ALL, 1.25).checks)

    assert checks[GROSS].status is PASS and checks[GROSS].value == 200_000.0
    assert "no order" in checks[GROSS].detail and "view 1.2s old" in checks[GROSS].detail


def test_only_the_configured_limits_are_checked() -> None:
    verdict = evaluate(AccountFigures(), 0.0, Limits(account_max_gross_exposure=1.0), 0.0)

    assert [c.name for c in verdict.checks] == [GROSS]


def test_figures_of_a_row_match_the_figures_of_the_live_state(clock: ManualClock) -> None:
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None))
    engine.report_equity("t1", "a", 10_000.0, None)
    engine.report_equity("t1", "a", 9_500.0, None)
    engine.report_positions("t1", "a", [Position("BTC", Side.BUY, 1.0, 100.0, 110.0),
                                        Position("ETH", Side.SELL, 2.0, 50.0, 40.0)])
    engine.can_trade("t1", "a", OrderIntent("SOL", Side.BUY, 3.0, 10.0), "o1")  # pending: 30 long
    engine.can_trade("t1", "a", OrderIntent("BTC", Side.SELL, 0.5, 100.0), "o2")  # closes half of BTC: adds nothing
    st = engine.traders["t1"]
    row = {"trader_id": "t1", "current_equity": st.current_equity, "day_start_equity": st.day_start_equity,
           "day_start": st.day_start, "equity_reported": True, "updated_at": st.updated_at,
           "positions": [{"symbol": p.symbol, "exchange": p.exchange, "side": p.side.name, "quantity": p.quantity,
                          "mark_price": p.mark_price} for p in st.positions.values()],
           "pending_orders": [{"symbol": o.symbol, "exchange": o.exchange, "side": o.side.name, "quantity": o.quantity,
                               "price": o.price, "filled": o.filled, "status": o.status.name, "reducing": o.reducing,
                               "unreconciled": o.unreconciled} for o in st.orders.values()]}

    live, stored = figures_of_state(st), figures_of_row(row, st.day_start)

    assert live == stored
    # gross: BTC 110 (the closing sell leaves less), ETH 80, SOL 30 pending; net: 110 - 50 - 80 + 30
    assert live is not None and (live.gross_notional, live.net_notional, live.daily_pnl) == (220.0, 10.0, -500.0)
    yesterday = figures_of_row(row, st.day_start + 86_400)  # an idle trader's row from an earlier day: no loss today
    assert yesterday is not None and yesterday.daily_pnl == 0.0


def test_gross_takes_the_worse_of_the_pending_buys_or_sells_filling_on_each_venue() -> None:
    v = ("BTC", "binance")
    assert exposure({v: 1_000.0}, {v: (0.0, 1_000.0)}) == (1_000.0, 0.0)  # a close adds nothing
    assert exposure({v: 1_000.0}, {v: (0.0, 3_000.0)}) == (2_000.0, -2_000.0)  # a flip counts what it opens
    assert exposure({v: -500.0}, {v: (200.0, 300.0)}) == (800.0, -600.0)
    assert exposure({}, {v: (100.0, 50.0)}) == (100.0, 50.0)


# ---- properties -------------------------------------------------------------------------------------

money = st.floats(min_value=1.0, max_value=1e7, allow_nan=False)
notional = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)
traders = st.lists(st.tuples(money, money, notional, notional), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(traders)
def test_the_account_loss_is_between_the_best_and_worst_trader_loss(ts: list[tuple[float, ...]]) -> None:
    a = aggregate(fig(str(i), e, s, lo, sh) for i, (e, s, lo, sh) in enumerate(ts))
    losses = [daily_loss_pct(e - s, s) for e, s, _lo, _sh in ts]

    assert 0.0 <= a.daily_loss_pct <= max(losses) + 1e-9
    assert a.gross_notional == pytest.approx(sum(lo + sh for *_x, lo, sh in ts))
    assert abs(a.net_notional) <= a.gross_notional * (1 + 1e-12)


venues = st.dictionaries(st.sampled_from([("A", ""), ("B", ""), ("B", "x"), ("C", "y")]),
                         st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
pendings = st.dictionaries(st.sampled_from([("A", ""), ("B", "x"), ("D", "")]),
                           st.tuples(notional, notional))


@settings(max_examples=150, deadline=None)
@given(venues, pendings)
def test_gross_covers_every_fill_outcome_and_net_is_never_beyond_gross(
    positions: dict[tuple[str, str], float], pending: dict[tuple[str, str], tuple[float, float]]
) -> None:
    gross, net = exposure(positions, pending)
    every = set(positions) | set(pending)
    for buys_fill in (False, True):
        for sells_fill in (False, True):
            after = sum(abs(positions.get(v, 0.0) + (pending.get(v, (0, 0))[0] if buys_fill else 0.0)
                            - (pending.get(v, (0, 0))[1] if sells_fill else 0.0)) for v in every)
            assert after <= gross * (1 + 1e-9) + 1e-6
    assert abs(net) <= gross * (1 + 1e-9) + 1e-6


@settings(max_examples=100, deadline=None)
@given(traders, notional, st.booleans(), st.floats(min_value=1.0, max_value=1e8))
def test_an_order_is_denied_by_gross_exactly_when_gross_after_exceeds_the_limit(
    ts: list[tuple[float, ...]], adding: float, buy: bool, cap: float
) -> None:
    a = aggregate(fig(str(i), e, s, lo, sh) for i, (e, s, lo, sh) in enumerate(ts))
    check = evaluate(a, 0.0, Limits(account_max_gross_exposure=cap), 0.0,
                     OrderEffect(adding, adding if buy else -adding)).checks[0]

    assert (check.status is FAIL) == (adding > 0.0 and a.gross_notional + adding > cap)
    if check.status is FAIL:  # never an order that adds nothing
        assert adding > 0.0


@settings(max_examples=100, deadline=None)
@given(traders, st.floats(min_value=0.1, max_value=100.0))
def test_a_breach_fails_the_check_and_is_reported_exactly_when_the_value_reaches_the_limit(
    ts: list[tuple[float, ...]], cap: float
) -> None:
    a = aggregate(fig(str(i), e, s, lo, sh) for i, (e, s, lo, sh) in enumerate(ts))
    peak = a.equity * 1.1
    verdict = evaluate(a, peak, Limits(account_daily_loss_percentage=cap, account_max_drawdown_percentage=cap), 0.0)
    loss, dd = verdict.checks

    assert (loss.status is FAIL) == (a.daily_loss_pct >= cap) == (DAILY_LOSS in {b.rule for b in verdict.breaches})
    assert (dd.status is FAIL) == (drawdown_pct(a.equity, peak) >= cap)
    assert math.isfinite(loss.value) and math.isfinite(dd.value)


# ---- the engine hook and the view (single-sidecar mode) ---------------------------------------------

LIMITED = Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None, account_daily_loss_percentage=5.0,
                 account_max_gross_exposure=10_000.0)


@pytest.fixture
def engine(clock: ManualClock) -> RiskEngine:
    engine = RiskEngine(clock, defaults=Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None),
                        listeners=[])
    engine.set_account_limits("acct", LIMITED)
    return engine


def attach(engine: RiskEngine) -> tuple[AccountView, LocalAccountPauser]:
    """The view wired as the sidecar wires it: the hook and the listener."""
    pauser = LocalAccountPauser(engine)
    view = AccountView(engine, pauser)
    engine.account_checks = view.checks
    engine._listeners.append(view.on_state_changed)  # type: ignore[attr-defined]
    return view, pauser


def test_limits_know_whether_any_account_limit_is_set() -> None:
    assert not Limits().account_limited
    assert Limits(account_max_net_exposure=1.0).account_limited
    assert Limits().with_changes(account_daily_loss_percentage=1.0).account_limited


def test_without_the_hook_no_account_check_is_shown(engine: RiskEngine) -> None:
    engine.report_equity("t1", "acct", 10_000.0, None)

    decision, _ = engine.can_trade("t1", "acct", None)

    assert decision.allowed and not [c for c in decision.checks if c.code is DecisionCode.ACCOUNT_LIMIT]


async def test_every_cantrade_of_a_limited_account_shows_the_account_checks_with_numbers(engine: RiskEngine) -> None:
    attach(engine)
    engine.report_equity("t1", "acct", 10_000.0, None)
    engine.report_equity("t2", "other", 10_000.0, None)

    decision, _ = engine.can_trade("t1", "acct", None)
    unlimited, _ = engine.can_trade("t2", "other", None)

    shown = by_name(decision.checks)
    assert decision.allowed and set(shown) >= {DAILY_LOSS, GROSS}
    assert shown[DAILY_LOSS].value == 0.0 and shown[DAILY_LOSS].limit == 5.0
    assert "view 0.0s old" in shown[GROSS].detail
    assert not [c for c in unlimited.checks if c.code is DecisionCode.ACCOUNT_LIMIT]


async def test_an_order_taking_gross_exposure_beyond_the_limit_is_denied_account_limit(engine: RiskEngine) -> None:
    attach(engine)
    engine.report_equity("t1", "acct", 10_000.0, None)
    engine.report_equity("t2", "acct", 10_000.0, None)
    engine.report_positions("t2", "acct", [Position("BTC", Side.BUY, 0.1, 60_000.0, 60_000.0)])  # 6,000

    small, _ = engine.can_trade("t1", "acct", OrderIntent("ETH", Side.SELL, 1.0, 3_000.0))  # -> 9,000 (pending)
    big, _ = engine.can_trade("t1", "acct", OrderIntent("ETH", Side.BUY, 1.0, 1_500.0))  # 9,000 + 1,500

    assert small.allowed, small.reason
    assert not big.allowed and big.code is DecisionCode.ACCOUNT_LIMIT
    assert "account gross exposure after the order 10500.00" in big.reason


async def test_a_daily_loss_breach_pauses_every_trader_of_the_account_once_per_episode(
    engine: RiskEngine, clock: ManualClock
) -> None:
    view, pauser = attach(engine)
    for tid in ("t1", "t2", "t3"):
        engine.report_equity(tid, "acct", 10_000.0, None)
    engine.report_equity("t1", "acct", 9_400.0, None)  # -600
    engine.report_equity("t2", "acct", 9_500.0, None)  # -500: 1,100 of 30,000 = 3.7%
    await view.refresh()
    assert pauser.calls == []
    engine.report_equity("t3", "acct", 9_500.0, None)  # 1,600 of 30,000 = 5.3%

    await view.refresh()
    await view.refresh()
    await asyncio.sleep(0)

    assert len(pauser.calls) == 1
    account, state, until, reason, _actor = pauser.calls[0]
    assert (account, state, until) == ("acct", TradingState.HALTED, None)
    assert "account daily loss 5.33%" in reason
    for tid in ("t1", "t2", "t3"):
        decision, _ = engine.can_trade(tid, "acct", None)
        assert not decision.allowed and decision.trading_state is TradingState.HALTED
    engine.resume("t1", "acct")  # resumed while the account is still over: denied by the check, not paused again
    decision, _ = engine.can_trade("t1", "acct", OrderIntent("BTC", Side.BUY, 0.01, 100.0))
    await view.refresh()
    await asyncio.sleep(0)
    assert not decision.allowed and decision.code is DecisionCode.ACCOUNT_LIMIT
    assert len(pauser.calls) == 1
    engine.report_equity("t1", "acct", 10_000.0, None)  # back under: the episode ends; a new breach pauses again
    await view.refresh()
    engine.report_equity("t1", "acct", 9_000.0, None)
    await view.refresh()
    await asyncio.sleep(0)
    assert len(pauser.calls) == 2


async def test_the_drawdown_peak_is_the_highest_summed_equity_seen(engine: RiskEngine) -> None:
    engine.set_account_limits("acct", Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None,
                                             account_max_drawdown_percentage=10.0))
    view, _ = attach(engine)
    engine.report_equity("t1", "acct", 10_000.0, None)
    engine.report_equity("t2", "acct", 10_000.0, None)
    await view.refresh()
    engine.report_equity("t1", "acct", 12_000.0, None)  # peak 22,000
    engine.can_trade("t1", "acct", None)
    engine.report_equity("t1", "acct", 9_700.0, None)  # 19,700: 10.45% below 22,000

    decision, _ = engine.can_trade("t2", "acct", None)

    dd = by_name(decision.checks)[DRAWDOWN]
    assert (dd.status, round(dd.value, 2)) == (FAIL, 10.45) and "peak 22000.00" in dd.detail


async def test_a_local_trader_idle_since_yesterday_has_no_loss_today(engine: RiskEngine, clock: ManualClock) -> None:
    attach(engine)
    engine.report_equity("t1", "acct", 10_000.0, None)
    engine.report_equity("t1", "acct", 9_800.0, None)  # -2% yesterday
    clock.advance(86_400.0)
    engine.report_equity("t2", "acct", 10_000.0, None)

    decision, _ = engine.can_trade("t2", "acct", None)

    loss = by_name(decision.checks)[DAILY_LOSS]
    assert (loss.value, loss.status) == (0.0, PASS) and "2 traders" in loss.detail


def test_a_breach_seen_without_an_event_loop_still_denies_and_pauses_at_the_next_round(engine: RiskEngine) -> None:
    view, pauser = attach(engine)
    engine.report_equity("t1", "acct", 10_000.0, None)
    engine.report_equity("t1", "acct", 9_000.0, None)

    decision, _ = engine.can_trade("t1", "acct", None)  # synchronous: nothing to pause on, the call still answers
    assert not decision.allowed and decision.code is DecisionCode.ACCOUNT_LIMIT

    async def round_() -> None:
        await view.refresh()
        await asyncio.sleep(0)

    asyncio.run(round_())
    assert len(pauser.calls) == 1
