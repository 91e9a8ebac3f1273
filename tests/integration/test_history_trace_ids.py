"""A caller's W3C `traceparent` (else its `x-request-id`) reaches risk_state_history.trace_id whether or not the
sidecar traces (`--tracing`), on the real PostgreSQL; the metadata is read only when a history row is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest

from tests.support.pg import fresh_database, plain_dsn
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.observability.tracing import bind_caller, caller_trace_id, parse_traceparent

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("tradeguard_traceids") as url:
        yield url


def trace_ids(url: str, trader_id: str) -> list[str | None]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return [r[0] for r in conn.execute(
            "SELECT trace_id FROM risk_state_history WHERE trader_id = %s ORDER BY id", (trader_id,)).fetchall()]


async def report(ch: grpc.aio.Channel, trader: str, equity: float, metadata: Any = None) -> None:
    await rsg.RiskServiceStub(ch).ReportEquity(
        rs.ReportEquityRequest(trader_id=trader, account_id="acct", equity=equity), metadata=metadata, timeout=10)


@pytest.mark.parametrize("traced", [False, True], ids=["tracing-off", "tracing-on"])
async def test_a_callers_traceparent_is_recorded_in_history_whether_or_not_tracing_is_on(
        pg_url: str, traced: bool) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True, tracing=traced) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        await report(ch, "bot-1", 10_000.0, (("traceparent", TRACEPARENT),))
        await report(ch, "bot-1", 10_001.0, (("traceparent", TRACEPARENT), ("x-request-id", "req-1")))
        assert await sc.store.flush(timeout=10)
    assert trace_ids(pg_url, "bot-1") == [TRACE_ID, TRACE_ID]


async def test_x_request_id_is_recorded_when_there_is_no_traceparent_and_nothing_leaks_to_the_next_call(
        pg_url: str) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        await report(ch, "bot-1", 10_000.0, (("x-request-id", "req-42"),))
        await report(ch, "bot-1", 10_001.0)  # no ids at all
        await report(ch, "bot-1", 10_002.0, (("traceparent", "not-a-traceparent"), ("x-request-id", "req-43")))
        await report(ch, "bot-1", 10_003.0, (("x-request-id", "x" * 65),))  # too long for the column: not recorded
        assert await sc.store.flush(timeout=10)
    assert trace_ids(pg_url, "bot-1") == ["req-42", None, "req-43", None]


async def test_an_admin_pause_records_its_callers_trace_id(pg_url: str) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        # The trader is this sidecar's (PostgreSQL = cluster mode: a kill switch for a trader nobody owns is a stored
        # control change, applied by whichever sidecar claims it).
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(
            trader_id="bot-2", account_id="acct", equity=10_000.0), timeout=10)
        await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-2", account_id="acct", trading_state=t.TRADING_STATE_HALTED, reason="ops"),
            metadata=(("traceparent", TRACEPARENT),), timeout=10)
        assert await sc.store.flush(timeout=10)
    assert TRACE_ID in trace_ids(pg_url, "bot-2")


@pytest.mark.parametrize(("value", "expected"), [
    (TRACEPARENT, TRACE_ID),
    (f"01-{TRACE_ID}-00f067aa0ba902b7-01-future", TRACE_ID),  # a later version may append fields
    (f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four
    (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE_ID}-{'0' * 16}-01", None),
    (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", None),
    ("00-abc-def-01", None),
    ("", None),
])
def test_traceparent_parsing_follows_w3c_trace_context(value: str, expected: str | None) -> None:
    assert parse_traceparent(value) == expected


class FakeCall:
    def __init__(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.metadata = metadata
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        self.reads += 1
        return self.metadata


def test_caller_ids_come_from_a_grpc_call_or_a_header_mapping() -> None:
    call = FakeCall((("x-request-id", b"req-7"), ("traceparent", TRACEPARENT.encode())))
    bind_caller(call)
    assert caller_trace_id() == TRACE_ID
    bind_caller({"x-request-id": "req-8"})  # e.g. HTTP headers (lower-case names)
    assert caller_trace_id() == "req-8"
    bind_caller(None)
    assert caller_trace_id() is None


def test_binding_a_call_does_not_read_its_metadata_until_a_history_row_asks() -> None:
    call = FakeCall((("traceparent", TRACEPARENT),))
    bind_caller(call)
    assert call.reads == 0
    assert caller_trace_id() == TRACE_ID
    assert call.reads == 1
    bind_caller(None)  # this test runs in the main thread's context: leave nothing bound
