"""limits_from_config for the pre-trade controls of issue 16: what a configuration sets becomes the engine's Limits
(symbol lists as frozensets, trading windows as minutes of the day); what it leaves unset keeps the defaults."""

from __future__ import annotations

from tradeguard.v1 import types_pb2 as t
from tradeguard_server.api.config_rules import limits_from_config
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import TradingWindow
from tradeguard_server.store.records import ConfigRecord, TradingWindowRecord

FIELDS = ("max_order_quantity", "max_position_quantity", "max_open_orders", "price_collar_percentage",
          "reference_price_max_age_seconds", "duplicate_order_window_ms", "allowed_symbols", "blocked_symbols",
          "trading_windows", "max_daily_notional", "max_daily_orders", "max_fills_per_window", "fill_window_seconds",
          "pending_order_ttl_seconds")


def test_unset_controls_keep_the_default_limits() -> None:
    limits = limits_from_config(t.RiskConfiguration(account_id="a", config_id="c"), Limits())

    assert {name: getattr(limits, name) for name in FIELDS} == {name: getattr(Limits(), name) for name in FIELDS}
    assert (limits.reference_price_max_age_seconds, limits.fill_window_seconds,
            limits.pending_order_ttl_seconds) == (60, 60, 60)


def test_unset_controls_take_the_settings_defaults_and_set_ones_replace_them() -> None:
    defaults = Limits(pending_order_ttl_seconds=90, max_open_orders=50, allowed_symbols=frozenset({"BTCUSDT"}))
    cfg = t.RiskConfiguration(account_id="a", config_id="c", max_open_orders=5)

    limits = limits_from_config(cfg, defaults)

    assert (limits.pending_order_ttl_seconds, limits.max_open_orders, limits.allowed_symbols) == (
        90, 5, frozenset({"BTCUSDT"}))


def test_windows_become_minutes_of_the_day_and_symbol_lists_frozensets() -> None:
    cfg = t.RiskConfiguration(
        account_id="a", config_id="c", allowed_symbols=["btcusdt", "ETHUSDT"], blocked_symbols=["LUNAUSDT"],
        trading_windows=[t.TradingWindow(weekdays=[5, 1], start="09:15", end="24:00"),
                         t.TradingWindow(start="23:30", end="00:45")])

    limits = limits_from_config(cfg, Limits())

    assert limits.allowed_symbols == frozenset({"BTCUSDT", "ETHUSDT"})
    assert limits.blocked_symbols == frozenset({"LUNAUSDT"})
    assert limits.trading_windows == (TradingWindow(frozenset({1, 5}), 555, 1440), TradingWindow(frozenset(), 1410, 45))


def test_a_stored_configuration_with_windows_resolves_like_the_message() -> None:
    from tradeguard_server.services.configs import limits_for

    rec = ConfigRecord("a", "c", trading_windows=[TradingWindowRecord((6, 7), "00:00", "12:00")],
                       allowed_symbols=["solusdt"])

    limits = limits_for(rec, Limits())

    assert limits.trading_windows == (TradingWindow(frozenset({6, 7}), 0, 720),)
    assert limits.allowed_symbols == frozenset({"SOLUSDT"})
