"""Request builders shared by the sync and async clients (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ._types import (
    CircuitBreaker,
    Order,
    Position,
    RiskConfig,
    datetime_to_ts,
    seconds_to_duration,
    side_value,
    trading_state_value,
)

__all__ = [
    "breaker_msg",
    "can_trade",
    "config_msg",
    "list_breaker_events",
    "list_history",
    "pause_trading",
    "report_equity",
    "report_positions",
    "report_trade",
    "set_feature_flags",
]

OrderLike = Order | t.OrderIntent
PositionLike = Position | t.Position
ConfigLike = RiskConfig | t.RiskConfiguration
BreakerLike = CircuitBreaker | t.CircuitBreaker


def can_trade(trader_id: str, account_id: str, order: OrderLike | None) -> rs.CanTradeRequest:
    req = rs.CanTradeRequest(trader_id=trader_id, account_id=account_id)
    if order is not None:
        req.order.CopyFrom(order.to_proto() if isinstance(order, Order) else order)
    return req


def report_equity(trader_id: str, account_id: str, equity: float,
                  observed_at: datetime | None) -> rs.ReportEquityRequest:
    req = rs.ReportEquityRequest(trader_id=trader_id, account_id=account_id, equity=equity)
    if observed_at is not None:
        req.observed_at.CopyFrom(datetime_to_ts(observed_at, "observed_at"))
    return req


def report_trade(trader_id: str, account_id: str, *, trade_id: str, symbol: str, side: str, realized_pnl: float,
                 exchange: str, closed_at: datetime | None) -> rs.ReportTradeRequest:
    req = rs.ReportTradeRequest(trader_id=trader_id, account_id=account_id, trade_id=trade_id, symbol=symbol,
                                exchange=exchange, side=side_value(side), realized_pnl=realized_pnl)
    if closed_at is not None:
        req.closed_at.CopyFrom(datetime_to_ts(closed_at, "closed_at"))
    return req


def report_positions(trader_id: str, account_id: str, positions: Iterable[PositionLike]) -> rs.ReportPositionsRequest:
    return rs.ReportPositionsRequest(
        trader_id=trader_id, account_id=account_id,
        positions=[p.to_proto() if isinstance(p, Position) else p for p in positions],
    )


def config_msg(config: ConfigLike) -> t.RiskConfiguration:
    return config.to_proto() if isinstance(config, RiskConfig) else config


def breaker_msg(breaker: BreakerLike) -> t.CircuitBreaker:
    return breaker.to_proto() if isinstance(breaker, CircuitBreaker) else breaker


def list_breaker_events(breaker_id: str, account_id: str, page_size: int,
                        page_token: str) -> ad.ListBreakerEventsRequest:
    return ad.ListBreakerEventsRequest(breaker_id=breaker_id, account_id=account_id, page_size=page_size,
                                       page_token=page_token)


def set_feature_flags(enable_risk_enforcement: bool | None,
                      enable_persistence: bool | None) -> ad.SetFeatureFlagsRequest:
    flags = t.FeatureFlags()
    if enable_risk_enforcement is not None:
        flags.enable_risk_enforcement = enable_risk_enforcement
    if enable_persistence is not None:
        flags.enable_persistence = enable_persistence
    return ad.SetFeatureFlagsRequest(flags=flags)


def pause_trading(trader_id: str, account_id: str, trading_state: str, duration: timedelta | float | None,
                  reason: str) -> ad.PauseTradingRequest:
    req = ad.PauseTradingRequest(trader_id=trader_id, account_id=account_id,
                                 trading_state=trading_state_value(trading_state), reason=reason)
    if duration is not None:
        req.duration.CopyFrom(seconds_to_duration(duration, "duration"))
    return req


def list_history(trader_id: str, account_id: str, start_time: datetime | None, end_time: datetime | None,
                 page_size: int, page_token: str) -> ad.ListRiskStateHistoryRequest:
    req = ad.ListRiskStateHistoryRequest(trader_id=trader_id, account_id=account_id, page_size=page_size,
                                         page_token=page_token)
    if start_time is not None:
        req.start_time.CopyFrom(datetime_to_ts(start_time, "start_time"))
    if end_time is not None:
        req.end_time.CopyFrom(datetime_to_ts(end_time, "end_time"))
    return req
