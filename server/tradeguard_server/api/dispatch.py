"""Method handlers that parse requests themselves, so that every failure has a proper status.

grpc.aio answers UNKNOWN when a request deserializer raises; here the handler receives the raw bytes
and a body that is not the expected protobuf message gets INVALID_ARGUMENT. ApiError subclasses map
to their status (with google.rpc details); anything unexpected is logged and answered INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ..auth import Credentials, Principal
from ..engine.engine import AccountMismatchError
from ..observability.tracing import bind_caller
from ..store import errors as store_errors
from .errors import ApiError, InvalidArgument, PermissionDenied, Unauthenticated, store_error

log = logging.getLogger("tradeguard.api")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
# A guard authenticates a call before its body is parsed: it raises, or returns the caller's principal when the
# request must then be checked against it (the trader ids and accounts a per-bot credential may act for).
Guard = Callable[[grpc.aio.ServicerContext[Any, Any]], Principal | None]
UnaryFn = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]
StreamFn = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> None:
    status = error.to_status()
    await context.abort(
        error.code, error.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )


def _parse(request_cls: type[Message], raw: bytes) -> Message:
    try:
        return request_cls.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        from .errors import InvalidArgument

        name = request_cls.DESCRIPTOR.full_name
        raise InvalidArgument([("request", f"body is not a valid {name} protobuf message ({exc})")]) from None


def unary(request_cls: type[Message], fn: UnaryFn, guard: Guard | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message | None:
        bind_caller(context)  # its traceparent / x-request-id reach the history rows it causes
        try:
            principal = None if guard is None else guard(context)
            request = _parse(request_cls, raw)
            if principal is not None:
                authorize(principal, request)
            return await fn(request, context)
        except ApiError as error:
            await _abort(context, error)
        except store_errors.StoreError as exc:
            await _abort(context, store_error(exc))
        except AccountMismatchError:  # a trader id used with another account than its own
            await _abort(context, ACCOUNT_MISMATCH)
        except Exception:
            log.exception("unexpected error in %s", request_cls.DESCRIPTOR.full_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the sidecar's log")
        return None

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=_serialize)


def server_stream(
    request_cls: type[Message], fn: StreamFn, guard: Guard | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Message]:
        try:
            principal = None if guard is None else guard(context)
            request = _parse(request_cls, raw)
            if principal is not None:
                authorize(principal, request)
            async for item in fn(request, context):
                yield item
        except ApiError as error:
            await _abort(context, error)
        except store_errors.StoreError as exc:
            await _abort(context, store_error(exc))
        except AccountMismatchError:  # a trader id used with another account than its own
            await _abort(context, ACCOUNT_MISMATCH)
        except Exception:
            log.exception("unexpected error in %s", request_cls.DESCRIPTOR.full_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the sidecar's log")

    return grpc.unary_stream_rpc_method_handler(handle, request_deserializer=None, response_serializer=_serialize)


def service(name: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(name, dict(handlers))


# Names nothing of the binding (which account holds the trader id is for operators: AdminService.ListBindings).
ACCOUNT_MISMATCH = InvalidArgument([(
    "account_id", "this trader_id is bound to another account; an operator can list and move bindings "
    "(AdminService.ListBindings, RebindTrader)")])
_BEARER = b"bearer "


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    """The token of `authorization: Bearer <token>`, or None when the metadata is missing or not Bearer."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            given = value.encode() if isinstance(value, str) else value
            if given[:7].lower() == _BEARER:
                return given[7:].strip()
            return None
    return None


def authorize(principal: Principal, request: Message) -> None:
    """PERMISSION_DENIED unless the principal may act for the request's trader and account.

    The message names only what the caller sent: nothing of other traders, accounts or bindings.
    """
    trader_id: str = getattr(request, "trader_id", "")
    account_id: str = getattr(request, "account_id", "")
    if not principal.may_act_for(trader_id, account_id):
        raise PermissionDenied(f"this credential may not act for trader_id {trader_id!r} with account_id "
                               f"{account_id!r}")


def tls_principal(
    by_identity: Mapping[str, Principal], context: grpc.aio.ServicerContext[Any, Any]
) -> Principal | None:
    """The principal of the mTLS client certificate's common name (verified by the handshake), if any."""
    for name in context.auth_context().get("x509_common_name", ()):
        principal = by_identity.get(name.decode(errors="replace") if isinstance(name, bytes) else name)
        if principal is not None:
            return principal
    return None


def admin_guard(credentials: Credentials) -> Guard:
    """AdminService: the admin token (compared by digest), unless dev_open_admin opened it."""

    def guard(context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        table = credentials.table
        if table.admin_open:
            return None
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("missing metadata 'authorization: Bearer <admin token>'")
        principal = table.lookup(token)
        if principal is None:
            raise Unauthenticated("invalid bearer token")
        if not principal.admin:
            raise PermissionDenied("a trader credential may not call AdminService")
        return None

    return guard


def trader_guard(credentials: Credentials) -> Guard:
    """RiskService: once trader credentials are configured, a known token; its principal is then checked
    against each request's trader_id and account_id. Without them: anyone (as before; logged at start)."""

    def guard(context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        table = credentials.table
        if not table.trader_auth:
            return None
        token = bearer_token(context)
        if token is None:
            principal = tls_principal(table.by_identity, context) if table.by_identity else None
            if principal is None:
                raise Unauthenticated("missing metadata 'authorization: Bearer <token>'")
            return principal if principal.restricted else None
        principal = table.lookup(token)
        if principal is None:
            raise Unauthenticated("invalid bearer token")
        return principal if principal.restricted else None

    return guard
