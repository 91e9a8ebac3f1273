"""JSON <-> protobuf for the HTTP routes (AIP-127 / proto3 JSON, the seeds' snake_case names).

Request: path variables, then the body (`*`: the whole request; a field name: that field, e.g. the seed's bare
`config_data` dict posted to /api/risk/configurations is the `config`), then the query string for the fields left
(`?account_id=a&page_size=10`, dotted names for nested fields, repeated by repeating the key). Unknown fields are
refused, as a gRPC client's unknown field would be meaningless. Enums by name or by number.
PATCH (a binding of an RPC with an `update_mask`): without ?update_mask, the mask is the body's top-level fields.
Response: every field, defaults included (a denial says `"allowed": false`), enums by name, snake_case.
Errors: google.rpc.Status as JSON, with the HTTP status mapped from its gRPC code (the mapping grpc-gateway and
Envoy use).
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message
from google.rpc import status_pb2

from ..api.errors import ApiError, InvalidArgument
from .routes import Route, message_of

# grpc-gateway's HTTPStatusFromCode (runtime/errors.go) and Envoy's grpc_json_transcoder agree on this table.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
MAX_JSON_DEPTH = 64
_WKT_AS_STRING = frozenset({
    "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
})
_INTS = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64,
})


# The content codings of a request body this API reads (RFC 9110 8.4.1), decoded by `decode_body`: the listener
# turns aiohttp's own decoding off, so that any other coding is a 415 Status answer, not aiohttp's text 400.
ACCEPT_ENCODING = "gzip, deflate"
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class UnsupportedEncoding(InvalidArgument):
    """A Content-Encoding this API does not read (HTTP 415)."""


class UnreadableBody(InvalidArgument):
    """A body that is not valid data of its Content-Encoding (HTTP 400)."""


class BodyTooLarge(ApiError):
    """A body larger than max_message_bytes once decoded (HTTP 413)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The body as sent before its Content-Encoding (identity, gzip or deflate; raw deflate without the zlib header
    is taken too, as aiohttp and browsers take it), at most `limit` bytes once decoded."""
    codings = [c for c in (part.strip().lower() for part in content_encoding.split(",")) if c and c != "identity"]
    if not codings or not raw:
        return raw
    unsupported = [c for c in codings if c not in _ZLIB_WBITS]
    if unsupported or len(codings) > 1:
        what = unsupported[0] if unsupported else ", ".join(codings)
        raise UnsupportedEncoding([("Content-Encoding", f"{what!r} is not supported: send the body as it is, or "
                                                        f"with one of {ACCEPT_ENCODING}")])
    coding = codings[0]
    wbits = _ZLIB_WBITS[coding]
    if coding == "deflate" and raw[0] & 0x0F != 8:  # no zlib header (RFC 1950): raw deflate (RFC 1951)
        wbits = -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise UnreadableBody([("body", f"not valid {coding} data ({exc})")]) from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise BodyTooLarge(f"request body larger than {limit} bytes once decoded ({coding})")
    if not decoder.eof:
        raise UnreadableBody([("body", f"not valid {coding} data (it ends before the end of its stream)")])
    if decoder.unused_data:
        raise UnreadableBody([("body", f"not valid {coding} data ({len(decoder.unused_data)} bytes after its end)")])
    return out


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def to_json(message: Message) -> dict[str, Any]:
    """A message as the seeds' JSON: snake_case, every field (defaults too), enums by name, in the proto's field
    order (`allowed` first in a CanTrade answer). The same JSON as json_format.MessageToDict(...,
    preserving_proto_field_name=True, always_print_fields_with_no_presence=True) (tests/unit/test_http_routes.py
    compares them), from an encoder compiled once per message type: MessageToDict walks the descriptors on every
    call and cost ~300 us for a CanTrade answer, more than the whole gRPC call."""
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's Descriptor is the same API
    if descriptor.full_name.startswith("google.protobuf."):
        return dict(_well_known(message))
    return _encoder(descriptor)(message)


Encode = Callable[[Any], Any]
_ENCODERS: dict[str, Callable[[Message], dict[str, Any]]] = {}
_AS_JSON_STRING = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"})
_INT64S = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                     FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64})


def _double(value: float) -> float | str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float(value: float) -> float | str:
    checked = _double(value)
    return checked if isinstance(checked, str) else type_checkers.ToShortestFloat(value)


def _well_known(value: Message) -> Any:
    return json_format.MessageToDict(value, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _convert(field: FieldDescriptor) -> Encode | None:
    """How one value of this field becomes JSON (None: as it is)."""
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        sub = message_of(field)
        if sub.full_name in _AS_JSON_STRING:
            return lambda v: v.ToJsonString()
        if sub.full_name.startswith("google.protobuf."):
            return _well_known
        return lambda v: _encoder(sub)(v)
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda v: names.get(v, v)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return _double
    if t == FieldDescriptor.TYPE_FLOAT:
        return _float
    if t in _INT64S:
        return str
    if t == FieldDescriptor.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode()
    return None


def _map_key(field: FieldDescriptor) -> Encode:
    if field.type == FieldDescriptor.TYPE_BOOL:
        return lambda k: "true" if k else "false"
    return str


def _encoder(descriptor: Descriptor) -> Callable[[Message], dict[str, Any]]:
    found = _ENCODERS.get(descriptor.full_name)
    if found is not None:
        return found
    plan: list[tuple[str, bool, int, Encode | None, Encode]] = []  # name, presence, kind (0 single 1 list 2 map)
    for field in descriptor.fields:
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            plan.append((field.name, False, 2, _convert(sub.fields_by_name["value"]),
                         _map_key(sub.fields_by_name["key"])))
        else:
            plan.append((field.name, field.has_presence, 1 if field.is_repeated else 0, _convert(field), str))

    def encode(message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, presence, kind, convert, key in plan:
            if presence and not message.HasField(name):
                continue
            value = getattr(message, name)
            if kind == 0:
                out[name] = value if convert is None else convert(value)
            elif kind == 1:
                out[name] = list(value) if convert is None else [convert(v) for v in value]
            else:
                out[name] = {key(k): v if convert is None else convert(v) for k, v in value.items()}
        return out

    _ENCODERS[descriptor.full_name] = encode
    return encode


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    return to_json(status)


def status_of(code: grpc.StatusCode, message: str, details: Iterable[Any] = ()) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.extend(details)
    return status


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping past `limit` (a deeply nested body is refused, not recursed into)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_body(raw: bytes) -> Any:
    """The request body as JSON (an empty body is {}); INVALID_ARGUMENT when it is not JSON."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument([("body", f"not valid JSON: {exc}")]) from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidArgument([("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")])
    return data


def _query_value(field: FieldDescriptor, name: str, raw: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = raw.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise InvalidArgument([(name, f"expected true or false, got {raw!r}")])
    if field.type == FieldDescriptor.TYPE_ENUM:
        return int(raw) if raw.strip().lstrip("-").isdigit() else raw
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if message_of(field).full_name == "google.protobuf.FieldMask":
            return _mask_json(p for p in raw.split(",") if p)  # ?update_mask=is_active,symbol_configs
        if message_of(field).full_name in _WKT_AS_STRING:
            return raw
        raise InvalidArgument([(name, "a message field: give its fields as name.field=value")])
    return raw  # strings, and numbers as text: json_format parses them by the field's type


def _lower_camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _mask_json(paths: Iterable[str]) -> str:
    """A FieldMask in proto3 JSON (lowerCamelCase, comma-separated) from field names as the seeds write them
    (snake_case; camelCase passes unchanged): json_format refuses "_" in a FieldMask string."""
    return ",".join(".".join(_lower_camel(part) for part in path.split(".")) for path in paths)


def query_fields(descriptor: Descriptor, query: Iterable[tuple[str, str]], taken: set[str]) -> dict[str, Any]:
    """The query string as a dict for json_format (dotted names are nested fields)."""
    out: dict[str, Any] = {}
    for name, raw in query:
        parts = name.split(".")
        if parts[0] in taken:
            raise InvalidArgument([(name, "given in the path or the body already")])
        target, desc = out, descriptor
        for i, part in enumerate(parts):
            field = desc.fields_by_name.get(part)
            if field is None:
                raise InvalidArgument([(name, f"no such field in {desc.full_name}")])
            last = i == len(parts) - 1
            if not last:
                if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
                    raise InvalidArgument([(name, f"{part} is not a message field")])
                child = target.setdefault(part, {})
                if not isinstance(child, dict):
                    raise InvalidArgument([(name, "given twice")])
                target, desc = child, message_of(field)
                continue
            value = _query_value(field, name, raw)
            if field.is_repeated:
                target.setdefault(part, []).append(value)
            elif part in target:
                raise InvalidArgument([(name, "given twice (only repeated fields repeat)")])
            else:
                target[part] = value
    return out


_INTEGERS = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                       FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
                       FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
                       FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_ENUM})
_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def _fields_text(descriptor: Any) -> str:
    names = [f.name for f in descriptor.fields]
    return ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")


def _check_json(descriptor: Any, data: Any, prefix: str) -> None:
    """What json_format would get wrong or name badly, refused here naming the field by its path as sent
    (`order.side`, `config.symbol_configs[0].bogus`):
    - a key that is no field: json_format's error names the message type and lists the fields in lowerCamelCase;
    - `true` read as 1 and `1.5` as 1 for a number or enum field: an order side of 1.5 became BUY and an equity of
      true became 1.0."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key) or next(
            (f for f in descriptor.fields if f.json_name == key), None)
        path = f"{prefix}{key}"
        if field is None:
            raise InvalidArgument([(path, f"no such field in {descriptor.full_name}; its fields: "
                                          f"{_fields_text(descriptor)}")])
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            value_field = sub.fields_by_name["value"]
            if isinstance(value, dict):
                for map_key, item in value.items():
                    _check_value(value_field, item, f"{path}[{map_key}]")
            continue
        if field.is_repeated and isinstance(value, list):
            for i, item in enumerate(value):
                _check_value(field, item, f"{path}[{i}]")
        else:
            _check_value(field, value, path)


def _check_value(field: Any, item: Any, path: str) -> None:
    if field.type in _INTEGERS or field.type in _FLOATS:
        if isinstance(item, bool):
            raise InvalidArgument([(path, f"expected a number, got {item!r}")])
        if field.type in _INTEGERS and isinstance(item, float) and not item.is_integer():
            raise InvalidArgument([(path, f"expected a whole number, got {item!r}")])
    elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.full_name.startswith(
            "google.protobuf."):
        _check_json(field.message_type, item, path + ".")


# json_format's errors end with where they happened: `... at CanTradeRequest.order.side.` / `at "X.order"`.
_PARSE_ERROR_AT = re.compile(r'at "?[A-Za-z0-9_]+\.([A-Za-z0-9_.\[\]]+?)"?\.*$')


def _parse_error_field(text: str, default: str) -> str:
    """The field a json_format ParseError is about (its proto path), else `default`."""
    found = _PARSE_ERROR_AT.search(text)
    if found:
        return found.group(1)
    nested = re.findall(r"Failed to parse (\w+) field", text)  # ... parse order field: Failed to parse side field
    return ".".join(nested) or default


def build_request(route: Route, params: Mapping[str, str], query: Iterable[tuple[str, str]], raw_body: bytes
                  ) -> Message:
    """The gRPC request of this route from path parameters, body and query string (INVALID_ARGUMENT if wrong)."""
    descriptor = route.method.input_type
    request = message_class(descriptor)()
    data: dict[str, Any] = {}
    taken = set(params)
    if route.body == "*":
        body = parse_body(raw_body)
        if not isinstance(body, dict):
            raise InvalidArgument([("body", f"expected a JSON object ({descriptor.full_name})")])
        for name, value in params.items():
            if name in body and body[name] != value:
                raise InvalidArgument([(name, f"the path says {value!r}, the body {body[name]!r}")])
        data.update(body)
        query = list(query)
        if query:  # AIP-127: with body "*" every field is in the body or the path
            raise InvalidArgument([(query[0][0], "this route reads no query parameters: put it in the JSON body")])
    elif route.body:
        body = parse_body(raw_body)
        if not isinstance(body, dict):
            field_type = message_of(descriptor.fields_by_name[route.body]).full_name
            raise InvalidArgument([(route.body, f"expected a JSON object ({field_type})")])
        data[route.body] = body
        taken.add(route.body)
    data.update(query_fields(descriptor, query, taken))
    if data.get("update_mask") in ("", None, {}, {"paths": []}) and route.http_method == "PATCH":
        data.pop("update_mask", None)  # an empty mask on a PATCH is no mask (never "replace everything")
    if route.http_method == "PATCH" and route.body not in ("", "*") and "update_mask" not in data \
            and "update_mask" in descriptor.fields_by_name:
        # As grpc-gateway does: a PATCH without ?update_mask changes the fields its body gives (AIP-134), not all.
        if not data[route.body]:
            raise InvalidArgument([(route.body, "a PATCH needs at least one field to change")])
        data["update_mask"] = _mask_json(data[route.body])
    data.update(params)
    _check_json(descriptor, data, "")
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        text = " ".join(str(exc).split())
        raise InvalidArgument([(_parse_error_field(text, route.body if route.body not in ("", "*") else "request"),
                                text)]) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgument([("request", f"cannot be read as {descriptor.full_name}: {exc}")]) from None
    return request
