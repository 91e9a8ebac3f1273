"""Admission's penalties (api/admission.py, layers 3-5): a repeat offender on probation is penalized again at once
and for longer, a busy bot penalized once is not shed on an idle loop for a rate it is allowed, a shed call is
told what is left of its penalty, and a shed unary call ends without an exception."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard_server.api.admission import (
    FLOOD_TRADER,
    HOT,
    MAX_PENALTY_S,
    OVERLOAD_TAIL_S,
    PENALTY_GROWTH,
    PROBATION_MIN_S,
    Admission,
)

LIMIT = 40
FLOOD = rs.CanTradeRequest(trader_id="flood", account_id="a").SerializeToString()
GOOD = rs.CanTradeRequest(trader_id="good", account_id="a").SerializeToString()
PARSE = rs.CanTradeRequest.FromString
KEY = "flood\0"  # the flooding trader's key: its id and the credential it presented (none)


def admission() -> Admission:
    a = Admission(max_calls_per_connection=0, max_calls_per_trader=LIMIT, max_streams_per_connection=0,
                  admin_max_concurrent=0, overload_lag_ms=20.0, shed_hold_s=0.0, retry_after_s=1.0)
    a.now = 1000.0
    return a


def window(a: Admission, calls: int, body: bytes = FLOOD, peer: str = "ipv4:10.0.0.1:1") -> list[str]:
    """One 100 ms window: the bot's call first (so that the flood is above the average trader), then `calls`."""
    a.flooding("ipv4:10.0.0.9:9", GOOD, PARSE)
    out = [a.flooding(peer, body, PARSE) for _ in range(calls)]
    return out


def advance(a: Admission, seconds: float, busy: float) -> None:
    """Time passes with the loop keeping up (no late tick), its thread `busy` of the last window."""
    a.now += seconds
    a.busy = busy
    a.new_window()
    a.observe_lag(0.0)  # the next tick


def test_a_trader_that_floods_again_on_probation_is_penalized_again_at_once_and_four_times_longer() -> None:
    a = admission()
    a.observe_lag(1.0)  # overloaded
    out = window(a, LIMIT + 5)
    assert out[:LIMIT] == [""] * LIMIT and out[LIMIT:] == [FLOOD_TRADER] * 5
    assert a.retry_after(KEY) == 1.0
    advance(a, 1.5, busy=0.4)  # penalty over; the loop keeps up but is under load (a flood coming back)
    assert not a.overloaded and a.watching  # on probation: still counted
    out = window(a, LIMIT // 4 + 1)
    assert out[-1] == FLOOD_TRADER and out[:-1] == [""] * (LIMIT // 4)
    assert a.retry_after(KEY) == PENALTY_GROWTH  # 4 s: what is left of it
    advance(a, PENALTY_GROWTH + 0.5, busy=0.4)
    assert window(a, LIMIT // 4 + 1)[-1] == FLOOD_TRADER
    assert a.retry_after(KEY) == PENALTY_GROWTH ** 2
    for _ in range(3):  # and so on, up to MAX_PENALTY_S
        advance(a, a.retry_after(KEY) + 0.5, busy=0.4)
        assert window(a, LIMIT // 4 + 1)[-1] == FLOOD_TRADER
    assert a.retry_after(KEY) == MAX_PENALTY_S


def test_a_busy_bot_penalized_once_is_not_shed_on_an_idle_loop_for_a_rate_it_is_allowed() -> None:
    a = admission()
    a.observe_lag(1.0)
    assert window(a, LIMIT + 1)[-1] == FLOOD_TRADER
    advance(a, 1.5, busy=0.1)  # the loop idle: its whole limit applies on probation
    assert window(a, LIMIT) == [""] * LIMIT
    advance(a, 0.1, busy=0.1)
    assert window(a, LIMIT) == [""] * LIMIT


def test_after_its_probation_a_trader_starts_again_from_the_first_penalty() -> None:
    a = admission()
    a.observe_lag(1.0)
    assert window(a, LIMIT + 1)[-1] == FLOOD_TRADER
    advance(a, 1.0 + 1.0 + PROBATION_MIN_S + 0.1, busy=0.1)  # penalty, then probation, over
    assert not a.watching and not a.probation_traders
    a.observe_lag(1.0)
    assert window(a, LIMIT + 1)[-1] == FLOOD_TRADER
    assert a.retry_after(KEY) == 1.0


class RecordingContext:
    """What grpc.aio's ServicerContext gets from a shed unary call."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, Any], ...] = ()

    def peer(self) -> str:
        return "ipv4:10.0.0.1:1"

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing: Any) -> None:
        self.trailing = tuple(trailing)

    async def abort(self, *_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a shed unary call must not abort (its traceback is cyclic garbage)")


def test_a_shed_unary_call_ends_with_its_status_set_and_no_exception_and_says_what_is_left_of_its_penalty() -> None:
    a = admission()
    answered = []

    async def inner(raw: bytes, _context: Any) -> bytes:
        answered.append(raw)
        return raw

    handler = a.wrap({"CanTrade": grpc.unary_unary_rpc_method_handler(inner)}, HOT, {"CanTrade": PARSE})
    behavior = handler["CanTrade"].unary_unary
    assert behavior is not None
    a.observe_lag(1.0)
    window(a, LIMIT + 1)
    advance(a, 1.5, busy=0.4)
    window(a, LIMIT // 4 + 1)  # penalized again: 4 s
    a.now += 1.0
    context = RecordingContext()
    assert asyncio.run(behavior(FLOOD, context)) is None
    assert answered == []
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_calls_per_trader=40" in context.details and "retry after 3 s" in context.details
    trailing = dict(context.trailing)
    assert trailing["retry-after"] == "3"
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == 3


def test_the_overload_lasts_a_second_after_the_last_late_tick_whatever_the_first_penalty() -> None:
    for retry_after_s, tail in ((3600.0, OVERLOAD_TAIL_S), (0.3, 0.3)):
        a = Admission(max_calls_per_connection=0, max_calls_per_trader=LIMIT, max_streams_per_connection=0,
                      admin_max_concurrent=0, overload_lag_ms=20.0, shed_hold_s=0.0, retry_after_s=retry_after_s)
        a.now = 1000.0
        a.observe_lag(0.025)
        a.now += tail - 0.05
        a.observe_lag(0.0)
        assert a.overloaded, "a flood between two late ticks is still counted"
        a.now += 0.1
        a.observe_lag(0.0)
        assert not a.overloaded
