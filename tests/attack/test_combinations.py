"""Combinations of features that each feature's own tests never tried, through the public API only.

Each test is one combination a careless bot, a hostile bot or an operator in an incident would produce, and
asserts the answer README.md prescribes for it. The worst failure is a wrong "allowed", then an untrue record,
then a crash (INTERNAL / UNKNOWN). In-process sidecars on port 0 (a ManualClock where time matters), real
PostgreSQL behind a TCP proxy where the database must be cut, and `tradeguard serve` subprocesses for signals.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar, spawn_sidecar
from tests.support.wait import eventually, eventually_sync
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "acct-1"}
T0 = 1_767_225_600.0 + 12 * 3600  # 2026-01-01T12:00:00Z
ADMIN = "admin-token-0123456789abcdef"
BOT1 = "bot-1-token-0123456789abcdef"
BOT2 = "bot-2-token-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING


def order(side: int = t.SIDE_BUY, qty: float = 0.01, price: float = 50_000.0, symbol: str = "BTCUSDT",
          exchange: str = "binance", **kw: Any) -> t.OrderIntent:
    return t.OrderIntent(symbol=symbol, exchange=exchange, side=side, quantity=qty, price=price, **kw)


def pos(side: int = t.SIDE_BUY, qty: float = 1.0, mark: float = 50_000.0, symbol: str = "BTCUSDT",
        exchange: str = "binance") -> t.Position:
    return t.Position(symbol=symbol, exchange=exchange, side=side, quantity=qty, entry_price=mark, mark_price=mark)


def ts(epoch: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(epoch * 1e9))
    return stamp


def breaker(**fields: Any) -> t.CircuitBreaker:
    fields.setdefault("account_id", "acct-1")
    fields.setdefault("enabled", True)
    return json_format.ParseDict(fields, t.CircuitBreaker())


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


class Api:
    """The two stubs on one channel, with short helpers for the calls every test makes."""

    def __init__(self, ch: grpc.aio.Channel, admin_md: Any = None, bot_md: Any = None) -> None:
        self.risk = rsg.RiskServiceStub(ch)
        self.admin = adg.AdminServiceStub(ch)
        self.ch = ch
        self.amd = admin_md
        self.bmd = bot_md

    async def equity(self, value: float, at: float | None = None, **ids: str) -> rs.ReportEquityResponse:
        req = rs.ReportEquityRequest(**(ids or IDS), equity=value)
        if at is not None:
            req.observed_at.CopyFrom(ts(at))
        return await self.risk.ReportEquity(req, timeout=10, metadata=self.bmd)

    async def can(self, o: t.OrderIntent | None = None, **ids: str) -> rs.CanTradeResponse:
        return await self.risk.CanTrade(rs.CanTradeRequest(**(ids or IDS), order=o), timeout=10, metadata=self.bmd)

    async def positions(self, *ps: t.Position) -> rs.ReportPositionsResponse:
        return await self.risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=ps), timeout=10,
                                               metadata=self.bmd)

    async def trade(self, trade_id: str, pnl: float, at: float | None = None) -> rs.ReportTradeResponse:
        req = rs.ReportTradeRequest(**IDS, trade_id=trade_id, symbol="BTCUSDT", exchange="binance",
                                    side=t.SIDE_SELL, realized_pnl=pnl)
        if at is not None:
            req.closed_at.CopyFrom(ts(at))
        return await self.risk.ReportTrade(req, timeout=10, metadata=self.bmd)

    async def pause(self, state: int, seconds: float | None = None, reason: str = "incident") -> Any:
        req = ad.PauseTradingRequest(**IDS, trading_state=state, reason=reason)
        if seconds is not None:
            req.duration.CopyFrom(duration_pb2.Duration(seconds=int(seconds)))
        return await self.admin.PauseTrading(req, timeout=20, metadata=self.amd)

    async def resume(self) -> Any:
        return await self.admin.ResumeTrading(ad.ResumeTradingRequest(**IDS), timeout=20, metadata=self.amd)

    async def enforce(self, on: bool) -> Any:
        return await self.admin.SetFeatureFlags(
            ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=on)), timeout=20,
            metadata=self.amd)

    async def config(self, **fields: Any) -> Any:
        cfg = t.RiskConfiguration(account_id="acct-1", config_id=fields.pop("config_id", "c1"), is_active=True,
                                  **fields)
        return await self.admin.SaveConfig(ad.SaveConfigRequest(config=cfg), timeout=20, metadata=self.amd)

    async def state(self) -> t.RiskState:
        return (await self.risk.GetRiskState(rs.GetRiskStateRequest(**IDS), timeout=10, metadata=self.bmd)).state


@contextlib.asynccontextmanager
async def sidecar(clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[tuple[Sidecar, Api]]:
    async with running_sidecar(clock=clock, **overrides) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        yield sc, Api(ch)


# ---- CanTrade retries (same client_order_id) across pauses, flips, shadow toggles, spellings --------------


async def test_a_retry_of_an_allowed_order_after_a_kill_switch_is_denied() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        first = await api.can(order(client_order_id="o-1"))
        await api.pause(t.TRADING_STATE_HALTED)
        retry = await api.can(order(client_order_id="o-1"))
    assert first.allowed
    assert not retry.allowed and retry.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_retry_of_a_shadow_allowed_order_is_denied_once_enforcement_is_back() -> None:
    """In shadow mode a kill-switched order is answered allowed (would_deny); the same client_order_id retried
    after enforcement is switched on must not replay that shadow "allowed"."""
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        await api.enforce(False)
        shadow = await api.can(order(client_order_id="o-1"))
        await api.enforce(True)
        retry = await api.can(order(client_order_id="o-1"))
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_KILL_SWITCH
    assert not retry.allowed and retry.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_retry_of_a_loss_limit_shadow_allow_is_denied_once_enforcement_is_back() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.enforce(False)
        await api.equity(9_400)
        shadow = await api.can(order(client_order_id="o-1"))
        await api.enforce(True)
        retry = await api.can(order(client_order_id="o-1"))
    assert shadow.allowed and shadow.would_deny
    assert not retry.allowed and retry.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_a_retry_spelled_in_lower_case_is_the_same_order_and_not_counted_twice() -> None:
    """Throttle 1 order per minute: BTCUSDT/binance allowed as o-1; the retry spelled btcusdt/Binance is the same
    (normalized) order, so it answers the first decision; a new order is the second one and is denied."""
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_orders_per_window=1, order_rate_window_seconds=60)
        await api.equity(10_000)
        first = await api.can(order(client_order_id="o-1"))
        retry = await api.can(order(symbol="btcusdt", exchange="Binance", client_order_id="o-1"))
        other = await api.can(order(client_order_id="o-2"))
    assert first.allowed
    assert retry.allowed and retry.client_order_id == "o-1"
    assert not other.allowed and other.code == t.DECISION_CODE_ORDER_RATE_LIMIT


async def test_a_retried_reducing_order_is_denied_once_the_position_it_reduced_is_gone() -> None:
    """REDUCING, long 1 BTC: SELL 1 as o-1 is allowed (reduces). The position is closed (reported flat); o-1
    retried would now open a short 1 BTC while REDUCING: denied, not the remembered allow."""
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        await api.equity(9_400)
        first = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
        await api.positions()
        retry = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
    assert first.allowed
    assert not retry.allowed and retry.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_a_retry_with_a_bigger_quantity_under_the_same_id_is_invalid_argument() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.can(order(client_order_id="o-1"))
        code = await status_of(api.can(order(qty=10.0, client_order_id="o-1")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retry_after_the_throttle_filled_answers_the_first_decision_and_a_new_id_is_denied() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_orders_per_window=2, order_rate_window_seconds=60)
        await api.equity(10_000)
        a = await api.can(order(client_order_id="a"))
        b = await api.can(order(client_order_id="b"))
        retries = [await api.can(order(client_order_id=cid)) for cid in ("a", "b", "a", "b")]
        c = await api.can(order(client_order_id="c"))
    assert a.allowed and b.allowed and all(r.allowed for r in retries)
    assert not c.allowed and c.code == t.DECISION_CODE_ORDER_RATE_LIMIT


# ---- overlapping kill switches from two operators ---------------------------------------------------------


async def test_halted_until_resumed_survives_a_shorter_reducing_pause_from_a_second_operator() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        await api.pause(t.TRADING_STATE_REDUCING, seconds=2)
        clock.advance(3)
        after = await api.can(order())
    assert not after.allowed and after.trading_state == t.TRADING_STATE_HALTED


async def test_a_longer_reducing_pause_outlives_a_shorter_halt() -> None:
    """Operator A: HALTED for 60 s; operator B: REDUCING until resumed. After 60 s: REDUCING (B's pause), not
    ACTIVE; a reducing order passes, a new-exposure order does not."""
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        await api.pause(t.TRADING_STATE_HALTED, seconds=60)
        await api.pause(t.TRADING_STATE_REDUCING)
        during = await api.can(order(t.SIDE_SELL, qty=0.5))
        clock.advance(61)
        adding = await api.can(order())
        reducing = await api.can(order(t.SIDE_SELL, qty=0.5))
    assert not during.allowed and during.trading_state == t.TRADING_STATE_HALTED
    assert not adding.allowed and adding.trading_state == t.TRADING_STATE_REDUCING
    assert reducing.allowed


async def test_two_timed_halts_each_end_at_their_own_time_and_one_resume_lifts_both() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED, seconds=60, reason="A")
        await api.pause(t.TRADING_STATE_HALTED, seconds=30, reason="B")
        clock.advance(31)
        after_b = await api.can(order())
        clock.advance(30)
        after_a = await api.can(order())
        await api.pause(t.TRADING_STATE_HALTED, seconds=60, reason="A")
        await api.pause(t.TRADING_STATE_REDUCING, reason="B")
        await api.resume()
        resumed = await api.can(order())
    assert not after_b.allowed and after_b.trading_state == t.TRADING_STATE_HALTED
    assert after_a.allowed
    assert resumed.allowed and resumed.trading_state == t.TRADING_STATE_ACTIVE


async def test_a_resume_racing_a_pause_leaves_a_state_that_matches_the_last_call() -> None:
    """Two operators: one pauses, one resumes, 20 times at once. Whatever the interleaving, the state the
    sidecar reports afterwards agrees with CanTrade's answer (never ACTIVE in state but denied, or the reverse)."""
    import asyncio

    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        for _ in range(20):
            await asyncio.gather(api.pause(t.TRADING_STATE_HALTED), api.resume())
        state = await api.state()
        decision = await api.can(order())
    assert decision.allowed == (state.trading_state == t.TRADING_STATE_ACTIVE)


# ---- shadow mode around breakers, pauses --------------------------------------------------------------------


async def test_a_breaker_that_fired_in_shadow_denies_at_once_when_enforcement_returns() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="floor", condition="equity_floor", action="pause_trading", parameters={"value": 9_000})))
        await api.equity(10_000)
        await api.enforce(False)
        await api.equity(8_700)
        shadow = await api.can(order())
        await api.enforce(True)
        enforced = await api.can(order())
        await api.equity(8_650)
        still = await api.can(order())
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert not enforced.allowed and enforced.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert not still.allowed


async def test_shadow_mode_toggled_during_a_kill_switch_reports_the_kill_switch_as_would_deny() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.enforce(False)
        await api.pause(t.TRADING_STATE_HALTED)
        shadow = await api.can(order(t.SIDE_SELL))
        await api.enforce(True)
        enforced = await api.can(order(t.SIDE_SELL))
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_KILL_SWITCH
    assert shadow.reason.startswith("SHADOW (not enforced), would deny:")
    assert not enforced.allowed


# ---- timestamps near the skew bound and period boundaries ---------------------------------------------------


async def test_an_observed_at_exactly_at_the_skew_bound_is_now_and_does_not_blind_the_next_report() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        edge = await api.equity(10_000, at=T0 + 5.0)
        beyond = await status_of(api.equity(10_000, at=T0 + 5.001))
        clock.advance(0.5)
        crash = await api.equity(5_000)
        decision = await api.can(order())
    assert not edge.stale
    assert beyond == grpc.StatusCode.INVALID_ARGUMENT
    assert not crash.stale and crash.state.current_equity == 5_000
    assert not decision.allowed


async def test_a_report_a_few_seconds_ahead_just_before_midnight_stays_in_its_day() -> None:
    """23:59:58 with observed_at 00:00:02 (within the 5 s tolerance, so 'now'): not a new day. At 00:00:10 a
    -6 % report against the new day's start is judged against the new day, and the old day's loss does not
    pause the trader twice."""
    midnight = 1_767_225_600.0 + 86_400  # 2026-01-02T00:00:00Z
    clock = ManualClock(midnight - 2)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000, at=midnight - 100)
        near = await api.equity(9_800, at=midnight + 2)
        clock.set(midnight + 10)
        new_day = await api.equity(9_700)
    assert near.state.day_start_equity == 10_000 and not near.stale
    assert new_day.state.day_start_equity in (9_800, 9_700)


async def test_a_loss_across_month_end_is_measured_against_the_new_month() -> None:
    jan31 = 1_767_225_600.0 + 30 * 86_400  # 2026-01-31T00:00:00Z
    clock = ManualClock(jan31 + 86_399)
    async with sidecar(clock, monthly_max_drawdown_percentage=5.0) as (_sc, api):
        await api.equity(10_000)
        clock.advance(2)  # 2026-02-01T00:00:01Z
        feb = await api.equity(9_600)
        decision = await api.can(order())
    assert feb.state.month_start_equity == 10_000 or feb.state.month_start_equity == 9_600
    assert decision.allowed  # -4 % at most: below both the 5 % daily and monthly limits


async def test_a_back_dated_report_from_before_midnight_does_not_change_the_current_day() -> None:
    midnight = 1_767_225_600.0 + 86_400
    clock = ManualClock(midnight + 60)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        late = await api.equity(9_000, at=midnight - 60)
        decision = await api.can(order())
    assert late.stale and late.state.current_equity == 10_000
    assert decision.allowed


async def test_a_far_past_timestamp_is_stale_or_invalid_never_a_crash() -> None:
    """1970-01-01T00:00:01 is stale (older than the last report); year 1 is out of range. (Exactly the epoch,
    seconds = nanos = 0, is read as "unset = now": the stricter reading, a report judged as current.)"""
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        codes = [await status_of(api.equity(1.0, at=at)) for at in (1.0, -62_135_596_800.0)]
        decision = await api.can(order())
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT]
    assert decision.allowed and decision.state.current_equity == 10_000


# ---- zero, tiny and huge sizes ------------------------------------------------------------------------------


async def test_a_tiny_equity_loses_by_fractions_like_any_other() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(1e-9)
        drop = await api.equity(0.9e-9)
        decision = await api.can(order(qty=1e-12, price=1.0))
    assert drop.state.trading_state == t.TRADING_STATE_REDUCING
    assert not decision.allowed


async def test_an_order_against_zero_equity_is_denied() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_position_size_percentage=10.0)
        await api.equity(0.0)
        decision = await api.can(order())
    assert not decision.allowed


async def test_huge_sizes_are_checked_not_crashed() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_position_size_percentage=10.0, max_order_notional=1e12)
        await api.equity(1e15)
        huge = await api.can(order(qty=1e15, price=1e15))
        fits = await api.can(order(qty=1.0, price=1e11))
        flat_huge = await status_of(api.positions(pos(qty=1e15, mark=1e15)))
    assert not huge.allowed
    assert fits.allowed
    assert flat_huge in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)


# ---- orders larger than positions, reduce_only while flat, two venues, spellings ---------------------------


async def test_reducing_a_flip_is_denied_and_an_exact_close_spelled_differently_passes() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0, symbol="btcusdt", exchange="Binance"))
        await api.equity(9_400)
        flip = await api.can(order(t.SIDE_SELL, qty=1.1, price=45_000))
        close = await api.can(order(t.SIDE_SELL, qty=1.0, symbol="BtcUsdt", exchange="BINANCE"))
    assert not flip.allowed
    assert close.allowed


async def test_reduce_only_while_flat_in_reducing_state_is_denied() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.equity(9_400)
        decision = await api.can(order(t.SIDE_SELL, qty=0.001, reduce_only=True))
    assert not decision.allowed


async def test_a_sell_on_another_venue_or_without_venue_does_not_reduce_a_two_venue_position() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0), pos(qty=1.0, exchange="okx"))
        await api.equity(9_400)
        other_venue = await api.can(order(t.SIDE_SELL, qty=0.5, exchange="kraken"))
        no_venue = await api.can(order(t.SIDE_SELL, qty=0.5, exchange=""))
        own_venue = await api.can(order(t.SIDE_SELL, qty=0.5, exchange="okx"))
    assert not other_venue.allowed
    assert not no_venue.allowed
    assert own_venue.allowed


async def test_a_symbol_override_in_lower_case_applies_to_upper_case_orders() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(symbol_configs=[t.SymbolRiskConfiguration(symbol="btcusdt", max_leverage=2)])
        await api.equity(10_000)
        decision = await api.can(order(leverage=3))
    assert not decision.allowed and decision.code == t.DECISION_CODE_LEVERAGE_LIMIT


async def test_a_breaker_scoped_to_Binance_fires_for_orders_on_binance() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="rate", condition="order_rate", action="pause_trading",
            parameters={"max_orders": 2, "window_seconds": 60}, exchanges=["Binance"], symbols=["btcusdt"])))
        await api.equity(10_000)
        answers = [await api.can(order(exchange=ex)) for ex in ("binance", "BINANCE", "Binance")]
    assert [a.allowed for a in answers] == [True, True, False]


# ---- database down at start: kill switch, flags, configs, trades while not loaded; then it returns ---------


@contextlib.asynccontextmanager
async def on_db(url: str, clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[tuple[Sidecar, Api]]:
    overrides.setdefault("kill_switch_store_timeout_s", 0.3)
    overrides.setdefault("store_call_timeout_s", 2.0)
    async with sidecar(clock, database_url=url, enable_persistence=True, **overrides) as pair:
        yield pair


@contextlib.asynccontextmanager
async def down_at_start(url: str, clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[
        tuple[Sidecar, Api, FaultProxy]]:
    proxy = await FaultProxy().start()
    proxy.cut()
    try:
        async with on_db(proxy.url_for(url), clock, **overrides) as (sc, api):
            yield sc, api, proxy
    finally:
        await proxy.close()


async def loaded(api: Api, timeout: float = 30.0) -> None:
    watch = health_pb2_grpc.HealthStub(api.ch).Watch(health_pb2.HealthCheckRequest(service="tradeguard.state"),
                                                     timeout=timeout)
    async for update in watch:
        if update.status == SERVING:
            break
    watch.cancel()


async def test_a_reduce_allowed_while_not_loaded_is_denied_on_retry_once_a_stored_halt_is_loaded(
        pg_url: str) -> None:
    """Stored: HALTED until resumed. Started with the database down, the bot reports long 1 BTC and asks to sell it
    (o-1): reduce_only policy lets a reducing order pass. The database returns: the stored HALT is in force, so
    the retry of o-1 and any new reducing order are denied."""
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        early = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
        adding = await api.can(order(client_order_id="o-2"))
        proxy.restore()
        await loaded(api)
        retry = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
        fresh = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-3"))
    assert early.allowed and "STATE_NOT_LOADED" in early.reason
    assert not adding.allowed and adding.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert not retry.allowed and retry.code == t.DECISION_CODE_KILL_SWITCH
    assert not fresh.allowed and fresh.trading_state == t.TRADING_STATE_HALTED


async def test_a_kill_switch_and_a_resume_from_two_operators_while_not_loaded_replay_in_order(
        pg_url: str) -> None:
    """Stored: REDUCING after a loss. While the database is down at start operator A halts, then operator B
    resumes; then A halts again for 10 minutes. Replayed on the stored state, in order: HALTED (the resume lifted
    the stored pause and A's first; A's second is in force)."""
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.equity(9_400)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.pause(t.TRADING_STATE_HALTED, reason="A")
        await api.resume()
        await api.pause(t.TRADING_STATE_HALTED, seconds=600, reason="A again")
        proxy.restore()
        await loaded(api)
        after = await api.can(order(t.SIDE_SELL))
        assert await sc.store.flush(timeout=20)
    async with on_db(pg_url) as (sc, api):
        restarted = await api.can(order(t.SIDE_SELL))
    assert not after.allowed and after.trading_state == t.TRADING_STATE_HALTED
    assert after.code == t.DECISION_CODE_KILL_SWITCH
    assert not restarted.allowed and restarted.trading_state == t.TRADING_STATE_HALTED


async def test_a_resume_while_not_loaded_lifts_the_stored_pause_once_loaded(pg_url: str) -> None:
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.resume()
        proxy.restore()
        await loaded(api)
        after = await api.can(order())
    assert after.allowed and after.trading_state == t.TRADING_STATE_ACTIVE


async def test_shadow_mode_set_while_not_loaded_is_stored_when_the_database_returns_even_with_a_prompt_stop(
        pg_url: str) -> None:
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        call = api.admin.SetFeatureFlags(
            ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)), timeout=20)
        await call
        trailing = dict(await call.trailing_metadata() or ())
        await api.equity(10_000)
        unloaded_shadow = await api.can(order())
        proxy.restore()
        await loaded(api)
        flags = (await api.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), timeout=10)).flags
        loaded_shadow = await api.can(order())
        assert await sc.store.flush(timeout=20)
    async with on_db(pg_url) as (sc, api):
        flags_after_restart = (await api.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), timeout=10)).flags
        enforced_again = await api.can(order())
    assert trailing.get("tradeguard-flags-stored") == "false"
    assert unloaded_shadow.allowed and unloaded_shadow.would_deny
    assert not flags.enable_risk_enforcement
    assert loaded_shadow.allowed and loaded_shadow.would_deny and loaded_shadow.code == t.DECISION_CODE_KILL_SWITCH
    assert not flags_after_restart.enable_risk_enforcement
    assert enforced_again.allowed and enforced_again.would_deny


async def test_a_config_saved_while_not_loaded_is_either_in_force_or_told_not_saved(pg_url: str) -> None:
    """SaveConfig while the database is down at start: if the answer is an error saying it was not saved, the
    configuration must not appear once the database returns; if the answer is OK, it must be in force."""
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        try:
            await api.config(config_id="tight", daily_max_drawdown_percentage=1.0)
            saved: bool | None = True
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
            saved = None if "may or may not" in (err.details() or "") else False
        proxy.restore()
        await loaded(api)
        listed = (await api.admin.ListConfigs(ad.ListConfigsRequest(account_id="acct-1"), timeout=10)).configs
        await api.equity(9_850)
        decision = await api.can(order())
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    assert saved is not None
    if saved is True:
        assert [c.config_id for c in listed] == ["tight"] and not decision.allowed
    elif saved is False:
        assert list(listed) == [] and decision.allowed


async def test_a_trade_retried_while_not_loaded_counts_once_against_the_stored_streak(pg_url: str) -> None:
    async with on_db(pg_url) as (sc, api):
        await api.config(consecutive_loss_threshold=3, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -10)
        await api.trade("t-2", -10)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        dup = await api.trade("t-2", -10)
        proxy.restore()
        await loaded(api)
        state = await api.state()
        decision = await api.can(order())
    assert state.consecutive_losses == 2, dup
    assert decision.allowed


async def test_a_stored_streak_plus_one_loss_reported_while_not_loaded_pauses_once_loaded(pg_url: str) -> None:
    async with on_db(pg_url) as (sc, api):
        await api.config(consecutive_loss_threshold=3, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -10)
        await api.trade("t-2", -10)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.trade("t-3", -10)
        proxy.restore()
        await loaded(api)
        decision = await api.can(order())
    assert not decision.allowed and decision.code == t.DECISION_CODE_CONSECUTIVE_LOSSES


# ---- credentials combined with the above ---------------------------------------------------------------------


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def write_credentials(tmp_path: Path) -> Path:
    for name, token in (("bot-1.token", BOT1), ("bot-2.token", BOT2)):
        (tmp_path / name).write_text(token + "\n")
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "credentials.toml"
    path.write_text(
        '[[credential]]\nname = "bot-1"\ntoken_file = "bot-1.token"\ntraders = ["bot-1"]\naccounts = ["acct-1"]\n\n'
        '[[credential]]\nname = "bot-2"\ntoken_file = "bot-2.token"\ntraders = ["bot-2"]\naccounts = ["acct-2"]\n')
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def guarded(tmp_path: Path, clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[
        tuple[Sidecar, Api, Api, Api]]:
    """A sidecar with an admin token and per-bot credentials: (sidecar, operator, bot-1, bot-2)."""
    async with running_sidecar(clock=clock, admin_token=ADMIN, credentials_file=str(write_credentials(tmp_path)),
                               **overrides) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        yield (sc, Api(ch, admin_md=bearer(ADMIN), bot_md=bearer(ADMIN)), Api(ch, admin_md=bearer(BOT1),
               bot_md=bearer(BOT1)), Api(ch, admin_md=bearer(BOT2), bot_md=bearer(BOT2)))


async def test_a_paused_bot_cannot_lift_its_own_pause_switch_to_shadow_or_loosen_its_limits(tmp_path: Path) -> None:
    async with guarded(tmp_path, ManualClock(T0)) as (_sc, op, bot1, _bot2):
        await bot1.equity(10_000)
        await op.pause(t.TRADING_STATE_HALTED)
        attempts = {
            "ResumeTrading": await status_of(bot1.resume()),
            "SetFeatureFlags": await status_of(bot1.enforce(False)),
            "SaveConfig": await status_of(bot1.config(daily_max_drawdown_percentage=90.0)),
            "PauseTrading": await status_of(bot1.pause(t.TRADING_STATE_REDUCING, seconds=1)),
            "RebindTrader": await status_of(bot1.admin.RebindTrader(
                ad.RebindTraderRequest(trader_id="bot-1", account_id="acct-1"), metadata=bot1.amd)),
            "no token": await status_of(Api(bot1.ch).resume()),
        }
        decision = await bot1.can(order(t.SIDE_SELL))
    assert attempts == {name: grpc.StatusCode.PERMISSION_DENIED for name in attempts} | {
        "no token": grpc.StatusCode.UNAUTHENTICATED}
    assert not decision.allowed and decision.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_halted_bot_cannot_carry_on_under_another_trader_id_or_spelling(tmp_path: Path) -> None:
    async with guarded(tmp_path, ManualClock(T0)) as (_sc, op, bot1, _bot2):
        await bot1.equity(10_000)
        await op.pause(t.TRADING_STATE_HALTED)
        codes = [await status_of(bot1.risk.ReportEquity(rs.ReportEquityRequest(
            trader_id=tid, account_id="acct-1", equity=10_000), metadata=bot1.bmd)) for tid in ("BOT-1", "bot-1b",
                                                                                            " bot-1", "bot-1\x00")]
    assert all(code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT) for code in codes), codes


async def test_one_bot_cannot_watch_report_for_or_retry_the_orders_of_another(tmp_path: Path) -> None:
    async with guarded(tmp_path, ManualClock(T0)) as (_sc, _op, bot1, bot2):
        await bot1.equity(10_000)
        mine = await bot1.can(order(client_order_id="o-1"))
        theirs = {
            "CanTrade": await status_of(bot2.can(order(client_order_id="o-1"), **IDS)),
            "ReportEquity": await status_of(bot2.equity(1.0, **IDS)),
            "GetRiskState": await status_of(bot2.state()),
            "ReportEquity other account": await status_of(bot1.equity(1.0, trader_id="bot-1", account_id="acct-2")),
        }
        watch = bot2.risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS), metadata=bot2.bmd, timeout=5)
        try:
            await watch.read()
            theirs["WatchRiskState"] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            theirs["WatchRiskState"] = err.code()
        state = await bot1.state()
    assert mine.allowed
    assert theirs == {name: grpc.StatusCode.PERMISSION_DENIED for name in theirs}
    assert state.current_equity == 10_000


async def test_a_bot_cannot_report_for_another_trader_while_the_stored_state_is_not_loaded(
        pg_url: str, tmp_path: Path) -> None:
    """With the database down at start the reports are kept for a replay: one of another bot's trader must be
    refused at once, not replayed onto the victim once the database returns."""
    creds = str(write_credentials(tmp_path))
    async with on_db(pg_url, admin_token=ADMIN, credentials_file=creds) as (sc, api):
        api.bmd = bearer(BOT1)
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url, admin_token=ADMIN, credentials_file=creds) as (sc, api, proxy):
        api.bmd = bearer(BOT2)
        forged = await status_of(api.equity(1.0))
        proxy.restore()
        await loaded(api)
        api.bmd = bearer(BOT1)
        state = await api.state()
    assert forged == grpc.StatusCode.PERMISSION_DENIED
    assert state.current_equity == 10_000 and state.trading_state == t.TRADING_STATE_ACTIVE


# ---- more operator combinations: pause requests that must not lift, accounts, loss pause under a kill switch ---


async def test_pause_trading_with_state_active_or_unset_never_lifts_a_pause() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        codes = [await status_of(api.pause(state)) for state in (t.TRADING_STATE_ACTIVE, t.TRADING_STATE_UNSPECIFIED,
                                                                  99)]
        negative = await status_of(api.admin.PauseTrading(ad.PauseTradingRequest(
            **IDS, trading_state=t.TRADING_STATE_REDUCING, duration=duration_pb2.Duration(seconds=-5)), timeout=10))
        decision = await api.can(order(t.SIDE_SELL))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert negative == grpc.StatusCode.INVALID_ARGUMENT
    assert not decision.allowed and decision.trading_state == t.TRADING_STATE_HALTED


async def test_a_kill_switch_or_resume_sent_with_the_wrong_account_changes_nothing_and_says_so() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        resume = await status_of(api.admin.ResumeTrading(ad.ResumeTradingRequest(trader_id="bot-1",
                                                                                 account_id="acct-2"), timeout=10))
        decision = await api.can(order())
    assert resume == grpc.StatusCode.INVALID_ARGUMENT
    assert not decision.allowed and decision.trading_state == t.TRADING_STATE_HALTED


async def test_a_kill_switch_pressed_before_the_bot_ever_reported_holds_when_it_starts() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.pause(t.TRADING_STATE_HALTED, reason="before the bot starts")
        await api.equity(10_000)
        decision = await api.can(order())
    assert not decision.allowed and decision.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_loss_pause_outlives_a_shorter_halt_and_a_resume_is_rechecked_on_the_next_report() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        await api.equity(9_400)  # REDUCING for 30 minutes
        await api.pause(t.TRADING_STATE_HALTED, seconds=60)
        clock.advance(61)
        after_halt = await api.can(order())
        await api.resume()
        resumed = await api.can(order())
        clock.advance(1)
        still_down = await api.equity(9_400)
        again = await api.can(order())
    assert not after_halt.allowed and after_halt.trading_state == t.TRADING_STATE_REDUCING
    assert resumed.allowed
    assert still_down.state.trading_state == t.TRADING_STATE_REDUCING
    assert not again.allowed and again.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_a_zero_minute_stop_in_shadow_holds_until_resumed_when_enforcement_returns_a_day_later() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.config(stop_trading_minutes=0, daily_max_drawdown_percentage=5.0)
        await api.equity(10_000)
        await api.enforce(False)
        await api.equity(9_400)
        shadow = await api.can(order())
        clock.advance(2 * 86_400)
        await api.enforce(True)
        await api.equity(9_400)  # a new day: no loss today
        later = await api.can(order())
    assert shadow.allowed and shadow.would_deny
    assert not later.allowed


async def test_a_trade_closed_at_the_skew_bound_counts_and_beyond_it_is_refused() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(consecutive_loss_threshold=2, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -1, at=T0 + 5.0)
        beyond = await status_of(api.trade("t-2", -1, at=T0 + 5.5))
        second = await api.trade("t-3", -1, at=T0 - 1)
        decision = await api.can(order())
    assert beyond == grpc.StatusCode.INVALID_ARGUMENT
    assert second.state.consecutive_losses == 2
    assert not decision.allowed and decision.code == t.DECISION_CODE_CONSECUTIVE_LOSSES


async def test_a_late_win_closed_before_the_losses_does_not_reset_the_streak() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(consecutive_loss_threshold=2, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -1, at=T0 - 60)
        await api.trade("t-2", -1, at=T0 - 30)
        late_win = await api.trade("t-0", +50, at=T0 - 3_600)
        decision = await api.can(order())
    assert late_win.state.consecutive_losses == 2
    assert not decision.allowed


async def test_a_duplicate_trade_id_with_a_different_pnl_is_counted_once() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(consecutive_loss_threshold=2, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -10)
        dup = await api.trade("t-1", +10)
        state = await api.state()
    assert dup.duplicate and state.consecutive_losses == 1


# ---- restarts (SIGTERM and SIGKILL) with a bot calling from the first moment the port answers ----------------


def _hammer(address: str, stop: Any, answers: list[tuple[bool, int, int]], token: str | None = None,
            report: bool = False) -> None:
    """A bot asking CanTrade in a tight loop from before the sidecar listens; records (allowed, code, state).
    With `report` it reports its equity (10,000) first on every connection, as a bot does at its start."""
    md = bearer(token) if token else None
    while not stop.is_set():
        with grpc.insecure_channel(address) as ch:
            stub = rsg.RiskServiceStub(ch)
            if report:
                try:
                    stub.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000), timeout=0.5, metadata=md)
                except grpc.RpcError:
                    continue
            while not stop.is_set():
                try:
                    d = stub.CanTrade(rs.CanTradeRequest(**IDS, order=order()), timeout=0.5, metadata=md)
                except grpc.RpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        answers.append((False, -int(err.code().value[0]), 0))
                    break
                answers.append((d.allowed, d.code, d.trading_state))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_kill_switch_and_a_breach_hold_for_a_bot_calling_from_the_first_moment_after_a_restart(
        tmp_path: Path, sig: int) -> None:
    """SQLite, the generated admin token. Before each restart: the operator halts the bot for a while, the bot
    breaches its daily limit; killed with `sig` right after the answers; restarted on the same port with a bot
    already calling. Every answer is a denial (never 'allowed' from a state without the stored pause), and the
    token generated at first start still works after the restart."""
    import threading

    from tests.support.databases import closed_port
    from tradeguard_client import AdminClient

    port = closed_port()
    address = f"127.0.0.1:{port}"
    answers: list[tuple[bool, int, int]] = []
    db = ("--database-url", f"sqlite:///{tmp_path / 'state.db'}")
    first = spawn_sidecar(tmp_path, "--listen", address, *db, open_admin=False, name="r0")
    token = (tmp_path / "admin.token").read_text().strip()
    assert (tmp_path / "admin.token").stat().st_mode & 0o077 == 0  # owner-only
    try:
        with grpc.insecure_channel(address) as ch:
            risk = rsg.RiskServiceStub(ch)
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000), timeout=5)
            risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_400), timeout=5)
            no_token = None
            try:
                adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(**IDS), timeout=5)
            except grpc.RpcError as err:
                no_token = err.code()
        with AdminClient(address, token=token) as admin:
            admin.pause_trading("bot-1", "acct-1", trading_state="HALTED", duration=3_600, reason="incident")
    finally:
        first.terminate(sig)
    stop = threading.Event()
    bot = threading.Thread(target=_hammer, args=(address, stop, answers), daemon=True)
    bot.start()
    try:
        second = spawn_sidecar(tmp_path, "--listen", address, *db, open_admin=False, name="r1")
        eventually_sync(lambda: sum(1 for a in answers if a[1] > 0) >= 50)
        token_after = (tmp_path / "admin.token").read_text().strip()
        with AdminClient(address, token=token_after) as admin:
            flags = admin.get_feature_flags()
    finally:
        stop.set()
        bot.join(timeout=5)
        second.terminate(signal.SIGTERM)
    answered = [a for a in answers if a[1] > 0]
    assert no_token == grpc.StatusCode.UNAUTHENTICATED
    assert token_after == token and flags is not None
    assert answered, "no CanTrade answered after the restart"
    assert [a for a in answers if a[0] or a[1] <= 0] == []
    assert {a[1] for a in answered} <= {t.DECISION_CODE_KILL_SWITCH, t.DECISION_CODE_STATE_NOT_LOADED}
    assert all(a[2] == t.TRADING_STATE_HALTED for a in answered)


# ---- the database slow at start (a table lock) with a bot calling from the first moment -----------------------


async def test_a_stored_halt_holds_while_a_table_lock_delays_the_load_and_after_it(pg_url: str) -> None:
    """Stored: HALTED. A session holds `LOCK TABLE risk_state` when the sidecar starts (store_call_timeout_s 1):
    it serves unloaded; a bot calling in a tight loop from before the start gets only denials; the lock is
    released, the stored halt is installed and the answers stay denials."""
    import asyncio
    import threading

    import psycopg

    from tests.support.databases import closed_port
    from tests.support.pg import plain_dsn

    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    address = f"127.0.0.1:{closed_port()}"
    answers: list[tuple[bool, int, int]] = []
    stop = threading.Event()
    bot = threading.Thread(target=_hammer, args=(address, stop, answers, None, True), daemon=True)
    lock = await psycopg.AsyncConnection.connect(plain_dsn(pg_url))
    await lock.execute("BEGIN")
    await lock.execute("LOCK TABLE risk_state IN ACCESS EXCLUSIVE MODE")
    bot.start()
    try:
        async with on_db(pg_url, listen=address, store_call_timeout_s=1.0) as (sc, api):
            before = sum(1 for a in answers if a[1] > 0)
            assert await eventually(lambda: sum(1 for a in answers if a[1] > 0) >= before + 20)
            unloaded = not sc.persistence.loaded
            await lock.execute("ROLLBACK")
            await loaded(api)
            seen = len(answers)
            assert await eventually(lambda: len(answers) >= seen + 20)
            stop.set()  # before the sidecar stops: calls cut by the shutdown are not this test's subject
            await asyncio.get_running_loop().run_in_executor(None, bot.join, 5)
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, bot.join, 5)
        await lock.close()
    answered = [a for a in answers if a[1] > 0]
    assert unloaded
    assert [a for a in answers if a[0] or a[1] <= 0] == []
    assert {a[1] for a in answered} == {t.DECISION_CODE_STATE_NOT_LOADED, t.DECISION_CODE_KILL_SWITCH}
    assert answered[-1][1] == t.DECISION_CODE_KILL_SWITCH and answered[-1][2] == t.TRADING_STATE_HALTED


# ---- spellings and venues in the exposure checks ---------------------------------------------------------------


async def test_correlated_exposure_and_volatility_read_positions_reported_in_another_spelling() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_correlated_exposure_percentage=10.0,
                         correlation_groups=[t.CorrelationGroup(name="majors", symbols=["btcusdt", "ETHusdt"])],
                         market_regime_thresholds={"high": 0.3, "extreme": 0.5})
        await api.equity(10_000)
        eth = t.Position(symbol="ethusdt", exchange="Binance", side=t.SIDE_BUY, quantity=0.3, entry_price=3_000,
                         mark_price=3_000)
        await api.positions(eth)
        correlated = await api.can(order(qty=0.003, price=50_000))  # 150 + 900 > 1,000
        fits = await api.can(order(qty=0.001, price=50_000))  # 50 + 900
        await api.positions(eth, t.Position(symbol="btcUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.0001,
                                            entry_price=50_000, mark_price=50_000, volatility=0.9))
        extreme = await api.can(order(symbol="BTCUSDT", qty=0.0001, price=50_000))
    assert not correlated.allowed and correlated.code == t.DECISION_CODE_CORRELATED_EXPOSURE_LIMIT
    assert fits.allowed
    assert not extreme.allowed and extreme.code == t.DECISION_CODE_VOLATILITY_REGIME


async def test_a_reduce_only_order_bigger_than_the_position_is_checked_for_leverage_and_fat_finger() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(max_order_notional=1_000.0,
                         symbol_configs=[t.SymbolRiskConfiguration(symbol="BTCUSDT", max_leverage=5)])
        await api.equity(10_000)
        await api.positions(pos(qty=0.01))
        big = await api.can(order(t.SIDE_SELL, qty=1.0, price=500, leverage=50, reduce_only=True))
        exact = await api.can(order(t.SIDE_SELL, qty=0.01, price=500, leverage=50, reduce_only=True))
    codes = {c.name: c.status for c in big.checks}
    assert not big.allowed
    assert codes["leverage"] == t.CHECK_STATUS_FAIL
    assert exact.allowed


async def test_an_order_without_exchange_uses_the_position_without_exchange_when_two_are_held() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0, exchange=""), pos(qty=0.2, exchange="binance"))
        await api.equity(9_400)
        over_own = await api.can(order(t.SIDE_SELL, qty=1.1, exchange=""))
        own = await api.can(order(t.SIDE_SELL, qty=1.0, exchange=""))
    assert not over_own.allowed
    assert own.allowed


async def test_two_positions_one_symbol_spelled_twice_in_one_report_are_invalid() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        code = await status_of(api.positions(pos(qty=1.0), pos(qty=1.0, symbol="btcusdt", exchange="BINANCE")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ---- rebinding and retries ------------------------------------------------------------------------------------


async def test_a_retry_after_the_operator_rebinds_the_trader_is_not_answered_from_the_old_account() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        first = await api.can(order(client_order_id="o-1"))
        await api.admin.RebindTrader(ad.RebindTraderRequest(trader_id="bot-1", account_id="acct-2", reason="fix"),
                                     timeout=10)
        retry = await api.can(order(client_order_id="o-1"), trader_id="bot-1", account_id="acct-2")
        old = await status_of(api.can(order(client_order_id="o-1")))
    assert first.allowed
    assert not retry.allowed and retry.code == t.DECISION_CODE_NO_EQUITY_REPORTED
    assert old == grpc.StatusCode.INVALID_ARGUMENT


async def test_hostile_client_order_ids_are_invalid_argument_not_internal() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        codes = {cid[:12]: await status_of(api.can(order(client_order_id=cid)))
                 for cid in ("x" * 5_000, "a\nb", "a\x00b", " o-1", "ø" * 10)}
    assert all(code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT) for code in codes.values()), codes
    assert codes["x" * 12] == grpc.StatusCode.INVALID_ARGUMENT and codes["a\nb"] == grpc.StatusCode.INVALID_ARGUMENT


# ---- in-process restarts on one SQLite file: persistence toggles, shadow episodes, zero-minute stops ---------


@contextlib.asynccontextmanager
async def on_file(tmp_path: Path, clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[
        tuple[Sidecar, Api]]:
    async with on_db(f"sqlite:///{tmp_path / 'state.db'}", clock, **overrides) as pair:
        yield pair
        assert await pair[0].store.flush(timeout=20)


async def test_a_kill_switch_pressed_while_persistence_is_off_is_stored_once_it_is_on_again(tmp_path: Path) -> None:
    async with on_file(tmp_path, ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_persistence=False)))
        await api.pause(t.TRADING_STATE_HALTED)
        await api.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_persistence=True)))
    async with on_file(tmp_path, ManualClock(T0 + 60)) as (_sc, api):
        decision = await api.can(order(t.SIDE_SELL))
    assert not decision.allowed and decision.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_breaker_pause_recorded_in_shadow_survives_a_restart_and_denies_when_enforcement_returns(
        tmp_path: Path) -> None:
    async with on_file(tmp_path, ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="floor", condition="equity_floor", action="pause_trading",
            parameters={"value": 9_000, "duration_minutes": 60})))
        await api.equity(10_000)
        await api.enforce(False)
        fired = await api.equity(8_700)
    async with on_file(tmp_path, ManualClock(T0 + 60)) as (_sc, api):
        shadow = await api.can(order())
        await api.enforce(True)
        enforced = await api.can(order())
        events = (await api.admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id="acct-1"))).events
    assert len(fired.breaker_events) == 1
    assert shadow.allowed and shadow.would_deny
    assert not enforced.allowed and enforced.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert len(events) == 1


async def test_a_zero_minute_stop_survives_a_restart_and_the_next_day(tmp_path: Path) -> None:
    async with on_file(tmp_path, ManualClock(T0)) as (_sc, api):
        await api.config(stop_trading_minutes=0)
        await api.equity(10_000)
        await api.equity(9_400)
    async with on_file(tmp_path, ManualClock(T0 + 86_400)) as (_sc, api):
        await api.equity(9_400)
        decision = await api.can(order())
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_a_trade_retried_after_a_restart_counts_once_and_the_streak_pauses_on_the_next_real_loss(
        tmp_path: Path) -> None:
    async with on_file(tmp_path, ManualClock(T0)) as (_sc, api):
        await api.config(consecutive_loss_threshold=3, cooling_off_period_minutes=30)
        await api.equity(10_000)
        await api.trade("t-1", -1, at=T0 - 20)
        await api.trade("t-2", -1, at=T0 - 10)
    async with on_file(tmp_path, ManualClock(T0 + 60)) as (_sc, api):
        dup = await api.trade("t-2", -1, at=T0 - 10)
        between = await api.can(order())
        await api.trade("t-3", -1)
        after = await api.can(order())
    assert dup.duplicate and dup.state.consecutive_losses == 2
    assert between.allowed
    assert not after.allowed and after.code == t.DECISION_CODE_CONSECUTIVE_LOSSES


# ---- more combinations: retries across the late load, resumed breaker episodes, stale reports, odd headers ---


async def test_a_retry_of_an_order_allowed_before_a_late_load_answers_the_first_decision(pg_url: str) -> None:
    """Stored throttle: 1 order a minute. Database down at start: the bot's reducing order o-1 is allowed (reduce
    only policy). The database returns; the bot, whose first answer was lost, retries o-1: the README says the
    same id answers the first decision and is not counted again."""
    async with on_db(pg_url) as (sc, api):
        await api.config(max_orders_per_window=1, order_rate_window_seconds=60)
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        first = await api.can(order(t.SIDE_SELL, qty=0.5, client_order_id="o-1"))
        proxy.restore()
        await loaded(api)
        retry = await api.can(order(t.SIDE_SELL, qty=0.5, client_order_id="o-1"))
        second = await api.can(order(t.SIDE_SELL, qty=0.1, client_order_id="o-2"))
    assert first.allowed
    assert retry.allowed, retry.reason
    assert not second.allowed and second.code == t.DECISION_CODE_ORDER_RATE_LIMIT


async def test_a_resumed_breaker_episode_stays_quiet_until_the_condition_clears_then_fires_again() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(daily_max_drawdown_percentage=50.0, max_drawdown_percentage=50.0)
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="floor", condition="equity_floor", action="pause_trading", parameters={"value": 9_000})))
        await api.equity(10_000)
        await api.equity(8_700)
        halted = await api.can(order())
        await api.resume()
        await api.equity(8_600)
        resumed = await api.can(order())
        await api.equity(9_500)
        await api.equity(8_900)
        again = await api.can(order())
    assert not halted.allowed and halted.code == t.DECISION_CODE_CIRCUIT_BREAKER
    assert resumed.allowed
    assert not again.allowed and again.code == t.DECISION_CODE_CIRCUIT_BREAKER


async def test_a_stale_low_report_fires_no_floor_breaker_and_a_stale_high_one_raises_the_peak() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="floor", condition="equity_floor", action="pause_trading", parameters={"value": 9_000})))
        await api.equity(10_000)
        low = await api.equity(8_000, at=T0 - 3_600)
        calm = await api.can(order())
        high = await api.equity(13_000, at=T0 - 1_800)  # the equity was there: peak 13,000, drawdown 23 %
        after_high = await api.can(order())
    assert low.stale and not low.breaker_events
    assert calm.allowed
    assert high.stale and high.state.peak_equity == 13_000
    assert not after_high.allowed and after_high.code == t.DECISION_CODE_MAX_DRAWDOWN


async def test_odd_authorization_headers_are_refused_never_internal_and_never_admin(tmp_path: Path) -> None:
    async with guarded(tmp_path, ManualClock(T0)) as (_sc, op, bot1, _bot2):
        await op.equity(10_000)
        await op.pause(t.TRADING_STATE_HALTED)
        headers = [f"bearer {ADMIN}x", f"Bearer {ADMIN[:-1]}", f"Basic {ADMIN}", "Bearer", "Bearer  ", f"{ADMIN}",
                   f"Bearer {BOT1}", f"Bearer {BOT1} ", "Bearer " + "x" * 10_000]
        codes = []
        for value in headers:
            codes.append(await status_of(op.admin.ResumeTrading(ad.ResumeTradingRequest(**IDS), timeout=10,
                                                                metadata=(("authorization", value),))))
        two = await status_of(op.admin.ResumeTrading(ad.ResumeTradingRequest(**IDS), timeout=10, metadata=(
            ("authorization", f"Bearer {BOT1}"), ("authorization", f"Bearer {ADMIN}"))))
        decision = await bot1.can(order())
    # (the 10 KB header may instead be refused by grpc's metadata limit: RESOURCE_EXHAUSTED)
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert set(codes[:-1]) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}, codes
    assert two in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)
    assert not decision.allowed or two == grpc.StatusCode.OK


async def test_a_negative_equity_is_refused_naming_the_field() -> None:
    """The proto says equity >= 0; a liquidated account's negative equity is refused (the last level stays in
    force: the bot must report 0, see the report of this suite)."""
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.equity(-500.0)
        zero = await api.equity(0.0)
        decision = await api.can(order())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "equity" in (refused.value.details() or "")
    assert zero.state.trading_state == t.TRADING_STATE_REDUCING
    assert not decision.allowed


async def test_a_short_reducing_kill_switch_does_not_end_a_longer_loss_pause() -> None:
    clock = ManualClock(T0)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        await api.equity(9_400)
        await api.pause(t.TRADING_STATE_REDUCING, seconds=10)
        clock.advance(11)
        after = await api.can(order())
        clock.advance(31 * 60)
        expired = await api.can(order())
    assert not after.allowed and after.trading_state == t.TRADING_STATE_REDUCING
    assert expired.allowed


async def test_a_breaker_created_while_not_loaded_is_refused_and_not_made_behind_the_answer(pg_url: str) -> None:
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        try:
            await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
                name="floor", condition="equity_floor", action="pause_trading", parameters={"value": 9_900})),
                timeout=20)
            made: bool | None = True
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
            made = None if "may or may not" in (err.details() or "") else False
        proxy.restore()
        await loaded(api)
        listed = (await api.admin.ListBreakers(ad.ListBreakersRequest(account_id="acct-1"), timeout=10)).breakers
        await api.equity(9_800)
        decision = await api.can(order())
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    assert made is not None
    assert len(listed) == int(made)
    assert decision.allowed != made


# ---- a flood while the stored state is not loaded (the replay journal's bound, scaled down to 40 calls) --------


async def test_a_kill_switch_pressed_while_not_loaded_survives_a_flood_of_trade_reports(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal keeps trades and kill-switch calls (only old equity / position levels are thinned). Pressed
    first, then more trades than the journal's bound: once loaded, the trader is still HALTED."""
    import tradeguard_server.persistence as persistence

    monkeypatch.setattr(persistence, "JOURNAL_MAX", 40)
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.pause(t.TRADING_STATE_HALTED, reason="incident")
        for i in range(60):
            await api.trade(f"w-{i}", +1.0)
        proxy.restore()
        await loaded(api)
        decision = await api.can(order(t.SIDE_SELL))
    assert not decision.allowed and decision.code == t.DECISION_CODE_KILL_SWITCH


async def test_a_breach_reported_while_not_loaded_survives_a_flood_of_later_reports(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tradeguard_server.persistence as persistence

    monkeypatch.setattr(persistence, "JOURNAL_MAX", 40)
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.equity(9_000)  # -10 % against the stored day: a breach (limit 5 %) once judged on it
        for _ in range(60):
            await api.equity(9_900)
        proxy.restore()
        await loaded(api)
        decision = await api.can(order())
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_a_kill_switch_pressed_while_not_loaded_denies_reducing_orders_at_once_and_a_denied_id_is_asked_afresh(
        pg_url: str) -> None:
    """reduce_only policy lets a reducing order pass while not loaded, but not under a kill switch pressed
    meanwhile. An order denied only because the state was not loaded is judged afresh on retry once it loads."""
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        early = await api.can(order(client_order_id="o-1"))
        await api.pause(t.TRADING_STATE_HALTED, seconds=600)
        halted = await api.can(order(t.SIDE_SELL, qty=1.0))
        await api.resume()
        proxy.restore()
        await loaded(api)
        retry = await api.can(order(client_order_id="o-1"))
    assert not early.allowed and early.code == t.DECISION_CODE_STATE_NOT_LOADED
    assert not halted.allowed and halted.code == t.DECISION_CODE_KILL_SWITCH
    assert retry.allowed and "STATE_NOT_LOADED" not in retry.reason


async def test_no_state_shown_while_not_loaded_says_active_when_the_stored_state_is_halted(pg_url: str) -> None:
    """Stored: HALTED. While the stored state is not loaded, memory alone would say ACTIVE; every RiskState the
    sidecar shows (report answers, GetRiskState, WatchRiskState, CanTrade's state) must not claim ACTIVE: it says
    the policy's state with the STATE_NOT_LOADED code, and the stored HALTED once loaded."""
    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        watch = api.risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS), timeout=20)
        shown = {"ReportEquity": (await api.equity(10_000)).state, "GetRiskState": await api.state(),
                 "CanTrade.state": (await api.can(order())).state, "WatchRiskState": (await watch.read()).state}
        proxy.restore()
        await loaded(api)
        after = await api.state()
        watch.cancel()
    assert {name: s.trading_state for name, s in shown.items()} == {name: t.TRADING_STATE_REDUCING for name in shown}
    assert all(s.pause_code == t.DECISION_CODE_STATE_NOT_LOADED for s in shown.values())
    assert after.trading_state == t.TRADING_STATE_HALTED and after.pause_code == t.DECISION_CODE_KILL_SWITCH


async def test_a_watcher_opened_while_not_loaded_is_told_the_stored_halt_once_it_loads(pg_url: str) -> None:
    import asyncio

    async with on_db(pg_url) as (sc, api):
        await api.equity(10_000)
        await api.pause(t.TRADING_STATE_HALTED)
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url) as (sc, api, proxy):
        await api.equity(10_000)
        watch = api.risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS), timeout=20)
        first = await watch.read()
        proxy.restore()
        await loaded(api)
        update = await asyncio.wait_for(watch.read(), 10)
        watch.cancel()
    assert first.state.trading_state != t.TRADING_STATE_ACTIVE
    assert update.state.trading_state == t.TRADING_STATE_HALTED


async def test_a_tighter_config_saved_in_shadow_pauses_at_once_and_denies_when_enforcement_returns() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.equity(10_000)
        await api.equity(9_700)
        await api.enforce(False)
        await api.config(daily_max_drawdown_percentage=2.0)
        shadow = await api.can(order())
        await api.enforce(True)
        enforced = await api.can(order())
        await api.admin.DeleteConfig(ad.DeleteConfigRequest(account_id="acct-1", config_id="c1"))
        after_delete = await api.can(order())
    assert shadow.allowed and shadow.would_deny and shadow.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert not enforced.allowed and enforced.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert not after_delete.allowed  # deleting the configuration does not lift the pause it caused


async def test_a_retried_reducing_order_is_denied_while_not_loaded_once_the_position_is_gone(pg_url: str) -> None:
    """reduce_only policy: long 1 BTC reported since the start, SELL 1 (o-1) passes. The bot reports the position
    closed and retries o-1, which would now open a short: new exposure while not loaded, denied like in REDUCING."""
    async with down_at_start(pg_url) as (_sc, api, proxy):
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        first = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
        await api.positions()
        retry = await api.can(order(t.SIDE_SELL, qty=1.0, client_order_id="o-1"))
        proxy.restore()
    assert first.allowed
    assert not retry.allowed and retry.code == t.DECISION_CODE_STATE_NOT_LOADED


# ---- breakers combined with sizes, spellings and retries ------------------------------------------------------


async def test_a_reduce_only_breaker_denies_an_order_bigger_than_the_position() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.config(daily_max_drawdown_percentage=50.0, max_drawdown_percentage=50.0)
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="floor", condition="equity_floor", action="reduce_only", parameters={"value": 9_500})))
        await api.equity(10_000)
        await api.positions(pos(qty=1.0))
        await api.equity(9_400)
        flip = await api.can(order(t.SIDE_SELL, qty=1.1, reduce_only=True))
        close = await api.can(order(t.SIDE_SELL, qty=1.0, reduce_only=True))
    assert not flip.allowed and flip.trading_state == t.TRADING_STATE_REDUCING
    assert close.allowed


async def test_a_close_position_breaker_scoped_in_one_spelling_names_the_position_reported_in_another() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="pdd", condition="position_drawdown", action="close_position", parameters={"threshold": 0.1},
            symbols=["BTCUSDT"], exchanges=["BINANCE"])))
        await api.equity(10_000)
        answer = await api.positions(t.Position(symbol="btcusdt", exchange="Binance", side=t.SIDE_BUY, quantity=0.01,
                                                entry_price=50_000, mark_price=40_000))
    closes = [(a.symbol, a.exchange) for a in answer.actions if a.type == t.ACTION_TYPE_CLOSE_POSITION]
    assert ("BTCUSDT", "binance") in closes


async def test_retries_count_once_in_an_order_rate_breaker() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="rate", condition="order_rate", action="pause_trading",
            parameters={"max_orders": 2, "window_seconds": 60})))
        await api.equity(10_000)
        firsts = [await api.can(order(client_order_id="o-1")) for _ in range(3)]
        second = await api.can(order(client_order_id="o-2"))
        third = await api.can(order(client_order_id="o-3"))
    assert all(a.allowed for a in firsts) and second.allowed
    assert not third.allowed and third.code == t.DECISION_CODE_CIRCUIT_BREAKER


# ---- a report observed before a period boundary, received after it ---------------------------------------------


async def test_a_gain_observed_before_midnight_but_received_after_it_is_the_new_days_start() -> None:
    """10,000 at 23:59:00; 11,000 observed at 23:59:30 arrives at 00:00:30 (newer than the last report: not
    stale). The equity at midnight was 11,000, so 10,500 at 01:00 is a 4.5 % loss today: beyond a 4 % limit.
    (Received in time, the same reports are denied: arrival order must not change the verdict.)"""
    midnight = 1_767_225_600.0 + 86_400
    clock = ManualClock(midnight - 60)
    async with sidecar(clock, daily_max_drawdown_percentage=4.0) as (_sc, api):
        await api.equity(10_000)
        clock.set(midnight + 30)
        await api.can(order())  # a call after midnight rolls the day first
        await api.equity(11_000, at=midnight - 30)
        clock.set(midnight + 3_600)
        await api.equity(10_500)
        decision = await api.can(order())
    assert decision.state.day_start_equity == 11_000
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


@pytest.mark.xfail(strict=True, reason="a loss observed before midnight but received after it keeps the new day "
                   "starting at the previous level, so the next day is judged against yesterday's start (a wrong "
                   "deny: the previous day's start is not kept, so the late report cannot be judged in its own day "
                   "and the new day re-based)")
async def test_a_loss_observed_before_midnight_but_received_after_it_does_not_carry_into_the_new_day() -> None:
    midnight = 1_767_225_600.0 + 86_400
    clock = ManualClock(midnight - 60)
    async with sidecar(clock) as (_sc, api):
        await api.equity(10_000)
        clock.set(midnight + 30)
        await api.equity(9_000, at=midnight - 30)
        clock.set(midnight + 3_600)
        await api.equity(9_000)
        decision = await api.can(order())
    assert decision.allowed and decision.state.day_start_equity == 9_000


async def test_watches_on_stored_traders_while_not_loaded_do_not_use_the_unknown_trader_budget(pg_url: str) -> None:
    """Three bots reported before the restart. Started with the database down, each watches its own trader: they
    are known (stored), so the small budget for trader ids nobody has reported yet (here 2) must not refuse the
    third watch."""
    traders = ("bot-a", "bot-b", "bot-c")
    async with on_db(pg_url) as (sc, api):
        for tid in traders:
            await api.equity(10_000, trader_id=tid, account_id="acct-1")
        assert await sc.store.flush(timeout=20)
    async with down_at_start(pg_url, max_watchers_unknown_traders=2) as (_sc, api, proxy):
        codes, watches = [], []
        for tid in traders:
            watch = api.risk.WatchRiskState(rs.WatchRiskStateRequest(trader_id=tid, account_id="acct-1"), timeout=10)
            watches.append(watch)
            try:
                await watch.read()
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
        for watch in watches:
            watch.cancel()
        proxy.restore()
    assert codes == [grpc.StatusCode.OK] * 3


async def test_a_loss_streak_breaker_scoped_in_lower_case_counts_trades_reported_in_mixed_case() -> None:
    async with sidecar(ManualClock(T0)) as (_sc, api):
        await api.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(
            name="streak", condition="consecutive_losses", action="pause_trading", parameters={"count": 2},
            symbols=["btcusdt"], exchanges=["BINANCE"])))
        await api.equity(10_000)
        for i, (symbol, exchange) in enumerate((("BTCUSDT", "binance"), ("BtcUsdt", "Binance"))):
            await api.risk.ReportTrade(rs.ReportTradeRequest(**IDS, trade_id=f"t-{i}", symbol=symbol,
                                                             exchange=exchange, side=t.SIDE_SELL, realized_pnl=-5))
        decision = await api.can(order())
    assert not decision.allowed and decision.code == t.DECISION_CODE_CIRCUIT_BREAKER


def test_a_start_flag_beats_shadow_mode_stored_before_a_sigkill_and_is_not_stored_itself(tmp_path: Path) -> None:
    from tradeguard_client import AdminClient

    db = ("--database-url", f"sqlite:///{tmp_path / 'state.db'}")

    def flags_and_decision(proc: Any) -> tuple[bool, bool, bool]:
        with AdminClient(proc.address) as admin:
            flags = admin.get_feature_flags()
        with grpc.insecure_channel(proc.address) as ch:
            d = rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(**IDS, order=order()), timeout=5)
        return bool(flags.enable_risk_enforcement), d.allowed, d.would_deny

    first = spawn_sidecar(tmp_path, *db, name="f0")
    try:
        with grpc.insecure_channel(first.address) as ch:
            rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000), timeout=5)
            admin = adg.AdminServiceStub(ch)
            admin.PauseTrading(ad.PauseTradingRequest(**IDS, trading_state=t.TRADING_STATE_HALTED), timeout=5)
            admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)),
                                  timeout=5)
    finally:
        first.terminate(signal.SIGKILL)
    forced = spawn_sidecar(tmp_path, *db, "--enable-risk-enforcement", name="f1")
    try:
        with_flag = flags_and_decision(forced)
    finally:
        forced.terminate(signal.SIGKILL)
    plain = spawn_sidecar(tmp_path, *db, name="f2")
    try:
        stored = flags_and_decision(plain)
    finally:
        plain.terminate(signal.SIGTERM)
    assert with_flag == (True, False, False)
    assert stored == (False, True, True)


async def test_a_bot_cannot_reach_its_trader_through_an_account_spelled_in_another_case(tmp_path: Path) -> None:
    async with guarded(tmp_path, ManualClock(T0)) as (_sc, op, bot1, _bot2):
        await bot1.equity(10_000)
        await op.pause(t.TRADING_STATE_HALTED)
        codes = [await status_of(bot1.equity(10_000, trader_id="bot-1", account_id=acct))
                 for acct in ("ACCT-1", "Acct-1", "acct-1 ")]
        decision = await bot1.can(order())
    assert all(code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT) for code in codes), codes
    assert not decision.allowed and decision.code == t.DECISION_CODE_KILL_SWITCH
