"""OpenTelemetry traces: one server span per RPC, W3C `traceparent` honoured, OTLP export on request.

Off by default (the interceptor is then not installed at all, so the hot path pays nothing). On with
`--tracing` / `TRADEGUARD_TRACING=true`, or when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (unless
`OTEL_SDK_DISABLED=true`). Spans are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is
set; the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables (headers, certificates,
insecure) itself, and the SDK reads `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER[_ARG]` (default:
parent-based, always on). Without an endpoint spans still exist, so trace ids reach the history rows and the
logs. The variables this module acts on are read by settings.py (`Settings.otel_*`) and passed in here.

Health checks and reflection are not traced (probes every few seconds would drown the real spans).

The caller's ids reach the history rows whether or not tracing is on (`history_trace_id`): the span's trace id
when the call is traced, else the trace id of the caller's W3C `traceparent`, else its `x-request-id`. Each unary RPC
binds its call (`bind_caller`: one ContextVar.set, ~50 ns); the metadata is read only when a history row is
written (a state-changing call), never on a call that changes nothing.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
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


# The call being handled: a grpc.aio ServicerContext (anything with an `invocation_metadata()` giving (key, value)
# pairs with lower-case keys), or for HTTP the request's headers (a mapping; `get` by lower-case name).
_CALLER: ContextVar[Any] = ContextVar("tradeguard_caller", default=None)
_HEX = frozenset("0123456789abcdef")
MAX_REQUEST_ID = 64  # risk_state_history.trace_id is VARCHAR(64)


def bind_caller(call: Any) -> None:
    """Remember the call the current task handles (its metadata is read only if a history row is written)."""
    _CALLER.set(call)


def parse_traceparent(value: str) -> str | None:
    """The 32-hex-digit trace id of a W3C `traceparent` (version-traceid-parentid-flags), or None when it is not
    a valid one (wrong shape, upper-case or non-hex digits, an all-zero id, version ff)."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, parent_id = value[:2], value[3:35], value[36:52]
    if version == "ff" or not _HEX.issuperset(version + trace_id + parent_id + value[53:55]):
        return None
    if version == "00" and len(value) != 55:
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id


def _request_id(value: str) -> str | None:
    """An `x-request-id` as recorded: visible ASCII only, at most MAX_REQUEST_ID characters; else None."""
    value = value.strip()
    if not value or len(value) > MAX_REQUEST_ID or not all("!" <= c <= "~" for c in value):
        return None
    return value


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def current_call() -> Any:
    """The call being handled (see _CALLER), or None outside a call."""
    return _CALLER.get()


def caller_trace_id() -> str | None:
    """The trace id of the current call's `traceparent`, else its `x-request-id`, else None."""
    call = _CALLER.get()
    if call is None:
        return None
    traceparent = request_id = None
    read = getattr(call, "invocation_metadata", None)
    if read is not None:  # gRPC: (key, value) pairs, keys in lower case
        for key, value in read() or ():
            if key == "traceparent" and traceparent is None:
                traceparent = value
            elif key == "x-request-id" and request_id is None:
                request_id = value
    elif hasattr(call, "get"):  # HTTP headers: a mapping (case-insensitive ones are looked up as they match)
        traceparent, request_id = call.get("traceparent"), call.get("x-request-id")
    if traceparent is not None:
        trace_id = parse_traceparent(_text(traceparent).strip())
        if trace_id is not None:
            return trace_id
    return None if request_id is None else _request_id(_text(request_id))


def history_trace_id() -> str | None:
    """What a history row records as trace_id: the span's trace id when the call is traced (it continues the
    caller's `traceparent`, else starts a trace), else the caller's own ids (caller_trace_id)."""
    return current_trace_id() or caller_trace_id()


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
