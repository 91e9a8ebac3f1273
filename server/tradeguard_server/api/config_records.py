"""RiskConfiguration protobuf <-> ConfigRecord (the configuration service's domain record), and its fields."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tradeguard.v1 import types_pb2 as t

from ..engine.types import TradingState
from ..services.configs import Configuration
from ..store.records import ConfigRecord, SymbolConfigRecord, TradingWindowRecord
from . import convert

PERCENT_FIELDS = (
    "daily_max_drawdown_percentage",
    "weekly_max_drawdown_percentage",
    "monthly_max_drawdown_percentage",
    "max_drawdown_percentage",
    "max_position_size_percentage",
    "risk_per_trade_percentage",
    "max_correlated_exposure_percentage",
    "position_max_drawdown_percentage",
    "price_collar_percentage",
    "account_daily_loss_percentage",
    "account_max_drawdown_percentage",
)
SYMBOL_PERCENT_FIELDS = (
    "max_position_size_percentage",
    "position_max_drawdown_percentage",
    "risk_per_trade_percentage",
    "price_collar_percentage",
)
OPTIONAL_FIELDS = (
    *PERCENT_FIELDS,
    "stop_trading_minutes",
    "consecutive_loss_threshold",
    "cooling_off_period_minutes",
    "volatility_adjustment_factor",
    "position_trailing_stop_multiplier",
    "max_order_notional",
    "max_orders_per_window",
    "order_rate_window_seconds",
    "max_order_quantity",
    "max_position_quantity",
    "max_open_orders",
    "reference_price_max_age_seconds",
    "duplicate_order_window_ms",
    "max_daily_notional",
    "max_daily_orders",
    "max_fills_per_window",
    "fill_window_seconds",
    "pending_order_ttl_seconds",
    "account_max_gross_exposure",
    "account_max_net_exposure",
    "heartbeat_timeout_seconds",
)
SYMBOL_OPTIONAL_FIELDS = (
    *SYMBOL_PERCENT_FIELDS, "max_leverage", "max_order_quantity", "max_position_quantity", "max_open_orders",
)


def has(msg: Message, name: str) -> bool:
    """HasField by a field name held in a variable (typed loosely on purpose)."""
    return msg.HasField(name)


def regime_thresholds(cfg: t.RiskConfiguration) -> dict[str, float]:
    return {k: float(x) for k, x in MessageToDict(cfg.market_regime_thresholds).items()} if cfg.HasField(
        "market_regime_thresholds") else {}


def to_record(cfg: t.RiskConfiguration) -> ConfigRecord:
    values: dict[str, Any] = {name: getattr(cfg, name) if has(cfg, name) else None for name in OPTIONAL_FIELDS}
    return ConfigRecord(
        account_id=cfg.account_id,
        config_id=cfg.config_id,
        is_active=cfg.is_active if cfg.HasField("is_active") else True,  # absent: active (the seed's default)
        market_regime_thresholds=regime_thresholds(cfg),
        correlation_groups={g.name: list(g.symbols) for g in cfg.correlation_groups},
        allowed_symbols=list(cfg.allowed_symbols),
        blocked_symbols=list(cfg.blocked_symbols),
        trading_windows=[TradingWindowRecord(tuple(w.weekdays), w.start, w.end) for w in cfg.trading_windows],
        symbol_configs=[
            SymbolConfigRecord(
                symbol=sc.symbol,
                **{name: getattr(sc, name) if has(sc, name) else None for name in SYMBOL_OPTIONAL_FIELDS},
            )
            for sc in cfg.symbol_configs
        ],
        created_at=convert.to_seconds(cfg.created_at) if cfg.HasField("created_at") else None,
        updated_at=convert.to_seconds(cfg.updated_at) if cfg.HasField("updated_at") else None,
        heartbeat_pause_state=TradingState(cfg.heartbeat_pause_state).name
        if cfg.HasField("heartbeat_pause_state") else None,
        **values,
    )


def from_record(rec: ConfigRecord, regimes_given: bool = False) -> t.RiskConfiguration:
    """`regimes_given`: answer an empty market_regime_thresholds as set (an empty Struct) rather than absent."""
    cfg = t.RiskConfiguration(account_id=rec.account_id, config_id=rec.config_id, is_active=rec.is_active)
    for name in OPTIONAL_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            setattr(cfg, name, value)
    if rec.heartbeat_pause_state is not None:
        cfg.heartbeat_pause_state = TradingState[rec.heartbeat_pause_state].value  # type: ignore[assignment]
    if rec.market_regime_thresholds or regimes_given:
        cfg.market_regime_thresholds.SetInParent()
        cfg.market_regime_thresholds.update(rec.market_regime_thresholds)
    for name, symbols in rec.correlation_groups.items():
        cfg.correlation_groups.add(name=name, symbols=symbols)
    cfg.allowed_symbols.extend(rec.allowed_symbols)
    cfg.blocked_symbols.extend(rec.blocked_symbols)
    for w in rec.trading_windows:
        cfg.trading_windows.add(weekdays=w.weekdays, start=w.start, end=w.end)
    for sc in rec.symbol_configs:
        msg = cfg.symbol_configs.add(symbol=sc.symbol)
        for name in SYMBOL_OPTIONAL_FIELDS:
            value = getattr(sc, name)
            if value is not None:
                setattr(msg, name, value)
    if rec.created_at is not None:
        cfg.created_at.CopyFrom(convert.ts(rec.created_at))
    if rec.updated_at is not None:
        cfg.updated_at.CopyFrom(convert.ts(rec.updated_at))
    return cfg


def config_msg(c: Configuration) -> t.RiskConfiguration:
    return from_record(c.record, c.regimes_given)
