"""Records <-> table rows: the JSON shapes, and records from the rows SQLAlchemy reads. Pure functions.

The writer's encoding of queue records lives in store.bulk (fast, cached); it uses the JSON shapes here.

Enums are stored by name ("REDUCING", "DAILY_LOSS_LIMIT", "BUY"): readable in SQL and independent of the
numbering. JSON holds floats exactly (Python writes the shortest repr that reads back to the same double).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine.snapshot import PauseRecord, StateRecord, SymbolStatsRecord
from ..engine.types import ClosedTrade, DecisionCode, OrderStatus, PendingOrder, Position, Side, TradingState
from .records import (
    BreakerEventRecord,
    BreakerRecord,
    ConfigRecord,
    FlagsRecord,
    HistoryRecord,
    SymbolConfigRecord,
    TradingWindowRecord,
)

log = logging.getLogger("tradeguard.store")

Row = dict[str, Any]
RowIn = Mapping[Any, Any]  # a dict, or SQLAlchemy's RowMapping

CONFIG_FIELDS = (
    "daily_max_drawdown_percentage", "weekly_max_drawdown_percentage", "monthly_max_drawdown_percentage",
    "max_drawdown_percentage", "stop_trading_minutes", "consecutive_loss_threshold", "cooling_off_period_minutes",
    "max_position_size_percentage", "risk_per_trade_percentage", "max_correlated_exposure_percentage",
    "volatility_adjustment_factor", "position_max_drawdown_percentage", "position_trailing_stop_multiplier",
    "max_order_notional", "max_orders_per_window", "order_rate_window_seconds",
    "max_order_quantity", "max_position_quantity", "max_open_orders", "price_collar_percentage",
    "reference_price_max_age_seconds", "duplicate_order_window_ms", "max_daily_notional", "max_daily_orders",
    "max_fills_per_window", "fill_window_seconds", "pending_order_ttl_seconds",
    "account_daily_loss_percentage", "account_max_drawdown_percentage", "account_max_gross_exposure",
    "account_max_net_exposure",
    "heartbeat_timeout_seconds", "heartbeat_pause_state",
)
# JSON columns of risk_configurations besides market_regime_thresholds and correlation_groups (NULL: none).
CONFIG_SYMBOL_LISTS = ("allowed_symbols", "blocked_symbols")
SYMBOL_FIELDS = (
    "max_position_size_percentage", "max_leverage", "position_max_drawdown_percentage", "risk_per_trade_percentage",
    "max_order_quantity", "max_position_quantity", "max_open_orders", "price_collar_percentage",
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

def pause_json(p: PauseRecord) -> Row:
    return {"state": p.state.name, "until": p.until, "code": p.code.name, "reason": p.reason, "source": p.source,
            "since": p.since}


def position_json(p: Position) -> Row:
    return {"symbol": p.symbol, "exchange": p.exchange, "side": p.side.name, "quantity": p.quantity,
            "entry_price": p.entry_price, "mark_price": p.mark_price, "leverage": p.leverage,
            "volatility": p.volatility}


def stats_json(s: SymbolStatsRecord) -> Row:
    return {"symbol": s.symbol, "trades": s.trades, "wins": s.wins, "losses": s.losses,
            "realized_pnl": s.realized_pnl}


def trade_json(t: ClosedTrade) -> Row:
    return {"trade_id": t.trade_id, "symbol": t.symbol, "exchange": t.exchange, "side": t.side.name,
            "realized_pnl": t.realized_pnl, "closed_at": t.closed_at}


def order_json(o: PendingOrder) -> Row:
    return {"client_order_id": o.client_order_id, "symbol": o.symbol, "exchange": o.exchange, "side": o.side.name,
            "quantity": o.quantity, "price": o.price, "allowed_at": o.allowed_at, "expires_at": o.expires_at,
            "filled": o.filled, "avg_price": o.avg_price, "status": o.status.name, "reducing": o.reducing,
            "reported": o.reported, "unreconciled": o.unreconciled, "last_fill_at": o.last_fill_at,
            "released": o.released}


def order_from_json(o: Mapping[str, Any]) -> PendingOrder:
    return PendingOrder(o["client_order_id"], o["symbol"], o["exchange"], Side[o["side"]], o["quantity"], o["price"],
                        o["allowed_at"], o["expires_at"], o["filled"], o["avg_price"], OrderStatus[o["status"]],
                        bool(o["reducing"]), bool(o.get("reported", False)), float(o.get("unreconciled", 0.0)),
                        float(o.get("last_fill_at", 0.0)), bool(o.get("released", False)))


def pack_times(times: Sequence[float]) -> str:
    """Times as base64 of little-endian float64s: exact, and ~14x cheaper to encode than a JSON list of floats
    (1,000 times: 25 us against 345 us here)."""
    packed = array("d", times)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def unpack_times(text: str) -> tuple[float, ...]:
    packed = array("d")
    packed.frombytes(base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        packed.byteswap()
    return tuple(packed)


def windows_json(rec: StateRecord) -> Any:
    """The risk_state `order_times` column: `{"orders": packed, "fills": packed}` (pack_times) for a record that
    holds its windows; a plain list of order times for one that does not (rows of older versions hold that)."""
    if not rec.windows_stored:
        return list(rec.order_times)
    return {"orders": pack_times(rec.order_times), "fills": pack_times(rec.fill_times)}


def windows_from(value: Any) -> dict[str, Any]:
    """StateRecord fields from the `order_times` column (windows_json's shapes; NULL or absent: none). A value that
    does not decode (a row edited by hand, a torn write) is logged and read as a row of an older version: its windows
    are rebuilt from its orders (a lower bound), and the rest of the state still loads."""
    try:
        if isinstance(value, dict):
            orders, fills = unpack_times(value.get("orders", "")), unpack_times(value.get("fills", ""))
            if all(math.isfinite(t) for t in (*orders, *fills)):
                return {"order_times": orders, "fill_times": fills, "windows_stored": True}
        else:
            times = tuple(float(t) for t in value or ())
            if all(math.isfinite(t) for t in times):
                return {"order_times": times}
    except (TypeError, ValueError, AttributeError) as exc:  # (binascii.Error is a ValueError)
        log.error("risk_state.order_times cannot be read (%s): the order windows are rebuilt from the orders", exc)
        return {}
    log.error("risk_state.order_times holds a time that is not finite: the order windows are rebuilt from the orders")
    return {}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def state_from_row(row: RowIn) -> StateRecord:
    """A record from a risk_state row (or from the `state` JSON of a history row). Rows written before revision
    0004 have no orders (NULL or absent: none) and NULL daily sums in history JSON (0)."""
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
        **windows_from(row.get("order_times")),
        breaker_episodes=tuple((str(k), str(v)) for k, v in (row.get("breaker_episodes") or {}).items()),
        pending_orders=tuple(order_from_json(o) for o in row.get("pending_orders") or ()),
        finished_orders=tuple(order_from_json(o) for o in row.get("finished_orders") or ()),
        daily_order_notional=_or(row.get("daily_order_notional"), 0.0),
        daily_orders=_or(row.get("daily_orders"), 0),
        updated_at=row["updated_at"],
        version=row["version"],
    )


HISTORY_MAPS = ("pauses", "positions", "volatility", "symbol_stats", "pending_orders")
EMPTY_MAPS: dict[str, Any] = {"pauses": [], "positions": [], "volatility": {}, "symbol_stats": [],
                              "pending_orders": []}


def history_refs(state: Mapping[str, Any]) -> dict[str, str]:
    """{map name: tag of the row holding it} for the maps a history row's `state` JSON left out as unchanged."""
    refs = state.get("unchanged")
    return dict(refs) if isinstance(refs, Mapping) else {}


def fill_history(state: dict[str, Any], held: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Fill in place the maps `state` left out as unchanged from `held` ({tag: state JSON of that row}).
    Returns the names of those it could not fill (the row holding them is gone): they are left empty."""
    missing = []
    for name, tag in history_refs(state).items():
        source = held.get(tag)
        if source is not None and name in source:
            state[name] = source[name]
        else:
            state[name] = EMPTY_MAPS.get(name, [])
            missing.append(name)
    state.pop("unchanged", None)
    return missing


def history_from_row(row: RowIn, missing: list[str] | None = None) -> HistoryRecord:
    """A record from a risk_state_history row whose left-out maps were filled (see fill_history); `missing`
    names those that could not be, which the reason then says (they read as empty)."""
    reason = row["reason"]
    if missing:
        reason += (f" [{', '.join(missing)}: unchanged since a row that is no longer stored; shown empty, not "
                   "as recorded]")
    return HistoryRecord(
        trader_id=row["trader_id"],
        account_id=row["account_id"],
        state=state_from_row(row["state"]),
        reason=reason,
        trace_id=row["trace_id"],
        recorded_at=row["recorded_at"],
        id=row["id"],
    )


# ---- trades and events ----------------------------------------------------------------------------

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
    for name in CONFIG_SYMBOL_LISTS:
        row[name] = list(getattr(c, name))
    row["trading_windows"] = [window_json(w) for w in c.trading_windows]
    row["is_active"] = c.is_active
    return row


def window_json(w: TradingWindowRecord) -> Row:
    return {"weekdays": list(w.weekdays), "start": w.start, "end": w.end}


def window_from_json(w: Mapping[str, Any]) -> TradingWindowRecord:
    return TradingWindowRecord(tuple(int(d) for d in w["weekdays"]), str(w["start"]), str(w["end"]))


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
        allowed_symbols=[str(s) for s in row["allowed_symbols"] or ()],
        blocked_symbols=[str(s) for s in row["blocked_symbols"] or ()],
        trading_windows=[window_from_json(w) for w in row["trading_windows"] or ()],
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
            "parameters": dict(b.parameters),
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
