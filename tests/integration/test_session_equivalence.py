"""Property (issue 18): a Session answers exactly what the unary RPCs answer.

Two identical in-process sidecars (memory store, each on its own ManualClock at the same instant). Hypothesis draws a
sequence of calls (valid and invalid CanTrade with and without orders, every report, clock steps applied to both);
sidecar A gets every call as a unary RPC, sidecar B gets each one either over one open Session or as a unary RPC,
interleaved at random. Every answer of B equals A's: the same response message, or the same google.rpc.Status
(code, message, details) for a rejected call.

Normalised (per-call values, not state): `CanTradeResponse.client_order_id` of an order sent without one (each
sidecar generates its own id). Nothing else: both clocks stand still between steps, so every timestamp is equal.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

T0 = 1_767_268_800.0
ACCOUNT = "acct-eq"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
ORDER_IDS = ["", "o-1", "o-2", "o-3"]
STATUSES = [t.ORDER_STATUS_ACCEPTED, t.ORDER_STATUS_PARTIALLY_FILLED, t.ORDER_STATUS_FILLED,
            t.ORDER_STATUS_CANCELLED, t.ORDER_STATUS_UNSPECIFIED]
PRICES = {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}

orders = st.builds(
    lambda symbol, side, qty, reduce, oid: t.OrderIntent(
        symbol=symbol, exchange="binance", side=side, quantity=qty, price=PRICES.get(symbol, 1.0),
        reduce_only=reduce, client_order_id=oid),
    st.sampled_from([*SYMBOLS, "bad symbol!"]), st.sampled_from([t.SIDE_BUY, t.SIDE_SELL]),
    st.sampled_from([0.001, 0.01, 0.5, -1.0]), st.booleans(), st.sampled_from(ORDER_IDS))
traders = st.sampled_from(["t1", "t2", ""])
calls = st.one_of(
    st.tuples(st.just("can_trade"), traders, st.none() | orders),
    st.tuples(st.just("report_equity"), traders, st.sampled_from([10_000.0, 9_400.0, 10_500.0, 0.0, -5.0])),
    st.tuples(st.just("report_trade"), traders, st.tuples(st.sampled_from(["x1", "x2", "x3"]),
                                                         st.sampled_from([-150.0, 40.0]))),
    st.tuples(st.just("report_positions"), traders, st.sampled_from([0.0, 0.01, 0.02])),
    st.tuples(st.just("report_order"), traders, st.tuples(st.sampled_from([*ORDER_IDS[1:], "nope"]),
                                                         st.sampled_from(STATUSES),
                                                         st.sampled_from([0.0, 0.005, 0.01])),),
    st.tuples(st.just("report_prices"), traders, st.sampled_from([49_000.0, 50_000.0, -1.0])),
    st.tuples(st.just("advance"), st.just(""), st.sampled_from([1.0, 61.0, 1801.0])),
)
steps = st.lists(st.tuples(calls, st.booleans()), min_size=1, max_size=25)  # (call, over the session?)


def build(kind: str, trader: str, arg: Any) -> Any:
    ids = {"trader_id": trader, "account_id": ACCOUNT}
    if kind == "can_trade":
        return rs.CanTradeRequest(**ids, order=arg) if arg is not None else rs.CanTradeRequest(**ids)
    if kind == "report_equity":
        return rs.ReportEquityRequest(**ids, equity=arg)
    if kind == "report_trade":
        return rs.ReportTradeRequest(**ids, trade_id=arg[0], symbol="BTCUSDT", side=t.SIDE_BUY, realized_pnl=arg[1])
    if kind == "report_positions":
        held = [t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=arg,
                           entry_price=50_000, mark_price=50_000)] if arg else []
        return rs.ReportPositionsRequest(**ids, positions=held)
    if kind == "report_order":
        return rs.ReportOrderRequest(**ids, client_order_id=arg[0], status=arg[1], filled_quantity=arg[2])
    return rs.ReportPricesRequest(**ids, prices=[t.PriceMark(symbol="BTCUSDT", price=arg)])


METHOD = {"can_trade": "CanTrade", "report_equity": "ReportEquity", "report_trade": "ReportTrade",
          "report_positions": "ReportPositions", "report_order": "ReportOrder", "report_prices": "ReportPrices"}


async def unary(stub: rsg.RiskServiceStub, kind: str, request: Any) -> Any:
    try:
        return await getattr(stub, METHOD[kind])(request)
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)
        if status is None:
            status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
        return status


def normalised(kind: str, request: Any, answer: Any) -> Any:
    if kind == "can_trade" and isinstance(answer, rs.CanTradeResponse) and request.HasField("order") \
            and not request.order.client_order_id:
        answer.client_order_id = ""
    return answer


def test_session_answers_equal_unary_answers_for_random_interleavings() -> None:
    loop = asyncio.new_event_loop()
    clocks = [ManualClock(T0), ManualClock(T0)]
    stack: list[Any] = []

    async def start() -> tuple[rsg.RiskServiceStub, rsg.RiskServiceStub]:
        stubs = []
        for clock in clocks:
            cm = running_sidecar(clock=clock)
            sc = await cm.__aenter__()
            ch = grpc.aio.insecure_channel(sc.address)
            stack.append((cm, ch))
            stubs.append(rsg.RiskServiceStub(ch))
        return stubs[0], stubs[1]

    async def stop() -> None:
        for cm, ch in reversed(stack):
            await ch.close()
            await cm.__aexit__(None, None, None)

    a, b = loop.run_until_complete(start())
    examples = itertools.count()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps)
    def check(sequence: list[tuple[tuple[str, str, Any], bool]]) -> None:
        prefix = f"e{next(examples)}-"  # every example on traders of its own

        async def run() -> None:
            session = b.Session()
            request_id = 0
            try:
                for (kind, trader, arg), over_session in sequence:
                    if kind == "advance":
                        for clock in clocks:
                            clock.advance(arg)
                        continue
                    request = build(kind, prefix + trader if trader else "", arg)
                    expected = normalised(kind, request, await unary(a, kind, request))
                    if over_session:
                        request_id += 1
                        await session.write(rs.SessionRequest(request_id=request_id, **{kind: request}))
                        answer = await session.read()
                        assert answer.request_id == request_id
                        got: Any = answer.error if answer.WhichOneof("result") == "error" else getattr(answer, kind)
                    else:
                        got = await unary(b, kind, request)
                    got = normalised(kind, request, got)
                    assert type(got) is type(expected), (kind, request, expected, got)
                    assert got == expected, (kind, request)
                    if isinstance(got, status_pb2.Status):
                        assert got.code != code_pb2.INTERNAL and got.code != code_pb2.UNKNOWN
                await session.done_writing()
                assert await session.read() == grpc.aio.EOF  # type: ignore[attr-defined]
            finally:
                session.cancel()

        loop.run_until_complete(run())

    try:
        check()
    finally:
        loop.run_until_complete(stop())
        loop.close()
