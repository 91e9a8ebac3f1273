"""tradeguard_client against a real in-process sidecar (memory store): ListRiskStates, the account and
every-account kill switches, CanTrade's control_state_version, and a client-built configuration saved active.

Skipped (not failed) against a server without issue 17's AdminService.ListRiskStates (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tradeguard_client import (
    AdminClient,
    AsyncAdminClient,
    AsyncRiskClient,
    Order,
    RiskClient,
    RiskConfig,
    RiskState,
    ScopePause,
    TradeGuardError,
)
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BUY = Order("BTCUSDT", "BUY", 0.01, 50_000, exchange="binance")
TRADERS = (("bot-1", "acct-1"), ("bot-2", "acct-1"), ("bot-3", "acct-2"))


async def skip_without_list_risk_states(admin: AsyncAdminClient) -> None:
    try:
        await admin.list_risk_states("acct-probe")
    except TradeGuardError as error:
        if error.code == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("this server has no AdminService.ListRiskStates (issue 17 server side not merged)")
        raise


async def test_list_risk_states_pages_an_accounts_traders_in_order_with_the_state_filter(sidecar: Sidecar) -> None:
    async with AsyncRiskClient(sidecar.address) as guard, AsyncAdminClient(sidecar.address) as admin:
        await skip_without_list_risk_states(admin)
        for trader, account in TRADERS:
            await guard.report_equity(trader, account, 10_000)
        await admin.pause_trading("bot-2", "acct-1", reason="one trader")
        every = await admin.list_risk_states("acct-1")
        first = await admin.list_risk_states("acct-1", page_size=1)
        second = await admin.list_risk_states("acct-1", page_size=1, page_token=first.next_page_token)
        halted = await admin.list_risk_states("acct-1", "HALTED")
        with pytest.raises(TradeGuardError) as missing:
            await admin.list_risk_states("")

    assert [e.state.trader_id for e in every.items if e.state] == ["bot-1", "bot-2"]
    assert every.next_page_token == ""
    assert all(e.local and e.age_seconds >= 0 for e in every.items)
    assert [e.state.current_equity for e in every.items if e.state] == [10_000, 10_000]
    assert [e.state.trader_id for e in first.items + second.items if e.state] == ["bot-1", "bot-2"]
    assert first.next_page_token and second.next_page_token == ""
    assert [(e.state.trader_id, e.state.trading_state) for e in halted.items if e.state] == [("bot-2", "HALTED")]
    assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_account_pause_and_resume_through_the_async_client(sidecar: Sidecar) -> None:
    async with AsyncRiskClient(sidecar.address) as guard, AsyncAdminClient(sidecar.address) as admin:
        await skip_without_list_risk_states(admin)
        for trader, account in TRADERS:
            await guard.report_equity(trader, account, 10_000)
        before = await guard.can_trade("bot-1", "acct-1", BUY)
        scope = await admin.pause_trading(None, "acct-1", reason="exchange incident")
        denied = await guard.can_trade("bot-1", "acct-1", BUY)
        other_account = await guard.can_trade("bot-3", "acct-2", BUY)
        listed = await admin.list_risk_states("acct-1", "HALTED")
        version = await admin.resume_trading(None, "acct-1")
        after = await guard.can_trade("bot-2", "acct-1", BUY)

    assert before.allowed
    assert isinstance(scope, ScopePause)
    assert (scope.account_id, scope.all_accounts, scope.trading_state) == ("acct-1", False, "HALTED")
    assert scope.reason == "exchange incident" and scope.paused_until is None
    assert scope.control_state_version > before.control_state_version
    assert not denied and denied.trading_state == "HALTED"
    assert denied.control_state_version >= scope.control_state_version
    assert other_account.allowed
    assert sorted(e.state.trader_id for e in listed.items if e.state) == ["bot-1", "bot-2"]
    assert version > scope.control_state_version
    assert after.allowed and after.control_state_version >= version


async def test_every_account_pause_and_resume_through_the_sync_client(sidecar: Sidecar) -> None:
    async with AsyncAdminClient(sidecar.address) as probe:
        await skip_without_list_risk_states(probe)

    def scenario() -> tuple[ScopePause, bool, RiskState, int, bool]:
        with RiskClient(sidecar.address) as guard, AdminClient(sidecar.address) as admin:
            for trader, account in TRADERS:
                guard.report_equity(trader, account, 10_000)
            scope = admin.pause_trading(None, all_accounts=True, trading_state="REDUCING", duration=600,
                                        reason="venue down")
            new_exposure = guard.can_trade("bot-3", "acct-2", BUY).allowed
            trader_state = admin.pause_trading("bot-1", "acct-1", reason="and this one halted")  # trader scope
            version = admin.resume_trading(None, all_accounts=True)
            admin.resume_trading("bot-1", "acct-1")
            return scope, new_exposure, trader_state, version, guard.can_trade("bot-3", "acct-2", BUY).allowed

    scope, new_exposure, trader_state, version, allowed_after = await asyncio.to_thread(scenario)
    assert scope.all_accounts and scope.account_id == "" and scope.trading_state == "REDUCING"
    assert scope.paused_until is not None and scope.control_state_version > 0
    assert not new_exposure
    assert isinstance(trader_state, RiskState) and trader_state.trader_id == "bot-1"
    assert trader_state.trading_state == "HALTED"
    assert version > scope.control_state_version
    assert allowed_after


async def test_a_config_built_without_is_active_is_saved_active_and_false_saves_it_inactive(
        sidecar: Sidecar) -> None:
    async with AsyncAdminClient(sidecar.address) as admin:
        default = await admin.save_config(RiskConfig(account_id="acct-1", config_id="base",
                                                     daily_max_drawdown_percentage=4.0))
        inactive = await admin.save_config(RiskConfig(account_id="acct-1", config_id="spare", is_active=False))
        listed = {c.config_id: c.is_active for c in await admin.list_configs("acct-1")}

    assert default.config.is_active is True
    assert inactive.config.is_active is False
    assert listed == {"base": True, "spare": False}
