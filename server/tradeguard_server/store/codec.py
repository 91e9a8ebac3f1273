"""Records <-> table rows. Pure functions; the writer thread calls them, never the event loop.

Enums are stored by name ("REDUCING", "DAILY_LOSS_LIMIT", "BUY"): readable in SQL and independent of the
numbering. JSON holds floats exactly (Python writes the shortest repr that reads back to the same double).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..engine.snapshot import PauseRecord, StateRecord, SymbolStatsRecord
from ..engine.types import ClosedTrade, DecisionCode, Position, Side, TradingState
from .records import (
    BreakerEventRecord,
    BreakerRecord,
    ConfigRecord,
    FlagsRecord,
    HistoryRecord,
    SymbolConfigRecord,
    TradeRecord,
)

Row = dict[str, Any]
RowIn = Mapping[Any, Any]  # a dict, or SQLAlchemy's RowMapping

CONFIG_FIELDS = (
    "daily_max_drawdown_percentage", "weekly_max_drawdown_percentage", "monthly_max_drawdown_percentage",
    "max_drawdown_percentage", "stop_trading_minutes", "consecutive_loss_threshold", "cooling_off_period_minutes",
    "max_position_size_percentage", "risk_per_trade_percentage", "max_correlated_exposure_percentage",
    "volatility_adjustment_factor", "position_max_drawdown_percentage", "position_trailing_stop_multiplier",
    "max_order_notional", "max_orders_per_window", "order_rate_window_seconds",
)
SYMBOL_FIELDS = (
    "max_position_size_percentage", "max_leverage", "position_max_drawdown_percentage", "risk_per_trade_percentage",
)
FLAG_NAMES = ("enable_risk_enforcement", "enable_persistence")


def dumps(value: Any) -> str:
    """The engine's JSON serializer: compact, and NaN/Infinity rejected (PostgreSQL's json rejects them too)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def finite_json(value: Any) -> Any:
    """`value` with non-finite floats replaced by their names ("inf", "nan"), for free-form event payloads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


# ---- state ----------------------------------------------------------------------------------------

def _pause(p: PauseRecord) -> Row:
    return {"state": p.state.name, "until": p.until, "code": p.code.name, "reason": p.reason, "source": p.source,
            "since": p.since}


def _position(p: Position) -> Row:
    return {"symbol": p.symbol, "exchange": p.exchange, "side": p.side.name, "quantity": p.quantity,
            "entry_price": p.entry_price, "mark_price": p.mark_price, "leverage": p.leverage,
            "volatility": p.volatility}


def _stats(s: SymbolStatsRecord) -> Row:
    return {"symbol": s.symbol, "trades": s.trades, "wins": s.wins, "losses": s.losses,
            "realized_pnl": s.realized_pnl}


def _trade(t: ClosedTrade) -> Row:
    return {"trade_id": t.trade_id, "symbol": t.symbol, "exchange": t.exchange, "side": t.side.name,
            "realized_pnl": t.realized_pnl, "closed_at": t.closed_at}


def _summary(rec: StateRecord) -> Row:
    """The seed's headline columns, as of the record's updated_at."""
    pause = rec.effective_pause(rec.updated_at)
    return {
        "trader_id": rec.trader_id,
        "account_id": rec.account_id,
        "current_equity": rec.current_equity,
        "drawdown_pct": rec.drawdown_pct,
        "daily_pnl": rec.daily_pnl,
        "trading_state": TradingState.ACTIVE.name if pause is None else pause.state.name,
        "paused_until": None if pause is None else pause.until,
    }


def state_row(rec: StateRecord, epoch: int) -> Row:
    """The risk_state row of a record."""
    row = _summary(rec)
    pause = rec.effective_pause(rec.updated_at)
    row.update(
        peak_equity=rec.peak_equity,
        pause_code=None if pause is None else pause.code.name,
        pause_reason=None if pause is None else pause.reason,
        weekly_pnl=rec.weekly_pnl,
        monthly_pnl=rec.monthly_pnl,
        equity_reported=rec.equity_reported,
        day_start_equity=rec.day_start_equity,
        week_start_equity=rec.week_start_equity,
        month_start_equity=rec.month_start_equity,
        day_start=rec.day_start,
        week_start=rec.week_start,
        month_start=rec.month_start,
        last_equity_at=rec.last_equity_at,
        consecutive_losses=rec.consecutive_losses,
        pauses=[_pause(p) for p in rec.pauses],
        positions=[_position(p) for p in rec.positions],
        volatility=dict(rec.volatility),
        symbol_stats=[_stats(s) for s in rec.symbol_stats],
        recent_trades=[_trade(t) for t in rec.recent_trades],
        order_times=list(rec.order_times),
        updated_at=rec.updated_at,
        version=rec.version,
        epoch=epoch,
    )
    return row


def state_from_row(row: RowIn) -> StateRecord:
    """A record from a risk_state row (or from the `state` JSON of a history row)."""
    return StateRecord(
        trader_id=row["trader_id"],
        account_id=row["account_id"],
        equity_reported=bool(row["equity_reported"]),
        current_equity=row["current_equity"],
        peak_equity=row["peak_equity"],
        day_start_equity=row["day_start_equity"],
        week_start_equity=row["week_start_equity"],
        month_start_equity=row["month_start_equity"],
        day_start=row["day_start"],
        week_start=row["week_start"],
        month_start=row["month_start"],
        last_equity_at=row["last_equity_at"],
        pauses=tuple(
            PauseRecord(TradingState[p["state"]], p["until"], DecisionCode[p["code"]], p["reason"], p["source"],
                        p["since"])
            for p in row["pauses"]
        ),
        consecutive_losses=row["consecutive_losses"],
        positions=tuple(
            Position(p["symbol"], Side[p["side"]], p["quantity"], p["entry_price"], p["mark_price"], p["exchange"],
                     p["leverage"], p["volatility"])
            for p in row["positions"]
        ),
        volatility=tuple((k, float(v)) for k, v in row["volatility"].items()),
        symbol_stats=tuple(
            SymbolStatsRecord(s["symbol"], s["trades"], s["wins"], s["losses"], s["realized_pnl"])
            for s in row["symbol_stats"]
        ),
        recent_trades=tuple(
            ClosedTrade(t["trade_id"], t["symbol"], t["exchange"], Side[t["side"]], t["realized_pnl"], t["closed_at"])
            for t in row.get("recent_trades", ())
        ),
        order_times=tuple(row.get("order_times", ())),
        updated_at=row["updated_at"],
        version=row["version"],
    )


def history_row(h: HistoryRecord) -> Row:
    """The risk_state_history row. Its `state` JSON has every field but recent_trades and order_times
    (the breaker windows, up to 500 trades: too heavy to copy into every audit row)."""
    rec = h.state
    row = _summary(rec)
    row.update(recorded_at=h.recorded_at, reason=h.reason, trace_id=h.trace_id or None)
    row["state"] = {
        "trader_id": rec.trader_id,
        "account_id": rec.account_id,
        "equity_reported": rec.equity_reported,
        "current_equity": rec.current_equity,
        "peak_equity": rec.peak_equity,
        "day_start_equity": rec.day_start_equity,
        "week_start_equity": rec.week_start_equity,
        "month_start_equity": rec.month_start_equity,
        "day_start": rec.day_start,
        "week_start": rec.week_start,
        "month_start": rec.month_start,
        "last_equity_at": rec.last_equity_at,
        "pauses": [_pause(p) for p in rec.pauses],
        "consecutive_losses": rec.consecutive_losses,
        "positions": [_position(p) for p in rec.positions],
        "volatility": dict(rec.volatility),
        "symbol_stats": [_stats(s) for s in rec.symbol_stats],
        "updated_at": rec.updated_at,
        "version": rec.version,
    }
    return row


def history_from_row(row: RowIn) -> HistoryRecord:
    return HistoryRecord(
        trader_id=row["trader_id"],
        account_id=row["account_id"],
        state=state_from_row(row["state"]),
        reason=row["reason"],
        trace_id=row["trace_id"],
        recorded_at=row["recorded_at"],
        id=row["id"],
    )


# ---- trades and events ----------------------------------------------------------------------------

def trade_row(t: TradeRecord, recorded_at: float) -> Row:
    return {"trader_id": t.trader_id, "trade_id": t.trade_id, "account_id": t.account_id, "symbol": t.symbol,
            "exchange": t.exchange, "side": t.side, "realized_pnl": t.realized_pnl, "closed_at": t.closed_at,
            "recorded_at": recorded_at}


def event_row(e: BreakerEventRecord) -> Row:
    return {"id": e.id, "circuit_breaker_id": e.breaker_id, "trader_id": e.trader_id, "account_id": e.account_id,
            "timestamp": e.timestamp, "triggered_values": finite_json(e.triggered_values),
            "action_taken": e.action_taken, "action_result": finite_json(e.action_result),
            "positions_affected": finite_json(e.positions_affected), "shadow": e.shadow}


def event_from_row(row: RowIn) -> BreakerEventRecord:
    return BreakerEventRecord(
        id=row["id"], breaker_id=row["circuit_breaker_id"], trader_id=row["trader_id"], account_id=row["account_id"],
        timestamp=row["timestamp"], triggered_values=row["triggered_values"], action_taken=row["action_taken"],
        action_result=row["action_result"], positions_affected=row["positions_affected"], shadow=bool(row["shadow"]),
    )


# ---- configurations, breakers, flags --------------------------------------------------------------

def config_values(c: ConfigRecord) -> Row:
    """The risk_configurations columns a save writes (not id, account_id, config_id or timestamps)."""
    row: Row = {name: getattr(c, name) for name in CONFIG_FIELDS}
    row["market_regime_thresholds"] = dict(c.market_regime_thresholds)
    row["correlation_groups"] = [{"name": name, "symbols": list(symbols)}
                                 for name, symbols in c.correlation_groups.items()]
    row["is_active"] = c.is_active
    return row


def symbol_values(s: SymbolConfigRecord) -> Row:
    row: Row = {name: getattr(s, name) for name in SYMBOL_FIELDS}
    row["symbol"] = s.symbol
    return row


def config_from_row(row: RowIn, symbols: list[SymbolConfigRecord]) -> ConfigRecord:
    values: dict[str, Any] = {name: row[name] for name in CONFIG_FIELDS}
    return ConfigRecord(
        account_id=row["account_id"],
        config_id=row["config_id"],
        is_active=bool(row["is_active"]),
        market_regime_thresholds={k: float(v) for k, v in (row["market_regime_thresholds"] or {}).items()},
        correlation_groups={g["name"]: list(g["symbols"]) for g in row["correlation_groups"] or ()},
        symbol_configs=symbols,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        **values,
    )


def symbol_from_row(row: RowIn) -> SymbolConfigRecord:
    return SymbolConfigRecord(symbol=row["symbol"], created_at=row["created_at"], updated_at=row["updated_at"],
                              **{name: row[name] for name in SYMBOL_FIELDS})


def breaker_values(b: BreakerRecord) -> Row:
    """The circuit_breakers columns an update writes (not id, account_id or created_at)."""
    return {"name": b.name, "description": b.description, "condition": b.condition, "action": b.action,
            "parameters": finite_json(dict(b.parameters)),
            "symbols": None if b.symbols is None else list(b.symbols),
            "exchanges": None if b.exchanges is None else list(b.exchanges), "enabled": b.enabled}


def breaker_from_row(row: RowIn) -> BreakerRecord:
    return BreakerRecord(
        id=row["id"], name=row["name"], description=row["description"], account_id=row["account_id"],
        condition=row["condition"], action=row["action"], parameters=row["parameters"] or {},
        symbols=row["symbols"], exchanges=row["exchanges"], enabled=bool(row["enabled"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def flags_from_rows(rows: Mapping[str, tuple[bool, float]]) -> FlagsRecord | None:
    """FlagsRecord from {name: (value, updated_at)}; None when no flag was ever saved."""
    if not rows:
        return None
    defaults = FlagsRecord()
    return FlagsRecord(
        enable_risk_enforcement=rows.get("enable_risk_enforcement", (defaults.enable_risk_enforcement, 0.0))[0],
        enable_persistence=rows.get("enable_persistence", (defaults.enable_persistence, 0.0))[0],
        updated_at=max(at for _value, at in rows.values()),
    )
