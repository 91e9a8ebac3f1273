"""What CanTrade answers while the stored state is not loaded (database down or slow at start).

Until the store has been read, memory knows only what arrived since the start: a trader paused before the
restart looks ACTIVE, and its first report looks like a fresh day. The setting `unloaded_state_policy`
decides what new exposure gets meanwhile; every answer says so (check `state_loaded`, code
STATE_NOT_LOADED, and the reason):

- `reduce_only` (default): only orders that reduce a position known to memory pass; nothing else does.
- `halted`: nothing passes.
- `memory`: answered from memory, as if nothing had been stored (explicit opt-in); the reason says so.

Every other check still applies: the gate only ever makes a verdict stricter. In shadow mode a verdict it
denies is `allowed` with `would_deny`, as for every other rule.
"""

from __future__ import annotations

from collections.abc import Callable

from .state import SEVERITY, TraderState
from .types import CheckResult, CheckStatus, Decision, DecisionCode, OrderIntent, TradingState

POLICIES = ("reduce_only", "halted", "memory")
_CODE = DecisionCode.STATE_NOT_LOADED
_STATE = {"reduce_only": TradingState.REDUCING, "halted": TradingState.HALTED, "memory": TradingState.ACTIVE}


class UnloadedGate:
    """The engine's `gate` while the stored state is not loaded (see the module docstring)."""

    __slots__ = ("enforcing", "note", "policy", "state")

    def __init__(self, policy: str, enforcing: Callable[[], bool]) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unloaded_state_policy: one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.state = _STATE[policy]
        self.enforcing = enforcing  # the engine's enforcement flag, read per call (shadow mode)
        what = {"reduce_only": "only exposure-reducing orders", "halted": "no orders",
                "memory": "answered from memory, without the stored state"}[policy]
        self.note = (f"STATE_NOT_LOADED: the stored risk state is not loaded yet (database unavailable or slow "
                     f"at start); unloaded_state_policy={policy}: {what}")

    def __call__(self, d: Decision, st: TraderState, order: OrderIntent | None, reducing: bool) -> Decision:
        denied = not d.allowed or d.would_deny
        passes = denied or self.policy == "memory" or (self.policy == "reduce_only" and reducing)
        check = CheckResult("state_loaded", CheckStatus.PASS if passes else CheckStatus.FAIL, _CODE, self.note)
        checks = (*d.checks, check)
        if passes:  # already denied by another rule, or let through by the policy: say why, change nothing
            return Decision(d.allowed, d.code, f"{d.reason}; {self.note}", d.trading_state, d.paused_until, checks,
                            d.actions, d.would_deny)
        state = self.state if SEVERITY[self.state] > SEVERITY[d.trading_state] else d.trading_state
        if self.enforcing():
            return Decision(False, _CODE, self.note, state, d.paused_until, checks, d.actions)
        return Decision(True, _CODE, f"SHADOW (not enforced), would deny: {self.note}", state, d.paused_until,
                        checks, d.actions, would_deny=True)
