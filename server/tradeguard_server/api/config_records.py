"""RiskConfiguration protobuf <-> store ConfigRecord, and the store-backed ConfigPersistence."""

from __future__ import annotations

from typing import Any

from tradeguard.v1 import types_pb2 as t

from ..store.errors import StoreUnavailable, unsaved
from ..store.records import ConfigRecord, SymbolConfigRecord
from . import convert
from .config_rules import PERCENT_FIELDS, SYMBOL_PERCENT_FIELDS, has, regime_thresholds
from .errors import Unavailable

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
)
SYMBOL_OPTIONAL_FIELDS = (*SYMBOL_PERCENT_FIELDS, "max_leverage")


def to_record(cfg: t.RiskConfiguration) -> ConfigRecord:
    values: dict[str, Any] = {name: getattr(cfg, name) if has(cfg, name) else None for name in OPTIONAL_FIELDS}
    return ConfigRecord(
        account_id=cfg.account_id,
        config_id=cfg.config_id,
        is_active=cfg.is_active,
        market_regime_thresholds=regime_thresholds(cfg),
        correlation_groups={g.name: list(g.symbols) for g in cfg.correlation_groups},
        symbol_configs=[
            SymbolConfigRecord(
                symbol=sc.symbol,
                **{name: getattr(sc, name) if has(sc, name) else None for name in SYMBOL_OPTIONAL_FIELDS},
            )
            for sc in cfg.symbol_configs
        ],
        created_at=convert.to_seconds(cfg.created_at) if cfg.HasField("created_at") else None,
        updated_at=convert.to_seconds(cfg.updated_at) if cfg.HasField("updated_at") else None,
        **values,
    )


def from_record(rec: ConfigRecord, had_regimes: bool = True) -> t.RiskConfiguration:
    cfg = t.RiskConfiguration(account_id=rec.account_id, config_id=rec.config_id, is_active=rec.is_active)
    for name in OPTIONAL_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            setattr(cfg, name, value)
    if rec.market_regime_thresholds or had_regimes:
        cfg.market_regime_thresholds.update(rec.market_regime_thresholds)
    for name, symbols in rec.correlation_groups.items():
        cfg.correlation_groups.add(name=name, symbols=symbols)
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


class StoreConfigPersistence:
    """Write-through to the store; persistence off (run-time flag) falls back to memory only."""

    def __init__(self, store: Any, memory: Any, enabled: Any) -> None:
        self.store = store
        self.memory = memory
        self.enabled = enabled  # () -> bool

    async def save(self, cfg: t.RiskConfiguration) -> tuple[t.RiskConfiguration, bool]:
        if not self.enabled():
            saved: tuple[t.RiskConfiguration, bool] = await self.memory.save(cfg)
            return saved
        try:
            rec, created = await self.store.save_config(to_record(cfg))
        except StoreUnavailable as exc:
            raise Unavailable(f"{unsaved('configuration', exc)}; retry later") from None
        return from_record(rec, cfg.HasField("market_regime_thresholds")), created

    async def delete(self, account_id: str, config_id: str) -> None:
        if not self.enabled():
            return
        try:
            await self.store.delete_config(account_id, config_id)
        except StoreUnavailable as exc:
            what = "configuration deletion"
            raise Unavailable(f"{unsaved(what, exc)}; retry later") from None
