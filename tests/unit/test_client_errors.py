"""tradeguard_client error mapping: status code, message and google.rpc.BadRequest field violations."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tradeguard_client import FieldViolation, SidecarUnavailableError, TradeGuardError
from tradeguard_client._errors import from_rpc_error


class FakeCall(grpc.RpcError):
    """What a failed call looks like to the client: code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, bytes], ...] = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def bad_request(message: str, *violations: tuple[str, str], code: int = code_pb2.INVALID_ARGUMENT) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]))
    return status_pb2.Status(code=code, message=message, details=[detail]).SerializeToString()


def test_invalid_argument_carries_the_field_violations_of_the_status_details() -> None:
    message = "invalid request: equity: must be finite"
    call = FakeCall(grpc.StatusCode.INVALID_ARGUMENT, message,
                    (("grpc-status-details-bin", bad_request(message, ("equity", "must be finite"),
                                                             ("trader_id", "required"))),))

    error = from_rpc_error(call, "ReportEquity")

    assert type(error) is TradeGuardError and error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == (FieldViolation("equity", "must be finite"),
                                      FieldViolation("trader_id", "required"))
    assert error.violations == {"equity": "must be finite", "trader_id": "required"}
    assert str(error) == f"ReportEquity: INVALID_ARGUMENT: {message}"


def test_details_that_contradict_the_status_line_are_ignored() -> None:
    call = FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "one message",
                    (("grpc-status-details-bin", bad_request("another message", ("equity", "bad"))),))

    error = from_rpc_error(call)

    assert error.field_violations == () and error.message == "one message"


def test_an_error_without_details_has_no_field_violations() -> None:
    error = from_rpc_error(FakeCall(grpc.StatusCode.NOT_FOUND, "no configuration acct-1/x"), "GetConfig")

    assert error.code == grpc.StatusCode.NOT_FOUND and error.field_violations == ()


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_unreachable_codes_are_sidecar_unavailable_errors(code: grpc.StatusCode) -> None:
    error = from_rpc_error(FakeCall(code, "connection refused"), "GetRiskState", attempts=3)

    assert isinstance(error, SidecarUnavailableError) and isinstance(error, TradeGuardError)
    assert error.attempts == 3 and error.method == "GetRiskState"
