"""The retention settings: defaults, 0 = keep forever, and the floor of trade_retention_days (trade ids are what make
a retried ReportTrade a duplicate), refused with a message that says why."""

from __future__ import annotations

import pytest

from tradeguard_server.settings import TRADE_RETENTION_MIN_DAYS, SettingsError, load_settings


def test_defaults_keep_history_90_days_and_trades_and_breaker_events_a_year() -> None:
    s = load_settings({}, {})
    assert (s.history_retention_days, s.trade_retention_days, s.breaker_event_retention_days) == (90, 365, 365)
    assert s.retention_interval_seconds == 3600 and s.retention_batch_size == 1000


def test_zero_keeps_every_table_forever_and_each_setting_comes_from_the_environment_too() -> None:
    s = load_settings({"TRADEGUARD_HISTORY_RETENTION_DAYS": "0", "TRADEGUARD_TRADE_RETENTION_DAYS": "0",
                       "TRADEGUARD_BREAKER_EVENT_RETENTION_DAYS": "0", "TRADEGUARD_RETENTION_BATCH_SIZE": "100"}, {})
    assert (s.history_retention_days, s.trade_retention_days, s.breaker_event_retention_days) == (0, 0, 0)
    assert s.retention_batch_size == 100


def test_a_trade_retention_below_the_floor_is_refused_saying_why() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({}, {"trade_retention_days": 2})
    text = str(err.value)
    assert text.startswith("trade_retention_days: 2 is shorter than the floor of 7 days")
    assert "duplicate" in text and "counted twice" in text
    assert load_settings({}, {"trade_retention_days": TRADE_RETENTION_MIN_DAYS}).trade_retention_days == 7


@pytest.mark.parametrize(("name", "value"), [
    ("history_retention_days", -1), ("breaker_event_retention_days", 1e9), ("retention_interval_seconds", 0),
    ("retention_batch_size", 0), ("retention_batch_size", 1_000_000),
])
def test_out_of_range_values_are_refused_naming_the_setting(name: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load_settings({}, {name: value})
