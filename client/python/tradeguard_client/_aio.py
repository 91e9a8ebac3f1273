# ruff: noqa: ASYNC109 - `timeout` is the gRPC deadline sent to the server, not a local asyncio timeout
"""The asyncio clients: AsyncRiskClient and AsyncAdminClient, on a grpc.aio channel.

Same methods, arguments, results and failure semantics as the blocking clients in `_sync`. The channel is
opened on first use, inside the running event loop, so a client may be constructed anywhere; close it with
`await client.close()` or `async with`. A grpc.aio channel belongs to one event loop: when a client is
used from another loop (a second `asyncio.run()`, say), it opens a fresh channel there and closes the old
one, so the same client works across `asyncio.run()` calls (one loop at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg

from . import _requests as req
from ._channel import TLS, ChannelSpec, Options, call_metadata
from ._errors import (
    ClientClosedError,
    InvalidResponseError,
    SidecarUnavailableError,
    TradeGuardError,
    from_rpc_error,
)
from ._retry import (
    IDEMPOTENT_METHODS,
    LATE_S,
    LocalDeadlineExceeded,
    RetryPolicy,
    call_async,
    check_fail_open,
    check_timeout,
)
from ._session import AsyncSession, OnDisconnect
from ._sync import (
    CAN_TRADE,
    DEFAULT_RETRY,
    DEFAULT_TARGET,
    call_budget,
    call_fail_open,
    exhausted_decision,
    failed_decision,
    judged,
    judged_msg,
)
from ._types import (
    Binding,
    BreakerEvent,
    CircuitBreaker,
    Decision,
    FeatureFlags,
    HistoryEntry,
    Page,
    ReportResult,
    RestoreResult,
    RiskConfig,
    RiskState,
    RiskStateEntry,
    SavedConfig,
    ScopePause,
    StateUpdate,
)

if TYPE_CHECKING:
    from tradeguard.v1.admin_service_pb2_grpc import AdminServiceAsyncStub
    from tradeguard.v1.risk_service_pb2_grpc import RiskServiceAsyncStub

__all__ = ["AsyncAdminClient", "AsyncRiskClient", "AsyncWatchStream"]

log = logging.getLogger("tradeguard_client")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message | bytes)


class _AsyncClient:
    def __init__(self, target: str, *, timeout: float, retry: RetryPolicy, tls: TLS | None, token: str | None,
                 metadata: Sequence[tuple[str, str]], options: Options) -> None:
        self.timeout = check_timeout(timeout)
        self.retry = retry
        self._metadata = call_metadata(token, metadata)
        self._spec = ChannelSpec.build(target, tls, options)
        self._chan: grpc.aio.Channel | None = None
        self._chan_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def target(self) -> str:
        return self._spec.target

    def _on_new_channel(self, channel: grpc.aio.Channel) -> None:
        """Subclasses bind their stubs to `channel`."""

    def _channel(self, method: str = "") -> grpc.aio.Channel:
        if self._closed:
            raise ClientClosedError(method)
        loop = asyncio.get_running_loop()
        if self._chan is not None and self._chan_loop is not loop:
            self._drop_channel()
        if self._chan is None:
            self._chan, self._chan_loop = self._spec.aio(), loop
            self._on_new_channel(self._chan)
        return self._chan

    def _drop_channel(self) -> None:
        """Forget the channel of another loop; close it on that loop when it still runs."""
        chan, old_loop, self._chan, self._chan_loop = self._chan, self._chan_loop, None, None
        if chan is not None and old_loop is not None and not old_loop.is_closed() and old_loop.is_running():
            asyncio.run_coroutine_threadsafe(chan.close(grace=None), old_loop)

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled (TradeGuardError CANCELLED), and every later call
        raises ClientClosedError (also CANCELLED)."""
        self._closed = True
        if self._chan is None:
            return
        if self._chan_loop is not asyncio.get_running_loop():
            self._drop_channel()
            return
        chan, self._chan = self._chan, None
        await chan.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _unary(self, method: str, fn: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req,
                     timeout: float | None) -> Resp:
        """One call with its retries; raises only TradeGuardError (InvalidResponseError for an OK without a message)."""
        budget = call_budget(method, self.timeout, timeout)
        metadata = self._metadata

        async def attempt(remaining: float) -> Resp:
            try:
                async with asyncio.timeout(remaining + LATE_S):
                    return await fn(request, timeout=remaining, metadata=metadata)
            except TimeoutError:
                raise LocalDeadlineExceeded from None

        resp = await call_async(attempt, method=method, timeout=budget, policy=self.retry,
                                retry=method in IDEMPOTENT_METHODS)
        if not isinstance(resp, Message | bytes):  # grpc.aio answers None to an OK without a message
            raise InvalidResponseError("the call ended OK without a message", method=method)
        return resp


class AsyncWatchStream(AsyncIterator[StateUpdate]):
    """A WatchRiskState stream: `async for update in stream`; `cancel()` (or leaving `async with`) ends it.

    The first update is the current state (reason "initial"). Iteration ends when the sidecar shuts down
    or after `cancel()`; a failure raises TradeGuardError. Not retried: watch again.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[rs.WatchRiskStateRequest, rs.WatchRiskStateResponse]) -> None:
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StateUpdate:
        try:
            msg = await self._call.read()
        except asyncio.CancelledError:
            # grpc.aio reports a cancelled call (our cancel(), or the client closed) this way; re-raise only
            # when it is this task that is being cancelled.
            task = asyncio.current_task()
            if self._cancelled or task is None or task.cancelling() == 0:
                raise StopAsyncIteration from None
            raise
        except grpc.RpcError as error:
            if self._cancelled:
                raise StopAsyncIteration from None
            raise from_rpc_error(error, "WatchRiskState") from error
        if not isinstance(msg, rs.WatchRiskStateResponse):  # grpc.aio.EOF: the server ended the stream
            raise StopAsyncIteration
        return StateUpdate.from_proto(msg)

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.cancel()


class AsyncRiskClient(_AsyncClient):
    """Asyncio client of RiskService; see RiskClient for the options and the fail-closed semantics."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = 1.0, retry: RetryPolicy = DEFAULT_RETRY,
                 fail_open: bool = False, tls: TLS | None = None, token: str | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Options = (), session: bool = True,
                 on_disconnect: OnDisconnect | None = None) -> None:
        self._fail_open = check_fail_open(fail_open)
        super().__init__(target, timeout=timeout, retry=retry, tls=tls, token=token, metadata=metadata,
                         options=options)
        self._stub_cache: RiskServiceAsyncStub | None = None
        self._can_trade: grpc.aio.UnaryUnaryMultiCallable[rs.CanTradeRequest, bytes] | None = None
        # can_trade and the reports over one Session stream (see RiskClient); None: unary calls.
        self._use_session = bool(session) or on_disconnect is not None
        self._on_disconnect = on_disconnect
        self._session: AsyncSession | None = None

    @property
    def fail_open(self) -> bool:
        """Allow (with would_deny) when the sidecar cannot be reached. Only a bool is accepted."""
        return self._fail_open

    @fail_open.setter
    def fail_open(self, value: bool) -> None:
        self._fail_open = check_fail_open(value)

    def _on_new_channel(self, channel: grpc.aio.Channel) -> None:
        self._stub_cache = rsg.RiskServiceStub(channel)
        if self._use_session:
            extra = () if self._on_disconnect is None else self._on_disconnect.metadata()
            self._session = AsyncSession(channel, (*self._metadata, *extra))
        self._can_trade = channel.unary_unary(CAN_TRADE, request_serializer=rs.CanTradeRequest.SerializeToString,
                                              response_deserializer=None)

    @property
    def _stub(self) -> RiskServiceAsyncStub:
        self._channel()
        assert self._stub_cache is not None
        return self._stub_cache

    async def _risk(self, method: str, fn: Any, request: Req, timeout: float | None) -> Any:
        """A call of the bot's: over the session when the client keeps one, else unary."""
        self._channel(method)
        session = self._session
        if session is None:
            return await self._unary(method, fn, request, timeout)
        budget = call_budget(method, self.timeout, timeout)

        async def attempt(remaining: float) -> Message:
            return await session.call(method, request, remaining)

        try:
            return await call_async(attempt, method=method, timeout=budget, policy=self.retry,
                                    retry=method in IDEMPOTENT_METHODS)
        except TradeGuardError as error:
            if not session.unsupported:
                raise
            log.info("TradeGuard sidecar %s has no Session (older version): unary calls from now on (%s)",
                     self.target, error.message)
            self._session = None
            return await self._unary(method, fn, request, timeout)

    async def close(self) -> None:
        """Half-close the session (a clean close: no cancel-on-disconnect), then close the channel."""
        session, self._session = self._session, None
        if session is not None and self._chan_loop is asyncio.get_running_loop():
            await session.close()
        await super().close()

    async def can_trade(self, trader_id: str, account_id: str, order: req.OrderLike | None = None, *,
                        timeout: float | None = None, fail_open: bool | None = None) -> Decision:
        """May the trader trade now (order None: this cycle), or place `order`? Never raises when unreachable.

        An order without `client_order_id` gets one before the first attempt (retries repeat it, so the
        sidecar counts the order once); `Decision.client_order_id` says which.
        """
        request = req.can_trade(trader_id, account_id, order)
        opens = call_fail_open(self._fail_open, fail_open)
        order_id = request.order.client_order_id
        self._channel("CanTrade")
        assert self._can_trade is not None
        try:
            body = await self._risk("CanTrade", self._can_trade, request, timeout)
        except (SidecarUnavailableError, InvalidResponseError) as error:
            return failed_decision(self.target, error, opens, order_id)
        except TradeGuardError as error:
            if error.code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return exhausted_decision(self.target, error, order_id)
        if isinstance(body, rs.CanTradeResponse):
            return judged_msg(self.target, body, order_id)
        return judged(self.target, body, order_id)

    async def report_equity(self, trader_id: str, account_id: str, equity: float, *,
                            observed_at: datetime | None = None, timeout: float | None = None) -> ReportResult:
        """Report the account equity level (including unrealized PnL). `observed_at` None means now."""
        request = req.report_equity(trader_id, account_id, equity, observed_at)
        resp = await self._risk("ReportEquity", self._stub.ReportEquity, request, timeout)
        return ReportResult.from_proto(resp)

    async def report_trade(self, trader_id: str, account_id: str, *, trade_id: str, symbol: str, side: str,
                           realized_pnl: float, exchange: str = "", closed_at: datetime | None = None,
                           timeout: float | None = None) -> ReportResult:
        """Report a closed trade; a repeated `trade_id` counts once (`duplicate=True`)."""
        request = req.report_trade(trader_id, account_id, trade_id=trade_id, symbol=symbol, side=side,
                                   realized_pnl=realized_pnl, exchange=exchange, closed_at=closed_at)
        resp = await self._risk("ReportTrade", self._stub.ReportTrade, request, timeout)
        return ReportResult.from_proto(resp)

    async def report_positions(self, trader_id: str, account_id: str, positions: Iterable[req.PositionLike], *,
                               timeout: float | None = None) -> ReportResult:
        """Report every open position (replaces the previous snapshot; empty means flat)."""
        request = req.report_positions(trader_id, account_id, positions)
        resp = await self._risk("ReportPositions", self._stub.ReportPositions, request, timeout)
        return ReportResult.from_proto(resp)

    async def report_order(self, trader_id: str, account_id: str, client_order_id: str, status: str, *,
                           filled_quantity: float = 0.0, average_price: float = 0.0,
                           timeout: float | None = None) -> ReportResult:
        """Report what happened to an order `can_trade` allowed (`client_order_id` as `Decision.client_order_id`
        returned it): `status` "ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED" or "EXPIRED";
        `filled_quantity` is cumulative (base units), `average_price` the fills' average (0: the order's price).

        Until an order is reported finished it counts in every exposure check as if filled; fills move it to
        the position (a later `report_positions` is the truth). Idempotent and safe out of order: a repeat or an
        older report changes nothing (`duplicate=True`, also what a retry after a lost success reads);
        `result.order` is the order after the report. An id the sidecar does not know (e.g. one it never
        allowed) raises TradeGuardError with code NOT_FOUND.
        """
        request = req.report_order(trader_id, account_id, client_order_id, status, filled_quantity, average_price)
        resp = await self._risk("ReportOrder", self._stub.ReportOrder, request, timeout)
        return ReportResult.from_proto(resp)

    async def report_prices(self, trader_id: str, account_id: str, prices: req.PricesLike, *,
                            timeout: float | None = None) -> int:
        """Report reference prices for price collars (symbols without a position; positions' marks count too):
        PriceMarks, or a {symbol: price} mapping observed now. Returns how many became their symbol's
        reference (a price older than the one known is ignored)."""
        request = req.report_prices(trader_id, account_id, prices)
        resp = await self._risk("ReportPrices", self._stub.ReportPrices, request, timeout)
        return int(resp.accepted)

    async def get_risk_state(self, trader_id: str, account_id: str, *, timeout: float | None = None) -> RiskState:
        """The trader's current risk state (a trader never seen has `equity_reported=False`)."""
        request = req.message(rs.GetRiskStateRequest, trader_id=trader_id, account_id=account_id)
        resp = await self._unary("GetRiskState", self._stub.GetRiskState, request, timeout)
        return RiskState.from_proto(resp.state)

    def watch_risk_state(self, trader_id: str, account_id: str, *, timeout: float | None = None) -> AsyncWatchStream:
        """Stream the current state, then every change and required action. No deadline unless `timeout`."""
        request = req.message(rs.WatchRiskStateRequest, trader_id=trader_id, account_id=account_id)
        deadline = None if timeout is None else call_budget("WatchRiskState", self.timeout, timeout)
        return AsyncWatchStream(self._stub.WatchRiskState(request, timeout=deadline, metadata=self._metadata))


class AsyncAdminClient(_AsyncClient):
    """Asyncio client of AdminService; see AdminClient for the options and which calls are retried."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, timeout: float = 5.0,
                 retry: RetryPolicy = DEFAULT_RETRY, tls: TLS | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Options = ()) -> None:
        super().__init__(target, timeout=timeout, retry=retry, tls=tls, token=token, metadata=metadata,
                         options=options)
        self._stub_cache: AdminServiceAsyncStub | None = None

    def _on_new_channel(self, channel: grpc.aio.Channel) -> None:
        self._stub_cache = adg.AdminServiceStub(channel)

    @property
    def _stub(self) -> AdminServiceAsyncStub:
        self._channel()
        assert self._stub_cache is not None
        return self._stub_cache

    # ---- configurations -------------------------------------------------------------------------

    async def save_config(self, config: req.ConfigLike, *, update_mask: Iterable[str] | str | None = None,
                          timeout: float | None = None) -> SavedConfig:
        """Create or replace (account_id, config_id); saving an active one deactivates the others.

        With `update_mask` (field names, e.g. ["daily_max_drawdown_percentage", "symbol_configs"]) only those
        fields of the stored configuration change (AIP-134; it must exist): the rest of `config` is ignored."""
        request = req.save_config(config, update_mask)
        resp = await self._unary("SaveConfig", self._stub.SaveConfig, request, timeout)
        return SavedConfig(RiskConfig.from_proto(resp.config), resp.created, raw=resp)

    async def get_config(self, account_id: str, config_id: str, *, timeout: float | None = None) -> RiskConfig:
        request = req.message(ad.GetConfigRequest, account_id=account_id, config_id=config_id)
        return RiskConfig.from_proto((await self._unary("GetConfig", self._stub.GetConfig, request, timeout)).config)

    async def list_configs(self, account_id: str, *, timeout: float | None = None) -> tuple[RiskConfig, ...]:
        request = req.message(ad.ListConfigsRequest, account_id=account_id)
        resp = await self._unary("ListConfigs", self._stub.ListConfigs, request, timeout)
        return tuple(RiskConfig.from_proto(c) for c in resp.configs)

    async def delete_config(self, account_id: str, config_id: str, *, timeout: float | None = None) -> None:
        request = req.message(ad.DeleteConfigRequest, account_id=account_id, config_id=config_id)
        await self._unary("DeleteConfig", self._stub.DeleteConfig, request, timeout)

    # ---- circuit breakers -----------------------------------------------------------------------

    async def create_breaker(self, breaker: req.BreakerLike, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.CreateBreakerRequest, breaker=req.breaker_msg(breaker))
        resp = await self._unary("CreateBreaker", self._stub.CreateBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def get_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.GetBreakerRequest, breaker_id=breaker_id)
        resp = await self._unary("GetBreaker", self._stub.GetBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def get_breaker_by_name(self, account_id: str, name: str, *,
                                 timeout: float | None = None) -> CircuitBreaker:
        """The account's breaker named `name` (names are unique per account; ETRMS get_by_name)."""
        request = req.get_breaker_by_name(account_id, name)
        resp = await self._unary("GetBreaker", self._stub.GetBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def list_breakers(self, account_id: str, *, timeout: float | None = None) -> tuple[CircuitBreaker, ...]:
        request = req.message(ad.ListBreakersRequest, account_id=account_id)
        resp = await self._unary("ListBreakers", self._stub.ListBreakers, request, timeout)
        return tuple(CircuitBreaker.from_proto(b) for b in resp.breakers)

    async def update_breaker(self, breaker_id: str, breaker: req.BreakerLike, *,
                             update_mask: Iterable[str] | str | None = None,
                             timeout: float | None = None) -> CircuitBreaker:
        """Replace the breaker's definition, or with `update_mask` (e.g. ["parameters"]) change only those fields."""
        request = req.update_breaker(breaker_id, breaker, update_mask)
        resp = await self._unary("UpdateBreaker", self._stub.UpdateBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def delete_breaker(self, breaker_id: str, *, timeout: float | None = None) -> None:
        request = req.message(ad.DeleteBreakerRequest, breaker_id=breaker_id)
        await self._unary("DeleteBreaker", self._stub.DeleteBreaker, request, timeout)

    async def enable_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.EnableBreakerRequest, breaker_id=breaker_id)
        resp = await self._unary("EnableBreaker", self._stub.EnableBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def disable_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.DisableBreakerRequest, breaker_id=breaker_id)
        resp = await self._unary("DisableBreaker", self._stub.DisableBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    async def list_breaker_events(self, *, breaker_id: str = "", account_id: str = "", page_size: int = 0,
                                  page_token: str = "", timeout: float | None = None) -> Page[BreakerEvent]:
        """Events of one breaker, or of every breaker of `account_id`, newest first."""
        request = req.list_breaker_events(breaker_id, account_id, page_size, page_token)
        resp = await self._unary("ListBreakerEvents", self._stub.ListBreakerEvents, request, timeout)
        return Page(tuple(BreakerEvent.from_proto(e) for e in resp.events), resp.next_page_token)

    async def log_breaker_event(self, breaker_id: str, action_taken: str, *, trader_id: str = "",
                          triggered_values: Mapping[str, Any] | None = None,
                          action_result: Mapping[str, Any] | None = None,
                          timeout: float | None = None) -> BreakerEvent:
        """Record an event of an existing breaker raised by another system (ETRMS log_event); never retried."""
        request = req.log_breaker_event(breaker_id, action_taken, trader_id, triggered_values, action_result)
        resp = await self._unary("LogBreakerEvent", self._stub.LogBreakerEvent, request, timeout)
        return BreakerEvent.from_proto(resp.event)

    # ---- flags and kill switch ------------------------------------------------------------------

    async def get_feature_flags(self, *, timeout: float | None = None) -> FeatureFlags:
        request = ad.GetFeatureFlagsRequest()
        resp = await self._unary("GetFeatureFlags", self._stub.GetFeatureFlags, request, timeout)
        return FeatureFlags.from_proto(resp.flags)

    async def set_feature_flags(self, *, enable_risk_enforcement: bool | None = None,
                                enable_persistence: bool | None = None,
                                timeout: float | None = None) -> FeatureFlags:
        """Change the flags given (None leaves one as it is); returns the flags in force."""
        request = req.set_feature_flags(enable_risk_enforcement, enable_persistence)
        resp = await self._unary("SetFeatureFlags", self._stub.SetFeatureFlags, request, timeout)
        return FeatureFlags.from_proto(resp.flags)

    @overload
    async def pause_trading(self, trader_id: str, account_id: str, *, trading_state: str = ...,
                      duration: timedelta | float | None = ..., reason: str = ..., all_accounts: bool = ...,
                      timeout: float | None = ...) -> RiskState: ...

    @overload
    async def pause_trading(self, trader_id: None, account_id: str = ..., *, trading_state: str = ...,
                      duration: timedelta | float | None = ..., reason: str = ..., all_accounts: bool = ...,
                      timeout: float | None = ...) -> ScopePause: ...

    async def pause_trading(self, trader_id: str | None, account_id: str = "", *, trading_state: str = "HALTED",
                      duration: timedelta | float | None = None, reason: str = "", all_accounts: bool = False,
                      timeout: float | None = None) -> RiskState | ScopePause:
        """Kill switch: "HALTED" (nothing) or "REDUCING" (reduce only), for `duration` (seconds or timedelta)
        or, when None, until resumed.

        Scopes: a trader (`trader_id` given): returns the trader's RiskState, as before. An account
        (`trader_id` None or "", `account_id` given): every trader of the account, those that appear later too,
        on every sidecar sharing the database. Every account (`trader_id` None, `account_id` "",
        `all_accounts=True`). Those two return the ScopePause as stored, with its `control_state_version`
        (pass None rather than "" so a type checker knows the result is a ScopePause). Never retried."""
        request = req.pause_trading(trader_id, account_id, trading_state, duration, reason, all_accounts)
        resp = await self._unary("PauseTrading", self._stub.PauseTrading, request, timeout)
        if req.is_scope(trader_id):
            return ScopePause.from_response(resp)
        return RiskState.from_proto(resp.state)

    @overload
    async def resume_trading(self, trader_id: str, account_id: str, *, all_accounts: bool = ...,
                       timeout: float | None = ...) -> RiskState: ...

    @overload
    async def resume_trading(self, trader_id: None, account_id: str = ..., *, all_accounts: bool = ...,
                       timeout: float | None = ...) -> int: ...

    async def resume_trading(self, trader_id: str | None, account_id: str = "", *, all_accounts: bool = False,
                       timeout: float | None = None) -> RiskState | int:
        """Lift a pause. A trader (`trader_id` given): any of its pauses, manual or automatic; returns its
        RiskState, as before. An account (`trader_id` None or "", `account_id` given) or every account
        (`all_accounts=True`): lifts that scope's pause (not the traders' own pauses) and returns the
        control-state version of the change (an int)."""
        request = req.resume_trading(trader_id, account_id, all_accounts)
        resp = await self._unary("ResumeTrading", self._stub.ResumeTrading, request, timeout)
        if req.is_scope(trader_id):
            return int(resp.control_state_version)
        return RiskState.from_proto(resp.state)

    async def list_bindings(self, account_id: str = "", *, timeout: float | None = None) -> tuple[Binding, ...]:
        """Which account each known trader id is bound to (only `account_id`'s traders when given)."""
        request = ad.ListBindingsRequest(account_id=account_id)
        resp = await self._unary("ListBindings", self._stub.ListBindings, request, timeout)
        return tuple(Binding.from_proto(b) for b in resp.bindings)

    async def rebind_trader(self, trader_id: str, account_id: str, *, reason: str = "",
                      timeout: float | None = None) -> RiskState:
        """Bind `trader_id` to `account_id` with a fresh state (audited); never retried: a repeat resets again."""
        request = ad.RebindTraderRequest(trader_id=trader_id, account_id=account_id, reason=reason)
        resp = await self._unary("RebindTrader", self._stub.RebindTrader, request, timeout)
        return RiskState.from_proto(resp.state)

    async def list_risk_state_history(self, trader_id: str, account_id: str, *, start_time: datetime | None = None,
                                      end_time: datetime | None = None, page_size: int = 0, page_token: str = "",
                                      timeout: float | None = None) -> Page[HistoryEntry]:
        """The trader's audit trail in [start_time, end_time), oldest first."""
        request = req.list_history(trader_id, account_id, start_time, end_time, page_size, page_token)
        resp = await self._unary("ListRiskStateHistory", self._stub.ListRiskStateHistory, request, timeout)
        return Page(tuple(HistoryEntry.from_proto(e) for e in resp.entries), resp.next_page_token)

    async def restore_risk_state(self, trader_id: str, account_id: str, at: datetime, *, reason: str = "",
                           dry_run: bool = True, timeout: float | None = None) -> RestoreResult:
        """Put the trader back to the newest history row recorded at or before `at` (AdminService.RestoreRiskState,
        admin token). Dry run by default: the answer shows the state it would restore and nothing changes; with
        `dry_run=False` (a `reason` is required) the restore is applied and audited. Never retried."""
        request = req.restore_risk_state(trader_id, account_id, at, reason, dry_run)
        resp = await self._unary("RestoreRiskState", self._stub.RestoreRiskState, request, timeout)
        return RestoreResult.from_proto(resp)

    async def list_risk_states(self, account_id: str, trading_state: str | None = None, page_size: int = 0,
                         page_token: str = "", *, timeout: float | None = None) -> Page[RiskStateEntry]:
        """Every trader of `account_id` with its state, owner sidecar and freshness, ordered by trader_id
        (`trading_state` "ACTIVE" / "REDUCING" / "HALTED" keeps only those; None every state). `page_size` 0
        means the server's default (100, at most 1000); pass `next_page_token` back for the next page."""
        request = req.list_risk_states(account_id, trading_state, page_size, page_token)
        resp = await self._unary("ListRiskStates", self._stub.ListRiskStates, request, timeout)
        return Page(tuple(RiskStateEntry.from_proto(e) for e in resp.entries), resp.next_page_token)
