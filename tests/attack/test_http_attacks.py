"""Adversarial tests of issue 19's new surfaces (HTTP/JSON API, settings, LogBreakerEvent), through public
interfaces only: a real `tradeguard serve` subprocess and `load_settings`. Each test pins a finding of an attack
round that is fixed: a web page (cross-origin POST, also with dev_open_admin) cannot drive the sidecar, an empty
switch variable is not read as false, a bool or a fractional number is not read as a number or an enum, and an
empty update_mask on a PATCH does not replace the whole configuration."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.sidecar import SidecarProcess, start_sidecar
from tradeguard_server.settings import SettingsError, load_settings

pytestmark = pytest.mark.integration

SEED_BREAKER: dict[str, Any] = {
    "name": "max_drawdown_10_percent", "description": "Close position when drawdown exceeds 10%",
    "account_id": "account123", "condition": "max_drawdown", "action": "close_position",
    "parameters": {"threshold": 0.1}, "symbols": ["BTCUSDT", "ETHUSDT"], "exchanges": ["binance"], "enabled": True,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, port: int, token: str, proc: SidecarProcess) -> None:
        self.port, self.token, self.proc = port, token, proc

    def call(self, method: str, path: str, body: Any = None, *, admin: bool = False, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        h = dict(headers or {})
        if admin:
            h["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        out = resp.read()
        conn.close()
        return resp.status, out, dict(resp.getheaders())

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, out, _ = self.call(method, path, body, **kw)
        return status, json.loads(out) if out else None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("i19attack")
    port = _free_port()
    with start_sidecar(tmp, "--http-listen", f"127.0.0.1:{port}", open_admin=False) as proc:
        token = (tmp / "admin.token").read_text().strip()
        a = Api(port, token, proc)
        for _ in range(100):
            try:
                if a.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        yield a


def _equity(api: Api, trader: str, account: str, equity: float) -> None:
    status, _ = api.json("POST", "/v1/risk/report-equity", {"trader_id": trader, "account_id": account,
                                                            "equity": equity})
    assert status == 200


# ---- HTTP: 5xx -----------------------------------------------------------------------------------------------






# ---- HTTP: wrong types read as numbers (a wrong "allowed") ---------------------------------------------------


def test_a_bool_as_equity_is_refused_naming_the_field(api: Api) -> None:
    """`"equity": true` (a careless script's flag in the wrong field) is stored as equity 1.0: for a trader at 10000
    that is a 99.99 % drawdown recorded in history. proto3 JSON has no bool for a double; expected 400."""
    _equity(api, "bot-bool", "acct-bool", 10000)
    status, body = api.json("POST", "/v1/risk/report-equity",
                            {"trader_id": "bot-bool", "account_id": "acct-bool", "equity": True})
    assert status == 400, body["state"]["current_equity"] if status == 200 else body


@pytest.mark.parametrize("side", [1.5, True])
def test_a_non_integer_enum_number_is_refused_not_truncated_into_an_allowed_order(api: Api, side: Any) -> None:
    """An enum given as 1.5 / true is not a valid enum number; json_format truncates (or casts) it and the
    order is decided as that side ("allowed": true). Expected 400 naming order.side."""
    _equity(api, "bot-side", "acct-side", 10000)
    order = {"symbol": "BTCUSDT", "side": side, "quantity": 0.001, "price": 100, "exchange": "binance"}
    status, body = api.json("POST", "/v1/risk/can-trade",
                            {"trader_id": "bot-side", "account_id": "acct-side", "order": order})
    assert status == 400, body.get("allowed")


# ---- HTTP: PATCH with an explicit empty update_mask ----------------------------------------------------------


def test_a_patch_with_an_empty_update_mask_does_not_replace_the_whole_config(api: Api) -> None:
    """PATCH ?update_mask= (a script joining an empty list) wipes the symbol rows and every limit the body does not
    repeat: PATCH silently becomes the whole-replace the issue complains about. Expected: 400, or the body's
    fields as the mask (as without ?update_mask)."""
    cfg = {"config_id": "patchy", "account_id": "acct-patch", "daily_max_drawdown_percentage": 2.0,
           "weekly_max_drawdown_percentage": 5.0, "is_active": True,
           "symbol_configs": [{"symbol": "BTCUSDT", "max_position_size_percentage": 3.0, "max_leverage": 5}]}
    assert api.json("POST", "/api/risk/configurations", cfg, admin=True)[0] == 200
    status, _ = api.json("PATCH", "/api/risk/configurations?update_mask=",
                         {"config_id": "patchy", "account_id": "acct-patch", "daily_max_drawdown_percentage": 4.0},
                         admin=True)
    got = api.json("GET", "/api/risk/configurations/patchy?account_id=acct-patch", admin=True)[1]
    assert status == 400 or (got["symbol_configs"] and got.get("weekly_max_drawdown_percentage") == 5.0), got


# ---- HTTP: SSE streams dropped by the client -----------------------------------------------------------------


def _open_watch(api: Api, trader: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", api.port))
    s.sendall(f"GET /v1/risk/watch?trader_id={trader}&account_id=acct-w HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(5)
    return s, s.recv(4096).split(b"\r\n")[0]




# ---- LogBreakerEvent (ETRMS log_event) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def breaker_id(api: Api) -> str:
    status, body = api.json("POST", "/api/risk/circuit-breakers/db", SEED_BREAKER, admin=True)
    assert status == 200, body
    return str(body["id"])


def test_log_breaker_event_refuses_a_trader_bound_to_another_account_naming_trader_id(api: Api,
                                                                                      breaker_id: str) -> None:
    """The breaker is account123's; bot-elsewhere is bound to acct-other by its first report. An event that names it
    would be listed among account123's events for a trader that is not the account's."""
    _equity(api, "bot-elsewhere", "acct-other", 10_000)
    status, body = api.json("POST", f"/v1/admin/breakers/{breaker_id}/events",
                            {"trader_id": "bot-elsewhere", "action_taken": "close_position"}, admin=True)
    assert status == 400 and body["code"] == 3, body
    fields = {v["field"]: v["description"] for d in body["details"] for v in d["field_violations"]}
    assert "trader_id" in fields and "another account" in fields["trader_id"], body
    events = api.json("GET", f"/v1/admin/breakers/{breaker_id}/events", admin=True)[1]["events"]
    assert "bot-elsewhere" not in [e["trader_id"] for e in events]
    _equity(api, "bot-here", "account123", 10_000)  # a trader of the breaker's account is taken
    status, body = api.json("POST", f"/v1/admin/breakers/{breaker_id}/events",
                            {"trader_id": "bot-here", "action_taken": "close_position"}, admin=True)
    assert status == 200 and body["event"]["trader_id"] == "bot-here", body


@pytest.mark.parametrize("timestamp", [None, "2026-11-30T10:00:00.1234565Z", "2026-11-30T10:00:00.999999999Z"])
def test_log_breaker_event_answers_the_timestamp_of_the_stored_row(api: Api, breaker_id: str,
                                                                   timestamp: str | None) -> None:
    """The answer said .123456716Z (float seconds in nanos) where the row and every later listing say .123457Z."""
    sent = {"action_taken": "reduce_position"} | ({"timestamp": timestamp} if timestamp else {})
    status, body = api.json("POST", f"/v1/admin/breakers/{breaker_id}/events", sent, admin=True)
    assert status == 200, body
    logged = body["event"]
    events = api.json("GET", f"/v1/admin/breakers/{breaker_id}/events?page_size=1000", admin=True)[1]["events"]
    stored = next(e for e in events if e["id"] == logged["id"])
    assert logged["timestamp"] == stored["timestamp"], (logged["timestamp"], stored["timestamp"])
    fraction = logged["timestamp"].rstrip("Z").partition(".")[2]
    assert len(fraction) <= 6, logged["timestamp"]  # whole microseconds, as the row keeps them






# ---- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["TRADEGUARD_ENABLE_RISK_ENFORCEMENT", "TRADEGUARD_ENABLE_PERSISTENCE"])
def test_an_empty_flag_variable_is_ignored_not_read_as_false(name: str) -> None:
    """`TRADEGUARD_ENABLE_RISK_ENFORCEMENT=` (empty, what compose's ${VAR} gives when VAR is unset) is read as
    false: shadow mode, no warning. The seed's ENABLE_RISK_ENFORCEMENT= empty is ignored instead. Expected: an
    empty value is unset (default true), or an error."""
    field = name.removeprefix("TRADEGUARD_").lower()
    try:
        s = load_settings({name: ""}, {})
    except SettingsError:
        return
    assert getattr(s, field) is True, (s.warnings, dict(s.sources).get(field))






# ---- HTTP: cross-origin requests from a browser on the same machine ------------------------------------------

EVIL = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example", "Host": "evil.example:8088"}


def test_a_web_pages_cross_origin_post_is_refused(api: Api) -> None:
    """A web page the developer visits can fetch('http://localhost:8088/v1/risk/report-equity', {method: 'POST',
    body: ...}) as a CORS "simple request" (text/plain, no preflight): the body is read as JSON whatever its
    Content-Type, the Origin and the (DNS-rebinding) Host are not looked at, and the default loopback sidecar has
    RiskService open. The page reports equity 1 for a live bot: REDUCING, history rows, a pause. gRPC was never
    reachable from a browser. Expected: a body POST needs Content-Type application/json (forces a preflight,
    which answers 405), and/or a foreign Origin or Host is refused (403)."""
    _equity(api, "bot-web", "acct-web", 10000)
    status, body, _ = api.call("POST", "/v1/risk/report-equity", headers=EVIL,
                               raw=b'{"trader_id": "bot-web", "account_id": "acct-web", "equity": 1}')
    assert status in (403, 415), json.loads(body).get("state", {}).get("trading_state")


def test_a_web_page_cannot_switch_enforcement_off_even_with_dev_open_admin(tmp_path: Path) -> None:
    """README: run `--http-listen 127.0.0.1:8080 --dev-open-admin` so the seed's curl commands work letter for
    letter. Then any web page can POST text/plain {"enable_risk_enforcement": false} to /api/feature_flags:
    enforcement off (stored, kept across restarts). Expected: refused for a foreign Origin/Host or a non-JSON
    Content-Type."""
    port = _free_port()
    with start_sidecar(tmp_path, "--http-listen", f"127.0.0.1:{port}", "--dev-open-admin") as proc:
        a = Api(port, "", proc)
        for _ in range(100):
            try:
                if a.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        a.call("POST", "/api/feature_flags", raw=b'{"enable_risk_enforcement": false}', headers=EVIL)
        flags = a.json("GET", "/api/feature_flags")[1]
        assert flags["enable_risk_enforcement"] is True, flags


# ---- HTTP: error texts in the proto's camelCase ---------------------------------------------------------------


def _violations(body: Any) -> dict[str, str]:
    return {v["field"]: v["description"] for d in body["details"] for v in d["field_violations"]}


@pytest.mark.parametrize(("path", "body", "field", "message"), [
    ("/v1/risk/report-equity", {"trader_id": "b", "account_id": "a", "fooBar": 1}, "fooBar",
     "tradeguard.v1.ReportEquityRequest"),
    ("/v1/risk/can-trade", {"trader_id": "b", "account_id": "a", "order": {"symbol": "X", "bogus_size": 1}},
     "order.bogus_size", "tradeguard.v1.OrderIntent"),
    ("/api/risk/configurations", {"config_id": "c", "account_id": "a", "symbol_configs": [{"symbol": "X", "lev": 5}]},
     "config.symbol_configs[0].lev", "tradeguard.v1.SymbolRiskConfiguration"),
])
def test_an_unknown_field_is_named_as_sent_with_its_path_not_request(api: Api, path: str, body: dict[str, Any],
                                                                     field: str, message: str) -> None:
    """The violation said field "request" and listed the fields in lowerCamelCase ('traderId', ...), names no
    client of this API writes; expected: the unknown key as sent, at its path, and the fields as the API names them."""
    status, answer = api.json("POST", path, body, admin=True)
    assert status == 400, answer
    found = _violations(answer)
    assert field in found and "request" not in found, found
    assert message in found[field] and "Id'" not in found[field] and "camel" not in found[field], found
    if "OrderIntent" in message:
        assert "client_order_id" in found[field] and "clientOrderId" not in found[field]


def test_a_wrong_type_is_named_by_its_field_not_request(api: Api) -> None:
    status, answer = api.json("POST", "/v1/risk/can-trade",
                              {"trader_id": "b", "account_id": "a", "order": {"side": "SIDEWAYS"}})
    assert status == 400 and "order.side" in _violations(answer), answer




# ---- /openapi.json vs reality --------------------------------------------------------------------------------


