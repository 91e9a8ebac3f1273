"""The pre-trade controls of issue 16 through the configuration API: every new RiskConfiguration and
SymbolRiskConfiguration field saves, reads back and lists as given, survives a restart on PostgreSQL and SQLite,
becomes the engine's Limits, and a bad value is INVALID_ARGUMENT naming its field. A trader's pending orders
stored by one sidecar are held by the next."""

from __future__ import annotations

import copy
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tests.support.databases import make_state, open_store, postgres_database_fixture, store_url_fixture
from tests.support.sidecar import running_sidecar
from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine import periods
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.types import OrderStatus, PendingOrder, Side, TradingWindow

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

CONTROLS: dict[str, Any] = {
    "config_id": "controls",
    "account_id": "acct-16",
    "is_active": True,
    "max_order_quantity": 2.5,
    "max_position_quantity": 10.125,
    "max_open_orders": 7,
    "price_collar_percentage": 2.75,
    "reference_price_max_age_seconds": 30,
    "duplicate_order_window_ms": 1500,
    "allowed_symbols": ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
    "blocked_symbols": ["LUNAUSDT"],
    "trading_windows": [
        {"weekdays": [1, 2, 3, 4, 5], "start": "08:30", "end": "17:00"},
        {"start": "22:00", "end": "02:00"},
        {"weekdays": [6], "start": "00:00", "end": "24:00"},
    ],
    "max_daily_notional": 1_000_000.5,
    "max_daily_orders": 5000,
    "max_fills_per_window": 20,
    "fill_window_seconds": 10,
    "pending_order_ttl_seconds": 120,
    "symbol_configs": [
        {"symbol": "BTCUSDT", "max_order_quantity": 0.5, "max_position_quantity": 1.0, "max_open_orders": 3,
         "price_collar_percentage": 1.5},
        {"symbol": "ETHUSDT", "max_leverage": 3.0},
    ],
}


def controls(**changes: Any) -> t.RiskConfiguration:
    body = copy.deepcopy(CONTROLS)
    body.update(changes)
    return json_format.ParseDict(body, t.RiskConfiguration())


def as_dict(cfg: t.RiskConfiguration) -> dict[str, Any]:
    body = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    body.pop("created_at", None), body.pop("updated_at", None)
    return body


# ---- round trips ---------------------------------------------------------------------------------------------

async def test_every_pre_trade_control_saves_reads_back_and_lists_as_given(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs

    saved = await admin.SaveConfig(ad.SaveConfigRequest(config=controls()))
    got = await admin.GetConfig(ad.GetConfigRequest(account_id="acct-16", config_id="controls"))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id="acct-16"))

    assert as_dict(saved.config) == CONTROLS
    assert as_dict(got.config) == CONTROLS
    assert [as_dict(c) for c in listed.configs] == [CONTROLS]


async def test_unset_controls_stay_unset_and_the_engine_uses_its_defaults(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs
    bare = t.RiskConfiguration(account_id="acct-16", config_id="bare", is_active=True)
    bare.symbol_configs.add(symbol="BTCUSDT", max_leverage=2)

    got = (await admin.SaveConfig(ad.SaveConfigRequest(config=bare))).config

    for name in ("max_order_quantity", "max_position_quantity", "max_open_orders", "price_collar_percentage",
                 "reference_price_max_age_seconds", "duplicate_order_window_ms", "max_daily_notional",
                 "max_daily_orders", "max_fills_per_window", "fill_window_seconds", "pending_order_ttl_seconds"):
        assert not got.HasField(name), name
    for name in ("max_order_quantity", "max_position_quantity", "max_open_orders", "price_collar_percentage"):
        assert not got.symbol_configs[0].HasField(name), name
    assert (list(got.allowed_symbols), list(got.blocked_symbols), list(got.trading_windows)) == ([], [], [])


async def test_symbols_of_the_permission_lists_are_stored_upper_case(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub],
) -> None:
    _risk, admin = stubs

    got = (await admin.SaveConfig(ad.SaveConfigRequest(config=controls(
        allowed_symbols=["btcusdt", "EthUsdt"], blocked_symbols=["lunausdt"])))).config

    assert (list(got.allowed_symbols), list(got.blocked_symbols)) == (["BTCUSDT", "ETHUSDT"], ["LUNAUSDT"])


async def test_an_active_configuration_becomes_the_engines_limits(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock) as sidecar, grpc.aio.insecure_channel(sidecar.address) as ch:
        await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=controls()))
        limits = sidecar.engine.limits_for("acct-16")

    assert (limits.max_order_quantity, limits.max_position_quantity, limits.max_open_orders) == (2.5, 10.125, 7)
    assert (limits.price_collar_percentage, limits.reference_price_max_age_seconds) == (2.75, 30)
    assert limits.duplicate_order_window_ms == 1500
    assert limits.allowed_symbols == frozenset({"BTCUSDT", "ETHUSDT", "SOLUSDT"})
    assert limits.blocked_symbols == frozenset({"LUNAUSDT"})
    assert limits.trading_windows == (
        TradingWindow(frozenset({1, 2, 3, 4, 5}), 8 * 60 + 30, 17 * 60),
        TradingWindow(frozenset(), 22 * 60, 2 * 60),
        TradingWindow(frozenset({6}), 0, 24 * 60),
    )
    assert (limits.max_daily_notional, limits.max_daily_orders) == (1_000_000.5, 5000)
    assert (limits.max_fills_per_window, limits.fill_window_seconds, limits.pending_order_ttl_seconds) == (20, 10, 120)
    btc = limits.for_symbol("BTCUSDT")
    assert btc is not None
    assert (btc.max_order_quantity, btc.max_position_quantity, btc.max_open_orders,
            btc.price_collar_percentage) == (0.5, 1.0, 3, 1.5)
    eth = limits.for_symbol("ETHUSDT")
    assert eth is not None
    assert (eth.max_order_quantity, eth.max_position_quantity, eth.max_open_orders,
            eth.price_collar_percentage) == (None, None, None, None)


async def test_every_pre_trade_control_survives_a_sidecar_restart_on_the_database(
    db_url: str, clock: ManualClock,
) -> None:
    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as first, \
            grpc.aio.insecure_channel(first.address) as ch:
        await adg.AdminServiceStub(ch).SaveConfig(ad.SaveConfigRequest(config=controls()))

    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as second, \
            grpc.aio.insecure_channel(second.address) as ch:
        got = await adg.AdminServiceStub(ch).GetConfig(ad.GetConfigRequest(account_id="acct-16",
                                                                           config_id="controls"))
        limits = second.engine.limits_for("acct-16")

    assert as_dict(got.config) == CONTROLS
    assert limits.max_open_orders == 7 and limits.trading_windows[1] == TradingWindow(frozenset(), 1320, 120)


async def test_a_sidecar_started_on_a_database_holds_the_pending_orders_stored_there(
    db_url: str, clock: ManualClock,
) -> None:
    now = clock.now()
    live = PendingOrder("o-2", "BTCUSDT", "binance", Side.BUY, 0.008, 50_000.0, now - 5, now + 55)
    done = PendingOrder("o-1", "BTCUSDT", "binance", Side.BUY, 0.008, 50_000.0, now - 9, now + 51, 0.008, 49_990.0,
                        OrderStatus.FILLED)
    # Period starts at real boundaries (the engine rolls a period whose start is not one when it next ticks).
    rec = make_state("t-1", 2, account_id="a-1", day_start=periods.day_start(now, 0.0),
                     week_start=periods.week_start(now, 0.0), month_start=periods.month_start(now, 0.0),
                     updated_at=now - 1, pending_orders=(live,), finished_orders=(done,),
                     daily_order_notional=800.0, daily_orders=2)
    async with open_store(db_url) as store:
        store.enqueue_state(rec, "can_trade", None)
        assert await store.flush(timeout=10)

    async with running_sidecar(clock=clock, database_url=db_url, enable_persistence=True) as sidecar:
        if sidecar.takeover is not None:  # PostgreSQL = cluster mode: a trader nobody holds is claimed on first call
            await sidecar.takeover.acquire("t-1", "a-1", write=True)
        st = sidecar.engine.traders["t-1"]

    assert st.orders == {"o-2": live}
    assert dict(st.finished_orders) == {"o-1": done}
    assert (st.daily_order_notional, st.daily_orders) == (800.0, 2)
    assert st.pending[("BTCUSDT", "binance")].buy == 0.008


# ---- validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_order_quantity": 0}, "config.max_order_quantity"),
        ({"max_order_quantity": "Infinity"}, "config.max_order_quantity"),
        ({"max_position_quantity": -1}, "config.max_position_quantity"),
        ({"max_daily_notional": "NaN"}, "config.max_daily_notional"),
        ({"max_open_orders": 0}, "config.max_open_orders"),
        ({"max_daily_orders": 0}, "config.max_daily_orders"),
        ({"max_fills_per_window": -3}, "config.max_fills_per_window"),
        ({"price_collar_percentage": 0}, "config.price_collar_percentage"),
        ({"price_collar_percentage": 100.5}, "config.price_collar_percentage"),
        ({"duplicate_order_window_ms": 0}, "config.duplicate_order_window_ms"),
        ({"duplicate_order_window_ms": 3_600_001}, "config.duplicate_order_window_ms"),
        ({"reference_price_max_age_seconds": 0}, "config.reference_price_max_age_seconds"),
        ({"fill_window_seconds": 86_401}, "config.fill_window_seconds"),
        ({"pending_order_ttl_seconds": 0}, "config.pending_order_ttl_seconds"),
        ({"allowed_symbols": ["BTCUSDT", "BTC USDT"]}, "config.allowed_symbols[1]"),
        ({"allowed_symbols": ["BTCUSDT", "btcusdt"]}, "config.allowed_symbols[1]"),
        ({"blocked_symbols": [""]}, "config.blocked_symbols[0]"),
        ({"blocked_symbols": ["DOGEUSDT", "ethusdt"]}, "config.blocked_symbols[1]"),  # also allowed
        ({"trading_windows": [{"start": "9:00", "end": "17:00"}]}, "config.trading_windows[0].start"),
        ({"trading_windows": [{"start": "24:00", "end": "02:00"}]}, "config.trading_windows[0].start"),
        ({"trading_windows": [{"start": "08:60", "end": "17:00"}]}, "config.trading_windows[0].start"),
        ({"trading_windows": [{"start": "08:00", "end": "24:01"}]}, "config.trading_windows[0].end"),
        ({"trading_windows": [{"start": "08:00", "end": ""}]}, "config.trading_windows[0].end"),
        ({"trading_windows": [{"start": "08:00", "end": "17:00"}, {"start": "10:00", "end": "10:00"}]},
         "config.trading_windows[1].end"),
        ({"trading_windows": [{"weekdays": [0], "start": "08:00", "end": "17:00"}]},
         "config.trading_windows[0].weekdays[0]"),
        ({"trading_windows": [{"weekdays": [1, 8], "start": "08:00", "end": "17:00"}]},
         "config.trading_windows[0].weekdays[1]"),
        ({"trading_windows": [{"weekdays": [2, 2], "start": "08:00", "end": "17:00"}]},
         "config.trading_windows[0].weekdays[1]"),
        ({"symbol_configs": [{"symbol": "BTCUSDT", "max_order_quantity": 0}]},
         "config.symbol_configs[0].max_order_quantity"),
        ({"symbol_configs": [{"symbol": "BTCUSDT", "max_position_quantity": "-Infinity"}]},
         "config.symbol_configs[0].max_position_quantity"),
        ({"symbol_configs": [{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT", "max_open_orders": 0}]},
         "config.symbol_configs[1].max_open_orders"),
        ({"symbol_configs": [{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT", "price_collar_percentage": 101}]},
         "config.symbol_configs[1].price_collar_percentage"),
    ],
)
async def test_a_bad_pre_trade_control_is_invalid_argument_naming_the_field_and_nothing_is_saved(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub], change: dict[str, Any], field: str,
) -> None:
    _risk, admin = stubs

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.SaveConfig(ad.SaveConfigRequest(config=controls(**change)))
    listed = await admin.ListConfigs(ad.ListConfigsRequest(account_id="acct-16"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value), violations(info.value)
    assert list(listed.configs) == []


@pytest.mark.parametrize(
    "change",
    [
        {"price_collar_percentage": 100, "duplicate_order_window_ms": 3_600_000, "max_open_orders": 1},
        {"reference_price_max_age_seconds": 86_400, "fill_window_seconds": 1, "pending_order_ttl_seconds": 86_400},
        {"trading_windows": [{"weekdays": [7, 1], "start": "23:59", "end": "00:00"}]},
        {"trading_windows": [{"start": "00:00", "end": "24:00"}]},
    ],
)
async def test_values_on_the_edge_of_their_range_are_accepted(
    stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub], change: dict[str, Any],
) -> None:
    _risk, admin = stubs

    saved = await admin.SaveConfig(ad.SaveConfigRequest(config=controls(**change)))

    assert as_dict(saved.config) == {**CONTROLS, **change}
