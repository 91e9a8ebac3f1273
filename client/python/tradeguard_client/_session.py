"""The Session stream (issue 18): one bidirectional stream per client carries `can_trade` and the reports.

Requests are numbered; the reader hands each answer to the call waiting for its `request_id`. A broken stream
(sidecar restarted, connection lost) fails every call in flight with UNAVAILABLE (so `can_trade` fails closed,
SIDECAR_UNAVAILABLE, and the retry policy retries the idempotent calls as for unary ones, with its backoff), and the
next attempt opens a new stream on the channel, which reconnects with its own backoff (100 ms doubling to 2 s, see
_channel.DEFAULT_OPTIONS); while it is not connected a new stream fails at once (fail closed, no wait). Each call's
own deadline bounds its wait: none hangs past it.

`OnDisconnect` declares the trader this client trades for and the pause the sidecar applies when the stream ends
without a clean close (the bot killed, the connection lost); sent as metadata on every stream, so a reconnect
declares it again. `close()` half-closes the stream first: a clean close pauses nobody.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from tradeguard.v1 import risk_service_pb2 as rs

from ._errors import InvalidResponseError

__all__ = ["SESSION_CALLS", "OnDisconnect"]

SESSION = "/tradeguard.v1.RiskService/Session"
SESSION_CALLS = {"CanTrade": "can_trade", "ReportEquity": "report_equity", "ReportTrade": "report_trade",
                 "ReportPositions": "report_positions", "ReportOrder": "report_order",
                 "ReportPrices": "report_prices"}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class OnDisconnect:
    """Cancel-on-disconnect: when this client's session ends without a clean close, the sidecar pauses
    `trader_id` ("HALTED" or "REDUCING") for `duration` (seconds or timedelta; None: until resumed)."""

    trader_id: str
    account_id: str
    state: str = "HALTED"
    duration: float | timedelta | None = None

    def __post_init__(self) -> None:
        if self.state not in ("HALTED", "REDUCING"):
            raise ValueError(f"OnDisconnect.state: 'HALTED' or 'REDUCING', got {self.state!r}")
        seconds = self.seconds
        if seconds is not None and (not math.isfinite(seconds) or seconds < 0):
            raise ValueError(f"OnDisconnect.duration: must be >= 0 seconds, got {self.duration!r}")

    @property
    def seconds(self) -> float | None:
        d = self.duration
        return d.total_seconds() if isinstance(d, timedelta) else None if d is None else float(d)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        out = [("tradeguard-session-trader-id", self.trader_id), ("tradeguard-session-account-id", self.account_id),
               ("tradeguard-session-on-disconnect", self.state)]
        if self.seconds:
            out.append(("tradeguard-session-on-disconnect-seconds", repr(self.seconds)))
        return tuple(out)


class SessionError(grpc.RpcError):
    """A session answer's `error` (or a broken stream), shaped like grpc's RpcError so that the retry policy and
    from_rpc_error treat it as the unary call's failure (code, details, google.rpc details in the trailers)."""

    def __init__(self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None) -> None:
        super().__init__(message)
        self._code, self._message, self._status = code, message, status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        if self._status is None:
            return ()
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def broken(why: str) -> SessionError:
    return SessionError(grpc.StatusCode.UNAVAILABLE, f"session stream broken: {why}")


def ended(code: Any, details: Any, waiting: bool) -> Exception:
    """A stream the sidecar ended: OK with calls unanswered breaks the protocol; another status is the failure."""
    if code is grpc.StatusCode.OK or code is None:
        if waiting:
            return InvalidResponseError("the session ended OK with calls unanswered")
        return broken("the stream ended")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return unsupported(str(details or ""))
    return SessionError(code, f"session stream failed: {details or ''}")


def unsupported(why: str) -> SessionError:
    return SessionError(grpc.StatusCode.UNIMPLEMENTED, f"the sidecar has no Session ({why})")


def answer_of(raw: Any, kind: str, method: str = "") -> Message:
    """The unary response in a serialized SessionResponse, or raise its error as a SessionError."""
    if not isinstance(raw, bytes):
        raise broken("the stream ended")
    try:
        msg = rs.SessionResponse.FromString(raw)
    except DecodeError as exc:
        raise InvalidResponseError(f"not a SessionResponse ({exc})", method=method) from None
    which = msg.WhichOneof("result")
    if which == "error":
        status = msg.error
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        raise SessionError(code, status.message, status)
    if which != kind:
        raise InvalidResponseError(f"{which or 'nothing'} answered a {kind}", method=method)
    answer: Message = getattr(msg, kind)
    return answer


def request_bytes(request_id: int, kind: str, request: Message) -> bytes:
    """A serialized SessionRequest {request_id, kind: request} without copying `request` into a new message."""
    number = {"can_trade": 2, "report_equity": 3, "report_trade": 4, "report_positions": 5, "report_order": 6,
              "report_prices": 7}[kind]
    body = request.SerializeToString()
    return b"\x08" + _varint(request_id) + bytes(((number << 3) | 2,)) + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _failed_stream(session: Any, exc: grpc.RpcError) -> SessionError:
    """The error of a stream that failed: its own status (UNIMPLEMENTED: no Session, the client goes unary)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    if code is grpc.StatusCode.UNIMPLEMENTED:
        session.unsupported = True
        return unsupported(details or "")
    return SessionError(code, f"session stream failed: {details}")


class AsyncSession:
    """The stream of an AsyncRiskClient (one event loop)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._method: Any = channel.stream_stream(SESSION)  # type: ignore[call-arg]  # bytes in, bytes out
        self._metadata = tuple(metadata)
        self._call: Any = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.unsupported = False  # the sidecar answered UNIMPLEMENTED (older than Session)
        self._write_lock = asyncio.Lock()  # one write at a time on a call (grpc core)

    def _open(self) -> Any:
        if self._call is None:
            self._call = call = self._method(metadata=self._metadata)
            self._reader = asyncio.get_running_loop().create_task(self._read(call))
        return self._call

    async def _read(self, call: Any) -> None:
        pending = self._pending
        error: Exception = broken("the stream ended")
        try:
            while True:
                raw = await call.read()
                if not isinstance(raw, bytes):
                    error = ended(await call.code(), await call.details(), bool(pending))
                    break
                request_id = _read_id(raw)
                fut = pending.pop(request_id, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(raw)
                elif not 0 < request_id <= self._ids:  # (a late answer to a call that timed out is no violation)
                    error = InvalidResponseError(f"an answer for request_id {request_id}, which was never sent")
                    call.cancel()
                    break
        except asyncio.CancelledError:
            error = SessionError(grpc.StatusCode.CANCELLED, "the client closed")
        except grpc.RpcError as exc:
            error = self._failed(exc)
        except Exception as exc:
            error = broken(f"{type(exc).__name__}: {exc}")
        finally:
            if self._call is call:
                self._call = None
            for fut in list(pending.values()):
                if not fut.done():
                    fut.set_exception(error)
            pending.clear()

    def _failed(self, exc: grpc.RpcError) -> SessionError:
        return _failed_stream(self, exc)

    async def call(self, method: str, request: Message, remaining: float) -> Message:
        """One request over the stream; its answer (or its error raised as a SessionError) within `remaining` s."""
        kind = SESSION_CALLS[method]
        call = self._open()
        self._ids += 1
        request_id = self._ids
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            async with asyncio.timeout(remaining):
                async with self._write_lock:
                    await call.write(request_bytes(request_id, kind, request))
                raw = await fut
        except TimeoutError:
            raise SessionError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (no answer on the session "
                                                                  "in time)") from None
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            if isinstance(exc, SessionError):
                raise
            raise broken(str(exc) or type(exc).__name__) from None
        finally:
            self._pending.pop(request_id, None)
        return answer_of(raw, kind, method)

    async def close(self) -> None:
        """Half-close (a clean close: nothing is paused), then stop reading."""
        self._closing = True
        call, self._call = self._call, None
        if call is not None:
            try:
                await asyncio.wait_for(call.done_writing(), 1.0)
                if self._reader is not None:
                    await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
            except (Exception, asyncio.CancelledError):
                call.cancel()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def _read_id(raw: bytes) -> int:
    """The request_id of a serialized SessionResponse: field 1 heads it (0 when absent or unreadable)."""
    if raw[:1] != b"\x08":
        return 0
    result, shift, i = 0, 0, 1
    while i < len(raw) and i < 11:
        b = raw[i]
        result |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return result
        shift += 7
    return 0


class SyncSession:
    """The stream of a RiskClient: a writer queue feeding grpc's request iterator, and a reader thread handing each
    answer to the waiting call (thread-safe)."""

    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._method: Any = channel.stream_stream(SESSION)  # type: ignore[call-arg]  # bytes in, bytes out
        self._metadata = tuple(metadata)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._call: Any = None
        self._pending: dict[int, _Slot] = {}
        self._ids = 0
        self._closing = False
        self.unsupported = False  # the sidecar answered UNIMPLEMENTED (older than Session)

    def _open(self) -> queue.SimpleQueue[bytes | None]:
        with self._lock:
            if self._queue is not None:
                return self._queue
            q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

            def requests() -> Iterator[bytes]:
                while True:
                    item = q.get()
                    if item is None:
                        return
                    yield item

            call = self._method(requests(), metadata=self._metadata)
            self._queue, self._call = q, call
            threading.Thread(target=self._read, args=(call, q), name="tradeguard-session", daemon=True).start()
            return q

    def _read(self, call: Any, q: queue.SimpleQueue[bytes | None]) -> None:
        error: Exception = broken("the stream ended")
        try:
            for raw in call:
                request_id = _read_id(raw)
                with self._lock:
                    slot = self._pending.pop(request_id, None)
                    known = 0 < request_id <= self._ids
                if slot is not None:
                    slot.set(raw)
                elif not known:
                    error = InvalidResponseError(f"an answer for request_id {request_id}, which was never sent")
                    call.cancel()
                    break
            else:
                error = ended(call.code(), call.details(), bool(self._pending))
        except grpc.RpcError as exc:
            error = _failed_stream(self, exc)
        except Exception as exc:
            error = broken(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                if self._queue is q:
                    self._queue, self._call = None, None
                pending, self._pending = self._pending, {}
            q.put(None)
            for slot in pending.values():
                slot.fail(error)

    def call(self, method: str, request: Message, remaining: float) -> Message:
        kind = SESSION_CALLS[method]
        q = self._open()
        slot = _Slot()
        with self._lock:
            self._ids += 1
            request_id = self._ids
            self._pending[request_id] = slot
        q.put(request_bytes(request_id, kind, request))
        if not slot.event.wait(remaining):
            with self._lock:
                self._pending.pop(request_id, None)
            raise SessionError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (no answer on the session in "
                                                                  "time)")
        if slot.error is not None:
            raise slot.error
        return answer_of(slot.raw, kind, method)

    def close(self) -> None:
        """Half-close (a clean close: nothing is paused)."""
        with self._lock:
            self._closing = True
            q, call = self._queue, self._call
        if q is not None:
            q.put(None)
        if call is not None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and call.is_active():
                time.sleep(0.005)
            call.cancel()


class _Slot:
    __slots__ = ("error", "event", "raw")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.raw: bytes | None = None
        self.error: Exception | None = None

    def set(self, raw: bytes) -> None:
        self.raw = raw
        self.event.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.event.set()
