"""RiskConfiguration: validation (field violations) and resolution into engine Limits."""

from __future__ import annotations

import math

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tradeguard.v1 import types_pb2 as t

from ..engine.limits import Limits, SymbolLimits
from .validation import Violations, symbol_key

MAX_SYMBOL_CONFIGS = 1000
MAX_GROUPS = 100
MAX_MINUTES = 525_600  # a year
PERCENT_FIELDS = (
    "daily_max_drawdown_percentage",
    "weekly_max_drawdown_percentage",
    "monthly_max_drawdown_percentage",
    "max_drawdown_percentage",
    "max_position_size_percentage",
    "risk_per_trade_percentage",
    "max_correlated_exposure_percentage",
    "position_max_drawdown_percentage",
)
SYMBOL_PERCENT_FIELDS = (
    "max_position_size_percentage",
    "position_max_drawdown_percentage",
    "risk_per_trade_percentage",
)
REGIME_KEYS = ("high", "extreme")


def has(msg: Message, name: str) -> bool:
    """HasField by a field name held in a variable (typed loosely on purpose)."""
    return msg.HasField(name)


def _percent(v: Violations, field: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 < value <= 100.0:
        v.add(field, f"must be a percentage in (0, 100], got {value:g}")


def _int_range(v: Violations, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        v.add(field, f"must be in [{low}, {high}], got {value}")


def regime_thresholds(cfg: t.RiskConfiguration) -> dict[str, float]:
    return {k: float(x) for k, x in MessageToDict(cfg.market_regime_thresholds).items()} if cfg.HasField(
        "market_regime_thresholds") else {}


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
    """Resolve a (validated) configuration over the settings' defaults, once per change."""

    def opt(name: str, default: float | None) -> float | None:
        return float(getattr(cfg, name)) if has(cfg, name) else default

    regimes = regime_thresholds(cfg)
    return Limits(
        config_id=cfg.config_id,
        daily_max_drawdown_percentage=opt("daily_max_drawdown_percentage", defaults.daily_max_drawdown_percentage),
        weekly_max_drawdown_percentage=opt("weekly_max_drawdown_percentage",
                                           defaults.weekly_max_drawdown_percentage),
        monthly_max_drawdown_percentage=opt("monthly_max_drawdown_percentage",
                                            defaults.monthly_max_drawdown_percentage),
        max_drawdown_percentage=opt("max_drawdown_percentage", defaults.max_drawdown_percentage),
        stop_trading_minutes=cfg.stop_trading_minutes if cfg.HasField("stop_trading_minutes")
        else defaults.stop_trading_minutes,
        breach_state=defaults.breach_state,
        consecutive_loss_threshold=cfg.consecutive_loss_threshold if cfg.HasField("consecutive_loss_threshold")
        else defaults.consecutive_loss_threshold,
        cooling_off_period_minutes=cfg.cooling_off_period_minutes if cfg.HasField("cooling_off_period_minutes")
        else defaults.cooling_off_period_minutes,
        max_position_size_percentage=opt("max_position_size_percentage", defaults.max_position_size_percentage),
        risk_per_trade_percentage=opt("risk_per_trade_percentage", defaults.risk_per_trade_percentage),
        max_correlated_exposure_percentage=opt("max_correlated_exposure_percentage",
                                               defaults.max_correlated_exposure_percentage),
        volatility_adjustment_factor=opt("volatility_adjustment_factor", defaults.volatility_adjustment_factor)
        or 1.0,
        volatility_high=regimes.get("high"),
        volatility_extreme=regimes.get("extreme"),
        position_max_drawdown_percentage=opt("position_max_drawdown_percentage",
                                             defaults.position_max_drawdown_percentage),
        position_trailing_stop_multiplier=opt("position_trailing_stop_multiplier",
                                              defaults.position_trailing_stop_multiplier),
        max_order_notional=opt("max_order_notional", defaults.max_order_notional),
        max_orders_per_window=cfg.max_orders_per_window if cfg.HasField("max_orders_per_window")
        else defaults.max_orders_per_window,
        order_rate_window_seconds=cfg.order_rate_window_seconds if cfg.HasField("order_rate_window_seconds")
        else defaults.order_rate_window_seconds,
        correlation_groups=tuple((g.name, frozenset(symbol_key(s) for s in g.symbols)) for g in cfg.correlation_groups),
        symbols={
            symbol_key(sc.symbol): SymbolLimits(
                symbol=symbol_key(sc.symbol),
                max_position_size_percentage=sc.max_position_size_percentage
                if sc.HasField("max_position_size_percentage") else None,
                max_leverage=sc.max_leverage if sc.HasField("max_leverage") else None,
                position_max_drawdown_percentage=sc.position_max_drawdown_percentage
                if sc.HasField("position_max_drawdown_percentage") else None,
                risk_per_trade_percentage=sc.risk_per_trade_percentage
                if sc.HasField("risk_per_trade_percentage") else None,
            )
            for sc in cfg.symbol_configs
        },
    )
