"""The condition registry: conditions by name, and validation of a breaker's definition against it.

Validation answers `(field_path, description)` pairs, e.g. ("breaker.parameters.threshold", "required number
in (0, 1]"), so the API turns them into INVALID_ARGUMENT field violations and the evaluator can refuse a
definition loaded from the store that no longer validates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .base import Condition, Param
from .conditions import BUILTIN

Violation = tuple[str, str]

ACTIONS: tuple[str, ...] = ("pause_trading", "reduce_only", "close_position", "alert")
PAUSING_ACTIONS = frozenset({"pause_trading", "reduce_only"})
DURATION = Param(
    "duration_minutes", required=False, min=0.0, min_exclusive=True, max=366 * 24 * 60,
    help="pause length; default: the account configuration's stop_trading_minutes",
)


class Registry:
    """Conditions by name. `DEFAULT` holds the built-in ones; tests may build their own."""

    __slots__ = ("_conditions",)

    def __init__(self, conditions: Iterable[Condition] = BUILTIN) -> None:
        self._conditions: dict[str, Condition] = {}
        for condition in conditions:
            self.register(condition)

    def register(self, condition: Condition) -> None:
        if condition.name in self._conditions:
            raise ValueError(f"condition {condition.name!r} is already registered")
        self._conditions[condition.name] = condition

    def get(self, name: str) -> Condition | None:
        return self._conditions.get(name)

    def names(self) -> list[str]:
        return sorted(self._conditions)

    def validate(
        self, condition: str, action: str, parameters: Mapping[str, object], prefix: str = "breaker"
    ) -> tuple[dict[str, float], list[Violation]]:
        """Check condition, action and parameters. Returns the parameters as numbers (int for integer
        parameters), and the violations."""
        violations: list[Violation] = []
        params: dict[str, float] = {}
        if action not in ACTIONS:
            what = "required" if not action else f"unknown action {action!r}"
            violations.append((f"{prefix}.action", f"{what}; one of: {', '.join(ACTIONS)}"))
        spec = self.get(condition)
        if spec is None:
            what = "required" if not condition else f"unknown condition {condition!r}"
            violations.append((f"{prefix}.condition", f"{what}; known: {', '.join(self.names())}"))
            return params, violations
        schema = list(spec.params)
        if action in PAUSING_ACTIONS:
            schema.append(DURATION)
        known = {p.name for p in schema}
        for key in sorted(parameters):
            if key not in known:
                extra = "" if key != DURATION.name else f" (only with {' or '.join(sorted(PAUSING_ACTIONS))})"
                violations.append((f"{prefix}.parameters.{key}",
                                   f"unknown parameter for {condition}{extra}; known: {', '.join(sorted(known))}"))
        for param in schema:
            field = f"{prefix}.parameters.{param.name}"
            if param.name not in parameters:
                if param.required:
                    violations.append((field, param.describe()))
                continue
            value = param.check(parameters[param.name])
            if value is None:
                violations.append((field, f"{param.describe()}, got {parameters[param.name]!r}"))
            else:
                params[param.name] = int(value) if param.kind == "integer" else value
        return params, violations


DEFAULT = Registry()
