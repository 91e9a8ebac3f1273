"""OpenTelemetry traces: one server span per RPC, W3C `traceparent` honoured, OTLP export on request.

Off by default (the interceptor is then not installed at all, so the hot path pays nothing). On with
`--tracing` / `TRADEGUARD_TRACING=true`, or when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (unless
`OTEL_SDK_DISABLED=true`). Spans are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is
set; the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables (headers, certificates,
insecure) itself, and the SDK reads `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER[_ARG]` (default:
parent-based, always on). Without an endpoint spans still exist, so trace ids reach the history rows and the
logs. The variables this module acts on are read by settings.py (`Settings.otel_*`) and passed in here.

Health checks and reflection are not traced (probes every few seconds would drown the real spans).
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

log = logging.getLogger("tradeguard.tracing")

SERVICE_NAME = "tradeguard"
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")


def tracing_enabled(setting: bool, otlp_endpoint: str = "", sdk_disabled: bool = False) -> bool:
    """The `tracing` setting, or an OTLP endpoint (`Settings.otlp_traces_endpoint`); never with `sdk_disabled`
    (OTEL_SDK_DISABLED=true)."""
    if sdk_disabled:
        return False
    return setting or bool(otlp_endpoint)


def current_trace_id() -> str | None:
    """The 32-hex-digit trace id of the span being handled (for history rows), or None outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x")


def current_span_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.span_id, "016x")


class Tracing:
    """A TracerProvider of our own (the global one is left alone) and the server interceptor over it."""

    def __init__(self, provider: TracerProvider, exporting: bool) -> None:
        self.provider = provider
        self.exporting = exporting

    def interceptor(self) -> Any:
        """`opentelemetry-instrumentation-grpc`'s aio server interceptor, health and reflection filtered out."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        untraced = filters.any_of(*(filters.service_prefix(name) for name in UNTRACED_SERVICES))
        return aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=filters.negate(untraced)
        )

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter."""
        self.provider.shutdown()


def setup_tracing(
    otlp_endpoint: str = "", service_name: str = "", processor: SpanProcessor | None = None, version: str = ""
) -> Tracing:
    """Build the provider, exporting to `otlp_endpoint` over OTLP/gRPC when given; with `processor` (tests: an
    in-memory exporter) that one instead. `service_name` "" = tradeguard."""
    attributes: dict[str, str] = {"service.name": service_name or SERVICE_NAME}
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes))
    exporting = False
    if processor is not None:
        provider.add_span_processor(processor)
    elif endpoint := otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        exporting = True
    log.info("tracing on (export: %s)", "OTLP" if exporting else "in-process" if processor else "none")
    return Tracing(provider, exporting)
