"""Admission: who gets the event loop when it cannot serve everyone (issue 21, "Fairness").

The sidecar is one event loop. grpc core hands it calls in arrival order, from every connection alike, so a flood
of calls from some connections puts a well-behaved bot's CanTrade behind all of them. Three layers keep the hot
path answered:

1. grpc core, in C, before Python sees a call: `max_streams_per_connection` caps the HTTP/2 streams one connection
   may have open (SETTINGS_MAX_CONCURRENT_STREAMS; a client waits for a free stream, it does not fail).
2. Classes with their own budgets: AdminService calls (`admin_max_concurrent`) and long-lived streams (Session,
   WatchRiskState: `max_streams_per_connection` per connection) are counted while in progress; beyond the budget
   a call is shed at once. The HTTP listener has its own: requests in progress (`http_max_concurrent`) and, apart
   from them, server-sent event streams (`http_max_streams`; httpapi/server.py). None of them can take what the
   hot path (CanTrade, the reports, GetRiskState) needs.
3. Overload: a ticker measures the event loop's lag. While it is over `overload_lag_ms`, the loop is behind, and
   calls are counted per connection (peer) and per trader until the next tick: a connection that starts more than
   `max_calls_per_connection` calls in one tick (and more than the average connection), or a trader more than
   `max_calls_per_trader`, is flooding, and its calls are shed for a penalty: held for `shed_hold_s` (so that a
   client that retries at once does not refill the queue: its stream stays taken), then answered
   RESOURCE_EXHAUSTED with `retry-after` metadata and a google.rpc.RetryInfo detail giving what is left of the
   penalty (HTTP: 429 and Retry-After). A bot that waits for each answer starts one call per tick at most, so it
   is never the one shed.
4. Repeat offenders: the first penalty lasts `retry_after_s`. After a penalty ends, its connection or trader is
   on probation for as long again plus PROBATION_MIN_S: its calls are counted even while the loop keeps up, and
   more than its limit in a window (a quarter of it, PROBATION_SHARE, while the loop's thread is busy more than
   BUSY / 2) penalizes it again at once, for PENALTY_GROWTH times longer (at most MAX_PENALTY_S). A repeat
   offender's shed calls are held for a share of its penalty (at least `shed_hold_s`, at most MAX_HOLD_S x 1.5),
   so each of its streams comes back a few times per penalty, not once a second. Without this a flood that
   ignored retry-after came back in full each time its 1 s penalty ended, and had to overload the loop again
   before it was seen
   (bench/fairness.py: ~5,000 of its ~11,000 calls admitted in 8 s, a 100-550 ms stall for the bot every 1-2 s).
5. A shed unary call ends with set_code / set_details / trailing metadata and no answer, not with `abort`: an
   aborted call leaves its exception's traceback (~22 objects in reference cycles) to the garbage collector, and
   under a flood of shed calls its collections stalled the loop for 100-240 ms (measured with gc.callbacks).

While the loop keeps up, a unary call pays one attribute test here (`watching`) and one coroutine frame, nothing
else (bench/fairness.py --check-cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .validation import ID_MAX

log = logging.getLogger("tradeguard.admission")

HOT, STREAM, ADMIN, HTTP, HTTP_STREAM = "hot", "stream", "admin", "http", "http_stream"
# counted in progress (the hot path's unary calls never wait: see _hot_unary)
CLASSES = (STREAM, ADMIN, HTTP, HTTP_STREAM)
# reasons in tradeguard_shed_total
FLOOD_CONNECTION = "connection_flood"
FLOOD_TRADER = "trader_flood"
STREAMS_PER_CONNECTION = "max_streams_per_connection"
ADMIN_BUDGET = "admin_max_concurrent"
HTTP_BUDGET = "http_max_concurrent"
HTTP_STREAMS_BUDGET = "http_max_streams"
TICK_S = 0.01  # the lag ticker's period
WINDOW_TICKS = 10  # calls are counted per window of 10 ticks (100 ms)
BUSY = 0.5  # the loop's thread ran more than this share of a window: overloaded
# overloaded for this long after the last late tick (or retry_after_s, when shorter): not retry_after_s itself, which
# is a flood's first penalty and may be an hour; one GC pass must not leave every trader counted for that long
OVERLOAD_TAIL_S = 1.0
MAX_HELD = 4_000  # shed calls held at once: ~25 KiB each (grpc core and grpc.aio), ~100 MiB; beyond, answered at once
PENALTY_GROWTH = 4.0  # a repeat offender's penalty is this many times its last one...
MAX_PENALTY_S = 60.0  # ...up to this
PROBATION_MIN_S = 5.0  # after a penalty, its connection or trader is watched for as long again, at least this
PROBATION_SHARE = 4  # on probation (the loop keeping up), its limit is this share of the setting
HOLD_DEADLINE_MARGIN_S = 0.1  # a held call is answered this long before its deadline at the latest
# a repeat offender's hold is at most this (x 1.5 jitter) however long its penalty: a client without a deadline is
# not left waiting for tens of seconds (h2load's 10 s inactivity timeout closed its connections)
MAX_HOLD_S = 4.0
# The kill switch is never shed by a budget (admin_max_concurrent, http_max_concurrent): during an incident the
# operator's reads (a script, console tabs polling a stalled database) may fill the admin budget, and slow HTTP
# requests the HTTP one; a pause or resume must still get through. Still counted in progress.
KILL_SWITCH = frozenset({"PauseTrading", "ResumeTrading"})
# Reads are not counted nor shed per trader (only per connection): an operator or a monitor reading a flooding
# trader's state in an incident is not the flood.
NOT_PER_TRADER = frozenset({"GetRiskState"})
# a Session call's request type -> its method, for tradeguard_shed_total{method}
_SESSION_METHODS = {"CanTradeRequest": "CanTrade", "ReportEquityRequest": "ReportEquity",
                    "ReportTradeRequest": "ReportTrade", "ReportPositionsRequest": "ReportPositions",
                    "ReportOrderRequest": "ReportOrder", "ReportPricesRequest": "ReportPrices"}


def retry_status(message: str, retry_after_s: float) -> status_pb2.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail of `retry_after_s`."""
    # in whole nanoseconds first: a delay within 0.5 ns under a whole second must not round to nanos=1e9 (an
    # invalid Duration: the HTTP API's Status JSON of it raised)
    whole, nanos = divmod(round(retry_after_s * 1e9), 1_000_000_000)
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=whole, nanos=nanos))
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])


def retry_after_header(retry_after_s: float) -> str:
    """Retry-After in whole seconds (RFC 9110), at least 1."""
    return str(max(1, math.ceil(retry_after_s)))


class Admission:
    """The sidecar's admission state, on its event loop (no locks: every method runs on the loop)."""

    def __init__(self, *, max_calls_per_connection: int, max_calls_per_trader: int, max_streams_per_connection: int,
                 admin_max_concurrent: int, overload_lag_ms: float, shed_hold_s: float, retry_after_s: float,
                 tick_s: float = TICK_S, window_ticks: int = WINDOW_TICKS) -> None:
        self.max_calls_per_connection = max_calls_per_connection
        self.max_calls_per_trader = max_calls_per_trader
        self.max_streams_per_connection = max_streams_per_connection
        self.admin_max_concurrent = admin_max_concurrent
        self.overload_lag_s = overload_lag_ms / 1000.0
        self.shed_hold_s = shed_hold_s
        self.retry_after_s = retry_after_s
        self.tick_s = tick_s
        self.window_ticks = window_ticks
        # The one thing a unary call reads while the loop keeps up: overloaded (within OVERLOAD_TAIL_S of the last
        # late tick), or a connection or trader still serving its penalty.
        self.watching = False
        self.overloaded = False
        self.lag_s = 0.0
        self.busy = 0.0
        self.now = time.monotonic()  # as of the last tick (calls read this, not the clock)
        self._overloaded_until = 0.0
        self._peer_calls: dict[str, int] = {}  # calls started this window, per peer (only while watching)
        self._trader_calls: dict[str, int] = {}  # the same per trader id
        self._window_calls = 0
        self._window_trader_calls = 0
        # peer -> (until (monotonic), reason): its calls are shed meanwhile; the same per trader id
        self.penalized_peers: dict[str, tuple[float, str]] = {}
        self.penalized_traders: dict[str, tuple[float, str]] = {}
        self.shed_until = 0.0  # when the penalty of the call `flooding` last shed ends
        # trader credentials in force (the sidecar's trader guard): a trader is counted per credential presented;
        # without them anything a caller sends as a token means nothing, and a made-up one per call must not make
        # each call a trader of its own
        self.credentials_in_force = True
        # peer / trader -> (penalty seconds it got last, end of its probation): a repeat offender's record
        self.probation_peers: dict[str, tuple[float, float]] = {}
        self.probation_traders: dict[str, tuple[float, float]] = {}
        self._streams: dict[str, int] = {}  # Session / WatchRiskState streams in progress per peer
        self.in_progress = dict.fromkeys(CLASSES, 0)
        self.shed: dict[tuple[str, str], int] = {}  # (reason, method) -> calls shed
        self.held = 0
        self.overloads = 0  # times the loop went over overload_lag_ms
        self._task: asyncio.Task[None] | None = None

    # ---- the ticker -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and (self.max_calls_per_connection or self.max_calls_per_trader):
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="tradeguard-admission")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self) -> None:
        """Every tick_s: how late the loop ran this (its lag); every window_ticks, fresh counts per peer and trader
        and the penalties that ended dropped."""
        clock, cpu = time.monotonic, time.thread_time  # the loop's thread: CPU it used
        tick = self.tick_s
        ticks = 0
        window_start, window_cpu = clock(), cpu()
        while True:
            due = clock() + tick
            await asyncio.sleep(tick)
            self.now = now = clock()
            self.observe_lag(now - due)
            ticks += 1
            if ticks >= self.window_ticks:
                ticks = 0
                used = cpu()
                self.observe_busy((used - window_cpu) / max(now - window_start, 1e-6))
                window_start, window_cpu = now, used
                self.new_window()

    def observe_lag(self, lag: float) -> None:
        self.lag_s = lag
        now = self.now
        if lag > self.overload_lag_s:
            if not self.overloaded:
                self.overloads += 1
                log.warning("overload: the event loop ran %.0f ms late, busy %.0f %% of the last 100 ms; shedding "
                            "the calls of flooding connections and traders (tradeguard_shed_total)", lag * 1e3,
                            self.busy * 100)
            self._overloaded_until = now + min(self.retry_after_s, OVERLOAD_TAIL_S)
        self.overloaded = now < self._overloaded_until
        self.watching = (self.overloaded or bool(self.penalized_peers) or bool(self.penalized_traders)
                         or bool(self.probation_peers) or bool(self.probation_traders))

    def observe_busy(self, busy: float) -> None:
        """The share of the last window the loop's thread ran: over BUSY, grpc core holds calls it cannot hand
        over (the loop is saturated even when each turn of it is short, so its lag alone does not show it)."""
        self.busy = busy
        if busy > BUSY:
            self.observe_lag(max(self.lag_s, self.overload_lag_s * 1.001))

    def new_window(self) -> None:
        if self._peer_calls:
            self._peer_calls = {}
        if self._trader_calls:
            self._trader_calls = {}
        self._window_calls = self._window_trader_calls = 0
        now = self.now
        for penalized in (self.penalized_peers, self.penalized_traders):
            for key in [key for key, (until, _reason) in penalized.items() if until <= now]:
                del penalized[key]
        for probation in (self.probation_peers, self.probation_traders):
            for key in [key for key, (_last, until) in probation.items() if until <= now]:
                del probation[key]

    def forget_connection(self, peer: str) -> None:
        """A connection that closed and whose key is never used again (an HTTP connection's `http <peer> #<n>`): its
        penalty and probation go with it. Kept, a flooder opening a new connection every few requests piled them up
        for retry_after_s (up to an hour) and twice that, each 100 ms window scanned them all, and `watching` stayed
        on."""
        self.penalized_peers.pop(peer, None)
        self.probation_peers.pop(peer, None)

    def _penalize(self, penalized: dict[str, tuple[float, str]], probation: dict[str, tuple[float, float]],
                  key: str, reason: str) -> tuple[float, str]:
        """Penalize `key` (a peer or a trader): retry_after_s the first time; PENALTY_GROWTH times its last
        penalty (at most MAX_PENALTY_S) when it floods again on probation. Returns (until, reason)."""
        now = self.now
        record = probation.get(key)
        seconds = self.retry_after_s
        if record is not None and now < record[1]:
            seconds = min(max(seconds, record[0] * PENALTY_GROWTH), max(MAX_PENALTY_S, seconds))
        penalty = penalized[key] = (now + seconds, reason)
        probation[key] = (seconds, now + 2 * seconds + PROBATION_MIN_S)
        if record is not None:
            log.warning("overload: %s %s flooded again on probation: shed for %.3g s (%s)",
                        "trader" if probation is self.probation_traders else "connection",
                        key.split("\0", 1)[0], seconds, reason)
        return penalty

    # ---- decisions ------------------------------------------------------------------------------

    def flooding(self, peer: str, raw: bytes, parse: Callable[[bytes], Message] | None,
                 context: Any = None, *, counted: bool = False) -> str:
        """While watching: the reason to shed this call ("" = admit; `shed_until`: when its penalty ends). A
        connection or trader that started more than its limit in this window, and more than the average one (a lone
        client is not shed for its own load), while the loop is overloaded, or while it is on probation after a
        penalty (`_probation_limit`), is penalized (`_penalize`): its calls are shed meanwhile. A trader's penalty
        sheds the calls that name it (with the same credential) on any connection, and every call of the one
        connection whose call took it over its limit; a connection that only names it (a monitor's read is not
        counted at all: NOT_PER_TRADER) is not shed for its other calls."""
        now = self.now
        calls = self._peer_calls  # penalized peers count too: the average connection is the real one
        n = calls[peer] = calls.get(peer, 0) + 1
        if not counted:  # (`counted`: a second key of a call counted already, HttpApi._keys: not a call more)
            self._window_calls += 1
        penalty = self.penalized_peers.get(peer)
        if penalty is not None and penalty[0] > now:
            self.shed_until = penalty[0]
            return penalty[1]
        overloaded = self.overloaded
        limit = self.max_calls_per_connection
        if not limit:
            flooding = False
        elif not overloaded:  # only a connection on probation is judged while the loop keeps up
            flooding = peer in self.probation_peers and n > self._probation_limit(limit, n)
        else:
            flooding = n > limit and n * len(calls) > self._window_calls
        if flooding:
            self.shed_until = self._penalize(self.penalized_peers, self.probation_peers, peer, FLOOD_CONNECTION)[0]
            return FLOOD_CONNECTION
        limit = self.max_calls_per_trader
        if not limit or parse is None or not (overloaded or self.probation_traders or self.penalized_traders):
            return ""
        try:
            trader = getattr(parse(raw), "trader_id", "")
        except (DecodeError, RuntimeError, ValueError):
            return ""  # the handler answers INVALID_ARGUMENT
        if not trader or len(trader) > ID_MAX:
            return ""  # the handler answers INVALID_ARGUMENT; an id up to 1 MB is not kept as a key for 125 s
        # A trader is counted per credential presented (when trader credentials are in force): calls that name a
        # bot's trader id without its token (or certificate) - refused by the guard after this - must not make that
        # bot a flooding trader. (With one shared trader token every holder may act for any trader anyway.)
        trader = f"{trader}\0{_credential(context) if self.credentials_in_force else ''}"
        penalty = self.penalized_traders.get(trader)
        if penalty is not None and penalty[0] > now:
            self.shed_until = penalty[0]
            return FLOOD_TRADER
        if not overloaded and trader not in self.probation_traders:
            return ""
        traders = self._trader_calls
        t = traders[trader] = traders.get(trader, 0) + 1
        self._window_trader_calls += 1
        if not overloaded:  # on probation
            flooding = t > self._probation_limit(limit, t)
        else:
            flooding = t > limit and t * len(traders) > self._window_trader_calls
        if flooding:
            # the connection that took it over its limit is penalized with it (its other calls too); the others
            # that name it are shed call by call (above), not as connections
            penalty = self.penalized_peers[peer] = self._penalize(self.penalized_traders, self.probation_traders,
                                                                  trader, FLOOD_TRADER)
            self.shed_until = penalty[0]
            return FLOOD_TRADER
        return ""

    def _probation_limit(self, limit: int, calls: int) -> int:
        """The limit of a connection or trader on probation while the loop keeps up (it started `calls` in this
        window): a PROBATION_SHARE of it while the loop is under load (its thread busy more than BUSY / 2 of the
        last window) and these calls are more than half of all the loop took in the window (a flood coming back
        from its penalty); else the whole of it (a bot that was penalized once is not shed again for a rate it is
        allowed, on an idle loop or when the load is someone else's)."""
        if self.busy > BUSY / 2 and calls * 2 > self._window_calls:
            return max(1, limit // PROBATION_SHARE)
        return limit

    def retry_after(self, key: str) -> float:
        """What is left of the penalty of `key` (a peer, or a trader key: id NUL credential), at least
        retry_after_s."""
        penalty = self.penalized_peers.get(key) or self.penalized_traders.get(key)
        return max(self.retry_after_s, penalty[0] - self.now) if penalty is not None else self.retry_after_s

    def count_shed(self, reason: str, method: str) -> None:
        key = (reason, method)
        self.shed[key] = self.shed.get(key, 0) + 1

    async def refuse(self, context: Any, reason: str, method: str, what: str | Callable[[float], str], hold: bool,
                     until: float | None = None, abort: bool = True) -> None:
        """Answer RESOURCE_EXHAUSTED with retry-after: what is left of a penalty ending at `until` when the answer
        goes (after the hold, for a flood), at least retry_after_s; `what` may be made of that delay. `abort`
        False: the status is set on the context and the handler must return None (no exception: an aborted call
        leaves its exception's traceback, ~22 objects in reference cycles, for the garbage collector; a flood of
        shed calls made collections that stalled the loop for 100-240 ms)."""
        self.count_shed(reason, method)
        if hold:
            await self._hold(context, until)
        retry = self.retry_after_s if until is None else max(self.retry_after_s, until - self.now)
        if callable(what):
            what = what(retry)
        trailing = (("retry-after", retry_after_header(retry)),
                    ("grpc-status-details-bin", retry_status(what, retry).SerializeToString()))
        if abort:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, what, trailing_metadata=trailing)
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details(what)
        context.set_trailing_metadata(trailing)

    async def _hold(self, context: Any, until: float | None) -> None:
        """Hold a flood's shed call before its answer: jittered, so that the held calls of a flood do not all come
        back at once; a repeat offender's for a share of its (longer) penalty: each of its streams then comes back
        a few times per penalty, not once a second, and what it costs the loop to take and shed them falls with it;
        never past the call's own deadline, so that the caller is told when to retry rather than
        DEADLINE_EXCEEDED."""
        if self.shed_hold_s <= 0 or self.held >= MAX_HELD:
            return
        left = self.retry_after_s if until is None else max(self.retry_after_s, until - self.now)
        seconds = max(self.shed_hold_s, min(left * 0.5, MAX_HOLD_S)) * (0.5 + random.random())
        remaining = context.time_remaining()
        if remaining is not None:
            seconds = min(seconds, remaining - HOLD_DEADLINE_MARGIN_S)
        if seconds <= 0:
            return
        self.held += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.held -= 1

    async def shed_in_session(self, context: Any, message: Message) -> status_pb2.Status | None:
        """A call inside a Session stream (`message`: its CanTrade or report request), judged as the same call
        made alone on this connection would be: None (serve it), or, after the hold (the stream waits: only this
        session is held back), the RESOURCE_EXHAUSTED status its `error` answer carries, with RetryInfo."""
        reason = self.flooding(context.peer(), b"", lambda _raw: message, context)
        if not reason:
            return None
        method = _SESSION_METHODS.get(type(message).__name__, "Session")
        self.count_shed(reason, method)
        until = self.shed_until
        await self._hold(context, until)
        retry = max(self.retry_after_s, until - self.now)
        return retry_status(self._flood_message(reason, retry), retry)

    def _flood_message(self, reason: str, retry_after_s: float) -> str:
        if reason == FLOOD_TRADER:
            return (f"overloaded: a trader_id on this connection started more than max_calls_per_trader="
                    f"{self.max_calls_per_trader} calls in 100 ms while the sidecar was behind; retry after "
                    f"{retry_after_s:.3g} s")
        return (f"overloaded: this connection started more than max_calls_per_connection="
                f"{self.max_calls_per_connection} calls in 100 ms while the sidecar was behind; retry after "
                f"{retry_after_s:.3g} s")

    # ---- wrapping the method handlers -----------------------------------------------------------

    def wrap(self, methods: Mapping[str, grpc.RpcMethodHandler[Any, Any]], cls: str,
             parsers: Mapping[str, Callable[[bytes], Message]] | None = None
             ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers of one class with admission in front of them."""
        out: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, handler in methods.items():
            parse = None if name in NOT_PER_TRADER else (parsers or {}).get(name)
            if handler.unary_unary is not None:
                behavior: Any = (self._admin_unary(name, handler.unary_unary) if cls == ADMIN
                                 else self._hot_unary(name, handler.unary_unary, parse))
                out[name] = grpc.unary_unary_rpc_method_handler(
                    behavior, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
            elif handler.unary_stream is not None:
                out[name] = grpc.unary_stream_rpc_method_handler(
                    self._stream_gen(name, handler.unary_stream, cls),
                    request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
            elif handler.stream_stream is not None:
                inner = handler.stream_stream
                behavior = (self._stream_gen(name, inner, cls) if inspect.isasyncgenfunction(inner)
                            else self._stream_coro(name, inner, cls))
                out[name] = grpc.stream_stream_rpc_method_handler(
                    behavior, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
            else:
                out[name] = handler
        return out

    def _hot_unary(self, method: str, inner: Any, parse: Callable[[bytes], Message] | None) -> Any:
        # Not counted in progress: these handlers never wait (nothing on the hot path waits on I/O), so one runs at
        # a time and its count would read 0 at every scrape; what waits is grpc core's queue, and the held calls.

        async def admitted(raw: bytes, context: Any) -> Any:
            if self.watching:
                # HTTP requests are keyed apart from gRPC connections: one source port may carry one of each (to
                # two listeners), and a flood over one must not get the other shed
                http = getattr(context, "protocol", "") == "http"
                reason = self.flooding(connection_key(context), raw, parse, context)
                first = getattr(context, "first_key", "") if http else ""
                if first and not reason:  # an HTTP connection's first request: counted per address too
                    reason = self.flooding(first, raw, None, context, counted=True)
                if reason:
                    # an HTTP call is not held: it would keep its share of http_max_concurrent meanwhile, and a
                    # flooder with that many requests would take the whole HTTP budget of every other bot
                    await self.refuse(context, reason, method, functools.partial(self._flood_message, reason),
                                      hold=not http, until=self.shed_until, abort=False)
                    return None
            return await inner(raw, context)

        return admitted

    def _admin_unary(self, method: str, inner: Any) -> Any:
        in_progress = self.in_progress
        limit = self.admin_max_concurrent

        budgeted = method not in KILL_SWITCH

        async def admitted(raw: bytes, context: Any) -> Any:
            if budgeted and limit and in_progress[ADMIN] >= limit:
                await self.refuse(context, ADMIN_BUDGET, method,
                                  f"AdminService is busy: admin_max_concurrent={limit} calls in progress; retry after "
                                  f"{self.retry_after_s:g} s", hold=False)
                return None
            in_progress[ADMIN] += 1
            try:
                return await inner(raw, context)
            finally:
                in_progress[ADMIN] -= 1

        return admitted

    def _stream_refusal(self, context: Any, cls: str) -> tuple[str, str] | None:
        """(reason, message) when this stream is over its budget, else None (and the stream is counted)."""
        if cls == ADMIN:
            limit = self.admin_max_concurrent
            if limit and self.in_progress[ADMIN] >= limit:
                return ADMIN_BUDGET, (f"AdminService is busy: admin_max_concurrent={limit} calls in progress; "
                                      f"retry after {self.retry_after_s:g} s")
            return None
        limit = self.max_streams_per_connection
        if limit:
            peer = connection_key(context)
            held = self._streams.get(peer, 0)
            if held >= limit:
                return STREAMS_PER_CONNECTION, (f"this connection holds max_streams_per_connection={limit} streams "
                                                f"(Session, WatchRiskState); close one or open another connection")
        return None

    def _enter_stream(self, context: Any, cls: str) -> str:
        self.in_progress[cls] += 1
        if cls == ADMIN:
            return ""
        peer = connection_key(context)
        self._streams[peer] = self._streams.get(peer, 0) + 1
        return str(peer)

    def _leave_stream(self, peer: str, cls: str) -> None:
        self.in_progress[cls] -= 1
        if not peer:
            return
        left = self._streams.get(peer, 0) - 1
        if left > 0:
            self._streams[peer] = left
        else:
            self._streams.pop(peer, None)

    def _stream_gen(self, method: str, inner: Any, cls: str) -> Any:
        stream_cls = ADMIN if cls == ADMIN else STREAM

        async def admitted(request: Any, context: Any) -> AsyncIterator[Any]:
            refusal = self._stream_refusal(context, stream_cls)
            if refusal is not None:
                await self.refuse(context, refusal[0], method, refusal[1], hold=False)
                return
            peer = self._enter_stream(context, stream_cls)
            try:
                async for item in inner(request, context):
                    yield item
            finally:
                self._leave_stream(peer, stream_cls)

        return admitted

    def _stream_coro(self, method: str, inner: Any, cls: str) -> Any:
        stream_cls = ADMIN if cls == ADMIN else STREAM

        async def admitted(requests: Any, context: Any) -> Any:
            refusal = self._stream_refusal(context, stream_cls)
            if refusal is not None:
                await self.refuse(context, refusal[0], method, refusal[1], hold=False)
                return None
            peer = self._enter_stream(context, stream_cls)
            try:
                return await inner(requests, context)
            finally:
                self._leave_stream(peer, stream_cls)

        return admitted


def connection_key(context: Any) -> str:
    """What admission counts a call's connection by: an HTTP request's TCP connection (`http <peer> #<n>`: keyed
    apart from the gRPC connection of the same source port, which may carry one of each to two listeners, and from
    a later connection given its port), else the gRPC peer."""
    return str(context.connection) if getattr(context, "protocol", "") == "http" else str(context.peer())


def _credential(context: Any) -> str:
    """What the call presents as its credential, as the trader guard reads it: the bearer token of the first
    authorization metadata, else the TLS client certificate's common name ("" for neither). Read only while
    overloaded (or on probation), for the count per trader."""
    if context is None:
        return ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            # as the guard reads it (dispatch.bearer_token: Bearer in any case, the token stripped), so that one
            # token is one trader key, however a flooder spells it; any other scheme is not a credential to the
            # guard, which reads the client certificate then (dispatch.trader_guard)
            if text[:7].lower() == "bearer ":
                return "bearer " + text[7:].strip()
            break
    names = (context.auth_context() or {}).get("x509_common_name") or ()
    return names[0].decode(errors="replace") if names else ""


def admission_from_settings(s: Any) -> Admission:
    return Admission(max_calls_per_connection=s.max_calls_per_connection, max_calls_per_trader=s.max_calls_per_trader,
                     max_streams_per_connection=s.max_streams_per_connection,
                     admin_max_concurrent=s.admin_max_concurrent, overload_lag_ms=s.overload_lag_ms,
                     shed_hold_s=s.shed_hold_s, retry_after_s=s.retry_after_s)


def metric_families(admission: Admission) -> Iterable[Any]:
    """tradeguard_shed_total{reason,method} and tradeguard_calls_in_progress{class}, read at scrape time."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    shed = CounterMetricFamily("tradeguard_shed", "Calls shed (RESOURCE_EXHAUSTED / HTTP 429 with retry-after), by "
                               "reason and method.", labels=("reason", "method"))
    for (reason, method), n in sorted(admission.shed.items()):
        shed.add_metric((reason, method), n)
    yield shed
    gauge = GaugeMetricFamily("tradeguard_calls_in_progress", "Calls in progress by class: stream (Session, "
                              "WatchRiskState), admin (AdminService), http (HTTP requests), http_stream (HTTP "
                              "server-sent event streams), held (shed calls waiting for their answer). The hot path's "
                              "unary calls never wait, so they are not counted.", labels=("class",))
    for cls, n in admission.in_progress.items():
        gauge.add_metric((cls,), n)
    gauge.add_metric(("held",), admission.held)
    yield gauge
    yield GaugeMetricFamily("tradeguard_event_loop_lag_seconds", "How late the event loop ran the admission ticker "
                            "(over overload_lag_ms: overloaded).", value=admission.lag_s)


class AdmissionCollector:
    """A prometheus_client collector of `metric_families`."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterable[Any]:
        return metric_families(self.admission)

    def describe(self) -> Iterable[Any]:
        return []


def retry_delay(status: status_pb2.Status) -> float | None:
    """The google.rpc.RetryInfo delay of a status, in seconds (None: it has none)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None
