"""tradeguard_client: ListRiskStates, account / every-account kill switches, control_state_version and the
RiskConfig.is_active default (conversions and the requests the clients send; no sidecar)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_client import (
    IDEMPOTENT_METHODS,
    AdminClient,
    AsyncAdminClient,
    Decision,
    InvalidArgumentError,
    InvalidResponseError,
    RiskConfig,
    RiskState,
    RiskStateEntry,
    ScopePause,
)
from tradeguard_client import _requests as req

T0 = 1_767_268_800


class Recorder:
    """Stands in for a client's `_unary`: records (method, request) and answers `response`."""

    def __init__(self, response: Message) -> None:
        self.response = response
        self.calls: list[tuple[str, Message]] = []

    def __call__(self, method: str, fn: Any, request: Message, timeout: float | None) -> Message:
        self.calls.append((method, request))
        return self.response


class AsyncRecorder(Recorder):
    async def __call__(self, method: str, fn: Any, request: Message,  # type: ignore[override]
                       timeout: float | None) -> Message:
        return super().__call__(method, fn, request, timeout)


def admin(response: Message) -> tuple[AdminClient, Recorder]:
    client = AdminClient("127.0.0.1:1")
    rec = Recorder(response)
    client._unary = rec  # type: ignore[method-assign,assignment]
    return client, rec


def scope_response(account_id: str = "acct-1", all_accounts: bool = False) -> ad.PauseTradingResponse:
    return ad.PauseTradingResponse(
        scope_pause=ad.ScopePause(account_id=account_id, all_accounts=all_accounts,
                                  trading_state=t.TRADING_STATE_HALTED, paused_until=Timestamp(seconds=T0 + 600),
                                  reason="exchange incident", actor="alice", origin_sidecar="sc-a",
                                  since=Timestamp(seconds=T0)),
        control_state_version=42)


# ---- ListRiskStates ---------------------------------------------------------------------------------


def test_list_risk_states_is_a_retried_read() -> None:
    assert "ListRiskStates" in IDEMPOTENT_METHODS


def test_list_risk_states_request_sends_the_state_filter_only_when_given() -> None:
    every = req.list_risk_states("acct-1", None, 0, "")
    halted = req.list_risk_states("acct-1", "halted", 50, "tok")
    assert every == ad.ListRiskStatesRequest(account_id="acct-1")
    assert halted == ad.ListRiskStatesRequest(account_id="acct-1", trading_state=t.TRADING_STATE_HALTED,
                                              page_size=50, page_token="tok")


@pytest.mark.parametrize("state", ["PAUSED", "UNSPECIFIED"])
def test_list_risk_states_with_an_unknown_state_filter_is_refused_naming_the_field(state: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        req.list_risk_states("acct-1", state, 0, "")
    assert [v.field for v in err.value.field_violations] == ["trading_state"]


def test_list_risk_states_returns_a_page_of_typed_entries() -> None:
    resp = ad.ListRiskStatesResponse(
        entries=[ad.RiskStateEntry(state=t.RiskState(trader_id="bot-1", account_id="acct-1",
                                                     trading_state=t.TRADING_STATE_HALTED, pending_order_count=2),
                                   owner_sidecar="sc-b", local=False, age_seconds=1.5),
                 ad.RiskStateEntry(state=t.RiskState(trader_id="bot-2", account_id="acct-1",
                                                     trading_state=t.TRADING_STATE_ACTIVE), local=True)],
        next_page_token="next")
    client, rec = admin(resp)
    with client:
        page = client.list_risk_states("acct-1", "HALTED", page_size=2)
    assert rec.calls == [("ListRiskStates", ad.ListRiskStatesRequest(
        account_id="acct-1", trading_state=t.TRADING_STATE_HALTED, page_size=2))]
    assert page.next_page_token == "next"
    first, second = page.items
    assert isinstance(first, RiskStateEntry) and first.state is not None
    assert (first.state.trader_id, first.state.trading_state, first.state.pending_order_count) == ("bot-1",
                                                                                                    "HALTED", 2)
    assert (first.owner_sidecar, first.local, first.age_seconds) == ("sc-b", False, 1.5)
    assert second.local and second.owner_sidecar == "" and second.raw is resp.entries[1]


# ---- pause / resume scopes --------------------------------------------------------------------------


def test_trader_pause_still_returns_the_traders_risk_state() -> None:
    client, rec = admin(ad.PauseTradingResponse(state=t.RiskState(trader_id="bot-1", account_id="acct-1",
                                                                   trading_state=t.TRADING_STATE_HALTED),
                                                control_state_version=7))
    with client:
        state = client.pause_trading("bot-1", "acct-1", reason="why")
    assert isinstance(state, RiskState) and state.trader_id == "bot-1" and state.trading_state == "HALTED"
    request = rec.calls[0][1]
    assert isinstance(request, ad.PauseTradingRequest)
    assert (request.trader_id, request.account_id, request.all_accounts) == ("bot-1", "acct-1", False)


@pytest.mark.parametrize("trader_id", [None, ""])
def test_account_pause_sends_no_trader_and_returns_the_scope_pause_with_its_version(trader_id: str | None) -> None:
    client, rec = admin(scope_response())
    with client:
        scope = client.pause_trading(trader_id, "acct-1", trading_state="REDUCING", duration=600,  # type: ignore[arg-type]
                                     reason="exchange incident")
    request = rec.calls[0][1]
    assert isinstance(request, ad.PauseTradingRequest)
    assert (request.trader_id, request.account_id, request.all_accounts) == ("", "acct-1", False)
    assert request.trading_state == t.TRADING_STATE_REDUCING and request.duration.seconds == 600
    assert isinstance(scope, ScopePause)
    assert (scope.account_id, scope.all_accounts, scope.trading_state) == ("acct-1", False, "HALTED")
    assert scope.paused_until is not None and scope.paused_until.timestamp() == T0 + 600
    assert scope.since is not None and scope.since.timestamp() == T0
    assert (scope.reason, scope.actor, scope.origin_sidecar, scope.control_state_version) == (
        "exchange incident", "alice", "sc-a", 42)


def test_every_account_pause_sends_all_accounts() -> None:
    client, rec = admin(scope_response(account_id="", all_accounts=True))
    with client:
        scope = client.pause_trading(None, all_accounts=True, reason="venue down")
    request = rec.calls[0][1]
    assert isinstance(request, ad.PauseTradingRequest)
    assert (request.trader_id, request.account_id, request.all_accounts) == ("", "", True)
    assert scope.all_accounts and scope.account_id == "" and scope.control_state_version == 42


def test_a_scope_pause_answered_without_scope_pause_is_an_invalid_response() -> None:
    client, _ = admin(ad.PauseTradingResponse(control_state_version=3))
    with client, pytest.raises(InvalidResponseError):
        client.pause_trading(None, "acct-1")


def test_trader_resume_returns_its_state_and_scope_resumes_return_the_version() -> None:
    client, rec = admin(ad.ResumeTradingResponse(state=t.RiskState(trader_id="bot-1",
                                                                   trading_state=t.TRADING_STATE_ACTIVE),
                                                 control_state_version=9))
    with client:
        state = client.resume_trading("bot-1", "acct-1")
        account_version = client.resume_trading(None, "acct-1")
        all_version = client.resume_trading(None, all_accounts=True)
    assert isinstance(state, RiskState) and state.trading_state == "ACTIVE"
    assert account_version == 9 and all_version == 9
    sent = [(r.trader_id, r.account_id, r.all_accounts) for _, r in rec.calls
            if isinstance(r, ad.ResumeTradingRequest)]
    assert sent == [("bot-1", "acct-1", False), ("", "acct-1", False), ("", "", True)]


def test_async_admin_client_answers_the_same_scopes() -> None:
    async def run() -> tuple[Any, Any, Any]:
        async with AsyncAdminClient("127.0.0.1:1") as client:
            client._unary = AsyncRecorder(scope_response())  # type: ignore[method-assign,assignment]
            scope = await client.pause_trading(None, "acct-1")
            client._unary = AsyncRecorder(ad.ResumeTradingResponse(control_state_version=5))  # type: ignore[method-assign,assignment]
            version = await client.resume_trading(None, "acct-1")
            client._unary = AsyncRecorder(ad.ListRiskStatesResponse(  # type: ignore[method-assign,assignment]
                entries=[ad.RiskStateEntry(state=t.RiskState(trader_id="bot-1"), local=True)]))
            page = await client.list_risk_states("acct-1")
            return scope, version, page

    scope, version, page = asyncio.run(run())
    assert isinstance(scope, ScopePause) and scope.control_state_version == 42
    assert version == 5
    assert page.items[0].state.trader_id == "bot-1" and page.next_page_token == ""


# ---- CanTrade control_state_version -----------------------------------------------------------------


def test_decision_exposes_the_control_state_version_it_was_decided_at() -> None:
    decision = Decision.from_proto(rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED,
                                                       control_state_version=123))
    assert decision.allowed and decision.control_state_version == 123
    assert Decision.unavailable("down", fail_open=False).control_state_version == 0


# ---- RiskConfig.is_active ---------------------------------------------------------------------------


def test_a_client_built_config_does_not_send_is_active_so_the_server_default_active_applies() -> None:
    config = RiskConfig(account_id="acct-1", config_id="base")
    assert config.is_active is None
    assert not config.to_proto().HasField("is_active")


@pytest.mark.parametrize("value", [True, False])
def test_an_explicit_is_active_is_sent(value: bool) -> None:
    m = RiskConfig(account_id="acct-1", config_id="base", is_active=value).to_proto()
    assert m.HasField("is_active") and m.is_active is value


def test_a_config_read_without_is_active_is_active_like_the_server_default() -> None:
    assert RiskConfig.from_proto(t.RiskConfiguration(account_id="a", config_id="c")).is_active is True
    assert RiskConfig.from_proto(t.RiskConfiguration(account_id="a", config_id="c", is_active=False)).is_active is False


def test_account_limits_and_heartbeat_fields_round_trip_and_unset_stay_unset() -> None:
    config = RiskConfig(account_id="acct-1", config_id="c", account_daily_loss_percentage=3.0,
                        account_max_gross_exposure=1e6, heartbeat_timeout_seconds=30,
                        heartbeat_pause_state="reducing")
    msg = config.to_proto()
    back = RiskConfig.from_proto(msg)
    assert msg.heartbeat_pause_state == t.TRADING_STATE_REDUCING and not msg.HasField("account_max_net_exposure")
    assert back.account_daily_loss_percentage == 3.0 and back.account_max_gross_exposure == 1e6
    assert back.heartbeat_timeout_seconds == 30 and back.heartbeat_pause_state == "REDUCING"
    assert back.account_max_net_exposure is None and back.account_max_drawdown_percentage is None
    assert RiskConfig.from_proto(t.RiskConfiguration()).heartbeat_pause_state is None
