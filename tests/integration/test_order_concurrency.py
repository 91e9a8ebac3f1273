"""64 concurrent CanTrade calls for one trader and symbol against a limit that fits exactly 10 (issue 16, "What it
must show" 4): exactly 10 are allowed, exactly 10 orders are pending, and every other call is denied by that
limit. The calls are in flight together (asyncio.gather), over one channel or over several.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.sidecar import start_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IDS = {"trader_id": "racer", "account_id": "acct-race"}
CALLS, FITS = 64, 10

# Each limit fits exactly 10 orders of 1 BTCUSDT at 100 (equity 10,000), with pending orders counted.
LIMITS: dict[str, tuple[dict[str, Any], int]] = {
    "max_position_size_percentage": ({"max_position_size_percentage": 10.0}, t.DECISION_CODE_POSITION_SIZE_LIMIT),
    "max_position_quantity": ({"max_position_quantity": 10.0}, t.DECISION_CODE_POSITION_QUANTITY_LIMIT),
    "max_open_orders": ({"max_open_orders": 10}, t.DECISION_CODE_OPEN_ORDERS_LIMIT),
    "max_correlated_exposure_percentage": ({"max_correlated_exposure_percentage": 10.0},
                                           t.DECISION_CODE_CORRELATED_EXPOSURE_LIMIT),
    "max_daily_notional": ({"max_daily_notional": 1_000.0}, t.DECISION_CODE_DAILY_NOTIONAL_LIMIT),
}


def _request(i: int, with_id: bool) -> rs.CanTradeRequest:
    order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1.0, price=100.0,
                          client_order_id=f"race-{i}" if with_id else "")
    return rs.CanTradeRequest(**IDS, order=order)


@pytest.mark.parametrize("limit", list(LIMITS))
@pytest.mark.parametrize("channels", [1, 8], ids=["one channel", "eight channels"])
async def test_64_concurrent_orders_against_a_limit_that_fits_10_allow_exactly_10(
    sidecar: Sidecar, risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, limit: str, channels: int
) -> None:
    fields, code = LIMITS[limit]
    await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
        account_id=IDS["account_id"], config_id="race", is_active=True, **fields)))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    extra = [grpc.aio.insecure_channel(sidecar.address) for _ in range(channels - 1)]
    stubs = [risk, *(rsg.RiskServiceStub(ch) for ch in extra)]
    try:
        answers = await asyncio.gather(*(
            stubs[i % len(stubs)].CanTrade(_request(i, with_id=i % 2 == 0)) for i in range(CALLS)))
    finally:
        for ch in extra:
            await ch.close()
    state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state

    allowed = [a for a in answers if a.allowed]
    assert len(allowed) == FITS, f"{len(allowed)} of {CALLS} allowed against {limit} (fits {FITS})"
    assert {a.code for a in answers if not a.allowed} == {code}
    assert len({a.client_order_id for a in answers}) == CALLS  # every order has its own id
    assert sorted(o.client_order_id for o in state.pending_orders) == sorted(a.client_order_id for a in allowed)
    assert state.daily_orders == FITS


async def test_64_concurrent_orders_against_tradeguard_serve_with_sqlite_allow_exactly_10_and_keep_them_pending(
    tmp_path: Path,
) -> None:
    """The same race against the real process (uvloop, the store queue writing every reservation to SQLite); a
    restart on the file then shows the same 10 pending orders, still counted: the 11th is still denied."""
    database = f"sqlite:///{tmp_path / 'race.db'}"
    with start_sidecar(tmp_path, "--database-url", database, name="first") as first:
        async with grpc.aio.insecure_channel(first.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
                account_id=IDS["account_id"], config_id="race", is_active=True, max_position_size_percentage=10.0)))
            await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
            channels = [grpc.aio.insecure_channel(first.address) for _ in range(8)]
            try:
                answers = await asyncio.gather(*(
                    rsg.RiskServiceStub(channels[i % 8]).CanTrade(_request(i, with_id=True)) for i in range(CALLS)))
            finally:
                for extra in channels:
                    await extra.close()
    allowed = sorted(a.client_order_id for a in answers if a.allowed)
    with start_sidecar(tmp_path, "--database-url", database, name="second") as second:
        async with grpc.aio.insecure_channel(second.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            state = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
            eleventh = await risk.CanTrade(_request(CALLS, with_id=True))

    assert len(allowed) == FITS
    assert sorted(o.client_order_id for o in state.pending_orders) == allowed
    assert not eleventh.allowed and eleventh.code == t.DECISION_CODE_POSITION_SIZE_LIMIT
