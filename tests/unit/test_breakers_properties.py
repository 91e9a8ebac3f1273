"""Property tests of breaker invariants (hypothesis): disabled breakers never fire; one event per episode."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard_server.engine.breakers import Condition, Evaluator, Registry, Scope, Triggered
from tradeguard_server.engine.breakers.base import Params, Screen
from tradeguard_server.engine.breakers.conditions import BUILTIN
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import ClosedTrade, Flags, OrderIntent, Position, Side

T0 = 1_767_268_800.0
LIMITS = Limits(daily_max_drawdown_percentage=None, max_drawdown_percentage=None)
SYMBOLS = ("BTCUSDT", "ETHUSDT")


@dataclass
class Spec:
    id: str
    name: str
    condition: str
    action: str
    parameters: dict[str, object]
    account_id: str = "a1"
    symbols: list[str] | None = None
    exchanges: list[str] | None = None
    enabled: bool = True
    extra: dict[str, object] = field(default_factory=dict)


CONDITIONS: list[tuple[str, dict[str, object]]] = [
    ("max_drawdown", {"threshold": 0.05}),
    ("daily_loss", {"threshold": 0.03}),
    ("equity_floor", {"value": 9_000}),
    ("consecutive_losses", {"count": 2}),
    ("loss_streak_in_window", {"trade_limit": 2, "lookback_minutes": 30}),
    ("position_drawdown", {"threshold": 0.02}),
    ("order_rate", {"max_orders": 1, "window_seconds": 60}),
]

breakers = st.lists(
    st.tuples(
        st.sampled_from(CONDITIONS),
        st.sampled_from(["pause_trading", "reduce_only", "close_position", "alert"]),
        st.sampled_from([None, ["BTCUSDT"], ["ETHUSDT"]]),
    ),
    min_size=1,
    max_size=8,
)

equity_op = st.tuples(st.just("equity"), st.floats(min_value=5_000.0, max_value=12_000.0))
trade_op = st.tuples(st.just("trade"), st.tuples(st.sampled_from(SYMBOLS), st.floats(min_value=-50.0, max_value=50.0)))
positions_op = st.tuples(
    st.just("positions"), st.tuples(st.sampled_from(SYMBOLS), st.floats(min_value=0.9, max_value=1.1))
)
order_op = st.tuples(st.just("order"), st.sampled_from([*SYMBOLS, None]))
wait_op = st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=900.0))
ops = st.lists(st.one_of(equity_op, trade_op, positions_op, order_op, wait_op), max_size=40)


def run(engine: RiskEngine, clock: ManualClock, op: tuple[str, object], i: int) -> list[str]:
    kind, arg = op
    if kind == "equity":
        assert isinstance(arg, float)
        return [f.breaker_id for f in engine.report_equity("t1", "a1", arg, None).firings]
    if kind == "trade":
        assert isinstance(arg, tuple)
        trade = ClosedTrade(f"x{i}", arg[0], "binance", Side.SELL, arg[1], clock.now())
        return [f.breaker_id for f in engine.report_trade("t1", "a1", trade).firings]
    if kind == "positions":
        assert isinstance(arg, tuple)
        pos = Position(arg[0], Side.BUY, 1.0, 100.0, 100.0 * arg[1], "binance")
        return [f.breaker_id for f in engine.report_positions("t1", "a1", [pos]).firings]
    if kind == "order":
        st_ = engine.traders["t1"]
        st_.order_times.append(clock.now())
        order = None if arg is None else OrderIntent(str(arg), Side.BUY, 0.001, 100.0, "binance")
        before = len(st_.pauses)
        engine.can_trade("t1", "a1", order)
        return ["pause"] if len(st_.pauses) > before else []
    assert isinstance(arg, float)
    clock.advance(arg)
    return []


@settings(max_examples=200, deadline=None)
@given(breakers, ops, st.booleans())
def test_a_disabled_breaker_never_fires(
    defs: list[tuple[tuple[str, dict[str, object]], str, list[str] | None]],
    operations: list[tuple[str, object]],
    enforce: bool,
) -> None:
    clock = ManualClock(T0)
    fired: list[str] = []
    evaluator = Evaluator()
    engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=enforce), breakers=evaluator,
                        listeners=[lambda e: fired.extend(f.breaker_id for f in e.firings)])
    specs = [Spec(f"b{i}", f"b{i}", c, a, dict(p), symbols=s) for i, ((c, p), a, s) in enumerate(defs)]
    evaluator.load(specs)
    engine.report_equity("t1", "a1", 10_000.0, None)
    half = len(operations) // 2
    for i, op in enumerate(operations[:half]):
        run(engine, clock, op, i)

    for spec in specs:
        spec.enabled = False
        evaluator.install(spec)
    fired.clear()
    earlier_pauses = {id(p) for p in engine.traders["t1"].pauses}
    for i, op in enumerate(operations[half:], start=half):
        assert run(engine, clock, op, i) == []

    assert fired == []
    assert all(id(p) in earlier_pauses for p in engine.traders["t1"].pauses)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=0.01, max_value=0.5),
    st.lists(st.tuples(st.floats(min_value=1_000.0, max_value=20_000.0), st.floats(min_value=0.0, max_value=3600.0)),
             min_size=1, max_size=60),
    st.sampled_from(["pause_trading", "alert"]),
)
def test_no_two_events_for_one_episode(threshold: float, reports: list[tuple[float, float]], action: str) -> None:
    clock = ManualClock(T0)
    evaluator = Evaluator()
    engine = RiskEngine(clock, defaults=LIMITS, breakers=evaluator)
    evaluator.install(Spec("b", "dd", "max_drawdown", action, {"threshold": threshold}))
    in_episode = False
    peak = 0.0
    for equity, gap in reports:
        clock.advance(gap)
        firings = engine.report_equity("t1", "a1", equity, None).firings
        peak = max(peak, equity)
        condition = (peak - equity) / peak > threshold

        assert len(firings) == (1 if condition and not in_episode else 0)
        in_episode = condition


def recording_registry(timeline: list[tuple[str, str, bool]]) -> Registry:
    """The built-in conditions, each wrapped to record whether it held at every evaluation."""

    def wrap(cond: Condition) -> Condition:
        def evaluate(state: TraderState, params: Params, now: float, scope: Scope) -> Triggered | None:
            trig = cond.evaluate(state, params, now, scope)
            timeline.append(("eval", cond.name, trig is not None))
            return trig

        screen = cond.screen
        if screen is None:
            return replace(cond, evaluate=evaluate)

        def quiet(state: TraderState, now: float, bound: Any, scope: Scope) -> bool:
            # A quiet screen is an evaluation that found the condition false (for every breaker of the group).
            calm = screen.quiet(state, now, bound, scope)
            if calm:
                timeline.append(("eval", cond.name, False))
            return calm

        return replace(cond, evaluate=evaluate, screen=Screen(screen.bound, quiet))

    return Registry(wrap(c) for c in BUILTIN)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(CONDITIONS), st.sampled_from(["pause_trading", "close_position", "alert"]),
                       st.sampled_from([None, ["BTCUSDT"]])), min_size=1, max_size=7, unique_by=lambda d: d[0][0]),
    ops,
    st.booleans(),
)
def test_every_condition_fires_once_per_episode_and_only_after_it_was_seen_false(
    defs: list[tuple[tuple[str, dict[str, object]], str, list[str] | None]],
    operations: list[tuple[str, object]],
    enforce: bool,
) -> None:
    timeline: list[tuple[str, str, bool]] = []
    clock = ManualClock(T0)
    evaluator = Evaluator(registry=recording_registry(timeline))
    engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=enforce), breakers=evaluator,
                        listeners=[lambda e: timeline.extend(("fire", f.condition, True) for f in e.firings)])
    evaluator.load([Spec(f"b{i}", f"b{i}", c, a, dict(p), symbols=s) for i, ((c, p), a, s) in enumerate(defs)])
    engine.report_equity("t1", "a1", 10_000.0, None)
    for i, op in enumerate(operations):
        run(engine, clock, op, i)

    for condition in {c for (c, _p), _a, _s in defs}:
        events = [(kind, held) for kind, name, held in timeline if name == condition]
        in_episode = False
        for j, (kind, held) in enumerate(events):
            if kind == "fire":
                continue
            fires_next = j + 1 < len(events) and events[j + 1][0] == "fire"
            assert fires_next == (held and not in_episode)
            in_episode = held


# Several breakers per condition with different parameters, so screens fold real groups (smallest
# threshold, longest window) and a group can be partly over its limits.
VARIED: list[tuple[str, dict[str, object]]] = [
    ("max_drawdown", {"threshold": 0.05}), ("max_drawdown", {"threshold": 0.2}),
    ("daily_loss", {"threshold": 0.03}), ("daily_loss", {"threshold": 0.1}),
    ("equity_floor", {"value": 9_000}), ("equity_floor", {"value": 7_000}),
    ("consecutive_losses", {"count": 2}), ("consecutive_losses", {"count": 4}),
    ("loss_streak_in_window", {"trade_limit": 2, "lookback_minutes": 30}),
    ("loss_streak_in_window", {"trade_limit": 3, "lookback_minutes": 5}),
    ("position_drawdown", {"threshold": 0.02}), ("position_drawdown", {"threshold": 0.08}),
    ("order_rate", {"max_orders": 1, "window_seconds": 60}), ("order_rate", {"max_orders": 3, "window_seconds": 600}),
]


def unscreened_registry() -> Registry:
    """The built-in conditions without their screens: every breaker evaluated on every call."""
    return Registry(replace(c, screen=None) for c in BUILTIN)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(VARIED), st.sampled_from(["pause_trading", "close_position", "alert"]),
                       st.sampled_from([None, ["BTCUSDT"], ["ETHUSDT"]])), min_size=1, max_size=12),
    ops,
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=11), max_size=3),
)
def test_screening_groups_changes_no_firing_and_no_episode(
    defs: list[tuple[tuple[str, dict[str, object]], str, list[str] | None]],
    operations: list[tuple[str, object]],
    enforce: bool,
    rearms: list[int],
) -> None:
    """The screened evaluator fires exactly the breakers, in exactly the order, that evaluating every breaker
    one by one fires, and leaves the same episodes in progress - including after a re-arm."""
    specs = [Spec(f"b{i:02d}", f"b{i:02d}", c, a, dict(p), symbols=s) for i, ((c, p), a, s) in enumerate(defs)]
    rigs = []
    fired: tuple[list[str], list[str]] = ([], [])
    for registry, log in ((Registry(BUILTIN), fired[0]), (unscreened_registry(), fired[1])):
        clock = ManualClock(T0)
        evaluator = Evaluator(registry=registry)
        engine = RiskEngine(clock, defaults=LIMITS, flags=Flags(enable_risk_enforcement=enforce), breakers=evaluator,
                            listeners=[lambda e, log=log: log.extend(f.breaker_id for f in e.firings)])  # type: ignore[misc]
        evaluator.load(specs)
        engine.report_equity("t1", "a1", 10_000.0, None)
        rigs.append((clock, evaluator, engine))

    for i, op in enumerate(operations):
        if i in rearms and i < len(specs):
            for _clock, evaluator, _engine in rigs:
                evaluator.rearm(specs[i].id)
        (c1, ev1, e1), (c2, ev2, e2) = rigs
        assert run(e1, c1, op, i) == run(e2, c2, op, i)
        assert fired[0] == fired[1]
        assert [p.reason for p in e1.traders["t1"].pauses] == [p.reason for p in e2.traders["t1"].pauses]
        for spec in specs:
            b1, b2 = ev1.get(spec.id), ev2.get(spec.id)
            assert b1 is not None and b2 is not None
            assert b1.tripped == b2.tripped, spec
