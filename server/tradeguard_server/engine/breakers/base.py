"""The small interface every breaker condition implements (freqtrade's IProtection, state passed in).

A condition is a pure function `evaluate(state, params, now, scope) -> Triggered | None` plus the schema of
its parameters. It reads only the `TraderState` it is given, never the store, and allocates nothing when it
does not fire (the evaluator calls it on every report and every CanTrade).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..state import TraderState

Params = Mapping[str, float]
PositionKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Scope:
    """The symbols and exchanges a breaker watches; None means all.

    An empty exchange on the activity side (an order or trade without an exchange) matches any exchange
    scope: an unspecified venue may be any venue, and a risk rule should rather apply than not.
    """

    symbols: frozenset[str] | None = None
    exchanges: frozenset[str] | None = None
    everything: bool = field(init=False, compare=False)  # precomputed: no symbol and no exchange filter

    def __post_init__(self) -> None:
        object.__setattr__(self, "everything", self.symbols is None and self.exchanges is None)

    def matches(self, symbol: str, exchange: str) -> bool:
        symbols, exchanges = self.symbols, self.exchanges
        return (symbols is None or symbol in symbols) and (exchanges is None or not exchange or exchange in exchanges)


ALL = Scope()


@dataclass(frozen=True, slots=True)
class Triggered:
    """What a condition measured when it fired, e.g. {"drawdown": 0.12, "threshold": 0.1}.

    `positions` names the positions that fired a position-level condition (close_position then closes
    exactly those); None for account-level conditions.
    """

    values: dict[str, float]
    positions: tuple[PositionKey, ...] | None = None


Evaluate = Callable[[TraderState, Params, float, Scope], Triggered | None]
Quiet = Callable[[TraderState, float, Any, Scope], bool]


@dataclass(frozen=True, slots=True)
class Screen:
    """A cheap proof that none of a group of breakers (one condition, one scope) can fire now.

    `bound` folds the parameters of every breaker in the group into one value, once, when the group is
    built (e.g. the smallest threshold). `quiet(state, now, bound, scope)` must return True only when
    `evaluate` would return None for every breaker of the group; False means "evaluate them one by one".
    It lets the evaluator check 100 breakers for the price of a few comparisons when nothing is near a
    limit (the usual case), without changing which breakers fire or in which order.
    """

    bound: Callable[[Sequence[Params]], Any]
    quiet: Quiet


def smallest(name: str) -> Callable[[Sequence[Params]], float]:
    """A Screen.bound: the smallest value of parameter `name` in the group."""

    def bound(group: Sequence[Params]) -> float:
        return min(p[name] for p in group)

    return bound


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a condition: a finite number (or an integer) in a range."""

    name: str
    kind: Literal["number", "integer"] = "number"
    required: bool = True
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None
    help: str = ""

    def describe(self) -> str:
        """E.g. "required number in (0, 1]", "optional integer in [1, 500]"."""
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        left = "(" if self.min is None or self.min_exclusive else "["
        right = ")" if self.max is None else "]"
        return f"{'required' if self.required else 'optional'} {self.kind} in {left}{low}, {high}{right}"

    def check(self, value: object) -> float | None:
        """The value as a float (integral for integers), or None when it does not fit the schema."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        number = float(value)
        if not math.isfinite(number):
            return None
        if self.kind == "integer" and not number.is_integer():
            return None
        if self.min is not None and (number <= self.min if self.min_exclusive else number < self.min):
            return None
        if self.max is not None and number > self.max:
            return None
        return number


@dataclass(frozen=True, slots=True)
class Condition:
    """A registered condition type: its name, parameter schema and pure evaluation."""

    name: str
    params: tuple[Param, ...]
    evaluate: Evaluate
    summary: str
    screen: Screen | None = None  # None: every breaker of this condition is evaluated on every call
