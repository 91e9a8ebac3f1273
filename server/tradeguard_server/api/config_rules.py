"""RiskConfiguration: validation (field violations); `limits_from_config` for a message's engine Limits."""

from __future__ import annotations

import math

from tradeguard.v1 import types_pb2 as t

from ..engine.limits import Limits
from ..services.configs import limits_for
from .config_records import PERCENT_FIELDS, SYMBOL_PERCENT_FIELDS, has, to_record
from .validation import Violations, symbol_key

MAX_SYMBOL_CONFIGS = 1000
MAX_GROUPS = 100
MAX_MINUTES = 525_600  # a year
REGIME_KEYS = ("high", "extreme")


def _percent(v: Violations, field: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 < value <= 100.0:
        v.add(field, f"must be a percentage in (0, 100], got {value:g}")


def _int_range(v: Violations, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        v.add(field, f"must be in [{low}, {high}], got {value}")


def normalize_names(cfg: t.RiskConfiguration) -> None:
    """Symbols of `symbol_configs` and `correlation_groups` upper-case, in place (README "Names"), so that what
    is stored and answered is what the engine compares."""
    for sc in cfg.symbol_configs:
        sc.symbol = symbol_key(sc.symbol)
    for group in cfg.correlation_groups:
        group.symbols[:] = [symbol_key(s) for s in group.symbols]


def validate_config(v: Violations, cfg: t.RiskConfiguration, prefix: str = "config") -> None:
    """Every field of a configuration (adds to `v`); normalizes its symbols first (`normalize_names`), so two
    spellings of one symbol are duplicates."""
    normalize_names(cfg)
    v.identifier(f"{prefix}.account_id", cfg.account_id)
    v.identifier(f"{prefix}.config_id", cfg.config_id)
    for name in PERCENT_FIELDS:
        if has(cfg, name):
            _percent(v, f"{prefix}.{name}", getattr(cfg, name))
    for name in ("stop_trading_minutes", "cooling_off_period_minutes"):
        if has(cfg, name):
            _int_range(v, f"{prefix}.{name}", getattr(cfg, name), 0, MAX_MINUTES)
    if cfg.HasField("consecutive_loss_threshold"):
        _int_range(v, f"{prefix}.consecutive_loss_threshold", cfg.consecutive_loss_threshold, 0, 1000)
    if cfg.HasField("max_orders_per_window"):
        _int_range(v, f"{prefix}.max_orders_per_window", cfg.max_orders_per_window, 1, 1_000_000)
    if cfg.HasField("order_rate_window_seconds"):
        _int_range(v, f"{prefix}.order_rate_window_seconds", cfg.order_rate_window_seconds, 1, 86_400)
    if cfg.HasField("volatility_adjustment_factor"):
        factor = cfg.volatility_adjustment_factor
        if not math.isfinite(factor) or not 0.0 < factor <= 1.0:
            v.add(f"{prefix}.volatility_adjustment_factor", f"must be in (0, 1], got {factor:g}")
    if cfg.HasField("position_trailing_stop_multiplier"):
        v.number(f"{prefix}.position_trailing_stop_multiplier", cfg.position_trailing_stop_multiplier,
                 min_value=0.0, max_value=1000.0)
    if cfg.HasField("max_order_notional"):
        v.number(f"{prefix}.max_order_notional", cfg.max_order_notional, min_value=0.0, min_exclusive=True)
    _validate_regimes(v, cfg, prefix)
    _validate_groups(v, cfg, prefix)
    _validate_symbols(v, cfg, prefix)


def _validate_regimes(v: Violations, cfg: t.RiskConfiguration, prefix: str) -> None:
    field = f"{prefix}.market_regime_thresholds"
    if not cfg.HasField("market_regime_thresholds"):
        return
    values: dict[str, float] = {}
    for key, value in cfg.market_regime_thresholds.fields.items():
        if key not in REGIME_KEYS:
            v.add(f"{field}.{key}", f"unknown key; expected {' and/or '.join(REGIME_KEYS)}")
            continue
        if value.WhichOneof("kind") != "number_value" or not math.isfinite(value.number_value) \
                or value.number_value <= 0:
            v.add(f"{field}.{key}", "must be a number > 0")
            continue
        values[key] = value.number_value
    if "high" in values and "extreme" in values and values["extreme"] <= values["high"]:
        v.add(f"{field}.extreme", "must be greater than high")


def _validate_groups(v: Violations, cfg: t.RiskConfiguration, prefix: str) -> None:
    if len(cfg.correlation_groups) > MAX_GROUPS:
        v.add(f"{prefix}.correlation_groups", f"at most {MAX_GROUPS} groups")
        return
    names: set[str] = set()
    member_of: dict[str, str] = {}
    for i, group in enumerate(cfg.correlation_groups):
        field = f"{prefix}.correlation_groups[{i}]"
        v.identifier(f"{field}.name", group.name)
        if group.name in names:
            v.add(f"{field}.name", f"duplicate group {group.name!r}")
        names.add(group.name)
        if not group.symbols:
            v.add(f"{field}.symbols", "at least one symbol")
        for j, symbol in enumerate(group.symbols):
            v.identifier(f"{field}.symbols[{j}]", symbol)
            if symbol in member_of and member_of[symbol] != group.name:
                v.add(f"{field}.symbols[{j}]", f"{symbol} is already in group {member_of[symbol]!r}")
            member_of[symbol] = group.name


def _validate_symbols(v: Violations, cfg: t.RiskConfiguration, prefix: str) -> None:
    if len(cfg.symbol_configs) > MAX_SYMBOL_CONFIGS:
        v.add(f"{prefix}.symbol_configs", f"at most {MAX_SYMBOL_CONFIGS} symbol configs")
        return
    seen: set[str] = set()
    for i, sc in enumerate(cfg.symbol_configs):
        field = f"{prefix}.symbol_configs[{i}]"
        v.identifier(f"{field}.symbol", sc.symbol)
        if sc.symbol in seen:
            v.add(f"{field}.symbol", f"duplicate symbol {sc.symbol!r}")
        seen.add(sc.symbol)
        for name in SYMBOL_PERCENT_FIELDS:
            if has(sc, name):
                _percent(v, f"{field}.{name}", getattr(sc, name))
        if sc.HasField("max_leverage"):
            lev = sc.max_leverage
            if not math.isfinite(lev) or not 1.0 <= lev <= 1000.0:
                v.add(f"{field}.max_leverage", f"must be in [1, 1000], got {lev:g}")


def limits_from_config(cfg: t.RiskConfiguration, defaults: Limits) -> Limits:
    """The engine limits of a (validated) configuration message (services.configs.limits_for)."""
    return limits_for(to_record(cfg), defaults)
