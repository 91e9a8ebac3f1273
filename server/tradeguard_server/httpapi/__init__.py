"""The HTTP/JSON API (setting `http_listen`): the gRPC services transcoded by their google.api.http annotations.

`build_http_api` is what the composition root calls; the pieces: `routes` (the annotations, read from the
descriptors), `transcode` (JSON <-> protobuf, errors), `context` (the ServicerContext of an HTTP call), `openapi`
(the document at /openapi.json) and `server` (aiohttp on the sidecar's event loop).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import grpc

from tradeguard.v1 import admin_service_pb2, risk_service_pb2

from ..settings import Settings
from .routes import Route, routes_of
from .server import HttpApi, MetricsText, Ready, parse_http_listen

__all__ = ["HttpApi", "Route", "build_http_api", "parse_http_listen", "served_routes", "ssl_context"]


def served_routes() -> list[Route]:
    """Every HTTP binding of RiskService and AdminService, in proto order."""
    return routes_of((risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
                      admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]))


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """TLS with the gRPC listener's certificate (and, with tls_client_ca, client certificates required)."""
    if not s.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(s.tls_cert, s.tls_key)
    if s.tls_client_ca:
        context.load_verify_locations(s.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_http_api(s: Settings, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]], *, ready: Ready,
                   metrics_text: MetricsText | None, tracer_provider: Any = None, version: str = "") -> HttpApi:
    """The HTTP API over `handlers` (gRPC method path -> the handler the gRPC server runs)."""
    from ..console import load_console

    return HttpApi(served_routes(), handlers, ready=ready, metrics_text=metrics_text,
                   max_body_bytes=s.max_message_bytes, tracer_provider=tracer_provider, version=version,
                   console=load_console(), max_streams=s.http_max_streams)
