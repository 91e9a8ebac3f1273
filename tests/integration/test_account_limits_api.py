"""The account-wide limit fields of RiskConfiguration (issue 17) through the configuration API: they save, read
back and survive a restart on PostgreSQL and SQLite, a bad value is INVALID_ARGUMENT naming its field, an
update_mask may name them, the HTTP/JSON API (seed path POST and PATCH) carries them, and a saved limit is in force
at once (CanTrade shows the account checks)."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from tests.integration.test_http_api import CONFIG_DATA, http_sidecar
from tests.support.databases import postgres_database_fixture, store_url_fixture
from tests.support.sidecar import running_sidecar
from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

ACCOUNT_LIMITS = {"account_daily_loss_percentage": 3.5, "account_max_drawdown_percentage": 12.25,
                  "account_max_gross_exposure": 250_000.5, "account_max_net_exposure": 100_000.0}


def config(**fields: float) -> t.RiskConfiguration:
    return t.RiskConfiguration(account_id="acct-17", config_id="wide", is_active=True, **fields)


def limits_of(cfg: t.RiskConfiguration) -> dict[str, float]:
    return {name: getattr(cfg, name) for name in ACCOUNT_LIMITS if cfg.HasField(name)}


async def test_account_limits_save_read_back_and_survive_a_restart(db_url: str, clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as first, \
            grpc.aio.insecure_channel(first.address) as ch:
        saved = await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=config(**ACCOUNT_LIMITS)))
        assert limits_of(saved.config) == ACCOUNT_LIMITS
        assert first.engine.limits_for("acct-17").account_max_gross_exposure == 250_000.5
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as second, \
            grpc.aio.insecure_channel(second.address) as ch:
        got = await adg.AdminServiceStub(ch).GetConfig(ad.GetConfigRequest(account_id="acct-17", config_id="wide"))
        limits = second.engine.limits_for("acct-17")

    assert limits_of(got.config) == ACCOUNT_LIMITS
    assert (limits.account_daily_loss_percentage, limits.account_max_drawdown_percentage,
            limits.account_max_gross_exposure, limits.account_max_net_exposure) == tuple(ACCOUNT_LIMITS.values())
    assert limits.account_limited


async def test_unset_account_limits_stay_unset_and_off() -> None:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        saved = await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=config()))

    assert limits_of(saved.config) == {}
    assert not sc.engine.limits_for("acct-17").account_limited


@pytest.mark.parametrize(("name", "value", "says"), [
    ("account_daily_loss_percentage", 0.0, "(0, 100]"),
    ("account_daily_loss_percentage", 100.5, "(0, 100]"),
    ("account_max_drawdown_percentage", math.nan, "(0, 100]"),
    ("account_max_gross_exposure", 0.0, "> 0"),
    ("account_max_net_exposure", -5.0, "> 0"),
    ("account_max_net_exposure", math.inf, "finite"),
])
async def test_a_bad_account_limit_is_invalid_argument_naming_the_field(name: str, value: float, says: str) -> None:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=config(**{name: value})))

    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert says in found[f"config.{name}"], found


async def test_an_update_mask_may_set_and_clear_an_account_limit() -> None:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=config(**ACCOUNT_LIMITS)))

        resp = await admin.SaveConfig(ad.SaveConfigRequest(
            config=config(account_max_net_exposure=7.0, account_max_gross_exposure=1.0),
            update_mask=FieldMask(paths=["account_max_net_exposure", "account_daily_loss_percentage"])))

    assert limits_of(resp.config) == {"account_max_drawdown_percentage": 12.25, "account_max_gross_exposure": 250_000.5,
                                      "account_max_net_exposure": 7.0}


async def test_the_http_api_posts_and_patches_account_limits_through_the_seed_path() -> None:
    async with http_sidecar() as (sc, http):
        status, _, saved = await http("POST", "/api/risk/configurations", CONFIG_DATA | ACCOUNT_LIMITS)
        assert status == 200, saved
        assert {k: saved[k] for k in ACCOUNT_LIMITS} == ACCOUNT_LIMITS

        status, _, patched = await http("PATCH", "/api/risk/configurations", {
            "config_id": "low_risk", "account_id": "account123", "account_max_gross_exposure": 5_000.0})
        assert status == 200, patched
        assert patched["account_max_gross_exposure"] == 5_000.0 and patched["account_daily_loss_percentage"] == 3.5

        status, _, bad = await http("PATCH", "/api/risk/configurations", {
            "config_id": "low_risk", "account_id": "account123", "account_daily_loss_percentage": 0})
        assert status == 400 and "config.account_daily_loss_percentage" in str(bad)
        assert sc.engine.limits_for("account123").account_max_gross_exposure == 5_000.0


async def test_a_saved_account_limit_shows_in_the_next_cantrade_with_its_numbers() -> None:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-17", equity=10_000.0))
        before = await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-17"))
        await admin.SaveConfig(ad.SaveConfigRequest(config=config(account_max_gross_exposure=1_000.0)))

        order = t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.1, price=20_000.0)
        after = await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-17", order=order))

    assert not [c for c in before.checks if c.code == t.DECISION_CODE_ACCOUNT_LIMIT]
    assert not after.allowed and after.code == t.DECISION_CODE_ACCOUNT_LIMIT
    (gross,) = [c for c in after.checks if c.name == "account_gross_exposure"]
    assert (gross.value, gross.limit) == (2_000.0, 1_000.0)
    assert "view 0.0s old" in gross.detail
