"""The operator console in headless Chromium against values a hostile bot or a careless script controls: a pause
reason and a breaker's name, holding HTML and script (ids and symbols are refused unless they match
[A-Za-z0-9._:@/-]+). The page must show them as text:
no element injected, no script run, and nothing for the Content-Security-Policy to block (it would mean a string
reached the page as markup). tests/e2e/test_console_browser.py covers the views themselves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.e2e.test_console_browser import ADMIN, TRADER, css, open_trader, use_token, visible, wait
from tests.e2e.test_console_browser import driver as driver
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.wait import eventually_sync
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.e2e

HOSTILE_NAME = '<img src=x onerror="window.__xss=4">'  # a breaker name: at most 64 characters
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"><svg onload=window.__xss=3>'


@pytest.fixture
def hostile_sidecar(tmp_path: Path) -> Iterator[tuple[SidecarProcess, str]]:
    with start_sidecar(tmp_path, "--http-listen", "127.0.0.1:0", "--admin-token", ADMIN, "--trader-token", TRADER,
                       "--enable-persistence", "--database-url", f"sqlite:///{tmp_path / 'x.db'}", open_admin=False,
                       name="hostile") as sc:
        assert eventually_sync(lambda: re.search(r"HTTP API on http://(\S+) ", sc.log()) is not None, timeout=10)
        found = re.search(r"HTTP API on http://(\S+) ", sc.log())
        assert found is not None
        yield sc, found.group(1)


def test_html_in_reasons_symbols_and_breaker_names_is_shown_as_text_and_never_run(
        hostile_sidecar: tuple[SidecarProcess, str], driver: object) -> None:
    sc, http = hostile_sidecar
    bot, op = [("authorization", f"Bearer {TRADER}")], [("authorization", f"Bearer {ADMIN}")]
    b1 = {"trader_id": "bot-x", "account_id": "acct-x"}
    with grpc.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000), metadata=bot)
        admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(
            {"name": HOSTILE_NAME, "account_id": "acct-x", "condition": "max_drawdown", "action": "alert",
             "parameters": {"threshold": 0.1}, "enabled": True}, t.CircuitBreaker())), metadata=op)
        admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=t.TRADING_STATE_HALTED, reason=HOSTILE),
                           metadata=op)
    page = driver  # type: ignore[assignment]
    page.get(f"http://{http}/")  # type: ignore[attr-defined]
    page.execute_script("sessionStorage.clear()")  # type: ignore[attr-defined]
    page.get(f"http://{http}/")  # type: ignore[attr-defined]
    wait(page, lambda d: d.execute_script("return !!window.tradeguardConsole"))
    use_token(page, ADMIN)
    css(page, "#accounts-input").send_keys("acct-x")
    css(page, "#accounts-form button[type=submit]").click()
    wait(page, lambda d: "onerror" in d.find_element("css selector", "#accounts-out").text)
    open_trader(page, "acct-x", "bot-x")
    wait(page, lambda d: "onerror" in d.find_element("css selector", "#view-trader").text)
    css(page, "button[data-view=breakers]").click()
    css(page, "#breakers-account").send_keys("acct-x")
    css(page, "#breakers-form button[type=submit]").click()
    wait(page, visible("#breakers-out table"))
    wait(page, lambda d: "onerror" in d.find_element("css selector", "#breakers-out").text)

    assert page.execute_script("return window.__xss") is None  # type: ignore[attr-defined]
    injected = page.execute_script(  # type: ignore[attr-defined]
        "return document.querySelectorAll('img[onerror], svg[onload], #accounts-out script, #view-trader script,"
        " #breakers-out script').length")
    assert injected == 0
    blocked = [e["message"] for e in page.get_log("browser")  # type: ignore[attr-defined]
               if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]
    assert not blocked, blocked
