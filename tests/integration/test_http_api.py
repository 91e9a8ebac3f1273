"""The HTTP/JSON API (http_listen) of a real sidecar: the seeds' REST calls as their users make them (curl-equivalent
requests with aiohttp), the same token rules as gRPC, google.rpc.Status errors, the operational paths and 404s on
both HTTP listeners, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc_health.v1 import health_pb2

from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard_server.httpapi import served_routes
from tradeguard_server.settings import SettingsError, load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789abcdef"
BOT1 = "bot-1-token-0123456789abcdef"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

# The ETRMS seed's usage examples ("Saving a Risk Configuration", "Managing Circuit Breakers"), verbatim.
CONFIG_DATA: dict[str, Any] = {
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
BREAKER_DATA: dict[str, Any] = {
    "name": "max_drawdown_10_percent",
    "description": "Close position when drawdown exceeds 10%",
    "account_id": "account123",
    "condition": "max_drawdown",
    "action": "close_position",
    "parameters": {"threshold": 0.1},
    "symbols": ["BTCUSDT", "ETHUSDT"],
    "exchanges": ["binance"],
    "enabled": True,
}


class Http:
    """curl, as a test calls it: method, path, JSON body, optional bearer token -> (status, headers, JSON or text)."""

    def __init__(self, session: aiohttp.ClientSession, address: str) -> None:
        self.session = session
        self.base = f"http://{address}"

    async def __call__(self, method: str, path: str, body: Any = None, token: str = "",
                       headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=sent) as reply:
            text = await reply.text()
            content_type = reply.headers.get("Content-Type", "")
            return reply.status, reply.headers, json.loads(text) if content_type.startswith("application/json") \
                else text


@contextlib.asynccontextmanager
async def http_sidecar(**overrides: Any) -> AsyncIterator[tuple[Sidecar, Http]]:
    overrides.setdefault("http_listen", "127.0.0.1:0")
    async with running_sidecar(**overrides) as sc, aiohttp.ClientSession() as session:
        yield sc, Http(session, sc.http_address)


def violations(status: dict[str, Any]) -> dict[str, str]:
    """field -> description of the google.rpc.BadRequest in a Status JSON."""
    out: dict[str, str] = {}
    for detail in status["details"]:
        assert detail["@type"] == BAD_REQUEST
        out.update({v["field"]: v["description"] for v in detail["field_violations"]})
    return out


# ---- the seeds' REST calls ----------------------------------------------------------------------------------


async def test_etrms_config_data_saved_and_loaded_through_the_seeds_configuration_paths() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, saved = await http("POST", "/api/risk/configurations", CONFIG_DATA)
        assert status == 200, saved
        assert {k: saved[k] for k in CONFIG_DATA if k != "symbol_configs"} == \
            {k: v for k, v in CONFIG_DATA.items() if k != "symbol_configs"}
        assert saved["symbol_configs"][0] | CONFIG_DATA["symbol_configs"][0] == saved["symbol_configs"][0]

        status, _, listed = await http("GET", "/api/risk/configurations?account_id=account123")
        assert status == 200
        assert [c["config_id"] for c in listed] == ["low_risk"]

        status, _, loaded = await http("GET", "/api/risk/configurations/low_risk?account_id=account123")
        assert status == 200
        assert loaded == saved

        status, _, by_v1 = await http("GET", "/v1/admin/accounts/account123/configs/low_risk")
        assert status == 200 and by_v1 == {"config": saved}  # one RPC, two bindings: the seed's answers bare


async def test_etrms_breaker_data_lifecycle_through_the_seeds_circuit_breaker_paths() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, breaker = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA)
        assert status == 200, breaker
        assert {k: breaker[k] for k in BREAKER_DATA} == BREAKER_DATA
        breaker_id = breaker["id"]
        assert breaker_id

        status, _, every = await http("GET", "/api/risk/circuit-breakers/all?account_id=account123")
        assert status == 200 and [b["id"] for b in every] == [breaker_id]

        status, _, off = await http("PUT", f"/api/risk/circuit-breakers/db/{breaker_id}/disable")
        assert status == 200 and off["enabled"] is False
        status, _, on = await http("PUT", f"/api/risk/circuit-breakers/db/{breaker_id}/enable")
        assert status == 200 and on["enabled"] is True

        changed = BREAKER_DATA | {"description": "Close position when drawdown exceeds 12%",
                                  "parameters": {"threshold": 0.12}}
        status, _, updated = await http("PUT", f"/api/risk/circuit-breakers/db/{breaker_id}", changed)
        assert status == 200, updated
        assert updated["description"] == changed["description"] and updated["parameters"] == {"threshold": 0.12}

        status, _, events = await http("GET", f"/api/risk/circuit-breakers/db/{breaker_id}/events")
        assert status == 200 and events == []

        status, _, deleted = await http("DELETE", f"/api/risk/circuit-breakers/db/{breaker_id}")
        assert status == 200 and deleted == {}
        status, _, gone = await http("GET", f"/v1/admin/breakers/{breaker_id}")
        assert status == 404 and gone["code"] == 5  # google.rpc.Code NOT_FOUND


async def test_nofx_feature_flags_get_and_the_post_that_enables_persistence(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'flags.db'}"
    async with http_sidecar(database_url=db, enable_persistence=False) as (_sc, http):
        status, _, flags = await http("GET", "/api/feature_flags")
        assert status == 200
        assert flags == {"enable_risk_enforcement": True, "enable_persistence": False}

        status, headers, flags = await http("POST", "/api/feature_flags", {"enable_persistence": True})
        assert status == 200
        assert flags == {"enable_risk_enforcement": True, "enable_persistence": True}
        assert headers["tradeguard-flags-stored"] == "true"

        status, _, flags = await http("GET", "/api/feature_flags")
        assert flags["enable_persistence"] is True


async def test_can_trade_over_http_answers_as_grpc_does_with_every_field() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, denied = await http("POST", "/v1/risk/can-trade", {"trader_id": "bot-1", "account_id": "acct-1"})
        assert status == 200
        assert denied["allowed"] is False  # defaults are printed (grpcurl drops them)
        assert denied["code"] == "DECISION_CODE_NO_EQUITY_REPORTED"
        assert next(iter(denied)) == "allowed"

        report = {"trader_id": "bot-1", "account_id": "acct-1", "equity": 10_000}
        status, _, reported = await http("POST", "/v1/risk/report-equity", report)
        assert status == 200 and reported["state"]["current_equity"] == 10_000

        order = {"symbol": "BTCUSDT", "exchange": "binance", "side": 1, "quantity": 0.01, "price": 50_000}
        status, _, allowed = await http("POST", "/v1/risk/can-trade",
                                        {"trader_id": "bot-1", "account_id": "acct-1", "order": order})
        assert status == 200 and allowed["allowed"] is True  # the enum given by number
        assert allowed["trading_state"] == "TRADING_STATE_ACTIVE"

        status, _, state = await http("GET", "/v1/risk/state?trader_id=bot-1&account_id=acct-1")
        assert status == 200 and state["state"]["trader_id"] == "bot-1"


async def test_history_written_for_http_calls_as_for_grpc(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'history.db'}"
    async with http_sidecar(database_url=db, enable_persistence=True) as (sc, http):
        report = {"trader_id": "bot-1", "account_id": "acct-1", "equity": 10_000}
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        assert (await http("POST", "/v1/risk/report-equity", report, headers={"traceparent": traceparent}))[0] == 200
        assert await sc.store.flush(timeout=10)
        status, _, history = await http("GET", "/v1/admin/history?trader_id=bot-1&account_id=acct-1")
        assert status == 200, history
        assert [e["state"]["current_equity"] for e in history["entries"]] == [10_000]


async def test_watch_risk_state_as_server_sent_events() -> None:
    async with http_sidecar() as (sc, http), http.session.get(
        f"{http.base}/v1/risk/watch?trader_id=bot-1&account_id=acct-1"
    ) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"

        async def next_event() -> dict[str, Any]:
            kind = ""
            async for line in stream.content:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    kind = text.removeprefix("event: ")
                elif text.startswith("data: "):
                    assert kind == "update"
                    return dict(json.loads(text.removeprefix("data: ")))
            raise AssertionError("stream ended")

        first = await asyncio.wait_for(next_event(), 5)
        assert first["reason"] == "initial"
        await http("POST", "/v1/risk/report-equity", {"trader_id": "bot-1", "account_id": "acct-1", "equity": 5_000})
        update = await asyncio.wait_for(next_event(), 5)
        assert update["state"]["current_equity"] == 5_000
        assert sc.hub is not None


async def test_watch_with_a_bad_request_answers_a_status_not_a_stream() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, error = await http("GET", "/v1/risk/watch?trader_id=&account_id=acct-1")
        assert status == 400 and "trader_id" in violations(error)


# ---- access: the same token rules as gRPC -------------------------------------------------------------------


async def test_admin_paths_need_the_admin_token_when_one_is_set() -> None:
    async with http_sidecar(admin_token=ADMIN) as (_sc, http):
        status, headers, error = await http("GET", "/api/feature_flags")
        assert status == 401 and error["code"] == 16  # UNAUTHENTICATED
        assert headers["WWW-Authenticate"] == "Bearer"
        status, _, error = await http("GET", "/api/feature_flags", token="wrong-token-0123456789abcdef")
        assert status == 401 and error["message"] == "invalid bearer token"
        status, _, flags = await http("GET", "/api/feature_flags", token=ADMIN)
        assert status == 200 and flags["enable_risk_enforcement"] is True


async def test_a_bot_token_acts_only_for_its_own_trader_and_never_as_admin(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('[[credential]]\nname = "bot-1"\ntoken = "' + BOT1 + '"\ntraders = ["bot-1"]\n'
                           'accounts = ["acct-1"]\n')
    async with http_sidecar(admin_token=ADMIN, credentials_file=str(credentials)) as (_sc, http):
        own = {"trader_id": "bot-1", "account_id": "acct-1"}
        assert (await http("POST", "/v1/risk/can-trade", own, token=BOT1))[0] == 200
        status, _, error = await http("POST", "/v1/risk/can-trade", own)
        assert status == 401 and error["code"] == 16
        status, _, error = await http("POST", "/v1/risk/can-trade", {"trader_id": "bot-2", "account_id": "acct-1"},
                                      token=BOT1)
        assert status == 403 and error["code"] == 7  # PERMISSION_DENIED
        status, _, error = await http("POST", "/api/feature_flags", {"enable_risk_enforcement": False}, token=BOT1)
        assert status == 403 and error["message"] == "a trader credential may not call AdminService"


async def test_http_listen_beyond_loopback_follows_the_grpc_rule() -> None:
    settings = load_settings({}, {"listen": "127.0.0.1:0", "http_listen": "0.0.0.0:0", "database_url": "memory",
                                  "metrics_listen": "", "uvloop": False, "dev_open_admin": True})
    with pytest.raises(SettingsError, match="beyond loopback"):
        Sidecar(settings)


def test_http_listen_setting_env_flag_default_and_validation() -> None:
    assert load_settings({}).http_listen == "127.0.0.1:8088"
    assert load_settings({"TRADEGUARD_HTTP_LISTEN": "127.0.0.1:8080"}).http_listen == "127.0.0.1:8080"
    assert load_settings({"TRADEGUARD_HTTP_LISTEN": "x"}, {"http_listen": ""}).http_listen == ""
    with pytest.raises(SettingsError, match="http_listen"):
        load_settings({"TRADEGUARD_HTTP_LISTEN": "8088"})


async def test_empty_http_listen_serves_no_http() -> None:
    async with running_sidecar(http_listen="") as sc:
        assert sc.http is None and sc.http_address == ""


async def test_a_busy_http_port_is_logged_and_grpc_still_serves(caplog: pytest.LogCaptureFixture) -> None:
    async with http_sidecar() as (first, _http), running_sidecar(http_listen=first.http_address) as second:
        assert second.http is None and second.address
    assert any("http: cannot listen on" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


# ---- errors: google.rpc.Status, the HTTP status from the gRPC code ------------------------------------------


async def test_invalid_requests_answer_400_with_the_field_violations() -> None:
    async with http_sidecar() as (_sc, http):
        order = {"symbol": "BTCUSDT", "side": "SIDE_BUY", "quantity": -1, "price": 100}
        status, headers, error = await http("POST", "/v1/risk/can-trade",
                                            {"trader_id": "bot-1", "account_id": "acct-1", "order": order})
        assert status == 400 and headers["Content-Type"].startswith("application/json")
        assert error["code"] == 3 and "order.quantity" in violations(error)

        status, _, error = await http("POST", "/v1/risk/can-trade", raw=b"{not json")
        assert status == 400 and "body" in violations(error)
        status, _, error = await http("POST", "/v1/risk/can-trade", {"trader_id": "bot-1", "nonsense": 1})
        assert status == 400 and error["code"] == 3
        status, _, error = await http("POST", "/v1/risk/can-trade?trader_id=bot-1", {"account_id": "acct-1"})
        assert status == 400 and "trader_id" in violations(error)
        status, _, error = await http("GET", "/v1/risk/state?trader_id=bot-1&account_id=acct-1&bogus=1")
        assert status == 400 and "bogus" in violations(error)
        status, _, error = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA | {"condition": "nope"})
        assert status == 400 and violations(error)["breaker.condition"].startswith("unknown condition 'nope'")


async def test_not_found_already_exists_and_failed_precondition_map_to_their_http_status() -> None:
    async with http_sidecar() as (_sc, http):
        assert (await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA))[0] == 200
        status, _, error = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA)
        assert status == 409 and error["code"] == 6  # ALREADY_EXISTS: the name is taken in the account
        status, _, error = await http("GET", "/api/risk/configurations/absent?account_id=account123")
        assert status == 404 and error["code"] == 5
        status, _, error = await http("POST", "/api/feature_flags", {"enable_persistence": True})  # memory only
        assert status == 400 and error["code"] == 9  # FAILED_PRECONDITION -> 400, as grpc-gateway maps it


async def test_a_body_larger_than_max_message_bytes_answers_413() -> None:
    async with http_sidecar(max_message_bytes=2048) as (_sc, http):
        status, _, error = await http("POST", "/v1/risk/can-trade", {"trader_id": "b" * 4096, "account_id": "a"})
        assert status == 413 and error["code"] == 8  # RESOURCE_EXHAUSTED


# ---- request bodies in a Content-Encoding ---------------------------------------------------------------------

REPORT = {"trader_id": "bot-1", "account_id": "acct-1", "equity": 10_000}


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_broken_compressed_body_answers_400_status_json_and_logs_one_line_without_a_traceback(
        coding: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with http_sidecar() as (_sc, http):
        caplog.clear()
        status, _, error = await http("POST", "/v1/risk/report-equity", raw=b"not compressed at all",
                                      headers={"Content-Encoding": coding})
        # the same keep-alive connection still serves the next request
        after = await http("POST", "/v1/risk/report-equity", REPORT)
        logged = [r for r in caplog.records if "not valid" in r.getMessage() or r.exc_info]
    assert status == 400 and error["code"] == 3, error
    assert violations(error)["body"].startswith(f"not valid {coding} data")
    assert after[0] == 200, after
    assert len(logged) == 1 and logged[0].exc_info is None, [r.getMessage() for r in logged]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress, lambda b: zlib.compress(b)[2:-4]],
                         ids=["gzip", "deflate", "raw-deflate"])
async def test_a_gzip_or_deflate_body_is_read(compress: Any) -> None:
    coding = "gzip" if compress is gzip.compress else "deflate"
    async with http_sidecar() as (_sc, http):
        status, _, answer = await http("POST", "/v1/risk/report-equity", raw=compress(json.dumps(REPORT).encode()),
                                       headers={"Content-Encoding": coding})
    assert status == 200 and answer["state"]["current_equity"] == 10_000, answer


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br", "gzip, gzip"])
async def test_an_unsupported_content_encoding_answers_415_status_json_naming_it(coding: str) -> None:
    """415 Unsupported Media Type is RFC 9110's answer to a content coding the server does not take (15.5.16), with
    Accept-Encoding naming those it does (12.5.3); aiohttp answered br/zstd with a text 400."""
    async with http_sidecar() as (_sc, http):
        status, headers, error = await http("POST", "/v1/risk/report-equity", raw=b"\x00\x01",
                                            headers={"Content-Encoding": coding})
    assert status == 415 and error["code"] == 3, error
    named = coding.split(",")[-1].strip() if coding != "gzip, gzip" else "gzip, gzip"
    assert f"{named!r} is not supported" in violations(error)["Content-Encoding"], error
    assert headers["Accept-Encoding"] == "gzip, deflate"


async def test_a_compressed_body_larger_than_max_message_bytes_once_decoded_answers_413() -> None:
    async with http_sidecar(max_message_bytes=2048) as (_sc, http):
        bomb = gzip.compress(json.dumps({"trader_id": "b" * 100_000, "account_id": "a"}).encode())
        assert len(bomb) < 2048
        status, _, error = await http("POST", "/v1/risk/report-equity", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and error["code"] == 8, error


# ---- a watch whose client goes away ----------------------------------------------------------------------------


async def _watch_status(http: Http, trader: str) -> int:
    async with http.session.get(f"{http.base}/v1/risk/watch?trader_id={trader}&account_id=acct-1") as stream:
        return stream.status


@pytest.mark.parametrize("rude", [False, True], ids=["close", "reset"])
async def test_a_dropped_watch_frees_its_watcher_slot_within_a_second(rude: bool) -> None:
    """The per-trader budget is 1: the next watch is let in as soon as the first client's connection is gone, not
    at the stream's next keep-alive write (15 s)."""
    async with http_sidecar(max_watchers_per_trader=1) as (sc, http):
        host, port = sc.http_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/risk/watch?trader_id=bot-1&account_id=acct-1 HTTP/1.1\r\nHost: " +
                     sc.http_address.encode() + b"\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"event: update"), 5)  # the stream is established
        assert await _watch_status(http, "bot-1") == 503  # the budget is spent
        if rude:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()
        dropped = time.monotonic()

        async def let_in() -> bool:
            return await _watch_status(http, "bot-1") == 200

        assert await eventually(let_in, timeout=2.0)
        freed_after = time.monotonic() - dropped
        assert sc.hub is not None and await eventually(lambda: sc.hub is not None and sc.hub.count == 0, timeout=2.0)
    assert freed_after < 2.0


# ---- operational paths, 404s on both listeners, OpenAPI -----------------------------------------------------


async def test_metrics_healthz_readyz_on_the_http_listener() -> None:
    async with http_sidecar() as (sc, http):
        await http("POST", "/v1/risk/can-trade", {"trader_id": "bot-1", "account_id": "acct-1"})
        status, headers, text = await http("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert 'tradeguard_rpc_duration_seconds_count{method="CanTrade"} 1.0' in text  # the same per-method series
        assert "risk_check_latency_ms" in text
        assert (await http("GET", "/healthz"))[:3:2] == (200, {"status": "SERVING"})
        assert (await http("GET", "/readyz"))[:3:2] == (200, {"status": "SERVING"})
        await sc.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await http("GET", "/readyz"))[:3:2] == (503, {"status": "NOT_SERVING"})
        assert (await http("GET", "/healthz"))[0] == 200  # alive, not ready


async def test_unknown_paths_answer_404_on_both_http_listeners() -> None:
    async with http_sidecar(metrics_listen="127.0.0.1:0") as (sc, http):
        # ("/" is the operator console's page: tests/integration/test_console_http.py)
        for path in ("/index.html", "/nope", "/api/risk/nothing", "/v1/risk/can-trade/extra"):
            status, _, error = await http("GET", path)
            assert status == 404 and error["code"] == 5, path
        status, headers, _ = await http("DELETE", "/api/feature_flags")
        assert status == 405 and headers["Allow"] == "GET, POST"
        async with aiohttp.ClientSession() as session:
            for path in ("/api/risk/configurations", "/", "/metricsx"):
                async with session.get(f"http://{sc.metrics_address}{path}") as reply:
                    assert reply.status == 404, path
            async with session.get(f"http://{sc.metrics_address}/metrics") as reply:
                assert reply.status == 200 and "risk_check_latency_ms" in await reply.text()


async def test_openapi_document_is_valid_and_has_every_binding_of_the_proto() -> None:
    from openapi_spec_validator import validate

    async with http_sidecar() as (_sc, http):
        status, _, doc = await http("GET", "/openapi.json")
    assert status == 200
    validate(doc)
    for route in served_routes():
        assert route.http_method.lower() in doc["paths"][route.template], route.template
    seeds = {
        ("get", "/api/risk/configurations"), ("get", "/api/risk/configurations/{config_id}"),
        ("post", "/api/risk/configurations"), ("get", "/api/risk/circuit-breakers/all"),
        ("post", "/api/risk/circuit-breakers/db"), ("put", "/api/risk/circuit-breakers/db/{breaker_id}"),
        ("delete", "/api/risk/circuit-breakers/db/{breaker_id}"),
        ("put", "/api/risk/circuit-breakers/db/{breaker_id}/enable"),
        ("put", "/api/risk/circuit-breakers/db/{breaker_id}/disable"),
        ("get", "/api/risk/circuit-breakers/db/{breaker_id}/events"),
        ("get", "/api/feature_flags"), ("post", "/api/feature_flags"),
    }
    assert seeds <= {(m, p) for p, ops in doc["paths"].items() for m in ops}
    v1 = {(m, p) for p, ops in doc["paths"].items() for m in ops if p.startswith("/v1/")}
    assert {(r.http_method.lower(), r.template) for r in served_routes() if r.template.startswith("/v1/")} == v1
    assert all(r.template.startswith("/v1/") for r in served_routes() if r.primary)


async def test_openapi_marks_required_exactly_the_query_parameters_the_server_requires() -> None:
    """/openapi.json said account_id was optional on GET /api/risk/configurations (and its siblings), which answer
    400 "account_id: required" without it. Each route that reads its query is called without one: the fields the
    server names "required" are the parameters the document marks required (a 501 route is taken at its word)."""
    async with http_sidecar() as (_sc, http):
        status, _, doc = await http("GET", "/openapi.json")
        assert status == 200
        checked = 0
        for template, ops in doc["paths"].items():
            for method, op in ops.items():
                query = [p for p in op.get("parameters", []) if p["in"] == "query"]
                if not query or "requestBody" in op:
                    continue
                path = "/".join("x" if part.startswith("{") else part for part in template.split("/"))
                status, _, answer = await http(method.upper(), path)
                if status == 501:
                    continue
                said = set() if status != 400 else {f for f, d in violations(answer).items()
                                                    if d.startswith("required")}
                marked = {p["name"] for p in query if p["required"]}
                assert marked == said, (method, template, status, answer)
                checked += 1
    assert checked >= 10
    assert {p["name"]: p["required"] for p in doc["paths"]["/api/risk/configurations"]["get"]["parameters"]} == \
        {"account_id": True}


async def test_an_http_call_is_a_server_span_continuing_the_callers_traceparent() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tradeguard_server.observability.tracing import setup_tracing

    exporter = InMemorySpanExporter()
    sidecar = Sidecar(load_settings({}, {"listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0", "tracing": True,
                                         "enable_persistence": False, "uvloop": False, "metrics_listen": "",
                                         "dev_open_admin": True, "database_url": "memory"}))
    sidecar.tracing = setup_tracing(processor=SimpleSpanProcessor(exporter))
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as session:
            http = Http(session, sidecar.http_address)
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            status, _, _ = await http("POST", "/v1/risk/can-trade", {"trader_id": "bot-1", "account_id": "acct-1"},
                                      headers={"traceparent": traceparent})
            assert status == 200
    finally:
        await sidecar.stop()
    spans = [s for s in exporter.get_finished_spans() if s.name == "tradeguard.v1.RiskService/CanTrade"]
    assert len(spans) == 1
    assert format(spans[0].context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert spans[0].attributes is not None and spans[0].attributes["http.route"] == "/v1/risk/can-trade"
