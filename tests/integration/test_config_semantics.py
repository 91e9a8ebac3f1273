"""Issue 19, configuration semantics, through a real server over gRPC: `is_active` and `enabled` default to true
and honour an explicit false; GetBreaker by name; LogBreakerEvent; partial updates (update_mask, AIP-134)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

ACCOUNT = "account123"
IDS = {"trader_id": "bot-1", "account_id": ACCOUNT}


def struct(**values: Any) -> Struct:
    s = Struct()
    s.update(values)
    return s


def config(**fields: Any) -> t.RiskConfiguration:
    base: dict[str, Any] = {"account_id": ACCOUNT, "config_id": "low_risk"}
    return t.RiskConfiguration(**(base | fields))


def breaker(**fields: Any) -> t.CircuitBreaker:
    base: dict[str, Any] = {"name": "dd10", "account_id": ACCOUNT, "condition": "max_drawdown", "action": "alert",
                            "parameters": struct(threshold=0.1)}
    return t.CircuitBreaker(**(base | fields))


async def save(admin: adg.AdminServiceStub, cfg: t.RiskConfiguration) -> t.RiskConfiguration:
    return (await admin.SaveConfig(ad.SaveConfigRequest(config=cfg))).config


async def create(admin: adg.AdminServiceStub, b: t.CircuitBreaker) -> t.CircuitBreaker:
    return (await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=b))).breaker


# ---- 1. is_active / enabled default to true ---------------------------------------------------------------------


async def test_config_saved_without_is_active_is_active_and_enforced(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))  # -3%: inside the 5% default

    saved = await save(admin, config(daily_max_drawdown_percentage=2.0))
    decision = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=t.OrderIntent(
        symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, price=50_000)))

    assert saved.HasField("is_active") and saved.is_active
    assert not decision.allowed and decision.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_config_saved_with_explicit_is_active_false_is_inactive_and_leaves_the_active_one(
    admin: adg.AdminServiceStub,
) -> None:
    await save(admin, config(config_id="active_one"))

    inactive = await save(admin, config(config_id="spare", is_active=False))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id=ACCOUNT))

    assert inactive.HasField("is_active") and not inactive.is_active
    assert {c.config_id: c.is_active for c in listed.configs} == {"active_one": True, "spare": False}


async def test_breaker_created_without_enabled_is_enabled(admin: adg.AdminServiceStub) -> None:
    created = await create(admin, breaker())

    assert created.HasField("enabled") and created.enabled


async def test_breaker_created_with_explicit_enabled_false_is_disabled_and_does_not_fire(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    created = await create(admin, breaker(enabled=False, action="pause_trading"))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    report = await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=8_000))  # -20% from the peak
    kept = await admin.UpdateBreaker(ad.UpdateBreakerRequest(breaker_id=created.id, breaker=breaker(
        description="still off", action="pause_trading")))

    assert created.HasField("enabled") and not created.enabled
    assert list(report.breaker_events) == []
    assert not kept.breaker.enabled  # an update without `enabled` keeps the current state
