"""RiskConfiguration: validation (field violations); `limits_from_config` for a message's engine Limits."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from tradeguard.v1 import types_pb2 as t

from ..engine.limits import Limits
from ..services.configs import limits_for
from .config_records import PERCENT_FIELDS, SYMBOL_PERCENT_FIELDS, has, to_record
from .validation import Violations, symbol_key

MAX_SYMBOL_CONFIGS = 1000
MAX_GROUPS = 100
MAX_MINUTES = 525_600  # a year
REGIME_KEYS = ("high", "extreme")
MAX_SYMBOL_LIST = 10_000  # allowed_symbols, blocked_symbols
MAX_WINDOWS = 100
MAX_COUNT = 1_000_000  # max_open_orders, max_fills_per_window (as max_orders_per_window)
MAX_DAILY_ORDERS = 1_000_000_000
MAX_SECONDS = 86_400  # reference_price_max_age_seconds, fill_window_seconds, pending_order_ttl_seconds
MAX_DUPLICATE_WINDOW_MS = 3_600_000
HHMM = re.compile(r"([0-9]{2}):([0-9]{2})")


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
    cfg.allowed_symbols[:] = [symbol_key(s) for s in cfg.allowed_symbols]
    cfg.blocked_symbols[:] = [symbol_key(s) for s in cfg.blocked_symbols]


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
    _validate_controls(v, cfg, prefix)
    _validate_regimes(v, cfg, prefix)
    _validate_groups(v, cfg, prefix)
    _validate_symbols(v, cfg, prefix)


def _positive(v: Violations, field: str, value: float) -> None:
    v.number(field, value, min_value=0.0, min_exclusive=True)


def _validate_controls(v: Violations, cfg: t.RiskConfiguration, prefix: str) -> None:
    """The pre-trade controls (issue 16) and the account-wide exposure limits (issue 17); price_collar_percentage
    and the account-wide loss percentages are among PERCENT_FIELDS."""
    for name in ("max_order_quantity", "max_position_quantity", "max_daily_notional", "account_max_gross_exposure",
                 "account_max_net_exposure"):
        if has(cfg, name):
            _positive(v, f"{prefix}.{name}", getattr(cfg, name))
    for name in ("max_open_orders", "max_fills_per_window"):
        if has(cfg, name):
            _int_range(v, f"{prefix}.{name}", getattr(cfg, name), 1, MAX_COUNT)
    if cfg.HasField("max_daily_orders"):
        _int_range(v, f"{prefix}.max_daily_orders", cfg.max_daily_orders, 1, MAX_DAILY_ORDERS)
    for name in ("reference_price_max_age_seconds", "fill_window_seconds", "pending_order_ttl_seconds",
                 "heartbeat_timeout_seconds"):
        if has(cfg, name):
            _int_range(v, f"{prefix}.{name}", getattr(cfg, name), 1, MAX_SECONDS)
    if cfg.HasField("duplicate_order_window_ms"):
        _int_range(v, f"{prefix}.duplicate_order_window_ms", cfg.duplicate_order_window_ms, 1,
                   MAX_DUPLICATE_WINDOW_MS)
    if cfg.HasField("heartbeat_pause_state") and cfg.heartbeat_pause_state not in (t.TRADING_STATE_HALTED,
                                                                                  t.TRADING_STATE_REDUCING):
        v.add(f"{prefix}.heartbeat_pause_state", "must be TRADING_STATE_HALTED or TRADING_STATE_REDUCING (unset: "
                                                 "HALTED)")
    allowed = _symbol_list(v, f"{prefix}.allowed_symbols", cfg.allowed_symbols)
    blocked = _symbol_list(v, f"{prefix}.blocked_symbols", cfg.blocked_symbols)
    both = allowed & blocked
    for j, symbol in enumerate(cfg.blocked_symbols):
        if symbol in both:
            v.add(f"{prefix}.blocked_symbols[{j}]", f"{symbol} is also in allowed_symbols: allow or block it")
            both.discard(symbol)
    _validate_windows(v, cfg, prefix)


def _symbol_list(v: Violations, field: str, symbols: Sequence[str]) -> set[str]:
    """Validate a list of symbols (normalized); returns the valid ones."""
    if len(symbols) > MAX_SYMBOL_LIST:
        v.add(field, f"at most {MAX_SYMBOL_LIST} symbols, got {len(symbols)}")
        return set()
    seen: set[str] = set()
    for j, symbol in enumerate(symbols):
        before = len(v.items)
        v.identifier(f"{field}[{j}]", symbol)
        if len(v.items) > before:
            continue
        if symbol in seen:
            v.add(f"{field}[{j}]", f"duplicate symbol {symbol!r}")
        seen.add(symbol)
    return seen


def _time_of_day(v: Violations, field: str, value: str, *, end: bool) -> int | None:
    """Minutes since midnight of "HH:MM" (00:00-23:59; an end may also be 24:00), or None (a violation added)."""
    match = HHMM.fullmatch(value)
    if match is not None:
        hours, minutes = int(match[1]), int(match[2])
        if (hours <= 23 and minutes <= 59) or (end and hours == 24 and minutes == 0):
            return hours * 60 + minutes
    latest = "24:00" if end else "23:59"
    v.add(field, f"must be a UTC time \"HH:MM\" from 00:00 to {latest}, got {value!r}")
    return None


def _validate_windows(v: Violations, cfg: t.RiskConfiguration, prefix: str) -> None:
    if len(cfg.trading_windows) > MAX_WINDOWS:
        v.add(f"{prefix}.trading_windows", f"at most {MAX_WINDOWS} windows, got {len(cfg.trading_windows)}")
        return
    for i, window in enumerate(cfg.trading_windows):
        field = f"{prefix}.trading_windows[{i}]"
        days: set[int] = set()
        for j, day in enumerate(window.weekdays):
            if not 1 <= day <= 7:
                v.add(f"{field}.weekdays[{j}]", f"must be an ISO weekday 1 (Monday) to 7 (Sunday), got {day}")
            elif day in days:
                v.add(f"{field}.weekdays[{j}]", f"duplicate weekday {day}")
            days.add(day)
        start = _time_of_day(v, f"{field}.start", window.start, end=False)
        end = _time_of_day(v, f"{field}.end", window.end, end=True)
        if start is not None and end is not None and start == end:
            v.add(f"{field}.end", f"must differ from start ({window.start}): an empty window allows nothing")


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
        for name in ("max_order_quantity", "max_position_quantity"):
            if has(sc, name):
                _positive(v, f"{field}.{name}", getattr(sc, name))
        if sc.HasField("max_open_orders"):
            _int_range(v, f"{field}.max_open_orders", sc.max_open_orders, 1, MAX_COUNT)


def limits_from_config(cfg: t.RiskConfiguration, defaults: Limits) -> Limits:
    """The engine limits of a (validated) configuration message (services.configs.limits_for)."""
    return limits_for(to_record(cfg), defaults)
