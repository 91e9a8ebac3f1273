"""Metrics, traces and structured logs of a real sidecar (in process on port 0, or `tradeguard serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.support.sidecar import running_sidecar, start_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import Breach, DecisionCode, TradingState
from tradeguard_server.observability.logs import JsonFormatter, SecretFilter, TextFormatter, TraceContextFilter
from tradeguard_server.observability.metrics import OTHER, NullMetrics, PrometheusMetrics
from tradeguard_server.observability.tracing import current_trace_id, setup_tracing, tracing_enabled
from tradeguard_server.settings import SettingsError, load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

T0 = 1_767_268_800.0  # 2026-01-01T12:00:00Z
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),)


# ---- helpers --------------------------------------------------------------------------------------


def scrape(address: str) -> dict[str, Any]:
    """name -> family, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float | None:
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


async def report_equity(risk: rsg.RiskServiceStub, trader: str, equity: float,
                        metadata: tuple[tuple[str, str], ...] = ()) -> rs.ReportEquityResponse:
    call: Any = risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id="acct", equity=equity),
                                  metadata=metadata)
    reply: rs.ReportEquityResponse = await call
    return reply


@contextlib.asynccontextmanager
async def traced_sidecar(clock: ManualClock) -> AsyncIterator[tuple[Sidecar, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    sidecar = Sidecar(load_settings({}, {"listen": "127.0.0.1:0", "enable_persistence": False, "uvloop": False,
                                         "tracing": True, "metrics_listen": "", "http_listen": "",
                                         "dev_open_admin": True,
                                         "database_url": "memory"}), clock=clock)
    sidecar.tracing = setup_tracing(processor=SimpleSpanProcessor(exporter))
    await sidecar.start()
    try:
        yield sidecar, exporter
    finally:
        await sidecar.stop()


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def json_log_lines(logger: str) -> Iterator[list[str]]:
    handler = ListHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter())
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield handler.lines
    finally:
        target.removeHandler(handler)


# ---- metrics --------------------------------------------------------------------------------------


async def test_metrics_endpoint_serves_the_seed_series_with_their_types(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, metrics_listen="127.0.0.1:0") as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await report_equity(risk, "bot-1", 10_000.0)
        await report_equity(risk, "bot-1", 9_400.0)  # -6% on the day: daily limit 5% breached

        families = await asyncio.to_thread(scrape, sc.metrics_address)

    types = {name: families[name].type for name in (
        "risk_daily_pnl", "risk_drawdown", "risk_trading_paused", "risk_limit_breaches",
        "risk_persistence_attempts", "risk_persistence_failures", "risk_check_latency_ms", "risk_persist_latency_ms",
    )}
    assert types == {
        "risk_daily_pnl": "gauge", "risk_drawdown": "gauge", "risk_trading_paused": "gauge",
        "risk_limit_breaches": "counter", "risk_persistence_attempts": "counter",
        "risk_persistence_failures": "counter", "risk_check_latency_ms": "gauge", "risk_persist_latency_ms": "gauge",
    }
    assert sample(families, "risk_daily_pnl", "risk_daily_pnl", trader_id="bot-1") == pytest.approx(-600.0)
    assert sample(families, "risk_drawdown", "risk_drawdown", trader_id="bot-1") == pytest.approx(6.0)
    assert sample(families, "risk_trading_paused", "risk_trading_paused", trader_id="bot-1") == 1.0


async def test_rpc_latency_histogram_and_decisions_by_code_and_outcome(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, metrics_listen="127.0.0.1:0") as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))  # no equity: denied
        await report_equity(risk, "bot-1", 10_000.0)
        await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))  # allowed
        await report_equity(risk, "bot-1", 9_000.0)  # daily limit breached
        await admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)))
        shadow = await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))

        families = await asyncio.to_thread(scrape, sc.metrics_address)

    assert shadow.allowed and shadow.would_deny
    hist = "tradeguard_rpc_duration_seconds"
    assert families[hist].type == "histogram"
    assert sample(families, hist, f"{hist}_count", method="CanTrade") == 3.0
    assert sample(families, hist, f"{hist}_count", method="ReportEquity") == 2.0
    assert sample(families, hist, f"{hist}_count", method="SetFeatureFlags") == 1.0
    assert sample(families, hist, f"{hist}_bucket", method="CanTrade", le="+Inf") == 3.0
    decisions = "tradeguard_decisions"
    assert sample(families, decisions, f"{decisions}_total", code="NO_EQUITY_REPORTED", outcome="denied") == 1.0
    assert sample(families, decisions, f"{decisions}_total", code="ALLOWED", outcome="allowed") == 1.0
    assert sample(families, decisions, f"{decisions}_total", code="DAILY_LOSS_LIMIT", outcome="shadow") == 1.0
    last_check_ms = sample(families, "risk_check_latency_ms", "risk_check_latency_ms")
    assert last_check_ms is not None and 0.0 < last_check_ms < 1000.0
    assert sample(families, "tradeguard_build_info", "tradeguard_build_info") == 1.0
    assert sample(families, "tradeguard_store_healthy", "tradeguard_store_healthy") == 1.0


async def test_metrics_listen_empty_disables_metrics_and_wraps_nothing(clock: ManualClock) -> None:
    async with running_sidecar(clock=clock, metrics_listen="") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        reply = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))

        assert isinstance(sc.metrics, NullMetrics)
        assert sc.metrics_address == ""
        assert reply.code == t.DECISION_CODE_NO_EQUITY_REPORTED


async def test_busy_metrics_port_is_logged_and_the_sidecar_still_serves(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_sidecar(clock=clock, metrics_listen="127.0.0.1:0"))
        second = await stack.enter_async_context(running_sidecar(clock=clock, metrics_listen=first.metrics_address))
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(second.address))
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert second.metrics_address == ""
    assert any("metrics: cannot listen" in r.getMessage() for r in caplog.records)


def test_metrics_listen_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="metrics_listen"):
        load_settings({"TRADEGUARD_METRICS_LISTEN": "9464"})

    assert load_settings({"TRADEGUARD_METRICS_LISTEN": ""}).metrics_listen == ""


def test_trader_label_values_are_capped_and_overflow_into_other() -> None:
    metrics = PrometheusMetrics(max_label_values=2)

    metrics.state_changed("a", 1.0, 0.5, False)
    metrics.state_changed("b", 2.0, 0.5, True)
    metrics.state_changed("c", 3.0, 0.7, True)
    metrics.state_changed("d", 4.0, 0.8, True)
    metrics.state_changed("d", 4.0, 0.8, False)
    metrics.breach("daily_loss", "e")

    reg = metrics.registry
    assert reg.get_sample_value("risk_daily_pnl", {"trader_id": "a"}) == 1.0
    assert reg.get_sample_value("risk_trading_paused", {"trader_id": "b"}) == 1.0
    assert reg.get_sample_value("risk_daily_pnl", {"trader_id": "c"}) is None
    assert reg.get_sample_value("risk_daily_pnl", {"trader_id": OTHER}) == 4.0
    assert reg.get_sample_value("risk_trading_paused", {"trader_id": OTHER}) == 1.0  # c paused, d no longer
    assert reg.get_sample_value("risk_limit_breaches_total", {"trader_id": OTHER, "rule": "daily_loss"}) == 1.0
    assert reg.get_sample_value("tradeguard_metric_label_overflow_total", {"label": "trader_id"}) == 2.0


def test_store_and_breaker_methods_move_their_series() -> None:
    metrics = PrometheusMetrics()
    st = TraderState("bot-1", "acct")
    breach = Breach(DecisionCode.DAILY_LOSS_LIMIT, "daily_loss", 6.0, 5.0, "x", TradingState.REDUCING, 60.0)

    metrics.breach(breach.rule, st.trader_id)
    metrics.breaker_fired("cb-1")
    metrics.persist_attempt()
    metrics.persist_attempt()
    metrics.persist_failure()
    metrics.persist_latency_ms(12.5)
    metrics.queue_depth(7)
    metrics.store_healthy(False)
    metrics.decision("KILL_SWITCH", allowed=False, shadow=False)
    metrics.observe_rpc("GetRiskState", 0.0002)

    value = metrics.registry.get_sample_value
    assert value("risk_limit_breaches_total", {"trader_id": "bot-1", "rule": "daily_loss"}) == 1.0
    assert value("tradeguard_breaker_firings_total", {"breaker_id": "cb-1"}) == 1.0
    assert value("risk_persistence_attempts_total") == 2.0
    assert value("risk_persistence_failures_total") == 1.0
    assert value("risk_persist_latency_ms") == 12.5
    assert value("tradeguard_persist_duration_seconds_count") == 1.0
    assert value("tradeguard_store_queue_depth") == 7.0
    assert value("tradeguard_store_healthy") == 0.0
    assert value("tradeguard_decisions_total", {"code": "KILL_SWITCH", "outcome": "denied"}) == 1.0
    assert value("tradeguard_rpc_duration_seconds_count", {"method": "GetRiskState"}) == 1.0


def test_history_row_series_read_the_store_counters_at_scrape_time() -> None:
    class Counts:
        def __init__(self) -> None:
            self.enqueued = {"history": 10}
            self.rows_written = {"history": 6}
            self.rejected = {"history": 1}
            self.dropped_history = 2

    counts = Counts()
    metrics = PrometheusMetrics()
    metrics.observe_store(counts)

    value = metrics.registry.get_sample_value
    assert value("tradeguard_history_rows_enqueued_total") == 10.0
    assert value("tradeguard_history_rows_written_total") == 6.0
    assert value("tradeguard_history_rows_dropped_total") == 2.0
    assert value("tradeguard_history_rows_rejected_total") == 1.0
    assert value("tradeguard_history_rows_pending") == 1.0  # 10 - 6 - 2 - 1
    counts.rows_written["history"] = 7
    assert value("tradeguard_history_rows_written_total") == 7.0
    assert value("tradeguard_history_rows_pending") == 0.0


# ---- traces ---------------------------------------------------------------------------------------


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


async def test_can_trade_with_traceparent_produces_a_server_span_in_that_trace(clock: ManualClock) -> None:
    async with traced_sidecar(clock) as (sc, exporter), grpc.aio.insecure_channel(sc.address) as ch:
        await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"),
                                               metadata=TRACEPARENT)

    (span,) = server_spans(exporter)
    assert span.name == "/tradeguard.v1.RiskService/CanTrade"
    assert span.context is not None and format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN_ID


async def test_state_change_listener_sees_the_trace_id_for_history_rows(clock: ManualClock) -> None:
    seen: list[str | None] = []
    async with traced_sidecar(clock) as (sc, _exporter), grpc.aio.insecure_channel(sc.address) as ch:
        sc.listeners.append(lambda _event: seen.append(current_trace_id()))
        await report_equity(rsg.RiskServiceStub(ch), "bot-1", 10_000.0, TRACEPARENT)
        await report_equity(rsg.RiskServiceStub(ch), "bot-1", 10_100.0)  # no traceparent: a new trace

    assert seen[0] == TRACE_ID
    assert seen[1] is not None and seen[1] != TRACE_ID
    assert current_trace_id() is None


async def test_health_checks_and_reflection_are_not_traced(clock: ManualClock) -> None:
    async with traced_sidecar(clock) as (sc, exporter), grpc.aio.insecure_channel(sc.address) as ch:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), metadata=TRACEPARENT)
        await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest())

    assert [s.name for s in server_spans(exporter)] == ["/tradeguard.v1.AdminService/GetFeatureFlags"]


async def test_tracing_off_installs_no_interceptor(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    interceptors: list[Any] = []  # what the sidecar gives grpc's server, seen at grpc's public constructor
    make_server = grpc.aio.server

    def server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        interceptors.append(kwargs.get("interceptors"))
        return make_server(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", server)
    async with running_sidecar(clock=clock, tracing=False) as sc:
        assert sc.tracing is None
    assert len(interceptors) == 1 and not interceptors[0]


def test_tracing_switches_on_with_the_setting_or_an_otlp_endpoint() -> None:
    def traced(setting: bool, env: dict[str, str]) -> bool:  # the environment reaches tracing through Settings
        s = load_settings(env, {"tracing": setting})
        return tracing_enabled(s.tracing, s.otlp_traces_endpoint, s.otel_sdk_disabled)

    assert not traced(False, {})
    assert traced(True, {})
    assert traced(False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not traced(True, {"OTEL_SDK_DISABLED": "true"})
    assert not setup_tracing(load_settings({}).otlp_traces_endpoint).exporting
    exporting = setup_tracing(load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}).otlp_traces_endpoint)
    assert exporting.exporting
    exporting.shutdown()


# ---- logs -----------------------------------------------------------------------------------------


async def test_breach_log_line_in_json_has_trader_rule_values_and_trace_id(clock: ManualClock) -> None:
    async with traced_sidecar(clock) as (sc, _exporter), grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        with json_log_lines("tradeguard.engine") as lines:
            await report_equity(risk, "bot-1", 10_000.0)
            await report_equity(risk, "bot-1", 9_400.0, TRACEPARENT)

    (breach,) = [json.loads(line) for line in lines if "RISK LIMIT BREACHED" in line]
    assert breach["level"] == "WARNING"
    assert breach["trader_id"] == "bot-1"
    assert breach["rule"] == "daily_loss"
    assert breach["value"] == pytest.approx(6.0)
    assert breach["limit"] == pytest.approx(5.0)
    assert breach["trace_id"] == TRACE_ID


FORGED = "2026-01-01 00:00:00,000 WARNING tradeguard.admin trading resumed for trader bot-1 by operator"


@contextlib.contextmanager
def log_lines(formatter: logging.Formatter) -> Iterator[list[str]]:
    """Lines as a stream handler with `formatter` writes them (a record may span several)."""
    handler = ListHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    out: list[str] = []
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        out.extend(line for record in handler.lines for line in record.split("\n"))


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
async def test_a_newline_in_a_pause_reason_cannot_forge_a_log_line(
    clock: ManualClock, formatter: type[logging.Formatter]
) -> None:
    reason = f"manual stop\n{FORGED}\r"
    async with running_sidecar(clock) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        with log_lines(formatter()) as lines:
            await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                trader_id="bot-1", account_id="acct", trading_state=t.TRADING_STATE_HALTED, reason=reason), timeout=5)

    mentioning = [line for line in lines if "manual stop" in line]
    assert mentioning, lines
    assert not [line for line in lines if line.startswith(FORGED[:23])]  # no line begins like a record of its own
    assert all("\r" not in line for line in lines)
    if formatter is TextFormatter:
        assert f"manual stop\\n{FORGED}\\r" in mentioning[0]
    else:
        assert reason in json.loads(mentioning[0])["msg"]


def test_text_log_escapes_control_characters_and_indents_tracebacks() -> None:
    log = logging.getLogger("tradeguard.test.escape")
    with log_lines(TextFormatter()) as lines:
        try:
            raise ValueError(f"bad value\n{FORGED}")
        except ValueError:
            log.exception("failed for %s", f"x\x00y\u2028{FORGED}")

    assert lines[0].endswith("failed for x\\x00y\\u2028" + FORGED)
    assert all(line.startswith("    ") for line in lines[1:])
    assert lines[-1] == f"    {FORGED}"


def test_secret_filter_scrubs_messages_arguments_and_extras() -> None:
    handler = ListHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretFilter(["s3cr3t-token", "pa55word"]))
    log = logging.getLogger("tradeguard.test.secrets")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("token %s url postgresql://u:%s@db/x", "s3cr3t-token", "pa55word", extra={"auth": "s3cr3t-token"})
        try:
            raise RuntimeError("connect failed for pa55word")
        except RuntimeError:
            log.exception("oops")
    finally:
        log.removeHandler(handler)
        log.propagate = True

    text = "\n".join(handler.lines)
    assert "s3cr3t-token" not in text and "pa55word" not in text
    assert json.loads(handler.lines[0])["msg"] == "token *** url postgresql://u:***@db/x"


def test_served_process_never_logs_the_admin_token_or_database_password(tmp_path: Path) -> None:
    token = "tok-3f1e9c2b7a5d4e60"
    password = "pw-9d8c7b6a5e4f"
    env = {"TRADEGUARD_ADMIN_TOKEN": token, "TRADEGUARD_LOG_LEVEL": "DEBUG",
           "TRADEGUARD_DATABASE_URL": f"postgresql://tradeguard:{password}@127.0.0.1:9/tradeguard"}
    with start_sidecar(tmp_path, "--no-enable-persistence", "--no-migrate-on-start", "--log-json",
                       "--metrics-listen", "", env=env) as sp, grpc.insecure_channel(sp.address) as ch:
        admin = adg.AdminServiceStub(ch)
        with pytest.raises(grpc.RpcError):
            admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=(("authorization", f"Bearer {token}x"),))
        admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=(("authorization", f"Bearer {token}"),))
        assert sp.terminate() == 0
    log = sp.log()

    assert "listening on" in log
    assert token not in log
    assert password not in log
