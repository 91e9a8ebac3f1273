"""The OpenAPI 3 document of the HTTP API, generated from the proto descriptors at start.

Paths come from the `google.api.http` annotations (the `Route`s the server serves, so the document cannot drift
from the router); schemas from the messages, in their proto3 JSON form with the proto field names: 64-bit
integers are strings, enums are names (numbers accepted), Timestamp is an RFC 3339 string, Duration "1.5s",
Struct any object. Errors (`default`) are google.rpc.Status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import status_pb2

from .routes import Route, message_of

OPENAPI_VERSION = "3.0.3"
_INT32 = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32})
_UINT32 = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32})
_INT64 = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
                    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})
_WRAPPERS: dict[str, dict[str, Any]] = {
    "google.protobuf.DoubleValue": {"type": "number"}, "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int32", "minimum": 0},
    "google.protobuf.BoolValue": {"type": "boolean"}, "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339, e.g. 2026-01-02T03:04:05Z"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                                 "description": "seconds with an s suffix, e.g. 900s or 1.5s"},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated field paths"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}},
                            "required": ["@type"], "additionalProperties": True},
    **_WRAPPERS,
}
# Query parameters may name nested fields (order.symbol); deeper than this the request goes in a body.
_QUERY_DEPTH = 3
# Request fields the handlers refuse when empty ("required"), where a route reads them from the query string. The
# proto carries no field_behavior annotations, so they are listed here; tests/integration/test_http_api.py calls
# every such route without its query and checks that the fields the server names "required" are the ones listed.
REQUIRED_QUERY: dict[str, frozenset[str]] = {
    "tradeguard.v1.RiskService.GetRiskState": frozenset({"trader_id", "account_id"}),
    "tradeguard.v1.RiskService.WatchRiskState": frozenset({"trader_id", "account_id"}),
    "tradeguard.v1.AdminService.GetConfig": frozenset({"account_id", "config_id"}),
    "tradeguard.v1.AdminService.ListConfigs": frozenset({"account_id"}),
    "tradeguard.v1.AdminService.ListBreakers": frozenset({"account_id"}),
    "tradeguard.v1.AdminService.ListRiskStates": frozenset({"account_id"}),
    "tradeguard.v1.AdminService.ListRiskStateHistory": frozenset({"trader_id", "account_id"}),
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    """components.schemas, filled as messages are referenced."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def message(self, desc: Descriptor) -> dict[str, Any]:
        """A reference to the message's schema (well-known types inline)."""
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        if desc.full_name not in self.schemas:
            self.schemas[desc.full_name] = {}  # placeholder: recursive messages refer to themselves
            self.schemas[desc.full_name] = self.object(desc)
        return _ref(desc.full_name)

    def object(self, desc: Descriptor, skip: Iterable[str] = ()) -> dict[str, Any]:
        skipped = set(skip)
        properties = {f.name: _nullable(self.field(f)) for f in desc.fields if f.name not in skipped}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and message_of(field).GetOptions().map_entry:
            value = message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        single = self.single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        t = field.type
        if t == FieldDescriptor.TYPE_MESSAGE or t == FieldDescriptor.TYPE_GROUP:
            return self.message(message_of(field))
        if t == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            names = [v.name for v in enum.values]
            return {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "format": "int32"}],
                    "description": f"{enum.full_name}: a value name (or its number)"}
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
        if t in _INT32:
            return {"type": "integer", "format": "int32"}
        if t in _UINT32:
            return {"type": "integer", "format": "int32", "minimum": 0}
        if t in _INT64:
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
        if t == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if t == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """proto3 JSON reads `null` as the field's default (unset): every property may be null in a request."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    if not schema or schema.get("description") == "any JSON value":
        return schema
    return {**schema, "nullable": True}


def _query_parameters(schemas: _Schemas, desc: Descriptor, skip: set[str], prefix: str = "",
                      depth: int = 0, required: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for field in desc.fields:
        if field.name in skip:
            continue
        name = prefix + field.name
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and message_of(field).full_name not in _WELL_KNOWN:
            if not field.is_repeated and depth < _QUERY_DEPTH:
                params += _query_parameters(schemas, message_of(field), set(), name + ".", depth + 1)
            continue
        if is_message and field.is_repeated:
            continue
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": schemas.field(field)}
        if name in required and param["schema"].get("type") == "string":
            param["schema"] = {**param["schema"], "minLength": 1}
        if field.is_repeated:
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _operation(schemas: _Schemas, route: Route, index: int) -> dict[str, Any]:
    method = route.method
    request = method.input_type
    service = route.service.rsplit(".", 1)[-1]
    op: dict[str, Any] = {
        "operationId": f"{service}_{method.name}" + ("" if route.primary else f"_{index}"),
        "tags": [service],
        "summary": f"{route.service}.{method.name}",
        "description": f"gRPC {route.grpc_path}, transcoded (google.api.http)."
        + ("" if route.primary else " The seeds' path for the same RPC." if route.template.startswith("/api/")
           else " Another binding of the same RPC."),
    }
    params: list[dict[str, Any]] = [
        {"name": v, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for v in route.variables
    ]
    if route.body == "*":
        body_schema = schemas.object(request, skip=route.variables)
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body_schema}}}
    elif route.body:
        field = request.fields_by_name[route.body]
        op["requestBody"] = {"required": False,  # an empty body reads as {} (then validated as over gRPC)
                             "content": {"application/json": {"schema": schemas.message(message_of(field))}}}
        params += _query_parameters(schemas, request, {*route.variables, route.body},
                                    required=REQUIRED_QUERY.get(method.full_name, frozenset()))
    else:
        params += _query_parameters(schemas, request, set(route.variables),
                                    required=REQUIRED_QUERY.get(method.full_name, frozenset()))
    if params:
        op["parameters"] = params
    if route.response_body:
        response = schemas.field(method.output_type.fields_by_name[route.response_body])
    else:
        response = schemas.message(method.output_type)
    if route.streaming:
        ok = {"description": f"server-sent events: each `data:` line is one {method.output_type.full_name} "
                             "as JSON", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": method.output_type.full_name, "content": {"application/json": {"schema": response}}}
    op["responses"] = {
        "200": ok,
        "default": {"description": "an error: google.rpc.Status (HTTP status mapped from its gRPC code)",
                    "content": {"application/json": {"schema": schemas.message(status_pb2.Status.DESCRIPTOR)}}},
    }
    if route.service.endswith("AdminService"):
        op["security"] = [{"bearer": []}]
    else:  # RiskService: a bot credential once per-bot tokens are configured, else open (on loopback)
        op["security"] = [{}, {"bearer": []}]
    return op


def _plain(description: str, content_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": description.split(":")[0].strip().replace(" ", "_"), "tags": ["operations"],
                    "summary": description, "security": [{}],
                    "responses": {"200": {"description": "OK", "content": {content_type: {"schema": schema}}},
                                  "default": {"description": "not ready (503)",
                                              "content": {content_type: {"schema": schema}}}}}}


def openapi_document(routes: Iterable[Route], title: str = "TradeGuard", version: str = "") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    counters: dict[str, int] = {}
    for route in routes:
        counters[route.method.full_name] = counters.get(route.method.full_name, 0) + 1
        path = paths.setdefault(route.template, {})
        path[route.http_method.lower()] = _operation(schemas, route, counters[route.method.full_name] - 1)
    health = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    paths["/healthz"] = _plain("healthz: liveness (the event loop answers)", "application/json", health)
    paths["/readyz"] = _plain("readyz: readiness (gRPC health, overall)", "application/json", health)
    paths["/metrics"] = _plain("metrics: Prometheus text format", "text/plain", {"type": "string"})
    paths["/openapi.json"] = _plain("openapi: this document", "application/json", {"type": "object"})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"{title} HTTP/JSON API", "version": version or "v1",
                 "description": "The gRPC API (tradeguard.v1) over HTTP/JSON, from the google.api.http annotations "
                                "of proto/tradeguard/v1/*.proto. Field names are the proto names (snake_case)."},
        "paths": paths,
        "components": {
            "schemas": schemas.schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the admin token (AdminService) or a bot's token"}},
        },
    }
