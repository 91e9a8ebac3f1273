"""Engine values -> protobuf messages (and the few inverse conversions: messages, and who made a call)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ..engine.engine import Firing
from ..engine.state import TraderState
from ..engine.types import (
    ActionType,
    CheckResult,
    CheckStatus,
    Decision,
    DecisionCode,
    OrderIntent,
    OrderStatus,
    PendingOrder,
    Position,
    RequiredAction,
    Side,
    TradingState,
)
from .validation import exchange_key, symbol_key

# Engine enums -> protobuf enum values (same numbers; typed for mypy-protobuf).
CODE = {c: t.DecisionCode.ValueType(c.value) for c in DecisionCode}
STATE = {s: t.TradingState.ValueType(s.value) for s in TradingState}
STATUS = {s: t.CheckStatus.ValueType(s.value) for s in CheckStatus}
ACTION = {a: t.ActionType.ValueType(a.value) for a in ActionType}
SIDE = {s: t.Side.ValueType(s.value) for s in Side}
SIDE_OF = {int(s.value): s for s in Side}  # proto number -> engine enum, without the Enum call
ORDER_STATUS = {s: t.OrderStatus.ValueType(s.value) for s in OrderStatus}
ORDER_STATUS_OF = {int(s.value): s for s in OrderStatus}


def ts(seconds: float) -> Timestamp:
    whole = int(seconds // 1)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9) % 1_000_000_000)


def ts_micros(seconds: float) -> Timestamp:
    """Epoch seconds as a Timestamp in whole microseconds, rounded exactly as the store rounds them into a row
    (datetime.fromtimestamp: the fraction, half to even): an answer then says what the row and every later
    listing say, not the float's nanoseconds."""
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return Timestamp(seconds=int(whole), nanos=micros * 1000)


def to_seconds(value: Timestamp) -> float:
    return value.seconds + value.nanos / 1e9


def caller(ctx: grpc.aio.ServicerContext[Any, Any] | None) -> str:
    """Who made a call, as the services log it (the peer; never the token)."""
    return (ctx.peer() if ctx is not None else "") or "unknown"


def _set_ts(field: Timestamp, seconds: float) -> None:
    """Write epoch seconds into a Timestamp field in place (as `field.CopyFrom(ts(seconds))`, no temporary)."""
    whole = int(seconds // 1)
    field.seconds = whole
    field.nanos = round((seconds - whole) * 1e9) % 1_000_000_000


def _state_scalars(st: TraderState, config_id: str) -> t.RiskState:
    current = st.current_equity
    day, week, month = st.day_start_equity, st.week_start_equity, st.month_start_equity
    return t.RiskState(
        trader_id=st.trader_id,
        account_id=st.account_id,
        current_equity=current,
        peak_equity=st.peak_equity,
        drawdown_pct=st.drawdown_pct,
        daily_pnl=st.daily_pnl,
        daily_pnl_pct=st.daily_pnl_pct,
        weekly_pnl=st.weekly_pnl,
        weekly_pnl_pct=st.weekly_pnl_pct,
        monthly_pnl=st.monthly_pnl,
        monthly_pnl_pct=st.monthly_pnl_pct,
        day_start_equity=day,
        week_start_equity=week,
        month_start_equity=month,
        consecutive_losses=st.consecutive_losses,
        equity_reported=st.equity_reported,
        config_id=config_id,
    )


def _state_rest(msg: t.RiskState, st: TraderState, now: float, orders: bool = True) -> None:
    """The trading state, pause, timestamps, positions and (with `orders`) the pending orders of a RiskState,
    written in place."""
    pause = st.effective_pause(now) if st.pauses else None
    if pause is None:
        msg.trading_state = t.TRADING_STATE_ACTIVE
    else:
        msg.trading_state = STATE[pause.state]
        msg.pause_reason = pause.reason
        msg.pause_code = CODE[pause.code]
        if pause.until is not None:
            _set_ts(msg.paused_until, pause.until)
    if st.last_equity_at is not None:
        _set_ts(msg.last_equity_at, st.last_equity_at)
    if st.updated_at:
        _set_ts(msg.updated_at, st.updated_at)
    if st.positions:
        add = msg.positions.add
        for p in st.positions.values():
            add(symbol=p.symbol, exchange=p.exchange, side=SIDE[p.side], quantity=p.quantity,
                entry_price=p.entry_price, mark_price=p.mark_price, leverage=p.leverage, volatility=p.volatility)
    if st.orders:
        msg.pending_order_count = len(st.orders)
        if orders:
            msg.pending_orders.extend(_order_msgs(st))
    if st.daily_orders:
        msg.daily_orders = st.daily_orders
        msg.daily_order_notional = st.daily_order_notional


def pending_order_msg(o: PendingOrder) -> t.PendingOrder:
    msg = t.PendingOrder(client_order_id=o.client_order_id, symbol=o.symbol, exchange=o.exchange, side=SIDE[o.side],
                         quantity=o.quantity, price=o.price, filled_quantity=o.filled, average_price=o.avg_price,
                         status=ORDER_STATUS[o.status], reducing=o.reducing)
    _set_ts(msg.allowed_at, o.allowed_at)
    _set_ts(msg.expires_at, o.expires_at)
    return msg


# Each pending order's message, built once per PendingOrder value (they are immutable: a report replaces one), so a
# RiskState with many pending orders copies them in C instead of building each in Python on every answer.
_ORDER_MSGS: dict[tuple[str, str], tuple[PendingOrder, t.PendingOrder]] = {}
_ORDER_MSGS_KEPT = 100_000


def _order_msgs(st: TraderState) -> list[t.PendingOrder]:
    cache, trader = _ORDER_MSGS, st.trader_id
    out = []
    for o in st.orders.values():
        key = (trader, o.client_order_id)
        entry = cache.get(key)
        if entry is None or entry[0] is not o:
            if len(cache) >= _ORDER_MSGS_KEPT:
                cache.clear()
            entry = cache[key] = (o, pending_order_msg(o))
        out.append(entry[1])
    return out


def state_msg(st: TraderState, now: float, config_id: str = "", orders: bool = True) -> t.RiskState:
    """`st` as a RiskState; `orders` False leaves the list of pending orders out (the hot path's answers)."""
    msg = _state_scalars(st, config_id)
    _state_rest(msg, st, now, orders)
    return msg


def action_msg(a: RequiredAction) -> t.RequiredAction:
    return t.RequiredAction(
        type=ACTION[a.type], symbol=a.symbol, exchange=a.exchange, reason=a.reason, breaker_id=a.breaker_id,
        client_order_ids=a.client_order_ids,
    )


def _add_checks(msg: rs.CanTradeResponse, checks: Iterable[CheckResult]) -> None:
    add = msg.checks.add
    for c in checks:
        add(name=c.name, status=STATUS[c.status], code=CODE[c.code], detail=c.detail, value=c.value, limit=c.limit)


def _set_verdict(msg: rs.CanTradeResponse, d: Decision) -> None:
    """Everything of the answer but the checks and the state: verdict, reason, actions, pause end."""
    msg.allowed = d.allowed
    msg.code = CODE[d.code]
    msg.reason = d.reason
    msg.trading_state = STATE[d.trading_state]
    msg.would_deny = d.would_deny
    if d.actions:
        add_action = msg.actions.add
        for a in d.actions:
            add_action(type=ACTION[a.type], symbol=a.symbol, exchange=a.exchange, reason=a.reason,
                       breaker_id=a.breaker_id, client_order_ids=a.client_order_ids)
    if d.paused_until is not None:
        _set_ts(msg.paused_until, d.paused_until)


def _set_state(msg: rs.CanTradeResponse, st: TraderState, now: float, config_id: str) -> None:
    state = msg.state
    state.MergeFrom(_state_scalars(st, config_id))
    _state_rest(state, st, now, orders=False)  # CanTrade: the count, not the list


def decision_msg(d: Decision, st: TraderState, now: float, config_id: str = "") -> rs.CanTradeResponse:
    """The CanTrade answer, built in place: repeated fields with `add`, the state without a temporary copy
    of its sub-messages (the hot path: this is most of CanTrade's cost after the engine)."""
    msg = rs.CanTradeResponse()
    _add_checks(msg, d.checks)
    _set_state(msg, st, now, config_id)
    _set_verdict(msg, d)
    return msg


class DecisionMessages:
    """Builds CanTrade answers, reusing per trader the part that depends only on its state.

    Between two changes of a trader's state, every answer carries the same state checks and the same
    RiskState; only the order checks and the verdict differ. That part is built once per state version and
    copied into each answer by protobuf in C, instead of being rebuilt field by field in Python. The key is
    the engine's `Decision.state_checks` tuple itself: the engine builds a new one whenever the state version
    or the limits (hence the configuration id) change, and the template holds it, so `is` cannot be fooled.
    """

    __slots__ = ("_templates",)

    def __init__(self) -> None:
        self._templates: dict[str, tuple[tuple[CheckResult, ...], int, rs.CanTradeResponse]] = {}

    def build(self, d: Decision, st: TraderState, now: float, config_id: str = "") -> rs.CanTradeResponse:
        prefix = d.state_checks
        if prefix is None:
            return decision_msg(d, st, now, config_id)
        entry = self._templates.get(st.trader_id)
        if entry is not None and entry[0] is prefix:
            template = entry[2]
            if entry[1] != st.version:  # the same state checks, a new state (e.g. an order allowed since)
                template.ClearField("state")
                _set_state(template, st, now, config_id)
                self._templates[st.trader_id] = (prefix, st.version, template)
        else:
            template = rs.CanTradeResponse()
            _add_checks(template, prefix)
            _set_state(template, st, now, config_id)
            self._templates[st.trader_id] = (prefix, st.version, template)
        msg = rs.CanTradeResponse()
        msg.CopyFrom(template)
        _add_checks(msg, d.checks[len(prefix):])
        _set_verdict(msg, d)
        return msg

    def forget(self, trader_id: str) -> None:
        """Drop the trader's template (it left memory: residency.py)."""
        self._templates.pop(trader_id, None)


def firing_msg(f: Firing, st: TraderState, event_id: str = "") -> t.CircuitBreakerEvent:
    from google.protobuf.struct_pb2 import Struct

    triggered = Struct()
    triggered.update(f.triggered_values)
    result = Struct()
    result.update(f.action_result)  # type: ignore[arg-type]  # JSON-like values
    return t.CircuitBreakerEvent(
        id=event_id or getattr(f, "event_id", ""),
        breaker_id=f.breaker_id,
        trader_id=st.trader_id,
        account_id=st.account_id,
        timestamp=ts(f.at),
        triggered_values=triggered,
        action_taken=f.action,
        action_result=result,
        positions_affected=[t.PositionRef(symbol=s, exchange=e) for s, e in f.positions_affected],
        shadow=f.shadow,
    )


def order_from_msg(o: t.OrderIntent) -> OrderIntent:
    """A validated order, its symbol upper-case and its exchange lower-case (README "Names")."""
    return OrderIntent(
        symbol=o.symbol.upper(), side=SIDE_OF.get(o.side) or Side(o.side), quantity=o.quantity, price=o.price,
        exchange=o.exchange.lower(), leverage=o.leverage, reduce_only=o.reduce_only, stop_price=o.stop_price,
        volatility=o.volatility,
    )


def position_from_msg(p: t.Position) -> Position:
    """A validated position, its symbol upper-case and its exchange lower-case (README "Names")."""
    return Position(
        symbol=symbol_key(p.symbol), side=Side(p.side), quantity=p.quantity, entry_price=p.entry_price,
        mark_price=p.mark_price, exchange=exchange_key(p.exchange), leverage=p.leverage, volatility=p.volatility,
    )
