"""`HttpContext`: what a gRPC handler sees of its call (a `grpc.aio.ServicerContext`), for an HTTP request.

The HTTP routes call the very method handlers the gRPC server runs (guard, parsing, validation, metrics per
method, history): this is the context they are given. Headers are the invocation metadata (lower-case keys, so
`Authorization: Bearer ...`, `traceparent` and `x-request-id` reach the guards and the handlers as they would over
gRPC); `abort` raises `Aborted`, which the HTTP layer turns into a google.rpc.Status JSON answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.rpc import status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Hop-by-hop and transport headers are not call metadata (gRPC's own reserved names are not either).
_NOT_METADATA = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "content-length",
    "te", "content-type",
})


class Aborted(Exception):
    """The handler aborted the call: its status (with the google.rpc details the handler attached)."""

    def __init__(self, status: status_pb2.Status, code: grpc.StatusCode) -> None:
        super().__init__(status.message)
        self.status = status
        self.code = code


def peer_text(peername: Any) -> str:
    """A socket peer in gRPC's `peer()` form: ipv4:1.2.3.4:5, ipv6:[::1]:5, unix:path."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    if isinstance(peername, str):
        return f"unix:{peername}"
    return "unknown"


class HttpContext:
    """The ServicerContext of one HTTP request (the methods TradeGuard's handlers and guards use)."""

    __slots__ = ("_auth", "_metadata", "_peer", "code", "connection", "details", "first_key", "trailing")
    protocol = "http"  # api/admission.py: keyed apart from gRPC connections, shed calls not held

    def __init__(self, headers: Mapping[str, str], peer: str, common_name: str = "", connection: str = "",
                 first_key: str = "") -> None:
        self._metadata = tuple((k.lower(), v) for k, v in headers.items() if k.lower() not in _NOT_METADATA)
        self._peer = peer
        # what admission counts and penalizes a connection by: one TCP connection's, never its address and port
        # alone, which the kernel gives to a later connection
        self.connection = connection or "http " + peer
        # the first request of a connection is also counted, by admission while the loop is overloaded, with every
        # other first request from its address ("" for a later request; HttpApi._keys)
        self.first_key = first_key
        self._auth: dict[str, list[bytes]] = {"x509_common_name": [common_name.encode()]} if common_name else {}
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()
        self.code: grpc.StatusCode | None = None  # set_code: a handler that returns None ends the call with it
        self.details = ""

    # ---- what the handlers read ----------------------------------------------------------------

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def add_done_callback(self, _callback: Callable[..., Any]) -> None:
        return None

    # ---- what the handlers set -----------------------------------------------------------------

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    async def send_initial_metadata(self, _metadata: Iterable[tuple[str, str]]) -> None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def ended(self) -> Aborted | None:
        """What a handler that returned without an answer ended the call with (set_code, set_details and the
        trailing grpc-status-details-bin, as grpc.aio sends them), None when it set no error code."""
        if self.code is None or self.code == grpc.StatusCode.OK:
            return None
        status = status_pb2.Status(code=self.code.value[0], message=self.details)
        for key, value in self.trailing:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        return Aborted(status, self.code)

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> NoReturn:
        status = status_pb2.Status(code=code.value[0], message=details)
        for key, value in trailing_metadata:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        raise Aborted(status, code)

    def headers(self) -> dict[str, str]:
        """The trailing metadata a handler set (e.g. tradeguard-flags-stored), as response headers."""
        return {k: v for k, v in self.trailing if isinstance(v, str) and not k.endswith("-bin")}
