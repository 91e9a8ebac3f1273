"""One module per breaker condition; each exposes `CONDITION` (name, parameter schema, pure evaluate)."""

from __future__ import annotations

from ..base import Condition
from . import (
    consecutive_losses,
    daily_loss,
    equity_floor,
    loss_streak_in_window,
    max_drawdown,
    order_rate,
    position_drawdown,
)

BUILTIN: tuple[Condition, ...] = (
    max_drawdown.CONDITION,
    daily_loss.CONDITION,
    consecutive_losses.CONDITION,
    loss_streak_in_window.CONDITION,
    equity_floor.CONDITION,
    order_rate.CONDITION,
    position_drawdown.CONDITION,
)
