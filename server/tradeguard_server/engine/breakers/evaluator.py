"""The breaker evaluator the engine calls on every ReportEquity / ReportTrade / ReportPositions / CanTrade.

It holds each account's enabled breakers precompiled (condition function, validated parameters, scope sets)
and grouped by (condition, scope). A condition's Screen folds a group's parameters into one bound (the
smallest threshold, the longest window), so one comparison shows that no breaker of the group can fire;
only the groups that might fire are evaluated breaker by breaker, in the account's order (name, id). With
nothing near a limit, 100 breakers cost a few group checks and allocate nothing. Screening never changes
which breakers fire, or in which order (tests/unit/test_breakers_properties.py checks it against the
unscreened evaluation).

Episodes: a breaker fires once per (breaker, trader) while its condition stays true, and re-arms when an
evaluation finds the condition false. Disabling or deleting a breaker drops it and its episodes; enabling,
or changing what it evaluates (condition, parameters, scope, action), re-arms it. Episodes in progress are
part of the trader's state (`TraderState.breaker_episodes`: breaker id -> the rule it fired under), so they
are stored with it and survive a restart: a restored trader's episodes are taken up the first time the
evaluator sees it, unless the breaker's rule changed or it was re-armed, disabled or deleted since.

Scope: `symbols` / `exchanges` empty means all. The engine passes the (symbol, exchange) pairs a call
concerns: the order for CanTrade (none without an order), the trade for ReportTrade, the reported positions
for ReportPositions and the trader's open positions for ReportEquity. An unscoped breaker is evaluated on
every call. A scoped breaker is evaluated only when one of those pairs is in its scope, so an account-level
condition (max_drawdown, daily_loss, equity_floor, order_rate) on a breaker scoped to ETHUSDT fires when the
trader holds an ETHUSDT position (equity report) or acts on ETHUSDT, never on BTCUSDT activity alone.
Trade- and position-based conditions also count only in-scope trades and positions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import Firing
from ..limits import Limits
from ..state import TraderState
from . import actions
from .base import Evaluate, Quiet, Scope, Triggered
from .registry import DEFAULT, Registry, Violation

log = logging.getLogger("tradeguard.breakers")

NO_FIRINGS: list[Firing] = []  # returned when nothing fires (no allocation); never mutated by the engine


class BreakerSpec(Protocol):
    """What the evaluator needs of a breaker definition (store.records.BreakerRecord has it)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def condition(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def parameters(self) -> Mapping[str, object]: ...
    @property
    def symbols(self) -> Sequence[str] | None: ...
    @property
    def exchanges(self) -> Sequence[str] | None: ...
    @property
    def enabled(self) -> bool: ...


class InvalidBreaker(ValueError):
    """A definition that does not validate against the registry."""

    def __init__(self, breaker_id: str, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(f"breaker {breaker_id}: " + "; ".join(f"{f}: {d}" for f, d in violations))


@dataclass(slots=True)
class CompiledBreaker:
    """An enabled breaker, ready to evaluate."""

    id: str
    name: str
    account_id: str
    condition: str
    action: str
    evaluate: Evaluate
    params: dict[str, float]
    scope: Scope
    duration_s: float | None  # explicit duration_minutes; None = the account's stop_trading_minutes
    tripped: set[str] = field(default_factory=set)  # traders whose episode is in progress
    rule: str = ""  # what it evaluates and does (condition, parameters, scope, action): an episode's key

    def __post_init__(self) -> None:
        if not self.rule:
            scope = self.scope
            self.rule = repr((self.condition, sorted(self.params.items()),
                              None if scope.symbols is None else sorted(scope.symbols),
                              None if scope.exchanges is None else sorted(scope.exchanges), self.action))

    @property
    def scoped(self) -> bool:
        return not self.scope.everything

    def same_rule(self, other: CompiledBreaker) -> bool:
        return (self.condition, self.params, self.scope, self.action) == (
            other.condition, other.params, other.scope, other.action)


@dataclass(slots=True)
class _Group:
    """The enabled breakers of one account that share a condition and a scope, in the account's order.

    `maybe` holds every trader with an episode in progress in some breaker of the group (a superset of the
    union of their `tripped` sets), so a quiet group re-arms its breakers without touching each one.
    """

    scoped: bool
    symbols: frozenset[str] | None
    exchanges: frozenset[str] | None
    scope: Scope
    quiet: Quiet | None  # None: the condition has no screen, evaluate every breaker
    bound: Any
    members: tuple[tuple[int, CompiledBreaker], ...]  # (position in the account's order, breaker)
    maybe: set[str] = field(default_factory=set)


def _scope(values: Sequence[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values else None


def _position(item: tuple[int, CompiledBreaker, _Group]) -> int:
    return item[0]


def _no_episodes_listener(_breaker_id: str) -> None:
    return None


def _new_event_id() -> str:
    return str(uuid.uuid4())


class Evaluator:
    """Implements engine.BreakerEvaluator over the enabled breakers of every account.

    `evaluate` returns the firings (the engine announces them with the state change they made).
    """

    def __init__(
        self,
        registry: Registry = DEFAULT,
        new_event_id: Callable[[], str] = _new_event_id,
        on_episodes_ended: Callable[[str], None] = _no_episodes_listener,
    ) -> None:
        """`on_episodes_ended(breaker_id)`: every episode of the breaker ended outside an evaluation (re-armed,
        changed, disabled, deleted); the engine drops it from its traders' states and stores them
        (`RiskEngine.end_breaker_episodes`)."""
        self.registry = registry
        self.new_event_id = new_event_id
        self._by_id: dict[str, CompiledBreaker] = {}
        self._by_account: dict[str, tuple[CompiledBreaker, ...]] = {}
        # The hot loop's view: per account, its breakers grouped by (condition, scope).
        self._hot: dict[str, tuple[_Group, ...]] = {}
        self.on_episodes_ended = on_episodes_ended
        self._voided: set[str] = set()  # re-armed, disabled or deleted since start: a restored episode is over

    # ---- definitions ----------------------------------------------------------------------------

    def compile(self, spec: BreakerSpec) -> CompiledBreaker:
        """Validate and precompile a definition; raises InvalidBreaker."""
        params, violations = self.registry.validate(spec.condition, spec.action, spec.parameters)
        condition = self.registry.get(spec.condition)
        if violations or condition is None:
            raise InvalidBreaker(spec.id, violations)
        duration = params.pop("duration_minutes", None)
        return CompiledBreaker(
            id=spec.id, name=spec.name, account_id=spec.account_id, condition=spec.condition, action=spec.action,
            evaluate=condition.evaluate, params=params,
            scope=Scope(_scope(spec.symbols), _scope(spec.exchanges)),
            duration_s=None if duration is None else duration * 60.0,
        )

    def install(self, spec: BreakerSpec) -> None:
        """Add or replace a breaker (after the store committed it). A disabled one is removed."""
        if not spec.enabled:
            self.remove(spec.id)
            return
        compiled = self.compile(spec)
        old = self._by_id.get(spec.id)
        if old is not None:
            if old.same_rule(compiled):
                compiled.tripped = old.tripped  # the episodes go on
            else:
                self._end_all(old)
            self._drop(old)
        self._by_id[spec.id] = compiled
        group = [*self._by_account.get(compiled.account_id, ()), compiled]
        group.sort(key=lambda b: (b.name, b.id))
        self._set_group(compiled.account_id, tuple(group))

    def rearm(self, breaker_id: str) -> None:
        """Forget every episode in progress: the breaker fires again on the next evaluation that finds its
        condition true."""
        compiled = self._by_id.get(breaker_id)
        if compiled is not None:
            self._end_all(compiled)

    def _end_all(self, b: CompiledBreaker) -> None:
        """End every episode of `b` in progress (the traders' states are told through on_episodes_ended; a
        state not told yet drops it at its next evaluation)."""
        self._voided.add(b.id)
        b.tripped.clear()
        self.on_episodes_ended(b.id)

    def remove(self, breaker_id: str) -> None:
        """Stop evaluating a breaker (disabled or deleted). Unknown ids are ignored."""
        old = self._by_id.get(breaker_id)
        if old is None:
            return
        self._end_all(old)
        self._drop(old)

    def _drop(self, old: CompiledBreaker) -> None:
        self._by_id.pop(old.id, None)
        rest = tuple(b for b in self._by_account.get(old.account_id, ()) if b.id != old.id)
        self._set_group(old.account_id, rest)

    def _set_group(self, account_id: str, group: tuple[CompiledBreaker, ...]) -> None:
        if not group:
            self._by_account.pop(account_id, None)
            self._hot.pop(account_id, None)
            return
        self._by_account[account_id] = group
        grouped: dict[tuple[str, Scope], list[tuple[int, CompiledBreaker]]] = {}
        for i, b in enumerate(group):
            grouped.setdefault((b.condition, b.scope), []).append((i, b))
        hot: list[_Group] = []
        for (condition, scope), members in grouped.items():
            spec = self.registry.get(condition)
            screen = None if spec is None else spec.screen
            hot.append(_Group(
                scoped=not scope.everything, symbols=scope.symbols, exchanges=scope.exchanges, scope=scope,
                quiet=None if screen is None else screen.quiet,
                bound=None if screen is None else screen.bound([b.params for _i, b in members]),
                members=tuple(members), maybe=set().union(*(b.tripped for _i, b in members)),
            ))
        self._hot[account_id] = tuple(hot)

    def load(self, specs: Iterable[BreakerSpec]) -> list[InvalidBreaker]:
        """Install breakers loaded from the store at start. Invalid ones are skipped (and returned)."""
        rejected: list[InvalidBreaker] = []
        for spec in specs:
            try:
                self.install(spec)
            except InvalidBreaker as exc:
                log.error("circuit breaker %s (%s) not loaded: %s", spec.id, spec.name, exc)
                rejected.append(exc)
        return rejected

    def enabled(self, account_id: str) -> tuple[CompiledBreaker, ...]:
        return self._by_account.get(account_id, ())

    def get(self, breaker_id: str) -> CompiledBreaker | None:
        return self._by_id.get(breaker_id)

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluate(
        self, st: TraderState, limits: Limits, now: float, enforce: bool, symbols: Iterable[tuple[str, str]]
    ) -> list[Firing]:
        groups = self._hot.get(st.account_id)
        if groups is None:
            return NO_FIRINGS
        if not st.episodes_adopted:
            self._adopt(st)
        trader = st.trader_id
        pairs: Collection[tuple[str, str]] | None = None
        todo: list[tuple[int, CompiledBreaker, _Group]] | None = None
        for g in groups:
            if g.scoped:  # evaluated only when the call concerns a pair in scope (Scope.matches, inlined)
                if pairs is None:
                    pairs = symbols if isinstance(symbols, Collection) else tuple(symbols)
                in_symbols, in_exchanges = g.symbols, g.exchanges
                for symbol, exchange in pairs:
                    if (in_symbols is None or symbol in in_symbols) and (
                        in_exchanges is None or not exchange or exchange in in_exchanges
                    ):
                        break
                else:
                    continue
            if g.quiet is not None and g.quiet(st, now, g.bound, g.scope):
                # Every condition of the group is false: end the trader's episodes (re-arm), if any.
                if trader in g.maybe:
                    episodes = st.breaker_episodes
                    for _i, b in g.members:
                        b.tripped.discard(trader)
                        if episodes.pop(b.id, None) is not None:
                            st.episodes_changed = True
                    g.maybe.discard(trader)
                continue
            if todo is None:
                todo = []
            todo.extend((i, b, g) for i, b in g.members)
        if todo is None:
            return NO_FIRINGS
        todo.sort(key=_position)  # the account's order (name, id), whatever the grouping
        fired: list[Firing] | None = None
        for _i, b, g in todo:
            trig = b.evaluate(st, b.params, now, b.scope)
            tripped = b.tripped
            if trig is None:
                if tripped:
                    tripped.discard(trader)
                episodes = st.breaker_episodes
                if episodes and episodes.pop(b.id, None) is not None:
                    st.episodes_changed = True
                continue
            if trader in tripped:
                continue
            tripped.add(trader)
            g.maybe.add(trader)
            st.breaker_episodes[b.id] = b.rule
            st.episodes_changed = True
            if fired is None:
                fired = []
            fired.append(self._fire(b, trig, st, limits, now, enforce))
        return NO_FIRINGS if fired is None else fired

    def _adopt(self, st: TraderState) -> None:
        """Take up the episodes a restored state holds: those of breakers still enabled with the same rule and
        not re-armed since start; the others are over."""
        st.episodes_adopted = True
        episodes = st.breaker_episodes
        if not episodes:
            return
        trader = st.trader_id
        for breaker_id, rule in list(episodes.items()):
            b = self._by_id.get(breaker_id)
            if b is None or b.rule != rule or breaker_id in self._voided or b.account_id != st.account_id:
                del episodes[breaker_id]
                st.episodes_changed = True
                continue
            b.tripped.add(trader)
            for g in self._hot.get(b.account_id, ()):
                if any(member is b for _i, member in g.members):
                    g.maybe.add(trader)

    def _fire(
        self, b: CompiledBreaker, trig: Triggered, st: TraderState, limits: Limits, now: float, enforce: bool
    ) -> Firing:
        duration = b.duration_s
        if duration is None and limits.stop_trading_minutes > 0:
            duration = limits.stop_trading_minutes * 60.0
        firing = actions.take(actions.Trip(b, trig, duration, now, enforce, self.new_event_id()), st)
        log.warning(
            "RISK LIMIT BREACHED trader=%s account=%s rule=breaker:%s condition=%s action=%s%s values=%s",
            st.trader_id, st.account_id, b.name, b.condition, b.action,
            "" if enforce else " (shadow mode: not enforced)", firing.triggered_values,
            extra={"trader_id": st.trader_id, "rule": f"breaker:{b.name}", "breaker_id": b.id},
        )
        return firing
