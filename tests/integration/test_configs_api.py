"""Risk configurations through a real server: save/get/list/delete, activation, enforcement, validation."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

SEED_LOW_RISK = {
    "config_id": "low_risk",
    "account_id": "account123",
    "position_max_drawdown_percentage": 3.0,
    "position_trailing_stop_multiplier": 1.5,
    "daily_max_drawdown_percentage": 2.0,
    "weekly_max_drawdown_percentage": 5.0,
    "monthly_max_drawdown_percentage": 10.0,
    "max_position_size_percentage": 5.0,
    "max_correlated_exposure_percentage": 10.0,
    "risk_per_trade_percentage": 0.5,
    "volatility_adjustment_factor": 0.8,
    "market_regime_thresholds": {},
    "cooling_off_period_minutes": 120,
    "consecutive_loss_threshold": 2,
    "is_active": True,
    "symbol_configs": [
        {
            "symbol": "BTCUSDT",
            "max_position_size_percentage": 3.0,
            "max_leverage": 5,
            "position_max_drawdown_percentage": 2.0,
            "risk_per_trade_percentage": 0.3,
        }
    ],
}


def seed_config() -> t.RiskConfiguration:
    return json_format.ParseDict(SEED_LOW_RISK, t.RiskConfiguration())


async def test_seed_config_saves_reads_back_identically_lists_and_deletes(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs

    saved = await admin.SaveConfig(ad.SaveConfigRequest(config=seed_config()))
    got = await admin.GetConfig(ad.GetConfigRequest(account_id="account123", config_id="low_risk"))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id="account123"))
    await admin.DeleteConfig(ad.DeleteConfigRequest(account_id="account123", config_id="low_risk"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await admin.GetConfig(ad.GetConfigRequest(account_id="account123", config_id="low_risk"))

    assert saved.created
    body = json_format.MessageToDict(got.config, preserving_proto_field_name=True)
    body.pop("created_at"), body.pop("updated_at")
    assert body == SEED_LOW_RISK
    assert [c.config_id for c in listed.configs] == ["low_risk"]
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_active_config_is_enforced_on_the_very_next_can_trade(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, admin = stubs
    ids = {"trader_id": "bot-1", "account_id": "account123"}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=9_750))  # -2.5%: inside the 5% default
    order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, price=50_000)
    before = await risk.CanTrade(rs.CanTradeRequest(**ids, order=order))

    await admin.SaveConfig(ad.SaveConfigRequest(config=seed_config()))  # daily limit 2%
    after = await risk.CanTrade(rs.CanTradeRequest(**ids, order=order))

    assert before.allowed
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT
    assert after.state.config_id == "low_risk"


async def test_saving_an_active_config_deactivates_the_others(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs
    first = seed_config()
    second = seed_config()
    second.config_id = "high_risk"

    await admin.SaveConfig(ad.SaveConfigRequest(config=first))
    await admin.SaveConfig(ad.SaveConfigRequest(config=second))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id="account123"))

    assert {c.config_id: c.is_active for c in listed.configs} == {"high_risk": True, "low_risk": False}


async def test_order_checks_use_the_symbol_config_of_the_active_config(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    risk, admin = stubs
    ids = {"trader_id": "bot-2", "account_id": "account123"}
    await admin.SaveConfig(ad.SaveConfigRequest(config=seed_config()))
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))

    inside = await risk.CanTrade(rs.CanTradeRequest(**ids, order=t.OrderIntent(
        symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.006, price=50_000, leverage=5)))  # 300 = 3%
    too_big = await risk.CanTrade(rs.CanTradeRequest(**ids, order=t.OrderIntent(
        symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.0061, price=50_000)))
    too_levered = await risk.CanTrade(rs.CanTradeRequest(**ids, order=t.OrderIntent(
        symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=50_000, leverage=6)))

    assert inside.allowed, inside.reason
    assert too_big.code == t.DECISION_CODE_POSITION_SIZE_LIMIT
    assert too_levered.code == t.DECISION_CODE_LEVERAGE_LIMIT


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"daily_max_drawdown_percentage": 0}, "config.daily_max_drawdown_percentage"),
        ({"max_position_size_percentage": 101}, "config.max_position_size_percentage"),
        ({"cooling_off_period_minutes": -1}, "config.cooling_off_period_minutes"),
        ({"volatility_adjustment_factor": 1.5}, "config.volatility_adjustment_factor"),
        ({"market_regime_thresholds": {"calm": 1}}, "config.market_regime_thresholds.calm"),
        ({"market_regime_thresholds": {"high": 5, "extreme": 4}}, "config.market_regime_thresholds.extreme"),
        ({"config_id": ""}, "config.config_id"),
        ({"symbol_configs": [{"symbol": "BTCUSDT"}, {"symbol": "BTCUSDT"}]}, "config.symbol_configs[1].symbol"),
        ({"symbol_configs": [{"symbol": "BTCUSDT", "max_leverage": 0.5}]}, "config.symbol_configs[0].max_leverage"),
    ],
)
async def test_bad_config_is_invalid_argument_naming_the_field_and_nothing_is_saved(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub], change: dict[str, object], field: str
) -> None:
    _risk, admin = stubs
    body = {**SEED_LOW_RISK, **change}

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.SaveConfig(ad.SaveConfigRequest(config=json_format.ParseDict(body, t.RiskConfiguration())))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id="account123"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value)
    assert list(listed.configs) == []


async def test_unknown_config_is_not_found(stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub]) -> None:
    _risk, admin = stubs

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.DeleteConfig(ad.DeleteConfigRequest(account_id="account123", config_id="nope"))

    assert info.value.code() == grpc.StatusCode.NOT_FOUND
