"""The HTTP mapping read from the google.api.http annotations: routes, matching, request transcoding."""

from __future__ import annotations

import json

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.api.errors import InvalidArgument
from tradeguard_server.httpapi import served_routes
from tradeguard_server.httpapi.routes import RouteError, Router, routes_of
from tradeguard_server.httpapi.transcode import build_request, to_json


def router() -> Router:
    return Router(served_routes())


def test_every_rpc_of_both_services_has_a_v1_binding_but_the_bidirectional_session() -> None:
    routes = served_routes()
    v1 = {r.method.full_name for r in routes if r.template.startswith("/v1/")}
    every = {m.full_name for m in rs.DESCRIPTOR.services_by_name["RiskService"].methods} | \
        {m.full_name for m in ad.DESCRIPTOR.services_by_name["AdminService"].methods}
    assert v1 == every - {"tradeguard.v1.RiskService.Session"}


def test_paths_match_with_their_variables_and_literals_win() -> None:
    r = router()
    found = r.match("GET", "/api/risk/circuit-breakers/all")
    assert found is not None and found.route.rpc == "ListBreakers" and found.params == {}
    found = r.match("PUT", "/api/risk/circuit-breakers/db/b%2F1/enable")
    assert found is not None and found.route.rpc == "EnableBreaker" and found.params == {"breaker_id": "b/1"}
    assert r.match("GET", "/api/risk/circuit-breakers/db//events") is None  # an empty variable matches nothing
    assert r.match("PATCH", "/api/feature_flags") is None
    assert r.allowed_methods("/api/feature_flags") == ["GET", "POST"]
    assert r.allowed_methods("/nothing/here") == []


def test_a_body_field_binding_reads_the_bare_object_and_query_fills_the_rest() -> None:
    found = router().match("POST", "/api/risk/configurations")
    assert found is not None
    request = build_request(found.route, found.params, [], b'{"config_id": "low_risk", "account_id": "a"}')
    assert isinstance(request, ad.SaveConfigRequest) and request.config.config_id == "low_risk"

    found = router().match("GET", "/v1/admin/history")
    assert found is not None
    request = build_request(found.route, {}, [("trader_id", "bot-1"), ("page_size", "10"),
                                              ("start_time", "2026-01-01T00:00:00Z")], b"")
    assert isinstance(request, ad.ListRiskStateHistoryRequest)
    assert (request.trader_id, request.page_size, request.start_time.seconds) == ("bot-1", 10, 1_767_225_600)


def test_enum_query_values_by_name_or_number_and_bad_values_are_invalid_argument() -> None:
    found = router().match("POST", "/v1/admin/pause-trading")
    assert found is not None
    by_name = build_request(found.route, {}, [], b'{"trader_id": "t", "trading_state": "TRADING_STATE_HALTED"}')
    by_number = build_request(found.route, {}, [], b'{"trader_id": "t", "trading_state": 3}')
    assert by_name == by_number
    with pytest.raises(InvalidArgument):
        build_request(found.route, {}, [], b'{"trader_id": "t", "trading_state": "NOPE"}')
    with pytest.raises(InvalidArgument):
        build_request(found.route, {}, [], b"[1, 2]")
    with pytest.raises(InvalidArgument):
        build_request(found.route, {}, [], b"[" * 100 + b"]" * 100)


def test_an_annotation_the_router_cannot_serve_is_refused_at_start() -> None:
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="x.proto", package="x")
    proto.message_type.add(name="Req").field.add(name="id", number=1, type=9, label=1)
    method = proto.service.add(name="S").method.add(name="M", input_type=".x.Req", output_type=".x.Req")
    method.options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(get="/v1/{id=things/*}"))
    pool.AddSerializedFile(proto.SerializeToString())
    with pytest.raises(RouteError, match="unsupported path variable"):
        routes_of([pool.FindServiceByName("x.S")])


def _rich_messages() -> list[Message]:
    state = t.RiskState(trader_id="bot-1", account_id="a", current_equity=float("nan"), daily_pnl=-1.5,
                        trading_state=t.TRADING_STATE_REDUCING, daily_orders=7, pause_code=999)  # 999: unknown enum
    state.paused_until.GetCurrentTime()
    state.positions.add(symbol="BTCUSDT", side=t.SIDE_SELL, quantity=float("inf"), leverage=float("-inf"))
    state.pending_orders.add(client_order_id="o-1", status=t.ORDER_STATUS_ACCEPTED).expires_at.FromSeconds(5)
    answer = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED, state=state)
    answer.checks.add(name="equity_reported", status=t.CHECK_STATUS_PASS, value=1.0)
    answer.actions.add(type=t.ACTION_TYPE_CLOSE_POSITION, client_order_ids=["x", "y"])
    config = t.RiskConfiguration(config_id="c", account_id="a", is_active=True, max_open_orders=0,
                                 allowed_symbols=["BTCUSDT"])
    config.market_regime_thresholds.update({"high": 0.5, "levels": [1, "two", None], "nested": {"x": True}})
    config.symbol_configs.add(symbol="ETHUSDT", max_leverage=5)
    config.trading_windows.add(weekdays=[1, 2], start="09:00", end="17:00")
    breaker = t.CircuitBreaker(id="b", name="n", condition="max_drawdown", action="alert")
    breaker.parameters.update({"threshold": 0.1})
    watch = rs.WatchRiskStateResponse(state=state, skipped_updates=3)
    pause = ad.PauseTradingRequest(trader_id="t", trading_state=t.TRADING_STATE_HALTED)
    pause.duration.FromSeconds(90)
    status = InvalidArgument([("order.quantity", "must be > 0")]).to_status()
    return [answer, config, breaker, watch, pause, status, rs.CanTradeResponse(), t.FeatureFlags(),
            t.FeatureFlags(enable_persistence=False)]


@pytest.mark.parametrize("message", _rich_messages(), ids=lambda m: type(m).__name__)
def test_the_compiled_json_encoder_writes_what_json_format_writes(message: Message) -> None:
    expected = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    assert json.loads(json.dumps(to_json(message))) == json.loads(json.dumps(expected))


# ---- request bodies in a Content-Encoding, breaker event timestamps ----------------------------------------------


def test_decode_body_reads_identity_gzip_deflate_and_raw_deflate() -> None:
    import gzip
    import zlib

    from tradeguard_server.httpapi.transcode import decode_body

    body = b'{"trader_id": "bot-1"}'
    assert decode_body(body, "", 1024) == body and decode_body(body, "identity", 1024) == body
    assert decode_body(gzip.compress(body), "GZIP", 1024) == body
    assert decode_body(gzip.compress(body), "x-gzip", 1024) == body
    assert decode_body(zlib.compress(body), "deflate", 1024) == body
    assert decode_body(zlib.compress(body)[2:-4], "deflate", 1024) == body  # raw deflate, no zlib header


@pytest.mark.parametrize(("coding", "raw", "error"), [
    ("br", b"x", "UnsupportedEncoding"), ("gzip, deflate", b"x", "UnsupportedEncoding"),
    ("gzip", b"plain text", "UnreadableBody"), ("gzip", b"\x1f\x8b\x08\x00", "UnreadableBody"),
    ("gzip", None, "BodyTooLarge"),
])
def test_decode_body_refuses_other_codings_broken_data_and_bombs(coding: str, raw: bytes | None, error: str) -> None:
    import gzip

    from tradeguard_server.httpapi import transcode

    data = gzip.compress(b"0" * 100_000) if raw is None else raw
    with pytest.raises(getattr(transcode, error)) as caught:
        transcode.decode_body(data, coding, 1024)
    if error != "BodyTooLarge":
        assert caught.value.violations[0][0] == ("Content-Encoding" if error == "UnsupportedEncoding" else "body")


@pytest.mark.parametrize("seconds", [1_796_072_826.1234565, 1_796_072_826.0734, 1_796_072_826.9999996, 1.5e-7,
                                     1_764_579_445.073368311])
def test_breaker_event_timestamps_are_whole_microseconds_as_the_store_rounds_them(seconds: float) -> None:
    from datetime import UTC, datetime

    from tradeguard_server.api.convert import ts_micros

    stored = datetime.fromtimestamp(seconds, UTC)  # what the store writes into the row
    answered = ts_micros(seconds)
    assert answered.nanos % 1000 == 0
    assert answered.ToDatetime(tzinfo=UTC) == stored
