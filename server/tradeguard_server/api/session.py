"""tradeguard.v1.RiskService/Session: a bot's calls over one bidirectional stream (issue 18).

Each SessionRequest runs the very handler its unary RPC runs (RiskService.can_trade, .report_equity, ...), with
the same trader guard and per-request authorization, the same validation, the same metrics (a session CanTrade
lands in tradeguard_rpc_duration_seconds{method="CanTrade"} and tradeguard_decisions like a unary one) and, when
tracing is on, one span per request (`tradeguard.v1.RiskService/Session.CanTrade`, a child of the session's
span) whose trace id the history rows record; without tracing the session's own `traceparent` / `x-request-id`
metadata is the caller's id, as for a unary call. A request the unary RPC would reject gets `error` (the same
google.rpc.Status: code, message, details) and the stream goes on. One answer per request, in request order,
`request_id` echoed.

Speed: a session is one coroutine reading and writing in a loop (no task, no context object per message); the
answer is the handler's message serialized once and framed by hand as a SessionResponse (no copy into a
SessionResponse message).

Cancel-on-disconnect: a session that declared an `on_disconnect` state (first message `open`, or the metadata
keys tradeguard-session-trader-id / -account-id / -on-disconnect / -on-disconnect-seconds) and ends without a
clean close (the client half-closes: clean; connection lost, bot killed, deadline, cancel: not) pauses that
trader (engine.pause, audited like every pause; HALTED with pending orders sends cancel_all_orders on
WatchRiskState). The sidecar's own shutdown ends every session without pausing anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ..engine.engine import AccountMismatchError
from ..engine.types import TradingState
from ..observability.tracing import bind_caller
from ..store import errors as store_errors
from .dispatch import ACCOUNT_MISMATCH, Guard, authorize
from .errors import ApiError, InvalidArgument, store_error
from .risk_service import RiskService
from .validation import Violations

log = logging.getLogger("tradeguard.session")

METHOD = "Session"
MAX_PAUSE_S = 366 * 86_400.0  # as PauseTrading
ON_DISCONNECT_STATES: dict[int, TradingState] = {t.TRADING_STATE_HALTED: TradingState.HALTED,
                                                 t.TRADING_STATE_REDUCING: TradingState.REDUCING}
MD_TRADER = "tradeguard-session-trader-id"
MD_ACCOUNT = "tradeguard-session-account-id"
MD_ON_DISCONNECT = "tradeguard-session-on-disconnect"
MD_SECONDS = "tradeguard-session-on-disconnect-seconds"
# The calls a session carries: SessionRequest field -> (the unary method, SessionResponse field number).
CALLS: dict[str, tuple[str, int]] = {
    "can_trade": ("CanTrade", 2),
    "report_equity": ("ReportEquity", 3),
    "report_trade": ("ReportTrade", 4),
    "report_positions": ("ReportPositions", 5),
    "report_order": ("ReportOrder", 6),
    "report_prices": ("ReportPrices", 7),
}
OPENED_FIELD = 8
EOF_SETTLE_S = 0.1  # after EOF, how long a declared session waits for a cancel before it counts as clean
ERROR_FIELD = 9
Handler = Callable[[Any, Any], Awaitable[Message]]
INTERNAL = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the sidecar's log")


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(request_id: int, field_number: int, body: bytes) -> bytes:
    """A serialized SessionResponse {request_id, <field_number>: body} (what SerializeToString would give)."""
    head = b"\x08" + varint(request_id) if request_id else b""
    return head + bytes(((field_number << 3) | 2,)) + varint(len(body)) + body


def error_frame(request_id: int, status: status_pb2.Status) -> bytes:
    return frame(request_id, ERROR_FIELD, status.SerializeToString())


@dataclass(slots=True)
class Declared:
    """What a session declared: its trader and what a lost stream does (state None: nothing)."""

    trader_id: str
    account_id: str
    state: TradingState | None
    duration_s: float | None  # None: until resumed


@dataclass(slots=True)
class _Live:
    """A session being served: what it declared, whether the client half-closed, and how it failed if not."""

    declared: Declared | None
    clean: bool = False
    why: str = "the stream failed"


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """A declared session that ended without a clean close."""

    declared: Declared
    why: str
    peer: str


def check_open(v: Violations, trader_id: str, account_id: str, state: int, seconds: float | None,
               prefix: str) -> None:
    v.identifier(f"{prefix}trader_id", trader_id)
    v.identifier(f"{prefix}account_id", account_id)
    if state not in ON_DISCONNECT_STATES and state != t.TRADING_STATE_UNSPECIFIED:
        v.add(f"{prefix}on_disconnect", "must be TRADING_STATE_HALTED, TRADING_STATE_REDUCING or unset (nothing "
                                        "happens on disconnect)")
    if seconds is not None and not (0.0 <= seconds <= MAX_PAUSE_S):
        v.add(f"{prefix}on_disconnect_duration", f"must be in [0, {MAX_PAUSE_S:.0f}] seconds; unset or 0: until "
                                                 "resumed")


def declared_from_metadata(context: Any) -> Declared | None:
    """The session declared by metadata (None when no key is given); InvalidArgument names a bad key."""
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in (MD_TRADER, MD_ACCOUNT, MD_ON_DISCONNECT, MD_SECONDS) and key not in values:
            values[key] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if not values:
        return None
    v = Violations()
    trader_id, account_id = values.get(MD_TRADER, ""), values.get(MD_ACCOUNT, "")
    state_text = values.get(MD_ON_DISCONNECT, "").strip().upper().removeprefix("TRADING_STATE_")
    state = {"": t.TRADING_STATE_UNSPECIFIED, "UNSPECIFIED": t.TRADING_STATE_UNSPECIFIED,
             "HALTED": t.TRADING_STATE_HALTED, "REDUCING": t.TRADING_STATE_REDUCING}.get(state_text, -1)
    seconds: float | None = None
    if MD_SECONDS in values:
        try:
            seconds = float(values[MD_SECONDS])
        except ValueError:
            seconds = -1.0
        if seconds != seconds:  # NaN
            seconds = -1.0
    check_open(v, trader_id, account_id, state, seconds, "metadata ")
    if state == -1:
        v.items[-1] = (f"metadata {MD_ON_DISCONNECT}", "must be HALTED, REDUCING or empty")
    for i, (field, desc) in enumerate(v.items):  # name the metadata keys
        v.items[i] = (field.replace("metadata trader_id", MD_TRADER).replace("metadata account_id", MD_ACCOUNT)
                      .replace("metadata on_disconnect_duration", MD_SECONDS)
                      .replace("metadata on_disconnect", MD_ON_DISCONNECT), desc)
    v.raise_if_any()
    return Declared(trader_id, account_id, ON_DISCONNECT_STATES.get(state), seconds or None)


class SessionService:
    """The Session method over a RiskService. `on_lost` hears every declared session that ended without a clean
    close (the sidecar pauses its trader); `closing()` true = the sidecar is shutting down (nobody is paused);
    `heard` is told the trader id of every request (the dead-man's switch)."""

    def __init__(self, risk: RiskService, *, on_lost: Callable[[SessionEnd], None] | None = None,
                 closing: Callable[[], bool] = lambda: False, heard: Callable[[str], None] | None = None,
                 tracer: Any = None) -> None:
        self.risk = risk
        self.on_lost = on_lost
        self.closing = closing
        self.heard = heard
        self.tracer = tracer  # an OpenTelemetry tracer: one span per request (None: tracing off)
        self.admission: Any = None  # api.admission.Admission: a flooding trader's or connection's calls are shed
        self.open_sessions = 0
        self.declared_open: dict[str, int] = {}  # trader id -> open sessions that declared it (pins it in memory)

    def _calls(self, metrics: Any) -> dict[str, tuple[Handler, int]]:
        """SessionRequest field -> (the unary handler, timed and traced as the unary one, the answer's field)."""
        out: dict[str, tuple[Handler, int]] = {}
        for name, (method, number) in CALLS.items():
            fn: Handler = getattr(self.risk, name)
            if self.tracer is not None:
                fn = self._traced(fn, f"tradeguard.v1.RiskService/Session.{method}")
            if metrics is not None:
                fake = grpc.unary_unary_rpc_method_handler(fn)
                fn = metrics.instrument({method: fake})[method].unary_unary
            out[name] = (fn, number)
        return out

    def _traced(self, fn: Handler, name: str) -> Handler:
        tracer = self.tracer

        async def traced(request: Any, context: Any) -> Message:
            with tracer.start_as_current_span(name):
                return await fn(request, context)

        return traced

    def handler(self, guard: Guard | None = None, metrics: Any = None) -> grpc.RpcMethodHandler[Any, Any]:
        calls = self._calls(metrics)
        session: Any = self._session(calls, guard)
        if self.tracer is not None:  # OpenTelemetry's aio interceptor iterates a stream handler's answers
            session = as_generator(session)
        return grpc.stream_stream_rpc_method_handler(session, request_deserializer=None, response_serializer=None)

    def _session(self, calls: dict[str, tuple[Handler, int]], guard: Guard | None
                 ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
        parse = rs.SessionRequest.FromString
        eof = grpc.aio.EOF  # type: ignore[attr-defined]  # not in grpc-stubs
        heard = self.heard

        async def session(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            bind_caller(context)  # the session's traceparent / x-request-id reach the history rows it causes
            try:
                if guard is not None:
                    guard(context)
                declared = declared_from_metadata(context)
                if declared is not None:
                    self._check_declared(declared, None if guard is None else guard(context))
                    await self._owned_here(declared)
            except ApiError as error:
                status = error.to_status()
                await context.abort(error.code, error.message, trailing_metadata=(
                    ("grpc-status-details-bin", status.SerializeToString()),))
                return
            except AccountMismatchError:
                status = ACCOUNT_MISMATCH.to_status()
                await context.abort(ACCOUNT_MISMATCH.code, ACCOUNT_MISMATCH.message, trailing_metadata=(
                    ("grpc-status-details-bin", status.SerializeToString()),))
                return
            read, write = context.read, context.write
            live = _Live(declared)
            if declared is not None:
                self._declare(declared.trader_id)
            context.add_done_callback(lambda ctx: self._ended(live, ctx))  # type: ignore[arg-type]
            self.open_sessions += 1
            try:
                while True:
                    raw = await read()
                    if raw is eof:
                        # A half-close, or a cancelled call: grpc.aio reads EOF for both. A cancel's notice (the
                        # handler task cancelled by grpc) follows within the same turn of the loop (measured: one
                        # yield); wait EOF_SETTLE_S before taking it as a clean close (a missed kill pauses nobody).
                        if live.declared is not None:
                            for _ in range(3):
                                await asyncio.sleep(0)
                            await asyncio.sleep(EOF_SETTLE_S)
                        live.clean = True
                        return
                    try:
                        request = parse(raw)
                    except (DecodeError, RuntimeError, ValueError) as exc:
                        await write(error_frame(0, InvalidArgument([(
                            "request", f"body is not a valid tradeguard.v1.SessionRequest protobuf message ({exc})"
                        )]).to_status()))
                        continue
                    request_id = request.request_id
                    kind = request.WhichOneof("call")
                    entry = calls.get(kind) if kind is not None else None
                    try:
                        if entry is None:
                            if kind == "open":
                                out = self._open(request.open, live.declared, context, guard)
                                await self._owned_here(out)
                                live.declared = out
                                self._declare(out.trader_id)
                                await write(frame(request_id, OPENED_FIELD, rs.SessionOpened(
                                    trader_id=out.trader_id,
                                    on_disconnect=0 if out.state is None else int(out.state)  # type: ignore[arg-type]
                                ).SerializeToString()))
                                continue
                            raise InvalidArgument([("call", "is empty: set one of can_trade, report_equity, "
                                                            "report_trade, report_positions, report_order, "
                                                            "report_prices or open")])
                        inner = getattr(request, str(kind))
                        if guard is not None:
                            principal = guard(context)
                            if principal is not None:
                                authorize(principal, inner)
                        admission = self.admission
                        if admission is not None and admission.watching:  # as the unary call would be (issue 21)
                            shed = await admission.shed_in_session(context, inner)
                            if shed is not None:
                                await write(error_frame(request_id, shed))
                                continue
                        if heard is not None:
                            heard(inner.trader_id)
                        answer = await entry[0](inner, context)
                        await write(frame(request_id, entry[1], answer.SerializeToString()))
                        continue
                    except ApiError as error:
                        status = error.to_status()
                    except store_errors.StoreError as exc:
                        status = store_error(exc).to_status()
                    except AccountMismatchError:
                        status = ACCOUNT_MISMATCH.to_status()
                    except Exception:
                        log.exception("unexpected error in a Session %s", kind)
                        status = INTERNAL
                    await write(error_frame(request_id, status))
            except asyncio.CancelledError:
                live.why = "the stream was cancelled (connection lost, bot killed, deadline or cancel)"
                raise
            except Exception as exc:
                live.why = f"the stream failed ({type(exc).__name__}: {exc})"
                raise
            finally:
                self.open_sessions -= 1

        return session

    def _ended(self, live: _Live, context: Any) -> None:
        """The RPC is over (grpc.aio's done callback): a declared session that did not end by the client's
        half-close pauses its trader. (A cancelled call also reads as EOF on the server; only here does
        `cancelled()` tell it from a half-close.)"""
        d = live.declared
        try:
            self._ended_declared(live, context)
        finally:
            if d is not None:
                left = self.declared_open.get(d.trader_id, 0) - 1
                if left > 0:
                    self.declared_open[d.trader_id] = left
                else:
                    self.declared_open.pop(d.trader_id, None)

    def _declare(self, trader_id: str) -> None:
        self.declared_open[trader_id] = self.declared_open.get(trader_id, 0) + 1

    def _ended_declared(self, live: _Live, context: Any) -> None:
        d = live.declared
        if d is None or d.state is None or self.on_lost is None or self.closing():
            return
        cancelled = context.cancelled()
        if live.clean and not cancelled:
            return
        why = "the stream was cancelled (connection lost, bot killed, deadline or cancel)" if cancelled else live.why
        try:
            self.on_lost(SessionEnd(d, why, context.peer()))
        except Exception:
            log.exception("cancel-on-disconnect of trader %s failed", d.trader_id)

    def _check_declared(self, declared: Declared, principal: Any) -> None:
        """The declared trader: the credential may act for it, and it is bound to that account (if known)."""
        if principal is not None:
            authorize(principal, declared)  # type: ignore[arg-type]  # anything with trader_id, account_id
        st = self.risk.engine.traders.get(declared.trader_id)
        if st is not None and st.account_id != declared.account_id:
            raise AccountMismatchError(declared.trader_id)

    async def _owned_here(self, declared: Declared) -> None:
        """Cluster mode: a session declares its trader on the sidecar that owns it (claimed now when free), so the
        pause a lost stream causes lands on the trader's live state; FAILED_PRECONDITION naming the owner
        otherwise (the protection could not be kept here)."""
        residency = self.risk.residency
        if residency is not None and declared.trader_id not in self.risk.engine.traders:
            await residency.ensure(declared.trader_id, declared.account_id)  # (evicted: loaded; new: bounded)
        owners = self.risk.owners
        if owners is not None and declared.trader_id not in owners.owned:
            await owners.acquire(declared.trader_id, declared.account_id, write=True)

    def _open(self, msg: rs.SessionOpen, declared: Declared | None, context: Any,
              guard: Guard | None) -> Declared:
        v = Violations()
        seconds = None
        if msg.HasField("on_disconnect_duration"):
            d = msg.on_disconnect_duration
            seconds = d.seconds + d.nanos / 1e9
        check_open(v, msg.trader_id, msg.account_id, msg.on_disconnect, seconds, "open.")
        v.raise_if_any()
        if declared is not None:
            raise InvalidArgument([("open", f"this session already declared trader_id {declared.trader_id!r}: "
                                            "one declaration per session (first message or metadata)")])
        out = Declared(msg.trader_id, msg.account_id, ON_DISCONNECT_STATES.get(msg.on_disconnect), seconds or None)
        self._check_declared(out, None if guard is None else guard(context))
        if self.heard is not None:
            self.heard(out.trader_id)
        return out


class _StreamContext:
    """The session's view of a call served as an async generator: `read` from the request iterator, `write` to the
    answers the generator yields; everything else is the call's own context."""

    def __init__(self, context: Any, requests: Any, answers: asyncio.Queue[Any]) -> None:
        self._context = context
        self._requests = requests.__aiter__()
        self._answers = answers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF  # type: ignore[attr-defined]

    async def write(self, data: bytes) -> None:
        await self._answers.put(data)


def as_generator(session: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Any]:
    """The session loop (context.read / context.write) as an async generator of answers, for the tracing
    interceptor (which iterates the handler's answers). One task per session, not per message."""
    end = object()

    async def handler(requests: Any, context: Any) -> Any:
        answers: asyncio.Queue[Any] = asyncio.Queue()
        view = _StreamContext(context, requests, answers)

        async def run() -> None:
            try:
                await session(None, view)
            finally:
                answers.put_nowait(end)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while True:
                item = await answers.get()
                if item is end:
                    break
                yield item
            await task  # its failure (an abort) is the call's
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    return handler

