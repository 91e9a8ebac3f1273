"""Issue 17, "control state is shared": two sidecars on one PostgreSQL database. A configuration, a breaker, the
feature flags, a trader's kill switch, an account's and every account's kill switch made through one are in force
on the other within 1 s (awaited, no fixed sleeps); an account pause survives a restart; the listener's
connection cut through a TCP proxy is visible (health, age metric), changes made meanwhile are applied when it
returns, and the stale action applies after the max age."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

PROPAGATION_S = 1.0  # the bound: in force on every other sidecar within 1 s
ORDER = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=100.0)


class Node:
    """A sidecar and its stubs."""

    def __init__(self, sidecar: Sidecar, channel: grpc.aio.Channel) -> None:
        self.sidecar = sidecar
        self.risk = rsg.RiskServiceStub(channel)
        self.admin = adg.AdminServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def equity(self, trader: str, account: str = "acct", equity: float = 10_000.0) -> None:
        await self.risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=account, equity=equity))

    async def can_trade(self, trader: str, account: str = "acct") -> rs.CanTradeResponse:
        return await self.risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=account, order=ORDER))

    async def control_health(self) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service="tradeguard.control"), timeout=5)
        return int(reply.status)


@contextlib.asynccontextmanager
async def node(pg_url: str, name: str, **overrides: Any) -> AsyncIterator[Node]:
    async with running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id=name, **overrides) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        yield Node(sc, ch)


async def within(predicate: Any, seconds: float = PROPAGATION_S) -> float:
    """Await `predicate` (async) for at most `seconds`; returns how long it took (fails the test otherwise)."""
    start = time.monotonic()
    assert await eventually(predicate, timeout=seconds, interval=0.005), f"not in force within {seconds}s"
    took = time.monotonic() - start
    print(f"in force on the other sidecar after {took * 1000:.0f} ms")
    return took


async def test_configurations_saved_and_deleted_on_one_sidecar_are_enforced_on_the_other(pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        await b.equity("bot-2")
        cfg = t.RiskConfiguration(account_id="acct", config_id="tight", is_active=True, max_order_notional=0.01)
        await a.admin.SaveConfig(ad.SaveConfigRequest(config=cfg))

        async def enforced() -> bool:
            reply = await b.can_trade("bot-2")
            return reply.code == t.DECISION_CODE_ORDER_NOTIONAL_LIMIT and not reply.allowed

        await within(enforced)
        listed = await b.admin.ListConfigs(ad.ListConfigsRequest(account_id="acct"))
        assert [c.config_id for c in listed.configs] == ["tight"]
        history = await b.sidecar.store.list_history("bot-2", None, None, 100)
        assert any("via sidecar A" in h.reason for h in history[0]), [h.reason for h in history[0]]

        await a.admin.DeleteConfig(ad.DeleteConfigRequest(account_id="acct", config_id="tight"))

        async def lifted() -> bool:
            return (await b.can_trade("bot-2")).allowed

        await within(lifted)
        assert not (await b.admin.ListConfigs(ad.ListConfigsRequest(account_id="acct"))).configs
        assert b.sidecar.control.applied["config"] == 2


async def test_breakers_created_and_disabled_on_one_sidecar_are_installed_on_the_other(pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        breaker = t.CircuitBreaker(name="streak", account_id="acct", condition="consecutive_losses",
                                   action="pause_trading")
        breaker.parameters.update({"count": 3, "duration_minutes": 5})
        created = (await a.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))).breaker
        await within(lambda: created.id in b.sidecar.breaker_service.records)
        listed = await b.admin.ListBreakers(ad.ListBreakersRequest(account_id="acct"))
        assert [x.name for x in listed.breakers] == ["streak"]
        await a.admin.DisableBreaker(ad.DisableBreakerRequest(breaker_id=created.id))
        await within(lambda: not b.sidecar.breaker_service.records[created.id].enabled)
        await a.admin.DeleteBreaker(ad.DeleteBreakerRequest(breaker_id=created.id))
        await within(lambda: created.id not in b.sidecar.breaker_service.records)


async def test_feature_flags_set_on_one_sidecar_apply_on_the_other(pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        await a.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)))
        await within(lambda: not b.sidecar.engine.flags.enable_risk_enforcement)
        reply = await b.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest())
        assert not reply.flags.enable_risk_enforcement
        await a.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=True)))
        await within(lambda: b.sidecar.engine.flags.enable_risk_enforcement)


async def test_trader_pause_and_resume_pressed_on_one_sidecar_stop_and_free_the_trader_on_its_own(
        pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        await b.equity("bot-2")
        assert (await b.can_trade("bot-2")).allowed
        assert await b.sidecar.store.flush(timeout=10)  # stored: A knows another sidecar holds it
        paused = await a.admin.PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-2", account_id="acct", trading_state=t.TRADING_STATE_HALTED, reason="incident"))
        assert paused.control_state_version > 0
        assert paused.state.trading_state == t.TRADING_STATE_HALTED
        assert "bot-2" not in a.sidecar.engine.traders  # A does not hold it: B applies it

        async def halted() -> bool:
            reply = await b.can_trade("bot-2")
            return not reply.allowed and reply.code == t.DECISION_CODE_KILL_SWITCH

        await within(halted)
        assert "via sidecar A" in (await b.can_trade("bot-2")).state.pause_reason
        resumed = await a.admin.ResumeTrading(ad.ResumeTradingRequest(trader_id="bot-2", account_id="acct"))
        assert resumed.control_state_version > paused.control_state_version

        async def free() -> bool:
            return (await b.can_trade("bot-2")).allowed

        await within(free)
        reply = await b.can_trade("bot-2")
        assert reply.control_state_version >= resumed.control_state_version


async def test_account_pause_stops_every_trader_of_the_account_on_the_other_sidecar_and_those_seen_later(
        pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        await b.equity("bot-1")
        await b.equity("other", account="acct-2")
        reply = await a.admin.PauseTrading(ad.PauseTradingRequest(
            account_id="acct", trading_state=t.TRADING_STATE_HALTED, reason="desk limit"))
        assert reply.scope_pause.account_id == "acct" and not reply.scope_pause.all_accounts
        assert reply.scope_pause.trading_state == t.TRADING_STATE_HALTED
        assert reply.scope_pause.origin_sidecar == "A" and reply.scope_pause.actor
        assert reply.control_state_version > 0 and not reply.HasField("state")

        async def halted() -> bool:
            answer = await b.can_trade("bot-1")
            return not answer.allowed and answer.code == t.DECISION_CODE_KILL_SWITCH

        await within(halted)
        assert (await b.can_trade("other", account="acct-2")).allowed  # another account trades on
        await b.equity("bot-new")  # first seen after the pause
        late = await b.can_trade("bot-new")
        assert not late.allowed and late.code == t.DECISION_CODE_KILL_SWITCH
        assert "account acct" in late.state.pause_reason
        # A trader's own resume does not lift its account's pause.
        await b.admin.ResumeTrading(ad.ResumeTradingRequest(trader_id="bot-1", account_id="acct"))
        assert not (await b.can_trade("bot-1")).allowed

        await a.admin.ResumeTrading(ad.ResumeTradingRequest(account_id="acct"))

        async def free() -> bool:
            return (await b.can_trade("bot-1")).allowed and (await b.can_trade("bot-new")).allowed

        await within(free)


async def test_every_account_pause_stops_every_account_on_the_other_sidecar_until_lifted(pg_url: str) -> None:
    async with node(pg_url, "A") as a, node(pg_url, "B") as b:
        await b.equity("x", account="acct-1")
        await b.equity("y", account="acct-2")
        reply = await a.admin.PauseTrading(ad.PauseTradingRequest(
            all_accounts=True, trading_state=t.TRADING_STATE_REDUCING, duration=Duration(seconds=600)))
        assert reply.scope_pause.all_accounts and reply.scope_pause.HasField("paused_until")

        async def reducing() -> bool:
            answers = [await b.can_trade("x", "acct-1"), await b.can_trade("y", "acct-2")]
            return all(not r.allowed and r.trading_state == t.TRADING_STATE_REDUCING for r in answers)

        await within(reducing)
        await a.admin.ResumeTrading(ad.ResumeTradingRequest(all_accounts=True))

        async def free() -> bool:
            return (await b.can_trade("x", "acct-1")).allowed and (await b.can_trade("y", "acct-2")).allowed

        await within(free)


async def test_scope_validation_names_the_field(pg_url: str) -> None:
    async with node(pg_url, "A") as a:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await a.admin.PauseTrading(ad.PauseTradingRequest(
                all_accounts=True, account_id="acct", trading_state=t.TRADING_STATE_HALTED))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "account_id" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await a.admin.ResumeTrading(ad.ResumeTradingRequest(all_accounts=True, trader_id="t"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trader_id" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await a.admin.PauseTrading(ad.PauseTradingRequest(trading_state=t.TRADING_STATE_HALTED))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "account_id" in (err.value.details() or "")


async def test_account_pause_is_restored_after_a_restart(pg_url: str) -> None:
    async with node(pg_url, "A") as a:
        await a.admin.PauseTrading(ad.PauseTradingRequest(account_id="acct", trading_state=t.TRADING_STATE_HALTED,
                                                          reason="overnight"))
        await a.admin.PauseTrading(ad.PauseTradingRequest(account_id="gone", trading_state=t.TRADING_STATE_HALTED))
        await a.admin.ResumeTrading(ad.ResumeTradingRequest(account_id="gone"))
    async with node(pg_url, "A") as again:
        await again.equity("bot-1")
        await again.equity("bot-9", account="gone")
        answer = await again.can_trade("bot-1")
        assert not answer.allowed and answer.code == t.DECISION_CODE_KILL_SWITCH
        assert "overnight" in answer.state.pause_reason
        assert (await again.can_trade("bot-9", "gone")).allowed  # the latest of a scope wins: resumed


async def test_cut_listener_connection_is_visible_and_changes_made_meanwhile_apply_when_it_returns(
        pg_url: str) -> None:
    proxy = await FaultProxy().start()
    settings = load_settings({}, {"database_url": pg_url, "enable_persistence": True, "sidecar_id": "B",
                                  "listen": "127.0.0.1:0", "dev_open_admin": True, "uvloop": False,
                                  "metrics_listen": "127.0.0.1:0", "http_listen": "",
                                  "control_state_max_age_seconds": 2.0,
                                  "control_state_stale_action": "reduce_only"})
    b_sidecar = Sidecar(settings)
    assert b_sidecar.control_listener is not None
    b_sidecar.control_listener.url = proxy.url_for(pg_url)  # only the listener goes through the proxy
    await b_sidecar.start()
    try:
        async with node(pg_url, "A") as a, grpc.aio.insecure_channel(b_sidecar.address) as ch:
            b = Node(b_sidecar, ch)
            await b.equity("bot-2")
            assert await eventually(lambda: _is(b.control_health(), health_pb2.HealthCheckResponse.SERVING), timeout=5)
            assert (await b.can_trade("bot-2")).allowed
            proxy.cut()
            assert await eventually(
                lambda: _is(b.control_health(), health_pb2.HealthCheckResponse.NOT_SERVING), timeout=5)
            age = metric(b_sidecar, "tradeguard_control_state_age_seconds")
            cfg = t.RiskConfiguration(account_id="acct", config_id="tight", is_active=True, max_order_notional=0.01)
            await a.admin.SaveConfig(ad.SaveConfigRequest(config=cfg))
            await a.admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-2",
                                                              trading_state=t.TRADING_STATE_HALTED))
            assert await eventually(lambda: metric(b_sidecar, "tradeguard_control_state_age_seconds") > age + 0.5,
                                    timeout=5)
            # Past control_state_max_age_seconds: reduce_only, new exposure is denied as CONTROL_STATE_STALE.

            async def stale() -> bool:
                answer = await b.can_trade("bot-2")
                return not answer.allowed and answer.code == t.DECISION_CODE_CONTROL_STATE_STALE

            assert await eventually(stale, timeout=5)
            assert b_sidecar.engine.limits_for("acct").config_id != "tight"  # not heard yet
            proxy.restore()

            async def caught_up() -> bool:
                answer = await b.can_trade("bot-2")
                return answer.code == t.DECISION_CODE_ORDER_NOTIONAL_LIMIT and b_sidecar.control.scope("acct-2") \
                    is not None

            assert await eventually(caught_up, timeout=10)
            assert await b.control_health() == health_pb2.HealthCheckResponse.SERVING
            assert b_sidecar.engine.control_gate is None
            assert metric(b_sidecar, "tradeguard_control_state_age_seconds") < 2.0
            assert metric(b_sidecar, "tradeguard_control_changes_applied_total", {"kind": "config"}) == 1
            assert metric(b_sidecar, "tradeguard_control_state_version") == b_sidecar.control.version >= 2
    finally:
        await b_sidecar.stop()
        await proxy.close()


def metric(sidecar: Sidecar, name: str, labels: dict[str, str] | None = None) -> float:
    value = sidecar.metrics.registry.get_sample_value(name, labels or {})  # type: ignore[attr-defined]
    assert value is not None, name
    return float(value)


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
