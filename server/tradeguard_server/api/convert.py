"""Engine values -> protobuf messages (and the few inverse conversions)."""

from __future__ import annotations

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
    Position,
    RequiredAction,
    Side,
    TradingState,
)

# Engine enums -> protobuf enum values (same numbers; typed for mypy-protobuf).
CODE = {c: t.DecisionCode.ValueType(c.value) for c in DecisionCode}
STATE = {s: t.TradingState.ValueType(s.value) for s in TradingState}
STATUS = {s: t.CheckStatus.ValueType(s.value) for s in CheckStatus}
ACTION = {a: t.ActionType.ValueType(a.value) for a in ActionType}
SIDE = {s: t.Side.ValueType(s.value) for s in Side}


def ts(seconds: float) -> Timestamp:
    whole = int(seconds // 1)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9) % 1_000_000_000)


def to_seconds(value: Timestamp) -> float:
    return value.seconds + value.nanos / 1e9


def position_msg(p: Position) -> t.Position:
    return t.Position(
        symbol=p.symbol, exchange=p.exchange, side=SIDE[p.side], quantity=p.quantity, entry_price=p.entry_price,
        mark_price=p.mark_price, leverage=p.leverage, volatility=p.volatility,
    )


def state_msg(st: TraderState, now: float, config_id: str = "") -> t.RiskState:
    msg = t.RiskState(
        trader_id=st.trader_id,
        account_id=st.account_id,
        current_equity=st.current_equity,
        peak_equity=st.peak_equity,
        drawdown_pct=st.drawdown_pct,
        daily_pnl=st.daily_pnl,
        daily_pnl_pct=_pct(st.daily_pnl, st.day_start_equity),
        weekly_pnl=st.weekly_pnl,
        weekly_pnl_pct=_pct(st.weekly_pnl, st.week_start_equity),
        monthly_pnl=st.monthly_pnl,
        monthly_pnl_pct=_pct(st.monthly_pnl, st.month_start_equity),
        day_start_equity=st.day_start_equity,
        week_start_equity=st.week_start_equity,
        month_start_equity=st.month_start_equity,
        consecutive_losses=st.consecutive_losses,
        equity_reported=st.equity_reported,
        config_id=config_id,
    )
    pause = st.effective_pause(now)
    if pause is None:
        msg.trading_state = t.TRADING_STATE_ACTIVE
    else:
        msg.trading_state = STATE[pause.state]
        msg.pause_reason = pause.reason
        msg.pause_code = CODE[pause.code]
        if pause.until is not None:
            msg.paused_until.CopyFrom(ts(pause.until))
    if st.last_equity_at is not None:
        msg.last_equity_at.CopyFrom(ts(st.last_equity_at))
    if st.updated_at:
        msg.updated_at.CopyFrom(ts(st.updated_at))
    if st.positions:
        msg.positions.extend(position_msg(p) for p in st.positions.values())
    return msg


def _pct(pnl: float, reference: float) -> float:
    return pnl / reference * 100.0 if reference > 0 else 0.0


def check_msg(c: CheckResult) -> t.CheckResult:
    return t.CheckResult(
        name=c.name, status=STATUS[c.status], code=CODE[c.code], detail=c.detail, value=c.value, limit=c.limit
    )


def action_msg(a: RequiredAction) -> t.RequiredAction:
    return t.RequiredAction(
        type=ACTION[a.type], symbol=a.symbol, exchange=a.exchange, reason=a.reason, breaker_id=a.breaker_id
    )


def decision_msg(d: Decision, st: TraderState, now: float, config_id: str = "") -> rs.CanTradeResponse:
    msg = rs.CanTradeResponse(
        allowed=d.allowed,
        code=CODE[d.code],
        reason=d.reason,
        trading_state=STATE[d.trading_state],
        checks=[check_msg(c) for c in d.checks],
        actions=[action_msg(a) for a in d.actions],
        state=state_msg(st, now, config_id),
        would_deny=d.would_deny,
    )
    if d.paused_until is not None:
        msg.paused_until.CopyFrom(ts(d.paused_until))
    return msg


def firing_msg(f: Firing, st: TraderState, event_id: str = "") -> t.CircuitBreakerEvent:
    from google.protobuf.struct_pb2 import Struct

    triggered = Struct()
    triggered.update(f.triggered_values)
    result = Struct()
    result.update(f.action_result)  # type: ignore[arg-type]  # JSON-like values
    return t.CircuitBreakerEvent(
        id=event_id,
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
    return OrderIntent(
        symbol=o.symbol, side=Side(o.side), quantity=o.quantity, price=o.price, exchange=o.exchange,
        leverage=o.leverage, reduce_only=o.reduce_only, stop_price=o.stop_price, volatility=o.volatility,
    )


def position_from_msg(p: t.Position) -> Position:
    return Position(
        symbol=p.symbol, side=Side(p.side), quantity=p.quantity, entry_price=p.entry_price,
        mark_price=p.mark_price, exchange=p.exchange, leverage=p.leverage, volatility=p.volatility,
    )
