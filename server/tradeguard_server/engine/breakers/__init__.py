"""Circuit breakers: user-defined (condition, parameters, action, scope) rules over a trader's state.

- `conditions/`: one module per condition type, each a pure `evaluate(state, params, now, scope)`;
- `registry`: conditions by name and validation of a definition (field violations);
- `actions`: what a firing does (pause_trading, reduce_only, close_position, alert);
- `evaluator`: the engine's BreakerEvaluator (precompiled per account, once per episode); it returns its
  firings (`events.Firing`), which the engine announces with the state change they made.
"""

from __future__ import annotations

from ..events import Firing
from .base import Condition, Param, Scope, Triggered
from .evaluator import BreakerSpec, CompiledBreaker, Evaluator, InvalidBreaker
from .registry import ACTIONS, DEFAULT, Registry

__all__ = [
    "ACTIONS",
    "DEFAULT",
    "BreakerSpec",
    "CompiledBreaker",
    "Condition",
    "Evaluator",
    "Firing",
    "InvalidBreaker",
    "Param",
    "Registry",
    "Scope",
    "Triggered",
]
