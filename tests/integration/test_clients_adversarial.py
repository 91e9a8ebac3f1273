"""The Python clients against servers that answer wrong on purpose (tests/support/adversary.py).

For every scenario, `can_trade` of RiskClient and AsyncRiskClient returns a denial or raises a
TradeGuardError, never allows, and returns within its deadline plus 100 ms. Also: a retried CanTrade
repeats its client_order_id, corrupt status details never escape as DecodeError, and an
AsyncRiskClient survives a second asyncio.run().
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.adversary import SCENARIOS, AdversaryFleet, Scenario, answer, fleet, latest_return, serve
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_client import (
    AsyncRiskClient,
    ClientClosedError,
    Decision,
    InvalidResponseError,
    Order,
    RetryPolicy,
    RiskClient,
    SidecarUnavailableError,
    TradeGuardError,
)

pytestmark = pytest.mark.integration

# The adversaries speak unary gRPC only (they answer once the request is complete): these tests pin the unary path
# (session=False). The Session path's failures: tests/integration/test_session_client.py.

DEADLINE = 0.5
ORDER = Order("BTCUSDT", "BUY", 0.01, 50_000, exchange="binance")
ALLOWED = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED, reason="all checks passed")


@pytest.fixture(scope="module")
def adversaries() -> Iterator[AdversaryFleet]:
    with fleet() as running:
        yield running


def check_outcome(scenario: Scenario, outcome: Decision | TradeGuardError, elapsed: float) -> None:
    assert elapsed <= latest_return(DEADLINE, scenario), f"{scenario.name}: returned after {elapsed:.3f}s"
    if isinstance(outcome, TradeGuardError):
        assert scenario.expect == "error", f"{scenario.name}: raised {outcome!r}, expected a {scenario.expect}"
        return
    assert not outcome.allowed, f"{scenario.name}: ALLOWED {outcome}"
    if scenario.expect == "invalid":
        assert outcome.code == "INVALID_RESPONSE", f"{scenario.name}: {outcome.code} {outcome.reason}"
    elif scenario.expect == "unavailable":
        assert outcome.code == "SIDECAR_UNAVAILABLE", f"{scenario.name}: {outcome.code} {outcome.reason}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_sync_can_trade_against_an_adversary_denies_or_raises_within_its_deadline(
        scenario: Scenario, adversaries: AdversaryFleet) -> None:
    with RiskClient(adversaries.address(scenario), session=False, timeout=DEADLINE) as guard:
        start = time.monotonic()
        try:
            outcome: Decision | TradeGuardError = guard.can_trade("bot-1", "acct-1", ORDER)
        except TradeGuardError as err:
            outcome = err
        check_outcome(scenario, outcome, time.monotonic() - start)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_async_can_trade_against_an_adversary_denies_or_raises_within_its_deadline(
        scenario: Scenario, adversaries: AdversaryFleet) -> None:
    async with AsyncRiskClient(adversaries.address(scenario), session=False, timeout=DEADLINE) as guard:
        start = time.monotonic()
        try:
            outcome: Decision | TradeGuardError = await guard.can_trade("bot-1", "acct-1", ORDER)
        except TradeGuardError as err:
            outcome = err
        check_outcome(scenario, outcome, time.monotonic() - start)


IMPOSSIBLE = [s for s in SCENARIOS if s.expect == "invalid"]


@pytest.mark.parametrize("scenario", IMPOSSIBLE, ids=[s.name for s in IMPOSSIBLE])
def test_fail_open_never_opens_for_an_answer_that_breaks_the_protocol(scenario: Scenario,
                                                                      adversaries: AdversaryFleet) -> None:
    with RiskClient(adversaries.address(scenario), session=False, timeout=DEADLINE, fail_open=True) as guard:
        decision = guard.can_trade("bot-1", "acct-1", ORDER)

    assert not decision and decision.code == "INVALID_RESPONSE"


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.name.endswith("corrupt_details")],
                         ids=lambda s: s.name)
def test_corrupt_status_details_never_escape_as_decode_error_from_other_methods(scenario: Scenario) -> None:
    with (serve(scenario) as adversary, RiskClient(adversary.address, session=False, timeout=DEADLINE) as guard,
          pytest.raises(TradeGuardError) as caught):
        guard.report_equity("bot-1", "acct-1", 10_000)

    assert caught.value.code.name == ("UNAVAILABLE" if "UNAVAILABLE" in scenario.name else "INVALID_ARGUMENT")
    assert caught.value.field_violations == ()


def test_other_methods_raise_invalid_response_error_for_an_ok_without_a_message() -> None:
    scenario = next(s for s in SCENARIOS if s.name == "status_OK_without_a_message")
    with (serve(scenario) as adversary, RiskClient(adversary.address, session=False, timeout=DEADLINE) as guard,
          pytest.raises(InvalidResponseError, match="without a message")):
        guard.get_risk_state("bot-1", "acct-1")


async def test_async_other_methods_raise_invalid_response_error_for_an_ok_without_a_message() -> None:
    scenario = next(s for s in SCENARIOS if s.name == "status_OK_without_a_message")
    with serve(scenario) as adversary:
        async with AsyncRiskClient(adversary.address, session=False, timeout=DEADLINE) as guard:
            with pytest.raises(InvalidResponseError, match="without a message"):
                await guard.report_equity("bot-1", "acct-1", 10_000)


def order_ids(bodies: list[bytes]) -> list[str]:
    return [rs.CanTradeRequest.FromString(b).order.client_order_id for b in bodies]


def test_a_retried_can_trade_repeats_the_client_order_id_the_client_made() -> None:
    scenario = answer("answer_lost_then_allowed", "allow", ALLOWED, fail_first=2)
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with serve(scenario) as adversary, RiskClient(adversary.address, session=False, timeout=2.0, retry=retry) as guard:
        decision = guard.can_trade("bot-1", "acct-1", ORDER)
        again = guard.can_trade("bot-1", "acct-1", ORDER)

    ids = order_ids(adversary.requests)
    assert decision and decision.client_order_id.startswith("tg-")
    assert ids[:3] == [decision.client_order_id] * 3, "every retry of one call carries the same id"
    assert ids[3] == again.client_order_id != decision.client_order_id, "a new call is a new order"


async def test_async_retried_can_trade_repeats_the_callers_client_order_id() -> None:
    scenario = answer("answer_lost_then_allowed", "allow", ALLOWED, fail_first=1)
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with serve(scenario) as adversary:
        async with AsyncRiskClient(adversary.address, session=False, timeout=2.0, retry=retry) as guard:
            order = Order("BTCUSDT", "BUY", 0.01, 50_000, client_order_id="bot-1:order-7")
            decision = await guard.can_trade("bot-1", "acct-1", order)

    assert decision and decision.client_order_id == "bot-1:order-7"
    assert order_ids(adversary.requests) == ["bot-1:order-7"] * 2


def test_an_unreachable_decision_names_the_order_id_so_the_bot_can_retry_with_it() -> None:
    scenario = next(s for s in SCENARIOS if s.name == "status_UNAVAILABLE")
    with serve(scenario) as adversary, RiskClient(adversary.address, session=False, timeout=DEADLINE) as guard:
        decision = guard.can_trade("bot-1", "acct-1", ORDER)

    assert decision.sidecar_unavailable and decision.client_order_id in order_ids(adversary.requests)


def test_sync_calls_after_close_raise_client_closed_error() -> None:
    scenario = answer("allowed", "allow", ALLOWED)
    with serve(scenario) as adversary:
        guard = RiskClient(adversary.address, session=False, timeout=DEADLINE)
        assert guard.can_trade("bot-1", "acct-1", ORDER)
        guard.close()

        with pytest.raises(ClientClosedError) as caught:
            guard.can_trade("bot-1", "acct-1", ORDER)
        with pytest.raises(ClientClosedError):
            guard.report_equity("bot-1", "acct-1", 1.0)

    assert isinstance(caught.value, TradeGuardError) and caught.value.code.name == "CANCELLED"


def test_an_async_client_works_across_two_asyncio_runs() -> None:
    scenario = answer("allowed", "allow", ALLOWED)
    with serve(scenario) as adversary:
        guard = AsyncRiskClient(adversary.address, session=False, timeout=DEADLINE)

        first = asyncio.run(guard.can_trade("bot-1", "acct-1", ORDER))
        second = asyncio.run(guard.can_trade("bot-1", "acct-1", ORDER))
        asyncio.run(guard.close())

    assert first and second and first.client_order_id != second.client_order_id
    assert adversary.calls == 2


def test_unreachable_is_still_a_decision_not_an_exception() -> None:
    scenario = next(s for s in SCENARIOS if s.name == "connection_reset")
    with serve(scenario) as adversary, RiskClient(adversary.address, session=False, timeout=DEADLINE) as guard:
        decision = guard.can_trade("bot-1", "acct-1", ORDER)
        with pytest.raises(SidecarUnavailableError):
            guard.report_equity("bot-1", "acct-1", 1.0)

    assert decision.sidecar_unavailable and not decision
