"""Issue 19, configuration semantics, through a real server over gRPC: `is_active` and `enabled` default to true
and honour an explicit false; GetBreaker by name; LogBreakerEvent; partial updates (update_mask, AIP-134)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.struct_pb2 import Struct

from tests.support.sidecar import running_sidecar
from tests.support.status import violations
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


# ---- 2. GetBreaker by name within an account (ETRMS get_by_name) -------------------------------------------------


async def test_get_breaker_by_account_and_name_returns_that_accounts_breaker(admin: adg.AdminServiceStub) -> None:
    mine = await create(admin, breaker())
    await create(admin, breaker(account_id="other"))  # the same name in another account

    got = await admin.GetBreaker(ad.GetBreakerRequest(account_id=ACCOUNT, name="dd10"))

    assert got.breaker == mine


async def test_get_breaker_by_unknown_name_is_not_found(admin: adg.AdminServiceStub) -> None:
    await create(admin, breaker())

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetBreaker(ad.GetBreakerRequest(account_id="other", name="dd10"))

    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "dd10" in (err.value.details() or "")


@pytest.mark.parametrize(("request_fields", "field"), [
    ({}, "breaker_id"),
    ({"breaker_id": "b1", "account_id": ACCOUNT, "name": "dd10"}, "breaker_id"),
    ({"breaker_id": "b1", "name": "dd10"}, "breaker_id"),
    ({"account_id": ACCOUNT}, "name"),
    ({"name": "dd10"}, "account_id"),
])
async def test_get_breaker_with_both_or_neither_way_of_naming_it_is_invalid_argument(
    admin: adg.AdminServiceStub, request_fields: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetBreaker(ad.GetBreakerRequest(**request_fields))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)


# ---- 3. LogBreakerEvent (ETRMS log_event) ------------------------------------------------------------------------


async def test_logged_event_of_an_existing_breaker_is_recorded_and_listed(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    b = await create(admin, breaker(action="close_position"))

    logged = await admin.LogBreakerEvent(ad.LogBreakerEventRequest(
        breaker_id=b.id, trader_id="bot-9", triggered_values=struct(drawdown=0.12), action_taken="close_position",
        action_result=struct(success=True, closed=1), positions_affected=[t.PositionRef(symbol="btcusdt",
                                                                                          exchange="Binance")]))
    by_breaker = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(breaker_id=b.id))
    by_account = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id=ACCOUNT))
    state = await risk.GetRiskState(rs.GetRiskStateRequest(trader_id="bot-9", account_id=ACCOUNT))

    event = logged.event
    assert event.id and event.breaker_id == b.id and event.account_id == ACCOUNT and event.trader_id == "bot-9"
    assert dict(event.triggered_values) == {"drawdown": 0.12} and event.action_taken == "close_position"
    assert dict(event.action_result) == {"success": True, "closed": 1}
    assert [(p.symbol, p.exchange) for p in event.positions_affected] == [("BTCUSDT", "binance")]
    assert event.HasField("timestamp") and not event.shadow
    assert list(by_breaker.events) == [event] and list(by_account.events) == [event]
    assert state.state.trading_state == t.TRADING_STATE_ACTIVE  # recorded, nothing enforced


async def test_logged_event_is_audited_in_the_admin_log(
    admin: adg.AdminServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    b = await create(admin, breaker())

    with caplog.at_level("WARNING", logger="tradeguard.admin"):
        logged = await admin.LogBreakerEvent(ad.LogBreakerEventRequest(breaker_id=b.id, action_taken="alert"))

    [line] = [r.getMessage() for r in caplog.records if logged.event.id in r.getMessage()]
    assert b.id in line and "logged by" in line and "action=alert" in line


async def test_logging_an_event_of_an_unknown_breaker_is_not_found(admin: adg.AdminServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.LogBreakerEvent(ad.LogBreakerEventRequest(breaker_id="no-such", action_taken="alert"))

    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_logged_event_without_action_or_with_non_finite_values_is_invalid_argument(
    admin: adg.AdminServiceStub,
) -> None:
    b = await create(admin, breaker())

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.LogBreakerEvent(ad.LogBreakerEventRequest(
            breaker_id=b.id, triggered_values=struct(drawdown=float("nan"))))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"action_taken", "triggered_values"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database for a sidecar and its restart: a SQLite file, or a fresh PostgreSQL database (pg_url)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tg.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_logged_event_is_committed_to_the_database_and_listed_after_a_restart(db: str) -> None:
    async with running_sidecar(database_url=db, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        b = await create(admin, breaker())
        logged = await admin.LogBreakerEvent(ad.LogBreakerEventRequest(
            breaker_id=b.id, action_taken="alert", triggered_values=struct(drawdown=0.2)))
        listed_at_once = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(breaker_id=b.id))
    async with running_sidecar(database_url=db, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        listed_after = await adg.AdminServiceStub(ch).ListBreakerEvents(ad.ListBreakerEventsRequest(breaker_id=b.id))

    assert [e.id for e in listed_at_once.events] == [logged.event.id]
    [after] = listed_after.events
    assert abs(after.timestamp.ToNanoseconds() - logged.event.timestamp.ToNanoseconds()) <= 1_000  # stored in us
    after.timestamp.CopyFrom(logged.event.timestamp)
    assert after == logged.event


# ---- 4. partial updates (update_mask, AIP-134) -------------------------------------------------------------------


def mask(*paths: str) -> FieldMask:
    return FieldMask(paths=list(paths))


FULL = {"daily_max_drawdown_percentage": 2.0, "max_drawdown_percentage": 8.0, "stop_trading_minutes": 30,
        "symbol_configs": [t.SymbolRiskConfiguration(symbol="BTCUSDT", max_leverage=5)]}


async def test_config_update_with_a_mask_changes_only_the_named_fields(admin: adg.AdminServiceStub) -> None:
    before = await save(admin, config(**FULL))

    resp = await admin.SaveConfig(ad.SaveConfigRequest(
        config=config(is_active=True, daily_max_drawdown_percentage=3.0, max_drawdown_percentage=99.0),
        update_mask=mask("daily_max_drawdown_percentage")))
    got = await admin.GetConfig(ad.GetConfigRequest(account_id=ACCOUNT, config_id="low_risk"))

    assert not resp.created and got.config == resp.config
    assert got.config.daily_max_drawdown_percentage == 3.0
    assert got.config.max_drawdown_percentage == 8.0 and got.config.stop_trading_minutes == 30  # not named: kept
    assert list(got.config.symbol_configs) == list(before.symbol_configs) and got.config.is_active
    assert got.config.created_at == before.created_at


async def test_the_issues_wiping_save_of_ids_and_is_active_keeps_the_limits_with_a_mask(
    admin: adg.AdminServiceStub,
) -> None:
    await save(admin, config(**FULL, is_active=False))

    saved = (await admin.SaveConfig(ad.SaveConfigRequest(config=config(is_active=True),
                                                         update_mask=mask("is_active")))).config

    assert saved.is_active and saved.daily_max_drawdown_percentage == 2.0 and len(saved.symbol_configs) == 1


async def test_a_named_field_the_request_leaves_unset_is_cleared_to_its_default(admin: adg.AdminServiceStub) -> None:
    await save(admin, config(**FULL))

    saved = (await admin.SaveConfig(ad.SaveConfigRequest(
        config=config(), update_mask=mask("max_drawdown_percentage", "symbol_configs")))).config

    assert not saved.HasField("max_drawdown_percentage") and list(saved.symbol_configs) == []
    assert saved.daily_max_drawdown_percentage == 2.0


async def test_config_save_without_a_mask_still_replaces_the_whole_configuration(admin: adg.AdminServiceStub) -> None:
    await save(admin, config(**FULL))

    saved = await save(admin, config(is_active=True))

    assert not saved.HasField("daily_max_drawdown_percentage") and list(saved.symbol_configs) == []


async def test_config_mask_with_an_unknown_path_is_invalid_argument_naming_the_path(
    admin: adg.AdminServiceStub,
) -> None:
    await save(admin, config(**FULL))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SaveConfig(ad.SaveConfigRequest(config=config(), update_mask=mask(
            "daily_max_drawdown_percentage", "max_daily_los", "symbol_configs.max_leverage")))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert set(found) == {"update_mask.paths[1]", "update_mask.paths[2]"}
    assert "'max_daily_los'" in found["update_mask.paths[1]"]
    assert "'symbol_configs.max_leverage'" in found["update_mask.paths[2]"]


async def test_masked_config_update_of_a_missing_configuration_is_not_found(admin: adg.AdminServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SaveConfig(ad.SaveConfigRequest(config=config(daily_max_drawdown_percentage=3.0),
                                                    update_mask=mask("daily_max_drawdown_percentage")))

    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_masked_config_update_is_validated_as_a_whole(admin: adg.AdminServiceStub) -> None:
    await save(admin, config(**FULL))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SaveConfig(ad.SaveConfigRequest(config=config(daily_max_drawdown_percentage=250.0),
                                                    update_mask=mask("daily_max_drawdown_percentage")))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("daily_max_drawdown_percentage" in f for f in violations(err.value))


async def test_masked_config_update_of_the_active_one_is_enforced_at_once(
    admin: adg.AdminServiceStub, risk: rsg.RiskServiceStub
) -> None:
    await save(admin, config(daily_max_drawdown_percentage=5.0))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=9_700))
    order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.01, price=50_000)
    before = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order))

    await admin.SaveConfig(ad.SaveConfigRequest(config=config(daily_max_drawdown_percentage=2.0),
                                                update_mask=mask("daily_max_drawdown_percentage")))
    after = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=order))

    assert before.allowed
    assert not after.allowed and after.code == t.DECISION_CODE_DAILY_LOSS_LIMIT


async def test_breaker_update_with_a_mask_changes_only_the_named_fields(admin: adg.AdminServiceStub) -> None:
    b = await create(admin, breaker(description="first", symbols=["BTCUSDT"], enabled=False))

    updated = (await admin.UpdateBreaker(ad.UpdateBreakerRequest(
        breaker_id=b.id, breaker=t.CircuitBreaker(parameters=struct(threshold=0.2), description="ignored"),
        update_mask=mask("parameters")))).breaker

    assert dict(updated.parameters) == {"threshold": 0.2}
    assert updated.description == "first" and list(updated.symbols) == ["BTCUSDT"] and updated.name == "dd10"
    assert not updated.enabled  # not named: kept


async def test_breaker_mask_naming_enabled_enables_it(admin: adg.AdminServiceStub) -> None:
    b = await create(admin, breaker(enabled=False))

    updated = (await admin.UpdateBreaker(ad.UpdateBreakerRequest(
        breaker_id=b.id, breaker=t.CircuitBreaker(enabled=True), update_mask=mask("enabled")))).breaker

    assert updated.enabled and dict(updated.parameters) == {"threshold": 0.1}


async def test_breaker_mask_with_an_unknown_path_is_invalid_argument_naming_the_path(
    admin: adg.AdminServiceStub,
) -> None:
    b = await create(admin, breaker())

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.UpdateBreaker(ad.UpdateBreakerRequest(
            breaker_id=b.id, breaker=t.CircuitBreaker(), update_mask=mask("threshold")))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'threshold'" in violations(err.value)["update_mask.paths[0]"]


async def test_masked_breaker_update_is_validated_as_a_whole(admin: adg.AdminServiceStub) -> None:
    b = await create(admin, breaker())  # max_drawdown {"threshold": 0.1}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.UpdateBreaker(ad.UpdateBreakerRequest(
            breaker_id=b.id, breaker=t.CircuitBreaker(condition="equity_floor"), update_mask=mask("condition")))

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # threshold is no parameter of equity_floor


async def test_breaker_update_without_a_mask_still_replaces_the_definition(admin: adg.AdminServiceStub) -> None:
    b = await create(admin, breaker(description="first", symbols=["BTCUSDT"]))

    updated = (await admin.UpdateBreaker(ad.UpdateBreakerRequest(breaker_id=b.id, breaker=breaker()))).breaker

    assert updated.description == "" and list(updated.symbols) == []


async def test_python_client_logs_a_breaker_event(sidecar: Any) -> None:
    from tradeguard_client import AsyncAdminClient

    async with AsyncAdminClient(sidecar.address) as client:
        b = await client.create_breaker(breaker())
        event = await client.log_breaker_event(b.id, "alert", trader_id="bot-1", triggered_values={"x": 1.5})
        page = await client.list_breaker_events(breaker_id=b.id)

    assert event.breaker_id == b.id and event.action_taken == "alert" and page.items == (event,)


async def test_masked_updates_and_explicit_false_are_what_the_database_holds_after_a_restart(db: str) -> None:
    async with running_sidecar(database_url=db, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        await save(admin, config(**FULL, is_active=False))
        saved = (await admin.SaveConfig(ad.SaveConfigRequest(
            config=config(stop_trading_minutes=45), update_mask=mask("stop_trading_minutes")))).config
        b = await create(admin, breaker(enabled=False))
        updated = (await admin.UpdateBreaker(ad.UpdateBreakerRequest(
            breaker_id=b.id, breaker=t.CircuitBreaker(description="patched"), update_mask=mask("description")))).breaker
    async with running_sidecar(database_url=db, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        cfg = (await admin.GetConfig(ad.GetConfigRequest(account_id=ACCOUNT, config_id="low_risk"))).config
        got = (await admin.GetBreaker(ad.GetBreakerRequest(account_id=ACCOUNT, name="dd10"))).breaker

    assert not cfg.is_active and cfg.stop_trading_minutes == 45 and cfg.daily_max_drawdown_percentage == 2.0
    assert len(cfg.symbol_configs) == 1 and cfg.updated_at == saved.updated_at
    assert got == updated and got.description == "patched" and not got.enabled
