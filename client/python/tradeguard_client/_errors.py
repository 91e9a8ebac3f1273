"""TradeGuardError: a failed call, with its gRPC status and the google.rpc.BadRequest field violations."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ClientClosedError",
    "FieldViolation",
    "InvalidArgumentError",
    "InvalidResponseError",
    "SidecarUnavailableError",
    "TradeGuardError",
    "from_rpc_error",
]

log = logging.getLogger("tradeguard_client")

UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, e.g. `FieldViolation("order.quantity", "must be > 0")`."""

    field: str
    description: str


class TradeGuardError(Exception):
    """A call failed with a gRPC status other than OK.

    `code` is the `grpc.StatusCode` (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...), `message` the
    server's text, `field_violations` the fields an INVALID_ARGUMENT names (from the google.rpc.BadRequest
    detail in the `grpc-status-details-bin` trailer), `method` the RPC and `attempts` how many tries were made.
    The original `grpc.RpcError` is the exception's `__cause__`.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, method: str = "",
                 field_violations: tuple[FieldViolation, ...] = (), attempts: int = 1) -> None:
        self.code = code
        self.message = message
        self.method = method
        self.field_violations = field_violations
        self.attempts = attempts
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}")

    @property
    def violations(self) -> dict[str, str]:
        """The field violations as {field: description}."""
        return {v.field: v.description for v in self.field_violations}


class SidecarUnavailableError(TradeGuardError):
    """The sidecar could not be reached (UNAVAILABLE), or did not answer in time (DEADLINE_EXCEEDED).

    Raised by every call except `can_trade`, which turns it into a SIDECAR_UNAVAILABLE decision.
    """


class InvalidResponseError(TradeGuardError):
    """The call ended OK but its answer broke the protocol (no message, or a field that cannot be read).

    `code` is INTERNAL. Raised by every call except `can_trade`, which turns it into an INVALID_RESPONSE
    denial (never allowed, even with fail_open).
    """

    def __init__(self, why: str, *, method: str = "", attempts: int = 1) -> None:
        self.why = why
        super().__init__(grpc.StatusCode.INTERNAL, f"invalid response: {why}", method=method, attempts=attempts)


class InvalidArgumentError(TradeGuardError, ValueError):
    """An argument was refused by the client before anything was sent (code INVALID_ARGUMENT).

    Like the server's INVALID_ARGUMENT, `field_violations` names the field. Also a ValueError.
    """

    def __init__(self, message: str, *, method: str = "", field: str = "") -> None:
        violations = (FieldViolation(field, message),) if field else ()
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message, method=method, field_violations=violations)


class ClientClosedError(TradeGuardError):
    """A call on a client after its `close()` (code CANCELLED, like a call that close() cancelled in flight)."""

    def __init__(self, method: str = "") -> None:
        super().__init__(grpc.StatusCode.CANCELLED, "the client is closed", method=method)


def _violations(call: Any) -> tuple[FieldViolation, ...]:
    if not callable(getattr(call, "trailing_metadata", None)):
        return ()
    try:
        status = rpc_status.from_call(call)
        if status is None:
            return ()
        out: list[FieldViolation] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        return tuple(out)
    except Exception:  # a corrupt or inconsistent detail: trust the status line, drop the detail
        log.debug("ignoring unreadable grpc-status-details-bin trailer", exc_info=True)
        return ()


def from_rpc_error(error: grpc.RpcError, method: str = "", attempts: int = 1) -> TradeGuardError:
    """The TradeGuardError for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_fn = getattr(error, "code", None)
    code: grpc.StatusCode = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    cls = SidecarUnavailableError if code in UNREACHABLE else TradeGuardError
    violations = _violations(error)
    return cls(code, message, method=method, field_violations=violations, attempts=attempts)
