"""A trader's RiskState message as every RPC and watch update shows it (shared by the servicers)."""

from __future__ import annotations

from tradeguard.v1 import types_pb2 as t

from ..engine.engine import RiskEngine
from ..engine.state import TraderState
from ..engine.unloaded import UnloadedGate
from . import convert


def state_msg(engine: RiskEngine, st: TraderState, orders: bool = True) -> t.RiskState:
    """`st` now, with its active configuration's id; while the stored state is not loaded, at least the unloaded
    policy's trading state. `orders` False: without the list of pending orders (the hot path's answers)."""
    msg = convert.state_msg(st, engine.clock.now(), engine.limits_for(st.account_id).config_id, orders)
    if engine.gate is not None:
        show_unloaded(msg, engine.gate)
    return msg


def show_unloaded(msg: t.RiskState, gate: object) -> None:
    """While the stored state is not loaded, a state shown is at least the unloaded policy's: memory alone would
    say ACTIVE for a trader the store holds paused."""
    if isinstance(gate, UnloadedGate):
        shown = convert.STATE[gate.state]
        if shown > msg.trading_state:
            msg.trading_state = shown
            msg.pause_code = t.DECISION_CODE_STATE_NOT_LOADED
            msg.pause_reason = gate.note
