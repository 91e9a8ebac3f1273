"""The HTTP routes, read from the `google.api.http` annotations of the services' descriptors (AIP-127).

The proto is the one mapping: nothing here names a path. Each binding (the rule and its additional_bindings)
becomes a `Route`; `Router` matches a method and a path against them. The template grammar supported is the part
AIP-127 recommends and our protos use: literal segments and single-segment variables (`{field}`) naming a field of
the request message; `body` and `response_body` name top-level fields. Anything else (`{x=**}`, `:verb`, nested
fields) is refused at start, never served half-way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    if field.message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return field.message_type


class RouteError(ValueError):
    """An annotation this router cannot serve (raised at start)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str  # upper case: GET, POST, ...
    template: str  # as annotated, e.g. /v1/admin/breakers/{breaker_id}
    segments: tuple[str, ...]  # literal text, or "{field}" for a variable
    variables: tuple[str, ...]  # the path's field names, in order
    body: str  # "" (no body), "*" (the whole request) or a top-level field name
    response_body: str  # "" (the whole response) or the response field answered alone (the seeds' bare objects)
    service: str  # full service name, e.g. tradeguard.v1.AdminService
    method: MethodDescriptor
    primary: bool  # the rule itself (False: one of its additional_bindings)

    @property
    def rpc(self) -> str:
        return self.method.name

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if not s.startswith("{"))


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[http_pb2.HttpRule, bool]]:
    yield rule, True
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise RouteError("additional_bindings may not nest (AIP-127)")
        yield extra, False


def _route(rule: http_pb2.HttpRule, method: MethodDescriptor, primary: bool) -> Route:
    kind = rule.WhichOneof("pattern")
    where = f"{method.full_name}"
    if kind not in HTTP_METHODS:
        raise RouteError(f"{where}: unsupported HTTP pattern {kind!r}")
    template: str = getattr(rule, kind)
    if not template.startswith("/") or ":" in template.rsplit("}", 1)[-1]:
        raise RouteError(f"{where}: unsupported template {template!r} (custom verbs are not served)")
    request = method.input_type
    segments: list[str] = []
    variables: list[str] = []
    for segment in template.strip("/").split("/"):
        if segment.startswith("{"):
            name = segment[1:-1]
            if not segment.endswith("}") or "=" in name or "." in name:
                raise RouteError(f"{where}: unsupported path variable {segment!r} in {template!r}")
            field = request.fields_by_name.get(name)
            if field is None or field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
                raise RouteError(f"{where}: path variable {name!r} is not a string field of {request.full_name}")
            variables.append(name)
        elif not segment or "{" in segment or "}" in segment:
            raise RouteError(f"{where}: unsupported segment {segment!r} in {template!r}")
        segments.append(segment)
    body = rule.body
    if body not in ("", "*"):
        field = request.fields_by_name.get(body)
        if field is None or field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            raise RouteError(f"{where}: body {body!r} is not a message field of {request.full_name}")
    if body and kind == "get":
        raise RouteError(f"{where}: GET takes no body")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise RouteError(f"{where}: response_body {rule.response_body!r} is not a field of "
                         f"{method.output_type.full_name}")
    return Route(kind.upper(), template, tuple(segments), tuple(variables), body, rule.response_body,
                 method.containing_service.full_name, method, primary)


def routes_of(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every binding of every annotated method of `services` (methods without an annotation are not served)."""
    out: list[Route] = []
    for svc in services:
        for method in svc.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            for rule, primary in _bindings(options.Extensions[annotations_pb2.http]):
                out.append(_route(rule, method, primary))
    return out


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]


class Router:
    """Method + path -> route and path parameters. Literal segments win over variables (most literals first)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._exact: dict[tuple[str, str], Route] = {}
        self._by_length: dict[int, list[Route]] = {}
        seen: dict[tuple[str, tuple[str, ...]], Route] = {}
        for route in self.routes:
            shape = (route.http_method, tuple("{}" if s.startswith("{") else s for s in route.segments))
            if shape in seen:
                raise RouteError(f"{route.template} ({route.method.full_name}) and {seen[shape].template} "
                                 f"({seen[shape].method.full_name}) are the same {route.http_method} path")
            seen[shape] = route
            if not route.variables:
                self._exact[(route.http_method, "/" + "/".join(route.segments))] = route
            else:
                self._by_length.setdefault(len(route.segments), []).append(route)
        for candidates in self._by_length.values():
            candidates.sort(key=lambda r: -r.literal_count)

    def match(self, http_method: str, raw_path: str) -> Match | None:
        """The route for this method and (still percent-encoded) path, or None."""
        route = self._exact.get((http_method, raw_path.rstrip("/") or "/"))
        if route is not None:
            return Match(route, {})
        for route, params in self._candidates(raw_path):
            if route.http_method == http_method:
                return Match(route, params)
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The methods some route serves at this path (for 405 and its Allow header); [] = unknown path."""
        path = raw_path.rstrip("/") or "/"
        methods = {m for (m, p) in self._exact if p == path}
        methods.update(route.http_method for route, _ in self._candidates(raw_path))
        return sorted(methods)

    def _candidates(self, raw_path: str) -> Iterator[tuple[Route, dict[str, str]]]:
        parts = raw_path.strip("/").split("/")
        for route in self._by_length.get(len(parts), ()):
            params: dict[str, str] = {}
            for want, got in zip(route.segments, parts, strict=True):
                if want.startswith("{"):
                    value = unquote(got)
                    if not value:
                        break
                    params[want[1:-1]] = value
                elif want != got:
                    break
            else:
                yield route, params
