"""Method handlers that parse requests themselves, so that every failure has a proper status.

grpc.aio answers UNKNOWN when a request deserializer raises; here the handler receives the raw bytes
and a body that is not the expected protobuf message gets INVALID_ARGUMENT. ApiError subclasses map
to their status (with google.rpc details); anything unexpected is logged and answered INTERNAL.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ..engine.engine import AccountMismatchError
from ..store import errors as store_errors
from .errors import AlreadyExists, ApiError, InvalidArgument, NotFound, Unauthenticated, Unavailable

log = logging.getLogger("tradeguard.api")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Guard = Callable[[grpc.aio.ServicerContext[Any, Any]], None]
UnaryFn = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]
StreamFn = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> None:
    status = error.to_status()
    await context.abort(
        error.code, error.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )


def store_error(exc: store_errors.StoreError) -> ApiError:
    """A store error that reached a handler, as the status it means (never UNKNOWN)."""
    if isinstance(exc, store_errors.StoreUnavailable):
        return Unavailable(f"store unavailable; retry: {exc}")
    if isinstance(exc, store_errors.Conflict):
        return AlreadyExists(str(exc))
    if isinstance(exc, store_errors.NotFound):
        return NotFound(str(exc))
    return InvalidArgument([("request", str(exc))])


def _parse(request_cls: type[Message], raw: bytes) -> Message:
    try:
        return request_cls.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        from .errors import InvalidArgument

        name = request_cls.DESCRIPTOR.full_name
        raise InvalidArgument([("request", f"body is not a valid {name} protobuf message ({exc})")]) from None


def unary(request_cls: type[Message], fn: UnaryFn, guard: Guard | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message | None:
        try:
            if guard is not None:
                guard(context)
            return await fn(_parse(request_cls, raw), context)
        except ApiError as error:
            await _abort(context, error)
        except store_errors.StoreError as exc:
            await _abort(context, store_error(exc))
        except AccountMismatchError as exc:  # a trader id used with another account than its own
            await _abort(context, InvalidArgument([("account_id", str(exc))]))
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
            if guard is not None:
                guard(context)
            async for item in fn(_parse(request_cls, raw), context):
                yield item
        except ApiError as error:
            await _abort(context, error)
        except store_errors.StoreError as exc:
            await _abort(context, store_error(exc))
        except AccountMismatchError as exc:  # a trader id used with another account than its own
            await _abort(context, InvalidArgument([("account_id", str(exc))]))
        except Exception:
            log.exception("unexpected error in %s", request_cls.DESCRIPTOR.full_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the sidecar's log")

    return grpc.unary_stream_rpc_method_handler(handle, request_deserializer=None, response_serializer=_serialize)


def service(name: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(name, dict(handlers))


def bearer_guard(token: str) -> Guard | None:
    """Require `authorization: Bearer <token>`, compared in constant time. None when no token is set."""
    if not token:
        return None
    expected = f"Bearer {token}".encode()

    def guard(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, expected):
                    return
                raise Unauthenticated("invalid bearer token")
        raise Unauthenticated("missing metadata 'authorization: Bearer <token>'")

    return guard
