"""tradeguard_client argument checks: fail_open, deadlines, order ids, and one error family (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tradeguard.v1 import types_pb2 as t
from tradeguard_client import AsyncRiskClient, InvalidArgumentError, Order, RiskClient, TradeGuardError
from tradeguard_client import _requests as req

ORDER = Order("BTCUSDT", "BUY", 0.01, 50_000)


@pytest.mark.parametrize("value", ["false", "False", "0", "", 0, 1, None, [False]])
@pytest.mark.parametrize("cls", [RiskClient, AsyncRiskClient])
def test_fail_open_that_is_not_a_bool_is_refused_at_construction(cls: type[RiskClient], value: object) -> None:
    with pytest.raises(TypeError, match="fail_open: must be True or False"):
        cls("127.0.0.1:1", fail_open=value)  # type: ignore[arg-type]


def test_fail_open_set_later_is_checked_too() -> None:
    with RiskClient("127.0.0.1:1") as guard:
        with pytest.raises(TypeError, match="fail_open"):
            guard.fail_open = "false"  # type: ignore[assignment]
        guard.fail_open = True
        assert guard.fail_open is True


def test_fail_open_per_call_that_is_not_a_bool_raises_invalid_argument_before_sending() -> None:
    with RiskClient("127.0.0.1:1") as guard, pytest.raises(InvalidArgumentError) as caught:
        guard.can_trade("bot-1", "acct-1", ORDER, fail_open="false")  # type: ignore[arg-type]

    assert caught.value.code.name == "INVALID_ARGUMENT" and caught.value.violations.keys() == {"fail_open"}


@pytest.mark.parametrize("timeout", ["1", True, None])
def test_a_deadline_that_is_not_a_number_is_refused_at_construction(timeout: object) -> None:
    with pytest.raises(TypeError, match="timeout"):
        RiskClient("127.0.0.1:1", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), "1"])
def test_can_trade_with_a_bad_per_call_deadline_raises_a_trade_guard_error(timeout: object) -> None:
    with RiskClient("127.0.0.1:1") as guard, pytest.raises(TradeGuardError) as caught:
        guard.can_trade("bot-1", "acct-1", ORDER, timeout=timeout)  # type: ignore[arg-type]

    assert caught.value.violations.keys() == {"timeout"}


@pytest.mark.parametrize(("order", "field"), [
    (Order("BTCUSDT", "HOLD", 1, 1), "side"),
    (Order(123, "BUY", 1, 1), ""),  # type: ignore[arg-type]
])
def test_can_trade_with_a_bad_order_raises_invalid_argument_which_is_a_trade_guard_error(order: Order,
                                                                                        field: str) -> None:
    with RiskClient("127.0.0.1:1") as guard, pytest.raises(TradeGuardError) as caught:
        guard.can_trade("bot-1", "acct-1", order)

    assert isinstance(caught.value, InvalidArgumentError) and isinstance(caught.value, ValueError)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert set(caught.value.violations) == ({field} if field else set())


@pytest.mark.parametrize("when", [
    datetime(2026, 1, 1),  # naive
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # before year 1 in UTC
])
def test_a_report_with_a_timestamp_that_cannot_be_sent_raises_invalid_argument(when: datetime) -> None:
    with pytest.raises(InvalidArgumentError, match="observed_at"):
        req.report_equity("bot-1", "acct-1", 1.0, when)


def test_an_order_without_client_order_id_gets_a_fresh_one_per_request() -> None:
    first = req.can_trade("bot-1", "acct-1", ORDER)
    second = req.can_trade("bot-1", "acct-1", ORDER)

    assert first.order.client_order_id.startswith("tg-") and len(first.order.client_order_id) == 35
    assert first.order.client_order_id != second.order.client_order_id


def test_an_order_with_its_own_client_order_id_keeps_it_and_the_callers_message_is_not_changed() -> None:
    own = req.can_trade("bot-1", "acct-1", Order("BTCUSDT", "BUY", 1, 1, client_order_id="bot-1:42"))
    msg = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1, price=1)
    made = req.can_trade("bot-1", "acct-1", msg)

    assert own.order.client_order_id == "bot-1:42"
    assert made.order.client_order_id and msg.client_order_id == ""


def test_a_request_without_an_order_has_no_client_order_id() -> None:
    assert not req.can_trade("bot-1", "acct-1", None).HasField("order")


def test_aware_timestamps_still_convert() -> None:
    assert req.report_equity("b", "a", 1.0, datetime(2026, 1, 1, tzinfo=UTC)).observed_at.seconds == 1_767_225_600
