"""Combinations of features that each feature's own tests never tried, through the public API only.

Each test is one combination a careless bot, a hostile bot or an operator in an incident would produce, and
asserts the answer README.md prescribes for it. The worst failure is a wrong "allowed", then an untrue record,
then a crash (INTERNAL / UNKNOWN). In-process sidecars on port 0 (a ManualClock where time matters), real
PostgreSQL behind a TCP proxy where the database must be cut, and `tradeguard serve` subprocesses for signals.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.pg import TcpProxy, fresh_database
from tests.support.sidecar import running_sidecar, spawn_sidecar
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
    stamp.FromNanoseconds(int(round(epoch * 1e9)))
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
