"""The blocking clients: RiskClient (the bot's hot path) and AdminClient (operators), on a grpc sync channel."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, overload

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
    InvalidArgumentError,
    InvalidResponseError,
    SidecarUnavailableError,
    TradeGuardError,
    from_rpc_error,
)
from ._retry import (
    IDEMPOTENT_METHODS,
    RetryPolicy,
    call_sync,
    check_fail_open,
    check_timeout,
)
from ._session import OnDisconnect, SyncSession
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

__all__ = ["AdminClient", "RiskClient", "WatchStream"]

log = logging.getLogger("tradeguard_client")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_RETRY = RetryPolicy()
CAN_TRADE = "/tradeguard.v1.RiskService/CanTrade"
"""CanTrade is called with raw bytes out, so this client decodes (and judges) the answer itself."""


def unavailable_reason(error: SidecarUnavailableError) -> str:
    return f"{error.code.name}: {error.message} (after {error.attempts} attempt(s))"


def call_budget(method: str, default: float, timeout: float | None) -> float:
    """The deadline of one call: `timeout` when given (checked), else the client's."""
    if timeout is None:
        return default
    try:
        return check_timeout(timeout)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(str(exc), method=method, field="timeout") from None


def call_fail_open(default: bool, fail_open: bool | None) -> bool:
    if fail_open is None:
        return default
    try:
        return check_fail_open(fail_open)
    except TypeError as exc:
        raise InvalidArgumentError(str(exc), method="CanTrade", field="fail_open") from None


def failed_decision(target: str, error: SidecarUnavailableError | InvalidResponseError, fail_open: bool,
                    client_order_id: str) -> Decision:
    """can_trade's answer when the call gave no decision: fail closed (or open), or deny an invalid answer."""
    if isinstance(error, InvalidResponseError):
        log.warning("TradeGuard sidecar %s answered CanTrade against the protocol, denied: %s", target, error.why)
        return Decision.invalid(error.why, client_order_id=client_order_id)
    log.warning("TradeGuard sidecar %s unreachable, failing %s: %s", target, "OPEN" if fail_open else "closed",
                unavailable_reason(error))
    return Decision.unavailable(unavailable_reason(error), fail_open=fail_open, client_order_id=client_order_id)


RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
"""Decision code set by this client when the sidecar refused CanTrade with RESOURCE_EXHAUSTED (e.g. max_traders
reached for a new trader_id): always denied, whatever fail_open says (the sidecar answered; it did not allow)."""


def exhausted_decision(target: str, error: TradeGuardError, client_order_id: str) -> Decision:
    """can_trade's answer when the sidecar refused the call with RESOURCE_EXHAUSTED: denied (fail closed)."""
    log.warning("TradeGuard sidecar %s refused CanTrade (RESOURCE_EXHAUSTED), denied: %s", target, error.message)
    return Decision(
        allowed=False, code=RESOURCE_EXHAUSTED, reason=f"{RESOURCE_EXHAUSTED}: {error.message}; denied (the sidecar "
        "refused the call)", trading_state="UNSPECIFIED", paused_until=None, checks=(), actions=(),
        would_deny=False, state=None, client_order_id=client_order_id, raw=None)


def judged(target: str, body: object, client_order_id: str) -> Decision:
    return _judged(target, Decision.from_bytes(body, client_order_id))


def judged_msg(target: str, msg: rs.CanTradeResponse, client_order_id: str) -> Decision:
    return _judged(target, Decision.from_proto(msg, client_order_id))


def _judged(target: str, decision: Decision) -> Decision:
    if decision.invalid_response:
        log.warning("TradeGuard sidecar %s answered CanTrade against the protocol, denied: %s", target,
                    decision.reason)
    return decision


class _SyncClient:
    def __init__(self, target: str, *, timeout: float, retry: RetryPolicy, tls: TLS | None, token: str | None,
                 metadata: Sequence[tuple[str, str]], options: Options) -> None:
        self.timeout = check_timeout(timeout)
        self.retry = retry
        self._metadata = call_metadata(token, metadata)
        self._spec = ChannelSpec.build(target, tls, options)
        self._channel = self._spec.sync()
        self._closed = False

    @property
    def target(self) -> str:
        return self._spec.target

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled (TradeGuardError CANCELLED), and every later call
        raises ClientClosedError (also CANCELLED)."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _unary(self, method: str, fn: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req,
               timeout: float | None) -> Resp:
        """One call with its retries; raises only TradeGuardError (InvalidResponseError for an OK without a message)."""
        budget = call_budget(method, self.timeout, timeout)
        if self._closed:
            raise ClientClosedError(method)
        metadata = self._metadata

        def attempt(remaining: float) -> Resp:
            # A blocking call, not future().result(timeout): the future's hand-off between threads costs
            # ~200 us a call (measured), and grpc's own deadline is late only while it reconnects in a loop.
            try:
                return fn(request, timeout=remaining, metadata=metadata)
            except ValueError:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise ClientClosedError(method) from None
                raise

        resp = call_sync(attempt, method=method, timeout=budget, policy=self.retry,
                         retry=method in IDEMPOTENT_METHODS)
        if resp is None:
            raise InvalidResponseError("the call ended OK without a message", method=method)
        return resp


class WatchStream(Iterator[StateUpdate]):
    """A WatchRiskState stream: iterate it for StateUpdates; `cancel()` (or leaving `with`) ends it.

    The first update is the current state (reason "initial"). Iteration ends when the sidecar shuts down
    or after `cancel()`; a failure raises TradeGuardError. Streams are not retried: watch again (the new
    stream starts with the current state, so nothing is lost).
    """

    def __init__(self, call: grpc.CallIterator[rs.WatchRiskStateResponse]) -> None:
        self._call = call
        self._it = iter(call)
        self._cancelled = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StateUpdate:
        try:
            msg = next(self._it)
        except grpc.RpcError as error:
            if self._cancelled:
                raise StopIteration from None
            raise from_rpc_error(error, "WatchRiskState") from error
        return StateUpdate.from_proto(msg)

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves RpcContext.cancel untyped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cancel()


class RiskClient(_SyncClient):
    """Blocking client of RiskService, the bot's hot path. Thread-safe; share one per process.

    `target`: "host:port" or "unix:/path". `timeout`: the deadline of each call in seconds (default 1.0),
    covering its retries; every method also takes `timeout=` for one call. `retry`: backoff for UNAVAILABLE
    (see RetryPolicy). `tls`: TLS / mTLS (see TLS); None = plaintext. `token`: sent as
    `authorization: Bearer <token>` (the sidecar's trader token, when it has one). `metadata`: more headers
    for every call. `options`: gRPC channel options.

    Fail-closed: when the sidecar cannot be reached (UNAVAILABLE after the retries, or DEADLINE_EXCEEDED),
    `can_trade` does not raise but returns `Decision(allowed=False, code="SIDECAR_UNAVAILABLE", reason=...)`
    naming the error. With `fail_open=True` (a bool; anything else is refused) it returns `allowed=True`,
    the same code and reason, and `would_deny=True`. An answer that breaks the protocol (an "allowed" with
    a code no server sends, a body that is not a CanTradeResponse, an OK without a message) is denied with
    code "INVALID_RESPONSE", whatever `fail_open` says. Any other failure raises TradeGuardError (with
    `field_violations` for INVALID_ARGUMENT, also for arguments refused before sending); `can_trade` raises
    nothing else. Every other method raises SidecarUnavailableError when unreachable, InvalidResponseError
    for an answer that breaks the protocol, and TradeGuardError otherwise.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = 1.0, retry: RetryPolicy = DEFAULT_RETRY,
                 fail_open: bool = False, tls: TLS | None = None, token: str | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Options = (), session: bool = True,
                 on_disconnect: OnDisconnect | None = None) -> None:
        self._fail_open = check_fail_open(fail_open)
        super().__init__(target, timeout=timeout, retry=retry, tls=tls, token=token, metadata=metadata,
                         options=options)
        self._stub = rsg.RiskServiceStub(self._channel)
        self._session: SyncSession | None = None
        if session or on_disconnect is not None:
            extra = () if on_disconnect is None else on_disconnect.metadata()
            self._session = SyncSession(self._channel, (*self._metadata, *extra))
        self._can_trade = self._channel.unary_unary(CAN_TRADE,
                                                    request_serializer=rs.CanTradeRequest.SerializeToString,
                                                    response_deserializer=None)

    @property
    def fail_open(self) -> bool:
        """Allow (with would_deny) when the sidecar cannot be reached. Only a bool is accepted."""
        return self._fail_open

    @fail_open.setter
    def fail_open(self, value: bool) -> None:
        self._fail_open = check_fail_open(value)

    def _risk(self, method: str, fn: Any, request: Req, timeout: float | None) -> Any:
        """A call of the bot's: over the session when the client keeps one, else unary."""
        session = self._session
        if session is None:
            return self._unary(method, fn, request, timeout)
        budget = call_budget(method, self.timeout, timeout)
        if self._closed:
            raise ClientClosedError(method)
        try:
            return call_sync(lambda remaining: session.call(method, request, remaining), method=method,
                             timeout=budget, policy=self.retry, retry=method in IDEMPOTENT_METHODS)
        except TradeGuardError as error:
            if not session.unsupported:
                raise
            log.info("TradeGuard sidecar %s has no Session (older version): unary calls from now on (%s)",
                     self.target, error.message)
            self._session = None
            return self._unary(method, fn, request, timeout)

    def close(self) -> None:
        """Half-close the session (a clean close: no cancel-on-disconnect), then close the channel."""
        session, self._session = self._session, None
        if session is not None:
            session.close()
        super().close()

    def can_trade(self, trader_id: str, account_id: str, order: req.OrderLike | None = None, *,
                  timeout: float | None = None, fail_open: bool | None = None) -> Decision:
        """May the trader trade now (order None: this cycle), or place `order`? Never raises when unreachable.

        An order without `client_order_id` gets one before the first attempt (retries repeat it, so the
        sidecar counts the order once); `Decision.client_order_id` says which.
        """
        request = req.can_trade(trader_id, account_id, order)
        opens = call_fail_open(self._fail_open, fail_open)
        order_id = request.order.client_order_id
        try:
            body = self._risk("CanTrade", self._can_trade, request, timeout)
        except (SidecarUnavailableError, InvalidResponseError) as error:
            return failed_decision(self.target, error, opens, order_id)
        except TradeGuardError as error:
            if error.code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return exhausted_decision(self.target, error, order_id)
        if isinstance(body, rs.CanTradeResponse):
            return judged_msg(self.target, body, order_id)
        return judged(self.target, body, order_id)

    def report_equity(self, trader_id: str, account_id: str, equity: float, *, observed_at: datetime | None = None,
                      timeout: float | None = None) -> ReportResult:
        """Report the account equity level (including unrealized PnL). `observed_at` None means now."""
        request = req.report_equity(trader_id, account_id, equity, observed_at)
        resp = self._risk("ReportEquity", self._stub.ReportEquity, request, timeout)
        return ReportResult.from_proto(resp)

    def report_trade(self, trader_id: str, account_id: str, *, trade_id: str, symbol: str, side: str,
                     realized_pnl: float, exchange: str = "", closed_at: datetime | None = None,
                     timeout: float | None = None) -> ReportResult:
        """Report a closed trade; a repeated `trade_id` counts once (`duplicate=True`)."""
        request = req.report_trade(trader_id, account_id, trade_id=trade_id, symbol=symbol, side=side,
                                   realized_pnl=realized_pnl, exchange=exchange, closed_at=closed_at)
        resp = self._risk("ReportTrade", self._stub.ReportTrade, request, timeout)
        return ReportResult.from_proto(resp)

    def report_positions(self, trader_id: str, account_id: str, positions: Iterable[req.PositionLike], *,
                         timeout: float | None = None) -> ReportResult:
        """Report every open position (replaces the previous snapshot; empty means flat)."""
        request = req.report_positions(trader_id, account_id, positions)
        resp = self._risk("ReportPositions", self._stub.ReportPositions, request, timeout)
        return ReportResult.from_proto(resp)

    def report_order(self, trader_id: str, account_id: str, client_order_id: str, status: str, *,
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
        resp = self._risk("ReportOrder", self._stub.ReportOrder, request, timeout)
        return ReportResult.from_proto(resp)

    def report_prices(self, trader_id: str, account_id: str, prices: req.PricesLike, *,
                      timeout: float | None = None) -> int:
        """Report reference prices for price collars (symbols without a position; positions' marks count too):
        PriceMarks, or a {symbol: price} mapping observed now. Returns how many became their symbol's
        reference (a price older than the one known is ignored)."""
        request = req.report_prices(trader_id, account_id, prices)
        return int(self._risk("ReportPrices", self._stub.ReportPrices, request, timeout).accepted)

    def get_risk_state(self, trader_id: str, account_id: str, *, timeout: float | None = None) -> RiskState:
        """The trader's current risk state (a trader never seen has `equity_reported=False`)."""
        request = req.message(rs.GetRiskStateRequest, trader_id=trader_id, account_id=account_id)
        return RiskState.from_proto(self._unary("GetRiskState", self._stub.GetRiskState, request, timeout).state)

    def watch_risk_state(self, trader_id: str, account_id: str, *, timeout: float | None = None) -> WatchStream:
        """Stream the current state, then every change and required action. No deadline unless `timeout`."""
        request = req.message(rs.WatchRiskStateRequest, trader_id=trader_id, account_id=account_id)
        deadline = None if timeout is None else call_budget("WatchRiskState", self.timeout, timeout)
        if self._closed:
            raise ClientClosedError("WatchRiskState")
        return WatchStream(self._stub.WatchRiskState(request, timeout=deadline, metadata=self._metadata))


class AdminClient(_SyncClient):
    """Blocking client of AdminService (operators). `token` is the sidecar's admin token, when it has one.

    Same options as RiskClient; the default deadline is 5 s because configuration and breaker writes return
    only after the store committed. Reads and writes that set an absolute value are retried on UNAVAILABLE;
    CreateBreaker, DeleteConfig, DeleteBreaker and PauseTrading are never retried, because repeating one
    after a success whose answer was lost would do it twice or report it as a failure (details in
    `tradeguard_client._retry`). Failures raise TradeGuardError.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, timeout: float = 5.0,
                 retry: RetryPolicy = DEFAULT_RETRY, tls: TLS | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Options = ()) -> None:
        super().__init__(target, timeout=timeout, retry=retry, tls=tls, token=token, metadata=metadata,
                         options=options)
        self._stub = adg.AdminServiceStub(self._channel)

    # ---- configurations -------------------------------------------------------------------------

    def save_config(self, config: req.ConfigLike, *, update_mask: Iterable[str] | str | None = None,
                    timeout: float | None = None) -> SavedConfig:
        """Create or replace (account_id, config_id); saving an active one deactivates the others.

        With `update_mask` (field names, e.g. ["daily_max_drawdown_percentage", "symbol_configs"]) only those
        fields of the stored configuration change (AIP-134; it must exist): the rest of `config` is ignored."""
        request = req.save_config(config, update_mask)
        resp = self._unary("SaveConfig", self._stub.SaveConfig, request, timeout)
        return SavedConfig(RiskConfig.from_proto(resp.config), resp.created, raw=resp)

    def get_config(self, account_id: str, config_id: str, *, timeout: float | None = None) -> RiskConfig:
        request = req.message(ad.GetConfigRequest, account_id=account_id, config_id=config_id)
        return RiskConfig.from_proto(self._unary("GetConfig", self._stub.GetConfig, request, timeout).config)

    def list_configs(self, account_id: str, *, timeout: float | None = None) -> tuple[RiskConfig, ...]:
        request = req.message(ad.ListConfigsRequest, account_id=account_id)
        resp = self._unary("ListConfigs", self._stub.ListConfigs, request, timeout)
        return tuple(RiskConfig.from_proto(c) for c in resp.configs)

    def delete_config(self, account_id: str, config_id: str, *, timeout: float | None = None) -> None:
        request = req.message(ad.DeleteConfigRequest, account_id=account_id, config_id=config_id)
        self._unary("DeleteConfig", self._stub.DeleteConfig, request, timeout)

    # ---- circuit breakers -----------------------------------------------------------------------

    def create_breaker(self, breaker: req.BreakerLike, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.CreateBreakerRequest, breaker=req.breaker_msg(breaker))
        return CircuitBreaker.from_proto(self._unary("CreateBreaker", self._stub.CreateBreaker, request,
                                                     timeout).breaker)

    def get_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.GetBreakerRequest, breaker_id=breaker_id)
        return CircuitBreaker.from_proto(self._unary("GetBreaker", self._stub.GetBreaker, request, timeout).breaker)

    def get_breaker_by_name(self, account_id: str, name: str, *,
                           timeout: float | None = None) -> CircuitBreaker:
        """The account's breaker named `name` (names are unique per account; ETRMS get_by_name)."""
        request = req.get_breaker_by_name(account_id, name)
        resp = self._unary("GetBreaker", self._stub.GetBreaker, request, timeout)
        return CircuitBreaker.from_proto(resp.breaker)

    def list_breakers(self, account_id: str, *, timeout: float | None = None) -> tuple[CircuitBreaker, ...]:
        request = req.message(ad.ListBreakersRequest, account_id=account_id)
        resp = self._unary("ListBreakers", self._stub.ListBreakers, request, timeout)
        return tuple(CircuitBreaker.from_proto(b) for b in resp.breakers)

    def update_breaker(self, breaker_id: str, breaker: req.BreakerLike, *,
                       update_mask: Iterable[str] | str | None = None,
                       timeout: float | None = None) -> CircuitBreaker:
        """Replace the breaker's definition, or with `update_mask` (e.g. ["parameters"]) change only those fields."""
        request = req.update_breaker(breaker_id, breaker, update_mask)
        return CircuitBreaker.from_proto(self._unary("UpdateBreaker", self._stub.UpdateBreaker, request,
                                                     timeout).breaker)

    def delete_breaker(self, breaker_id: str, *, timeout: float | None = None) -> None:
        request = req.message(ad.DeleteBreakerRequest, breaker_id=breaker_id)
        self._unary("DeleteBreaker", self._stub.DeleteBreaker, request, timeout)

    def enable_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.EnableBreakerRequest, breaker_id=breaker_id)
        return CircuitBreaker.from_proto(self._unary("EnableBreaker", self._stub.EnableBreaker, request,
                                                     timeout).breaker)

    def disable_breaker(self, breaker_id: str, *, timeout: float | None = None) -> CircuitBreaker:
        request = req.message(ad.DisableBreakerRequest, breaker_id=breaker_id)
        return CircuitBreaker.from_proto(self._unary("DisableBreaker", self._stub.DisableBreaker, request,
                                                     timeout).breaker)

    def list_breaker_events(self, *, breaker_id: str = "", account_id: str = "", page_size: int = 0,
                            page_token: str = "", timeout: float | None = None) -> Page[BreakerEvent]:
        """Events of one breaker, or of every breaker of `account_id`, newest first."""
        request = req.list_breaker_events(breaker_id, account_id, page_size, page_token)
        resp = self._unary("ListBreakerEvents", self._stub.ListBreakerEvents, request, timeout)
        return Page(tuple(BreakerEvent.from_proto(e) for e in resp.events), resp.next_page_token)

    def log_breaker_event(self, breaker_id: str, action_taken: str, *, trader_id: str = "",
                          triggered_values: Mapping[str, Any] | None = None,
                          action_result: Mapping[str, Any] | None = None,
                          timeout: float | None = None) -> BreakerEvent:
        """Record an event of an existing breaker raised by another system (ETRMS log_event); never retried."""
        request = req.log_breaker_event(breaker_id, action_taken, trader_id, triggered_values, action_result)
        resp = self._unary("LogBreakerEvent", self._stub.LogBreakerEvent, request, timeout)
        return BreakerEvent.from_proto(resp.event)

    # ---- flags and kill switch ------------------------------------------------------------------

    def get_feature_flags(self, *, timeout: float | None = None) -> FeatureFlags:
        resp = self._unary("GetFeatureFlags", self._stub.GetFeatureFlags, ad.GetFeatureFlagsRequest(), timeout)
        return FeatureFlags.from_proto(resp.flags)

    def set_feature_flags(self, *, enable_risk_enforcement: bool | None = None,
                          enable_persistence: bool | None = None, timeout: float | None = None) -> FeatureFlags:
        """Change the flags given (None leaves one as it is); returns the flags in force."""
        request = req.set_feature_flags(enable_risk_enforcement, enable_persistence)
        return FeatureFlags.from_proto(self._unary("SetFeatureFlags", self._stub.SetFeatureFlags, request,
                                                   timeout).flags)

    @overload
    def pause_trading(self, trader_id: str, account_id: str, *, trading_state: str = ...,
                      duration: timedelta | float | None = ..., reason: str = ..., all_accounts: bool = ...,
                      timeout: float | None = ...) -> RiskState: ...

    @overload
    def pause_trading(self, trader_id: None, account_id: str = ..., *, trading_state: str = ...,
                      duration: timedelta | float | None = ..., reason: str = ..., all_accounts: bool = ...,
                      timeout: float | None = ...) -> ScopePause: ...

    def pause_trading(self, trader_id: str | None, account_id: str = "", *, trading_state: str = "HALTED",
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
        resp = self._unary("PauseTrading", self._stub.PauseTrading, request, timeout)
        if req.is_scope(trader_id):
            return ScopePause.from_response(resp)
        return RiskState.from_proto(resp.state)

    @overload
    def resume_trading(self, trader_id: str, account_id: str, *, all_accounts: bool = ...,
                       timeout: float | None = ...) -> RiskState: ...

    @overload
    def resume_trading(self, trader_id: None, account_id: str = ..., *, all_accounts: bool = ...,
                       timeout: float | None = ...) -> int: ...

    def resume_trading(self, trader_id: str | None, account_id: str = "", *, all_accounts: bool = False,
                       timeout: float | None = None) -> RiskState | int:
        """Lift a pause. A trader (`trader_id` given): any of its pauses, manual or automatic; returns its
        RiskState, as before. An account (`trader_id` None or "", `account_id` given) or every account
        (`all_accounts=True`): lifts that scope's pause (not the traders' own pauses) and returns the
        control-state version of the change (an int)."""
        request = req.resume_trading(trader_id, account_id, all_accounts)
        resp = self._unary("ResumeTrading", self._stub.ResumeTrading, request, timeout)
        if req.is_scope(trader_id):
            return int(resp.control_state_version)
        return RiskState.from_proto(resp.state)

    def list_bindings(self, account_id: str = "", *, timeout: float | None = None) -> tuple[Binding, ...]:
        """Which account each known trader id is bound to (only `account_id`'s traders when given)."""
        request = ad.ListBindingsRequest(account_id=account_id)
        resp = self._unary("ListBindings", self._stub.ListBindings, request, timeout)
        return tuple(Binding.from_proto(b) for b in resp.bindings)

    def rebind_trader(self, trader_id: str, account_id: str, *, reason: str = "",
                      timeout: float | None = None) -> RiskState:
        """Bind `trader_id` to `account_id` with a fresh state (audited); never retried: a repeat resets again."""
        request = ad.RebindTraderRequest(trader_id=trader_id, account_id=account_id, reason=reason)
        resp = self._unary("RebindTrader", self._stub.RebindTrader, request, timeout)
        return RiskState.from_proto(resp.state)

    def list_risk_state_history(self, trader_id: str, account_id: str, *, start_time: datetime | None = None,
                                end_time: datetime | None = None, page_size: int = 0, page_token: str = "",
                                timeout: float | None = None) -> Page[HistoryEntry]:
        """The trader's audit trail in [start_time, end_time), oldest first."""
        request = req.list_history(trader_id, account_id, start_time, end_time, page_size, page_token)
        resp = self._unary("ListRiskStateHistory", self._stub.ListRiskStateHistory, request, timeout)
        return Page(tuple(HistoryEntry.from_proto(e) for e in resp.entries), resp.next_page_token)

    def restore_risk_state(self, trader_id: str, account_id: str, at: datetime, *, reason: str = "",
                           dry_run: bool = True, timeout: float | None = None) -> RestoreResult:
        """Put the trader back to the newest history row recorded at or before `at` (AdminService.RestoreRiskState,
        admin token). Dry run by default: the answer shows the state it would restore and nothing changes; with
        `dry_run=False` (a `reason` is required) the restore is applied and audited. Never retried."""
        request = req.restore_risk_state(trader_id, account_id, at, reason, dry_run)
        resp = self._unary("RestoreRiskState", self._stub.RestoreRiskState, request, timeout)
        return RestoreResult.from_proto(resp)

    def list_risk_states(self, account_id: str, trading_state: str | None = None, page_size: int = 0,
                         page_token: str = "", *, timeout: float | None = None) -> Page[RiskStateEntry]:
        """Every trader of `account_id` with its state, owner sidecar and freshness, ordered by trader_id
        (`trading_state` "ACTIVE" / "REDUCING" / "HALTED" keeps only those; None every state). `page_size` 0
        means the server's default (100, at most 1000); pass `next_page_token` back for the next page."""
        request = req.list_risk_states(account_id, trading_state, page_size, page_token)
        resp = self._unary("ListRiskStates", self._stub.ListRiskStates, request, timeout)
        return Page(tuple(RiskStateEntry.from_proto(e) for e in resp.entries), resp.next_page_token)
