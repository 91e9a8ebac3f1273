"""Risk configurations: every account's named configurations; the active one's limits are enforced.

Write-through: the store commits first; only then does the in-memory copy (and the engine's limits) change,
so a failed write never leaves the sidecar enforcing something the store does not hold. Without a database
(database_url=memory) nothing is written and the timestamps are set here. Saving or deleting the active
configuration re-checks the account's traders at once (`RiskEngine.apply_limits`, which tells the engine's
listeners, watchers included).

Errors: `NotFound` (no such configuration), `StoreUnavailable` (store/errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..cluster.changes import ControlChange
from ..engine.engine import RiskEngine
from ..engine.limits import Limits, SymbolLimits
from ..engine.types import TradingState, TradingWindow
from ..store.errors import NotFound
from ..store.protocol import ConfigRepository
from ..store.records import ConfigRecord, TradingWindowRecord

log = logging.getLogger("tradeguard.admin")
# (kind, account_id, payload) -> the control_changes row recording a write (cluster.plane.ControlPlane.record)
ChangeRecorder = Callable[[str, str, dict[str, Any]], ControlChange]


@dataclass(frozen=True, slots=True)
class Configuration:
    """A configuration as held: its record, and whether an empty `market_regime_thresholds` was given (answered
    as given rather than absent). Only memory keeps that: the store does not hold it, so a configuration saved
    to or loaded from the store answers an empty map as absent."""

    record: ConfigRecord
    regimes_given: bool = False


def minute_of_day(hhmm: str) -> int:
    """Minutes since midnight of a validated "HH:MM" ("24:00" is 1440)."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def trading_window(w: TradingWindowRecord) -> TradingWindow:
    return TradingWindow(frozenset(w.weekdays), minute_of_day(w.start), minute_of_day(w.end))


def limits_for(cfg: ConfigRecord, defaults: Limits) -> Limits:
    """Resolve a (validated) configuration over the settings' defaults, once per change. Symbols upper-case
    (README "Names"): one stored before names were normalized still applies."""

    def pick(value: float | None, default: float | None) -> float | None:
        return float(value) if value is not None else default

    def whole(value: int | None, default: int) -> int:
        return value if value is not None else default

    def some(value: int | None, default: int | None) -> int | None:
        return value if value is not None else default

    regimes = cfg.market_regime_thresholds
    return Limits(
        config_id=cfg.config_id,
        daily_max_drawdown_percentage=pick(cfg.daily_max_drawdown_percentage, defaults.daily_max_drawdown_percentage),
        weekly_max_drawdown_percentage=pick(cfg.weekly_max_drawdown_percentage,
                                            defaults.weekly_max_drawdown_percentage),
        monthly_max_drawdown_percentage=pick(cfg.monthly_max_drawdown_percentage,
                                             defaults.monthly_max_drawdown_percentage),
        max_drawdown_percentage=pick(cfg.max_drawdown_percentage, defaults.max_drawdown_percentage),
        stop_trading_minutes=whole(cfg.stop_trading_minutes, defaults.stop_trading_minutes),
        breach_state=defaults.breach_state,
        consecutive_loss_threshold=whole(cfg.consecutive_loss_threshold, defaults.consecutive_loss_threshold),
        cooling_off_period_minutes=whole(cfg.cooling_off_period_minutes, defaults.cooling_off_period_minutes),
        max_position_size_percentage=pick(cfg.max_position_size_percentage, defaults.max_position_size_percentage),
        risk_per_trade_percentage=pick(cfg.risk_per_trade_percentage, defaults.risk_per_trade_percentage),
        max_correlated_exposure_percentage=pick(cfg.max_correlated_exposure_percentage,
                                                defaults.max_correlated_exposure_percentage),
        volatility_adjustment_factor=pick(cfg.volatility_adjustment_factor, defaults.volatility_adjustment_factor)
        or 1.0,
        volatility_high=regimes.get("high"),
        volatility_extreme=regimes.get("extreme"),
        position_max_drawdown_percentage=pick(cfg.position_max_drawdown_percentage,
                                              defaults.position_max_drawdown_percentage),
        position_trailing_stop_multiplier=pick(cfg.position_trailing_stop_multiplier,
                                               defaults.position_trailing_stop_multiplier),
        max_order_notional=pick(cfg.max_order_notional, defaults.max_order_notional),
        max_orders_per_window=cfg.max_orders_per_window if cfg.max_orders_per_window is not None
        else defaults.max_orders_per_window,
        order_rate_window_seconds=whole(cfg.order_rate_window_seconds, defaults.order_rate_window_seconds),
        correlation_groups=tuple((name, frozenset(s.upper() for s in symbols))
                                 for name, symbols in cfg.correlation_groups.items()),
        max_order_quantity=pick(cfg.max_order_quantity, defaults.max_order_quantity),
        max_position_quantity=pick(cfg.max_position_quantity, defaults.max_position_quantity),
        max_open_orders=some(cfg.max_open_orders, defaults.max_open_orders),
        price_collar_percentage=pick(cfg.price_collar_percentage, defaults.price_collar_percentage),
        reference_price_max_age_seconds=whole(cfg.reference_price_max_age_seconds,
                                              defaults.reference_price_max_age_seconds),
        duplicate_order_window_ms=some(cfg.duplicate_order_window_ms, defaults.duplicate_order_window_ms),
        allowed_symbols=frozenset(s.upper() for s in cfg.allowed_symbols) if cfg.allowed_symbols
        else defaults.allowed_symbols,
        blocked_symbols=frozenset(s.upper() for s in cfg.blocked_symbols) if cfg.blocked_symbols
        else defaults.blocked_symbols,
        trading_windows=tuple(trading_window(w) for w in cfg.trading_windows) if cfg.trading_windows
        else defaults.trading_windows,
        max_daily_notional=pick(cfg.max_daily_notional, defaults.max_daily_notional),
        max_daily_orders=some(cfg.max_daily_orders, defaults.max_daily_orders),
        max_fills_per_window=some(cfg.max_fills_per_window, defaults.max_fills_per_window),
        fill_window_seconds=whole(cfg.fill_window_seconds, defaults.fill_window_seconds),
        pending_order_ttl_seconds=whole(cfg.pending_order_ttl_seconds, defaults.pending_order_ttl_seconds),
        account_daily_loss_percentage=pick(cfg.account_daily_loss_percentage, defaults.account_daily_loss_percentage),
        account_max_drawdown_percentage=pick(cfg.account_max_drawdown_percentage,
                                             defaults.account_max_drawdown_percentage),
        account_max_gross_exposure=pick(cfg.account_max_gross_exposure, defaults.account_max_gross_exposure),
        account_max_net_exposure=pick(cfg.account_max_net_exposure, defaults.account_max_net_exposure),
        heartbeat_timeout_seconds=some(cfg.heartbeat_timeout_seconds, defaults.heartbeat_timeout_seconds),
        heartbeat_pause_state=TradingState[cfg.heartbeat_pause_state] if cfg.heartbeat_pause_state
        else defaults.heartbeat_pause_state,
        symbols={
            sc.symbol.upper(): SymbolLimits(
                symbol=sc.symbol.upper(),
                max_position_size_percentage=sc.max_position_size_percentage,
                max_leverage=sc.max_leverage,
                position_max_drawdown_percentage=sc.position_max_drawdown_percentage,
                risk_per_trade_percentage=sc.risk_per_trade_percentage,
                max_order_quantity=sc.max_order_quantity,
                max_position_quantity=sc.max_position_quantity,
                max_open_orders=sc.max_open_orders,
                price_collar_percentage=sc.price_collar_percentage,
            )
            for sc in cfg.symbol_configs
        },
    )


class ConfigService:
    """Holds every account's configurations in memory, mirrored in the store when there is a database."""

    def __init__(self, engine: RiskEngine, store: ConfigRepository, durable: bool) -> None:
        self.engine = engine
        self.store = store
        self.durable = durable  # False: database_url=memory, nothing is written
        self.configs: dict[str, dict[str, Configuration]] = {}
        # Makes the control_changes row appended with each write (the other sidecars re-read the account); None:
        # none is (tests of this service alone).
        self.record: ChangeRecorder | None = None

    def load(self, records: Iterable[ConfigRecord]) -> None:
        """Install the configurations loaded from the store at start (no history rows); a configuration
        already held is kept as it is."""
        for rec in records:
            self.configs.setdefault(rec.account_id, {}).setdefault(rec.config_id, Configuration(rec))
        for account_id, by_id in self.configs.items():
            active = self._active(by_id)
            if active is not None:
                self.engine.set_account_limits(account_id, limits_for(active.record, self.engine.defaults))

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, account_id: str, config_id: str) -> Configuration:
        cfg = self.configs.get(account_id, {}).get(config_id)
        if cfg is None:
            raise NotFound(f"no configuration {config_id!r} for account {account_id!r}")
        return cfg

    def in_account(self, account_id: str) -> list[Configuration]:
        """The account's configurations by id."""
        by_id = self.configs.get(account_id, {})
        return [by_id[k] for k in sorted(by_id)]

    # ---- writes ---------------------------------------------------------------------------------

    async def save(self, cfg: ConfigRecord, by: str, regimes_given: bool = False) -> tuple[Configuration, bool]:
        """Create or replace a configuration (saving an active one deactivates the others); whether it is new.
        `regimes_given`: an empty market_regime_thresholds was given (see Configuration)."""
        existing = self.configs.get(cfg.account_id, {}).get(cfg.config_id)
        if existing is not None and existing.record.created_at is not None:
            cfg = replace(cfg, created_at=existing.record.created_at)
        rec, created = await self._write(cfg)
        created = created or existing is None
        saved = Configuration(rec, regimes_given and not self.durable)
        by_id = self.configs.setdefault(rec.account_id, {})
        if rec.is_active:
            for config_id, other in by_id.items():
                if other.record.is_active:
                    by_id[config_id] = replace(other, record=replace(other.record, is_active=False))
        by_id[rec.config_id] = saved
        what = "created" if created else "updated"
        active = " (active)" if rec.is_active else ""
        log.warning("risk configuration %s/%s %s%s by %s", rec.account_id, rec.config_id, what, active, by)
        if rec.is_active or (existing is not None and existing.record.is_active):
            self._activate(rec.account_id, f"config {rec.config_id} {what}{active} by {by}")
        return saved, created

    async def delete(self, account_id: str, config_id: str, by: str) -> None:
        cfg = self.get(account_id, config_id)
        if self.durable:
            await self.store.delete_config(account_id, config_id, self._change(account_id, config_id, "deleted"))
        self.configs[account_id].pop(config_id, None)
        log.warning("risk configuration %s/%s deleted by %s", account_id, config_id, by)
        if cfg.record.is_active:
            self._activate(account_id, f"config {config_id} deleted by {by}; defaults apply")

    async def _write(self, cfg: ConfigRecord) -> tuple[ConfigRecord, bool]:
        if self.durable:
            return await self.store.save_config(cfg, self._change(cfg.account_id, cfg.config_id, "saved"))
        now = self.engine.clock.now()
        return replace(cfg, created_at=now if cfg.created_at is None else cfg.created_at, updated_at=now), False

    def _change(self, account_id: str, config_id: str, op: str) -> ControlChange | None:
        if self.record is None:
            return None
        return self.record("config", account_id, {"config_id": config_id, "op": op})

    def replace_account(self, account_id: str, records: Iterable[ConfigRecord], reason: str) -> bool:
        """Hold exactly `records` as the account's configurations (re-read from the store after another sidecar
        changed them); when the active one changed, install it and re-check the account's traders at once, with
        `reason` in their history. True when the active configuration changed."""
        before = self._active(self.configs.get(account_id, {}))
        by_id = {r.config_id: Configuration(r) for r in records if r.account_id == account_id}
        if by_id:
            self.configs[account_id] = by_id
        else:
            self.configs.pop(account_id, None)
        after = self._active(by_id)
        if (None if before is None else before.record) == (None if after is None else after.record):
            return False
        log.warning("risk configurations of account %s re-read: %s", account_id, reason)
        self._activate(account_id, reason)
        return True

    @staticmethod
    def _active(by_id: dict[str, Configuration]) -> Configuration | None:
        return next((c for c in by_id.values() if c.record.is_active), None)

    def _activate(self, account_id: str, reason: str) -> None:
        """Install the account's active limits (or the defaults) and re-check its traders at once."""
        active = self._active(self.configs.get(account_id, {}))
        limits = None if active is None else limits_for(active.record, self.engine.defaults)
        self.engine.apply_limits(account_id, limits, reason)
