"""Request builders shared by the sync and async clients (pure: no I/O).

A builder refuses a bad argument with InvalidArgumentError (a TradeGuardError, also a ValueError) naming
the field, like the server's INVALID_ARGUMENT, so a caller catches one family of errors.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from google.protobuf.field_mask_pb2 import FieldMask

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ._errors import InvalidArgumentError
from ._types import (
    CircuitBreaker,
    Order,
    Position,
    PriceMark,
    RiskConfig,
    datetime_to_ts,
    order_status_value,
    seconds_to_duration,
    side_value,
    trading_state_value,
)

__all__ = [
    "breaker_msg",
    "can_trade",
    "config_msg",
    "get_breaker_by_name",
    "list_breaker_events",
    "list_history",
    "list_risk_states",
    "log_breaker_event",
    "message",
    "new_client_order_id",
    "pause_trading",
    "report_equity",
    "report_order",
    "report_positions",
    "report_prices",
    "report_trade",
    "restore_risk_state",
    "resume_trading",
    "save_config",
    "set_feature_flags",
    "update_breaker",
]

OrderLike = Order | t.OrderIntent
PositionLike = Position | t.Position
PriceLike = PriceMark | t.PriceMark
PricesLike = Iterable[PriceLike] | Mapping[str, float]
ConfigLike = RiskConfig | t.RiskConfiguration
BreakerLike = CircuitBreaker | t.CircuitBreaker


P = ParamSpec("P")
R = TypeVar("R")
FIELD = re.compile(r"^([A-Za-z_][\w.]*): ")


def checked(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the ValueError / TypeError / OverflowError of a bad argument into InvalidArgumentError."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except InvalidArgumentError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            text = str(exc)
            match = FIELD.match(text)
            raise InvalidArgumentError(text, field=match.group(1) if match else "") from exc

    return wrapper


M = TypeVar("M")


@checked
def message(cls: Callable[..., M], **fields: object) -> M:
    """`cls(**fields)` for a request built inline; a field of the wrong type raises InvalidArgumentError."""
    return cls(**fields)


def new_client_order_id() -> str:
    """A fresh client_order_id: "tg-" and 32 hex digits (within the 1-128 [A-Za-z0-9._:@/-] the server takes)."""
    return f"tg-{uuid.uuid4().hex}"


@checked
def can_trade(trader_id: str, account_id: str, order: OrderLike | None) -> rs.CanTradeRequest:
    """The request; an order without client_order_id gets a fresh one, so every retry of this request repeats it."""
    req = rs.CanTradeRequest(trader_id=trader_id, account_id=account_id)
    if order is not None:
        req.order.CopyFrom(order.to_proto() if isinstance(order, Order) else order)
        if not req.order.client_order_id:
            req.order.client_order_id = new_client_order_id()
    return req


@checked
def report_equity(trader_id: str, account_id: str, equity: float,
                  observed_at: datetime | None) -> rs.ReportEquityRequest:
    req = rs.ReportEquityRequest(trader_id=trader_id, account_id=account_id, equity=equity)
    if observed_at is not None:
        req.observed_at.CopyFrom(datetime_to_ts(observed_at, "observed_at"))
    return req


@checked
def report_trade(trader_id: str, account_id: str, *, trade_id: str, symbol: str, side: str, realized_pnl: float,
                 exchange: str, closed_at: datetime | None) -> rs.ReportTradeRequest:
    req = rs.ReportTradeRequest(trader_id=trader_id, account_id=account_id, trade_id=trade_id, symbol=symbol,
                                exchange=exchange, side=side_value(side), realized_pnl=realized_pnl)
    if closed_at is not None:
        req.closed_at.CopyFrom(datetime_to_ts(closed_at, "closed_at"))
    return req


@checked
def report_positions(trader_id: str, account_id: str, positions: Iterable[PositionLike]) -> rs.ReportPositionsRequest:
    return rs.ReportPositionsRequest(
        trader_id=trader_id, account_id=account_id,
        positions=[p.to_proto() if isinstance(p, Position) else p for p in positions],
    )


@checked
def report_order(trader_id: str, account_id: str, client_order_id: str, status: str, filled_quantity: float,
                 average_price: float) -> rs.ReportOrderRequest:
    return rs.ReportOrderRequest(trader_id=trader_id, account_id=account_id, client_order_id=client_order_id,
                                 status=order_status_value(status), filled_quantity=filled_quantity,
                                 average_price=average_price)


@checked
def report_prices(trader_id: str, account_id: str, prices: PricesLike) -> rs.ReportPricesRequest:
    """`prices`: PriceMarks (or messages), or a {symbol: price} mapping (observed now, no exchange)."""
    if isinstance(prices, Mapping):
        marks = [t.PriceMark(symbol=symbol, price=price) for symbol, price in prices.items()]
    else:
        marks = [p.to_proto() if isinstance(p, PriceMark) else p for p in prices]
    return rs.ReportPricesRequest(trader_id=trader_id, account_id=account_id, prices=marks)


@checked
def config_msg(config: ConfigLike) -> t.RiskConfiguration:
    return config.to_proto() if isinstance(config, RiskConfig) else config


@checked
def breaker_msg(breaker: BreakerLike) -> t.CircuitBreaker:
    return breaker.to_proto() if isinstance(breaker, CircuitBreaker) else breaker


def _mask(update_mask: Iterable[str] | str | None) -> FieldMask | None:
    """update_mask as a FieldMask: field names (snake_case, as the proto names them), or one comma-separated
    string. None = no mask (the whole message replaces the stored one)."""
    if update_mask is None:
        return None
    paths = update_mask.split(",") if isinstance(update_mask, str) else list(update_mask)
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path.strip():
            raise InvalidArgumentError(f"update_mask[{i}]: expected a field name, got {path!r}", field="update_mask")
    return FieldMask(paths=[p.strip() for p in paths])


@checked
def save_config(config: ConfigLike, update_mask: Iterable[str] | str | None) -> ad.SaveConfigRequest:
    request = ad.SaveConfigRequest(config=config_msg(config))
    mask = _mask(update_mask)
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    return request


@checked
def update_breaker(breaker_id: str, breaker: BreakerLike,
                   update_mask: Iterable[str] | str | None) -> ad.UpdateBreakerRequest:
    request = ad.UpdateBreakerRequest(breaker_id=breaker_id, breaker=breaker_msg(breaker))
    mask = _mask(update_mask)
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    return request


@checked
def get_breaker_by_name(account_id: str, name: str) -> ad.GetBreakerRequest:
    if not account_id or not name:
        raise InvalidArgumentError("account_id and name: both required to find a breaker by name",
                                   field="account_id" if not account_id else "name")
    return ad.GetBreakerRequest(account_id=account_id, name=name)


@checked
def list_breaker_events(breaker_id: str, account_id: str, page_size: int,
                        page_token: str) -> ad.ListBreakerEventsRequest:
    return ad.ListBreakerEventsRequest(breaker_id=breaker_id, account_id=account_id, page_size=page_size,
                                       page_token=page_token)


@checked
def log_breaker_event(breaker_id: str, action_taken: str, trader_id: str, triggered_values: Mapping[str, Any] | None,
                      action_result: Mapping[str, Any] | None) -> ad.LogBreakerEventRequest:
    request = ad.LogBreakerEventRequest(breaker_id=breaker_id, action_taken=action_taken, trader_id=trader_id)
    if triggered_values:
        request.triggered_values.update(dict(triggered_values))
    if action_result:
        request.action_result.update(dict(action_result))
    return request


@checked
def set_feature_flags(enable_risk_enforcement: bool | None,
                      enable_persistence: bool | None) -> ad.SetFeatureFlagsRequest:
    flags = t.FeatureFlags()
    if enable_risk_enforcement is not None:
        flags.enable_risk_enforcement = enable_risk_enforcement
    if enable_persistence is not None:
        flags.enable_persistence = enable_persistence
    return ad.SetFeatureFlagsRequest(flags=flags)


@checked
def pause_trading(trader_id: str | None, account_id: str, trading_state: str, duration: timedelta | float | None,
                  reason: str, all_accounts: bool = False) -> ad.PauseTradingRequest:
    """A trader's pause; with `trader_id` None or empty the account's (or, `all_accounts`, every account's)."""
    req = ad.PauseTradingRequest(trader_id=trader_id or "", account_id=account_id,
                                 trading_state=trading_state_value(trading_state), reason=reason,
                                 all_accounts=all_accounts)
    if duration is not None:
        req.duration.CopyFrom(seconds_to_duration(duration, "duration"))
    return req


@checked
def list_history(trader_id: str, account_id: str, start_time: datetime | None, end_time: datetime | None,
                 page_size: int, page_token: str) -> ad.ListRiskStateHistoryRequest:
    req = ad.ListRiskStateHistoryRequest(trader_id=trader_id, account_id=account_id, page_size=page_size,
                                         page_token=page_token)
    if start_time is not None:
        req.start_time.CopyFrom(datetime_to_ts(start_time, "start_time"))
    if end_time is not None:
        req.end_time.CopyFrom(datetime_to_ts(end_time, "end_time"))
    return req


@checked
def resume_trading(trader_id: str | None, account_id: str, all_accounts: bool) -> ad.ResumeTradingRequest:
    return ad.ResumeTradingRequest(trader_id=trader_id or "", account_id=account_id, all_accounts=all_accounts)


def is_scope(trader_id: str | None) -> bool:
    """True when a pause / resume names no trader: the account (or every-account) scope."""
    return not trader_id


@checked
def list_risk_states(account_id: str, trading_state: str | None, page_size: int,
                     page_token: str) -> ad.ListRiskStatesRequest:
    """`trading_state` None means every state; else "ACTIVE", "REDUCING" or "HALTED"."""
    req = ad.ListRiskStatesRequest(account_id=account_id, page_size=page_size, page_token=page_token)
    if trading_state is not None:
        req.trading_state = trading_state_value(trading_state)
    return req


@checked
def restore_risk_state(trader_id: str, account_id: str, at: datetime, reason: str,
                       dry_run: bool) -> ad.RestoreRiskStateRequest:
    req = ad.RestoreRiskStateRequest(trader_id=trader_id, account_id=account_id, reason=reason, dry_run=dry_run)
    req.at.CopyFrom(datetime_to_ts(at, "at"))
    return req
