"""gRPC status errors with google.rpc details. Handlers raise these; the dispatcher maps them. Store (and
application service) errors become statuses in one place: `store_error`, applied by `store_errors`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..store import errors as store

# The status travels in the trailers, which clients cap (grpc: 8 KiB soft, 16 KiB hard by default); past the
# cap a client gets RESOURCE_EXHAUSTED instead of the error and its field violations. Client input echoed in
# an error (an unknown condition name, a parameter key...) is therefore cut to fit.
MESSAGE_MAX_BYTES = 512  # grpc-message is percent-encoded: up to 3x this on the wire
FIELD_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 300
DETAILS_MAX_BYTES = 3000  # the BadRequest in grpc-status-details-bin (base64 on the wire: 4/3 of this)


def clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def clip_bytes(text: str, max_bytes: int) -> str:
    raw = text.encode()
    return text if len(raw) <= max_bytes else raw[: max_bytes - 3].decode(errors="ignore") + "..."


class ApiError(Exception):
    """An error with a proper gRPC status code (never UNKNOWN)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = clip_bytes(message, MESSAGE_MAX_BYTES)
        super().__init__(message)
        self.message = message

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)


class InvalidArgument(ApiError):
    """Bad input; carries google.rpc.BadRequest field violations."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        fields = ", ".join(f"{clip(field, FIELD_MAX_CHARS)}: {clip(desc, DESCRIPTION_MAX_CHARS)}"
                           for field, desc in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"invalid request: {fields}{more}")

    def to_status(self) -> status_pb2.Status:
        bad = error_details_pb2.BadRequest()
        size = 0
        for i, (field, desc) in enumerate(self.violations):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=clip(field, FIELD_MAX_CHARS), description=clip(desc, DESCRIPTION_MAX_CHARS))
            size += violation.ByteSize() + 4
            if size > DETAILS_MAX_BYTES:
                bad.field_violations.add(field="request", description=f"{len(self.violations) - i} more violations")
                break
            bad.field_violations.append(violation)
        detail = any_pb2.Any()
        detail.Pack(bad)
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=self.message, details=[detail])


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(ApiError):
    code = grpc.StatusCode.UNIMPLEMENTED


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


def store_error(exc: store.StoreError, what: str = "") -> ApiError:
    """A store error as the status it means (never UNKNOWN). `what`: the write that failed ("breaker update"),
    named in UNAVAILABLE with whether it may have been saved; empty for a read."""
    if isinstance(exc, store.StoreUnavailable):
        return Unavailable(f"{store.unsaved(what, exc)}; retry later" if what else f"store unavailable; retry: {exc}")
    if isinstance(exc, store.Conflict):
        return AlreadyExists(str(exc))
    if isinstance(exc, store.NotFound):
        return NotFound(str(exc))
    return InvalidArgument([("request", str(exc))])


@contextmanager
def store_errors(what: str = "") -> Iterator[None]:
    """Around a call of a service or the store: its StoreError raised as the ApiError `store_error` maps it to."""
    try:
        yield
    except store.StoreError as exc:
        raise store_error(exc, what) from None
