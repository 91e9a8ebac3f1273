"""The HTTP listener (`http_listen`): the JSON API of the google.api.http annotations, /metrics, /healthz,
/readyz, /openapi.json and the operator console (`/`, `/console/...`: ..console), served by aiohttp on the sidecar's own
event loop.

One implementation behind both transports: a route calls the very gRPC method handler the gRPC server runs for
that RPC (the guard with the same token rules, the request parsed and validated, the metrics per method, the
history), with an `HttpContext` standing for the call. WatchRiskState is served as server-sent events.
Every other path answers 404 (a known path with another method: 405), with a google.rpc.Status JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import Message

from ..api.admission import (
    HTTP,
    HTTP_BUDGET,
    HTTP_STREAM,
    HTTP_STREAMS_BUDGET,
    KILL_SWITCH,
    Admission,
    retry_after_header,
    retry_delay,
    retry_status,
)
from ..api.errors import ApiError
from ..console import Asset, Console
from .context import Aborted, HttpContext, peer_text
from .openapi import openapi_document
from .routes import Match, Route, Router
from .transcode import (
    ACCEPT_ENCODING,
    BodyTooLarge,
    UnreadableBody,
    UnsupportedEncoding,
    build_request,
    decode_body,
    dumps,
    http_status,
    status_json,
    status_of,
    to_json,
)

log = logging.getLogger("tradeguard.http")

JSON = "application/json"
SSE_HEARTBEAT_S = 15.0  # a comment line this often: proxies keep the stream, a gone client is noticed
Ready = Callable[[], Awaitable[bool]]
MetricsText = Callable[[], tuple[bytes, str]]


def _client_fault(exc: BaseException | None) -> HttpProcessingError | None:
    """The HttpProcessingError (a malformed request, a body that cannot be read) behind `exc`, if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, HttpProcessingError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection log: a malformed request or request body (aiohttp answers it 400 itself, or drops the
    connection) is one debug line, not an ERROR with a traceback that any client could fill the log with; anything
    else is logged as aiohttp does."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        fault = _client_fault(exc)
        if fault is not None:
            self.logger.debug("malformed HTTP request answered %s: %s", fault.code,
                              " ".join(str(fault.message).split()))
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


class _Request(web.BaseRequest):
    """A request that says when its client's connection is lost: aiohttp calls `_cancel` then (and at shutdown),
    while the handler runs. The SSE stream of WatchRiskState listens, so a client that goes away frees its watcher
    slot at once, not at the next keep-alive write."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["_on_lost"])
    _on_lost: Callable[[], None] | None = None

    def _cancel(self, exc: BaseException) -> None:
        super()._cancel(exc)
        if self._on_lost is not None:
            self._on_lost()

    def on_lost(self, callback: Callable[[], None] | None) -> bool:
        """Call `callback` when the connection is lost; False (and no call) when it is lost already."""
        self._on_lost = callback
        transport = self.transport
        return transport is not None and not transport.is_closing()


def _common_name(transport: Any) -> str:
    """The verified mTLS client certificate's common name, "" when there is none."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class _Server(web.Server):
    """aiohttp's low-level server, calling `lost(transport)` when a connection is lost (HttpApi._lost)."""

    def __init__(self, *args: Any, lost: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost = lost

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        transport = handler.transport  # aiohttp calls this before its protocol lets go of the transport
        super().connection_lost(handler, exc)
        if transport is not None:
            self._lost(transport)


class HttpApi:
    """The HTTP listener of one sidecar. `start(listen)`, then `stop(grace)` (drains in-flight requests)."""

    def __init__(self, routes: list[Route], handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]], *,
                 ready: Ready, metrics_text: MetricsText | None = None, max_body_bytes: int = 1 << 20,
                 version: str = "", tracer_provider: Any = None, console: Console | None = None,
                 max_streams: int = 0) -> None:
        self.router = Router(routes)
        missing = [r.grpc_path for r in routes if r.grpc_path not in handlers]
        if missing:
            raise ValueError(f"HTTP routes without a gRPC handler: {', '.join(sorted(set(missing)))}")
        self.handlers = dict(handlers)
        self.ready = ready
        self.metrics_text = metrics_text
        self.openapi = dumps(openapi_document(routes, version=version))
        self.tracer = None if tracer_provider is None else tracer_provider.get_tracer("tradeguard.http")
        self.max_body_bytes = max_body_bytes
        self.runner: web.ServerRunner | None = None
        self.address = ""
        self.streams: set[asyncio.Task[Any]] = set()
        self.console = console  # the operator console's static files at / and /console/... (None: not served)
        self.admission: Admission | None = None  # admit(): the HTTP budgets (README "Fairness and overload")
        self.max_concurrent = 0
        # Server-sent event streams open at once (http_max_streams, 0 = no limit): a budget of their own, apart from
        # max_concurrent. A stream lasts as long as its client likes: counted with the requests, a bot's streams
        # would take the capacity of every other bot's CanTrade.
        self.max_streams = max_streams
        # a key per TCP connection (its transport; `http <peer> #<n>`) for admission: a penalized connection's
        # address and port, given later by the kernel to another client, do not carry its penalty over. Dropped when
        # the connection is lost (_lost; with the transport at the latest).
        self._connections: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._connection_serial = 0
        # connections whose request reached the handler (admission): until then each request is still a "first"
        # one (a first request answered before admission - a body that is not JSON - used up nothing)
        self._admitted: weakref.WeakSet[Any] = weakref.WeakSet()

    def _keys(self, transport: Any, peer: str) -> tuple[str, str]:
        """(`http <peer> #<n>`: the n-th TCP connection this listener accepted, which admission counts and penalizes;
        for the connection's first request, `http <address> (first requests)`, else ""). Admission counts a first
        request under both: a flood of one request per new connection (each under a new trader id) is over no
        connection's and no trader's limit, and was never shed; counted with the other first requests from its
        address it is one flooding key. A bot's keep-alive connection has one first request."""
        if transport is None:
            return "http " + peer, ""
        key = self._connections.get(transport)
        if key is not None and transport in self._admitted:
            return key, ""
        if key is None:
            self._connection_serial += 1
            key = self._connections[transport] = f"http {peer} #{self._connection_serial}"
        return key, f"http {peer.rsplit(':', 1)[0] if peer.startswith('ipv') else peer} (first requests)"

    def _lost(self, transport: Any) -> None:
        """A connection lost: its key is never used again, so admission drops its penalty and probation (kept, a
        flooder opening a new connection every few requests piled them up for up to an hour)."""
        key = self._connections.pop(transport, None)
        if key is not None and self.admission is not None:
            self.admission.forget_connection(key)

    def admit(self, admission: Admission, max_concurrent: int) -> None:
        """Count requests in progress in `admission` and answer 429 with Retry-After beyond a budget, before
        anything of the request is read: server-sent event streams (class http_stream) beyond `max_streams`, every
        other request (class http) beyond `max_concurrent` (0 = no limit)."""
        self.admission = admission
        self.max_concurrent = max_concurrent

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    shutdown_timeout: float = 5.0) -> str:
        """Listen on host:port (0 = any free port); returns the bound host:port."""
        # aiohttp's low-level server: every request reaches `handle` (no second router: ours is the proto's).
        # Bodies are decoded here (transcode.decode_body), not by aiohttp: an unsupported or broken Content-Encoding
        # is then a Status JSON answer (415 / 400) on a connection that stays usable.
        server = _Server(self.handle, lost=self._lost, request_factory=self._request, handler_cancellation=False,
                         access_log=None, logger=_ProtocolLog(log, {}), auto_decompress=False)
        runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        server = cast(Any, site)._server
        bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        return self.address

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the shutdown timeout), close connections."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- requests -------------------------------------------------------------------------------

    def _request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return _Request(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                        client_max_size=self.max_body_bytes)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = self._over_budget(request, None)  # before anything of the request is read
        if refused is not None:
            return refused
        return await self._handle(request)

    def _over_budget(self, request: web.BaseRequest, match: Match | None) -> web.Response | None:
        """429 with Retry-After when http_max_streams server-sent event streams are open (for a stream), or
        http_max_concurrent other requests are in progress (for any other request; the kill switch excepted)."""
        admission = self.admission
        if admission is None:
            return None
        in_progress = admission.in_progress
        requests_full = bool(self.max_concurrent) and in_progress[HTTP] >= self.max_concurrent
        streams_full = bool(self.max_streams) and in_progress[HTTP_STREAM] >= self.max_streams
        if not requests_full and not streams_full:
            return None  # the usual case: no route matched for it
        if match is None:
            match = self.router.match(request.method, request.rel_url.raw_path)
        if match is not None and match.route.streaming:
            if not streams_full:
                return None
            reason, what = HTTP_STREAMS_BUDGET, (
                f"the HTTP API is busy: http_max_streams={self.max_streams} server-sent event streams open; retry "
                f"after {admission.retry_after_s:g} s")
        else:
            if not requests_full or _kill_switch(match):  # the kill switch gets through (admission.KILL_SWITCH)
                return None
            reason, what = HTTP_BUDGET, (
                f"the HTTP API is busy: http_max_concurrent={self.max_concurrent} requests in progress; retry "
                f"after {admission.retry_after_s:g} s")
        admission.count_shed(reason, match.route.rpc if match is not None else "other")  # bounded labels
        return self._error(retry_status(what, admission.retry_after_s), grpc.StatusCode.RESOURCE_EXHAUSTED)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = _foreign(request)
        if refused:  # a web page's request (CSRF) or a rebound DNS name: no browser may drive the sidecar
            return self._error(status_of(grpc.StatusCode.PERMISSION_DENIED, refused), grpc.StatusCode.PERMISSION_DENIED)
        raw_path = request.rel_url.raw_path
        match = self.router.match(request.method, raw_path)
        if match is None:
            return await self._other(request, raw_path)
        if self.tracer is None:
            return await self._call(request, match)
        from opentelemetry import propagate, trace

        with self.tracer.start_as_current_span(
            match.route.grpc_path[1:], context=propagate.extract(request.headers), kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": match.route.service, "rpc.method": match.route.rpc,
                        "http.request.method": request.method, "http.route": match.route.template},
        ):
            return await self._call(request, match)

    async def _call(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        route = match.route
        handler = self.handlers[route.grpc_path]
        transport = request.transport
        peer = peer_text(transport.get_extra_info("peername") if transport else None)
        ctx = HttpContext(request.headers, peer, _common_name(transport), *self._keys(transport, peer))
        try:
            body = b""
            if route.body:
                body = decode_body(await request.read(), request.headers.get("Content-Encoding", ""),
                                   self.max_body_bytes)
            message = build_request(route, match.params, request.rel_url.query.items(), body)
            raw = message.SerializeToString()
        except UnsupportedEncoding as error:  # RFC 9110 15.5.16: 415, and Accept-Encoding says what is taken
            self._client_fault(request, 415, error.message)
            response = self._error(error.to_status(), error.code, http=415)
            response.headers["Accept-Encoding"] = ACCEPT_ENCODING
            return response
        except UnreadableBody as error:  # a broken gzip/deflate body: the client's fault, one line, no traceback
            self._client_fault(request, 400, error.message)
            return self._error(error.to_status(), error.code)
        except BodyTooLarge as error:
            return self._error(error.to_status(), error.code, http=413)
        except ApiError as error:
            return self._error(error.to_status(), error.code)
        except web.HTTPRequestEntityTooLarge as exc:
            return self._error(status_of(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.text or "request body too large"),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, http=413)
        except Exception as exc:  # a body that never arrives whole (a truncated chunked body, ...): the client's
            text = " ".join(str(getattr(exc, "message", "") or exc).split())
            self._client_fault(request, 400, f"body: cannot be read: {text}")
            response = self._error(status_of(grpc.StatusCode.INVALID_ARGUMENT, f"body: cannot be read: {text}"),
                                   grpc.StatusCode.INVALID_ARGUMENT)
            response.force_close()  # what is left of it on the connection cannot be told from the next request
            return response
        # Counted in progress (http_max_concurrent, or http_max_streams for a stream) from here, once the body is
        # in: a client that sends headers and then nothing (slowloris) holds a connection, not a share of the budget
        # every other client needs.
        refused = self._over_budget(request, match)
        if refused is not None:
            return refused
        if request.transport is not None:  # its next request is not a first one (HttpApi._keys)
            self._admitted.add(request.transport)
        in_progress = None if self.admission is None else self.admission.in_progress
        counted = HTTP_STREAM if route.streaming else HTTP
        if in_progress is not None:
            in_progress[counted] += 1
        try:
            if route.streaming:
                return await self._stream(request, handler, raw, ctx)
            try:
                reply = await handler.unary_unary(raw, ctx)  # type: ignore[misc,arg-type]  # as gRPC calls it
            except Aborted as aborted:
                return self._error(aborted.status, aborted.code)
            ended = ctx.ended() if reply is None else None  # set_code and no answer (a shed call: admission.py)
            if ended is not None:
                return self._error(ended.status, ended.code)
        finally:
            if in_progress is not None:
                in_progress[counted] -= 1
        payload = to_json(reply)
        if route.response_body:  # the seeds' paths answer the bare object or list
            payload = payload.get(route.response_body, {})
        return web.Response(body=dumps(payload), content_type=JSON, headers=ctx.headers())

    @staticmethod
    def _client_fault(request: web.BaseRequest, http: int, what: str) -> None:
        """One log line for a request the client got wrong in a way the API's own validation does not see."""
        peer = peer_text(request.transport.get_extra_info("peername") if request.transport else None)
        log.info("HTTP %s %s from %s answered %d: %s", request.method, request.rel_url.path, peer, http, what)

    def _error(self, status: Any, code: grpc.StatusCode, http: int | None = None) -> web.Response:
        headers = {"WWW-Authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and http is None:  # shed (api/admission.py): when to retry
            delay = retry_delay(status)
            if delay is not None:
                headers = {"Retry-After": retry_after_header(delay)}
        return web.Response(body=dumps(status_json(status)), status=http or http_status(code), content_type=JSON,
                            headers=headers)

    async def _other(self, request: web.BaseRequest, raw_path: str) -> web.StreamResponse:
        """The operational paths, else 405 (a known path, another method) or 404."""
        path = raw_path.rstrip("/") or "/"
        if request.method in ("GET", "HEAD"):
            if path == "/healthz":
                return web.Response(body=dumps({"status": "SERVING"}), content_type=JSON)
            if path == "/readyz":
                ready = await self.ready()
                return web.Response(body=dumps({"status": "SERVING" if ready else "NOT_SERVING"}),
                                    status=200 if ready else 503, content_type=JSON)
            if path == "/openapi.json":
                return web.Response(body=self.openapi, content_type=JSON)
            if path == "/metrics" and self.metrics_text is not None:
                text, content_type = await asyncio.to_thread(self.metrics_text)
                return web.Response(body=text, headers={"Content-Type": content_type})
            asset = self.console.find(path) if self.console is not None else None
            if asset is not None:
                return self._asset(request, asset)
        allowed = self.router.allowed_methods(raw_path)
        if path in ("/healthz", "/readyz", "/openapi.json") or (path == "/metrics" and self.metrics_text):
            allowed = ["GET", "HEAD"]
        if self.console is not None and self.console.find(path) is not None:
            allowed = ["GET", "HEAD"]
        if allowed:
            response = self._error(status_of(grpc.StatusCode.UNIMPLEMENTED,
                                             f"{request.method} is not served at {path}; allowed: "
                                             f"{', '.join(allowed)}"), grpc.StatusCode.UNIMPLEMENTED, http=405)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return self._error(status_of(grpc.StatusCode.NOT_FOUND, f"no such path: {path} (see /openapi.json)"),
                           grpc.StatusCode.NOT_FOUND)

    @staticmethod
    def _asset(request: web.BaseRequest, asset: Asset) -> web.Response:
        """A console file; 304 when the browser's copy (If-None-Match) is this one."""
        headers = asset.headers()
        tags = {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}
        if asset.etag in tags or "*" in tags:
            del headers["Content-Type"]
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers=headers)

    # ---- server-sent events (WatchRiskState) ----------------------------------------------------

    async def _stream(self, request: web.BaseRequest, handler: grpc.RpcMethodHandler[Any, Any], raw: bytes,
                      ctx: HttpContext) -> web.StreamResponse:
        items = cast(AsyncIterator[Message], handler.unary_stream(raw, ctx))  # type: ignore[misc,arg-type]
        try:
            first = await anext(items)  # errors before the first update (auth, validation, limits): a status
        except Aborted as aborted:
            return self._error(aborted.status, aborted.code)
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Message | Any] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in items:
                    queue.put_nowait(("update", item))
            except Aborted as aborted:
                queue.put_nowait(("error", aborted.status))
            finally:
                queue.put_nowait(None)

        task = asyncio.get_running_loop().create_task(pump())
        self.streams.add(task)
        # The client going away (its connection lost) ends the stream at once: the watcher slot is freed now,
        # not at the next write (an idle stream writes only its keep-alive, every SSE_HEARTBEAT_S).
        lost = object()
        connected = cast(_Request, request).on_lost(lambda: queue.put_nowait(("lost", lost)))
        try:
            if not connected:
                return response
            if first is not None:
                await response.write(self._event("update", first))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                if event[1] is lost:  # (aiohttp also says so at shutdown, the connection still open: ended below)
                    break
                await response.write(self._event(*event))
        except (ConnectionResetError, ConnectionError):
            return response  # the client went away
        finally:
            cast(_Request, request).on_lost(None)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.streams.discard(task)
            with contextlib.suppress(Exception):
                await cast(Any, items).aclose()
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write_eof()
        return response

    @staticmethod
    def _event(kind: str, item: Any) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + dumps(to_json(item)) + b"\n\n"


def _kill_switch(match: Match | None) -> bool:
    """PauseTrading / ResumeTrading of AdminService: never refused by http_max_concurrent (admission.KILL_SWITCH)."""
    return match is not None and match.route.rpc in KILL_SWITCH and match.route.service.endswith(".AdminService")


def parse_http_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "localhost."})


def _foreign(request: web.BaseRequest) -> str:
    """Why a request that a browser made for a web page is refused ("" when it is not one).

    A page can send a plain cross-origin POST (text/plain, no preflight) to a loopback port, and a DNS name rebound
    to 127.0.0.1 makes it same-origin: either way its requests carry an Origin (or Sec-Fetch-Site) of another site,
    or a Host that is not this loopback listener's. Scripts (curl, clients) send neither."""
    headers = request.headers
    site = headers.get("Sec-Fetch-Site", "")
    if site in ("cross-site", "same-site"):
        return f"requests from web pages are refused (Sec-Fetch-Site: {site})"
    host = headers.get("Host", "")
    origin = headers.get("Origin", "")
    if origin and origin.split("://", 1)[-1].rstrip("/") != host:
        return f"cross-origin requests are refused (Origin {origin!r}, Host {host!r})"
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = sock[0] if isinstance(sock, tuple) and sock else ""
    if local in ("127.0.0.1", "::1") and host:
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"
        if name.lower() not in _LOOPBACK_NAMES:
            return f"Host {host!r} is not this loopback listener's name (a rebound DNS name?)"
    return ""
