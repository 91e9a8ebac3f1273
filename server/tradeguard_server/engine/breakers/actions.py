"""What a breaker does when it fires: pause_trading, reduce_only, close_position or alert.

- pause_trading: a HALTED pause (code CIRCUIT_BREAKER, source "breaker:<id>") for the duration, and a
  PAUSE_TRADING action telling the bot.
- reduce_only: the same with REDUCING and a REDUCE_ONLY action.
- close_position: a CLOSE_POSITION action per affected position: the positions that fired a position-level
  condition; else the trader's open positions in scope; else, with none open, the scope's symbols x
  exchanges (an empty symbol or exchange means all).
- alert: the event only.

A pause applies to the whole trader (the engine's trading state is per trader, not per symbol), also
for a scoped breaker. In shadow mode (enforcement off) a pause is recorded as a loss limit's is (CanTrade
then answers allowed with would_deny and code CIRCUIT_BREAKER, and denies once enforcement is back on
while the pause lasts), but no action is sent to the bot; the event says what would have happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ..events import Firing
from ..state import Pause, TraderState, add_pause
from ..types import ActionType, DecisionCode, RequiredAction, TradingState
from .base import PositionKey, Scope, Triggered

PAUSE_STATE = {"pause_trading": TradingState.HALTED, "reduce_only": TradingState.REDUCING}
PAUSE_ACTION = {"pause_trading": ActionType.PAUSE_TRADING, "reduce_only": ActionType.REDUCE_ONLY}


class Breaker(Protocol):
    """What `take` needs of the breaker that fired (evaluator.CompiledBreaker has it)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def condition(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def scope(self) -> Scope: ...


@dataclass(frozen=True, slots=True)
class Trip:
    """One breaker firing on one trader: which breaker, what its condition found, and how to act on it."""

    breaker: Breaker
    triggered: Triggered
    duration_s: float | None  # how long a pause lasts (None: until resumed)
    now: float
    enforce: bool  # False: shadow mode, the firing is described but not acted on
    event_id: str  # the id of its circuit_breaker_events row


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def describe(name: str, condition: str, values: dict[str, float]) -> str:
    numbers = " ".join(f"{key}={value:.6g}" for key, value in values.items())
    return f"CIRCUIT_BREAKER: breaker {name!r} ({condition}) fired: {numbers}"


def close_targets(st: TraderState, scope: Scope, trig: Triggered) -> list[PositionKey]:
    if trig.positions is not None:
        return list(trig.positions)
    open_in_scope = [key for key in st.positions if scope.matches(key[0], key[1])]
    if open_in_scope:
        return open_in_scope
    symbols = sorted(scope.symbols) if scope.symbols is not None else [""]
    exchanges = sorted(scope.exchanges) if scope.exchanges is not None else [""]
    return [(symbol, exchange) for symbol in symbols for exchange in exchanges]


def take(trip: Trip, st: TraderState) -> Firing:
    """Apply the breaker's action to the trader's state (unless shadow) and describe what it did."""
    b, trig, now, enforce = trip.breaker, trip.triggered, trip.now, trip.enforce
    breaker_id, action, duration_s = b.id, b.action, trip.duration_s
    reason = describe(b.name, b.condition, trig.values)
    result: dict[str, object] = {"success": True, "enforced": enforce}
    required: list[RequiredAction] = []
    affected: list[PositionKey] = [] if trig.positions is None else list(trig.positions)
    if action in PAUSE_STATE:
        state = PAUSE_STATE[action]
        until = None if duration_s is None else now + duration_s
        prefix = "" if enforce else "would_"
        result[f"{prefix}trading_state"] = state.name
        if until is None:
            result[f"{prefix}until_resumed"] = True
        else:
            result[f"{prefix}paused_until"] = rfc3339(until)
            result["duration_minutes"] = (until - now) / 60.0
        source = f"breaker:{breaker_id}"
        if not add_pause(st, Pause(state, until, DecisionCode.CIRCUIT_BREAKER, reason, source, since=now)):
            result["note"] = "already paused by this breaker until a later time"
        if enforce:
            required.append(RequiredAction(PAUSE_ACTION[action], "", "", reason, breaker_id))
    elif action == "close_position":
        affected = close_targets(st, b.scope, trig)
        result["positions_to_close" if enforce else "would_close"] = float(len(affected))
        if enforce:
            required.extend(
                RequiredAction(ActionType.CLOSE_POSITION, symbol, exchange, reason, breaker_id)
                for symbol, exchange in affected
            )
    return Firing(
        breaker_id=breaker_id,
        name=b.name,
        condition=b.condition,
        action=action,
        triggered_values=trig.values,
        action_result=result,
        positions_affected=affected,
        actions=required,
        shadow=not enforce,
        at=now,
        event_id=trip.event_id,
        trader_id=st.trader_id,
        account_id=st.account_id,
    )
