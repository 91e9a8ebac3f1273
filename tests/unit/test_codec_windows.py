"""The stored order and fill windows (risk_state.order_times): packed, exact, and a value that does not decode never
stops a load (store.codec.windows_json / windows_from)."""

from __future__ import annotations

import logging
import math
import struct

import pytest

from tradeguard_server.engine.snapshot import StateRecord
from tradeguard_server.store.codec import pack_times, unpack_times, windows_from, windows_json

T0 = 1_767_225_600.123456


def test_packed_times_read_back_exactly() -> None:
    times = (T0, T0 + 1e-6, T0 + 0.1, 2.0**53 + 1.5, 5e-324)
    assert unpack_times(pack_times(times)) == times
    assert unpack_times(pack_times(())) == ()


def test_a_record_with_its_windows_reads_back_as_one() -> None:
    rec = StateRecord("t", "a", order_times=(T0, T0 + 1), fill_times=(T0 + 2, T0 + 2), windows_stored=True)
    assert windows_from(windows_json(rec)) == {"order_times": (T0, T0 + 1), "fill_times": (T0 + 2, T0 + 2),
                                               "windows_stored": True}


def test_a_row_of_an_older_version_holds_a_list_of_order_times() -> None:
    assert windows_json(StateRecord("t", "a", order_times=(T0,))) == [T0]
    assert windows_from([T0, T0 + 1]) == {"order_times": (T0, T0 + 1)}
    assert windows_from(None) == {"order_times": ()}


@pytest.mark.parametrize("value", [
    {"orders": "not base64!", "fills": ""},
    {"orders": "AAAA", "fills": ""},  # 3 bytes: not a whole float64
    {"orders": pack_times((T0,)), "fills": 7},
    {"orders": "", "fills": "", "extra": None, "oops": []} | {"fills": None},
    {"orders": struct.pack("<d", math.nan).hex(), "fills": ""},
    {"orders": pack_times((math.inf,)), "fills": ""},
    ["yesterday", T0],
    [T0, math.nan],
    "a string",
    42,
], ids=["bad-base64", "torn", "fills-not-text", "fills-null", "hex-not-base64", "infinite", "list-of-text",
        "list-nan", "text", "number"])
def test_a_value_that_does_not_decode_is_logged_and_read_as_no_window(
        value: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="tradeguard.store")
    assert windows_from(value) == {}  # the record's defaults: no times, windows rebuilt from its orders
    assert "order windows are rebuilt from the orders" in caplog.text
