"""Property (issue 13, "what it must show" 4): the order in which trades and equity reports arrive changes no
verdict that their timestamps determine.

Every example draws a set of closed trades and equity reports with distinct times (after a first equity
report, the trader's baseline), feeds them to a fresh engine once in time order and once in a random
permutation, all at the same clock time, and compares what the timestamps determine:
- the state the rules read: current equity (the newest report), peak (every report counts), period
  references, the loss streak (losses closed after the newest win), the trades in closed_at order;
- every rule's verdict on that state: the loss limits, the streak limit, and each breaker condition
  (windowed, streak, equity; scoped and unscoped), checked against an oracle written from the README;
- CanTrade: denied whenever one of those verdicts (the pausing ones) is a breach.
When a pause starts can depend on arrival order (a sidecar acts on what it knows when it knows it); whether
a rule is breached by the facts reported cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard_server.engine import checks
from tradeguard_server.engine.breakers import Evaluator
from tradeguard_server.engine.breakers.base import Scope
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import ClosedTrade, OrderIntent, Side

NOW = 1_767_268_800.0  # 12:00 UTC: every time below is within the same day
BASELINE_AT = NOW - 4 * 3600.0
BASELINE = 10_000.0
BUY = OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0)
LIMITS = Limits(daily_max_drawdown_percentage=8.0, max_drawdown_percentage=12.0, stop_trading_minutes=30,
                consecutive_loss_threshold=3, cooling_off_period_minutes=30)


@dataclass
class Spec:
    id: str
    name: str
    condition: str
    parameters: dict[str, object]
    action: str = "pause_trading"
    symbols: list[str] | None = None
    exchanges: list[str] | None = None
    account_id: str = "a1"
    enabled: bool = True
    scope: Scope = field(init=False)

    def __post_init__(self) -> None:
        self.scope = Scope(None if self.symbols is None else frozenset(self.symbols), None)


PAUSING = [  # unscoped: evaluated on every report, so a breach in the final state has paused the trader
    Spec("b1", "guard", "loss_streak_in_window", {"trade_limit": 3, "lookback_minutes": 60}),
    Spec("b2", "streak", "consecutive_losses", {"count": 4}),
    Spec("b3", "floor", "equity_floor", {"value": 9_000.0}),
    Spec("b4", "drawdown", "max_drawdown", {"threshold": 0.11}),
    Spec("b5", "daily", "daily_loss", {"threshold": 0.07}),
]
SCOPED = [
    Spec("s1", "eth-guard", "loss_streak_in_window", {"trade_limit": 2, "lookback_minutes": 30}, "alert", ["ETHUSDT"]),
    Spec("s2", "eth-streak", "consecutive_losses", {"count": 2}, "alert", ["ETHUSDT"]),
]


@dataclass(frozen=True)
class Trade:
    trade_id: str
    symbol: str
    pnl: float
    closed_at: float


@dataclass(frozen=True)
class Equity:
    equity: float
    observed_at: float


Report = Trade | Equity


@st.composite
def report_sets(draw: st.DrawFn) -> list[Report]:
    """Trades and equity reports with distinct times in the 3 hours before NOW."""
    times = st.integers(min_value=0, max_value=3 * 3600 - 1).map(lambda s: NOW - s)
    trade_times = draw(st.lists(times, max_size=14, unique=True))
    trades = [Trade(f"x{i}", draw(st.sampled_from(["BTCUSDT", "ETHUSDT"])),
                    draw(st.sampled_from([-25.0, -5.0, 0.0, 5.0, 25.0])), at) for i, at in enumerate(trade_times)]
    equity_times = draw(st.lists(times, max_size=8, unique=True))
    equities = [Equity(draw(st.sampled_from([8_500.0, 8_900.0, 9_200.0, 9_600.0, 10_000.0, 10_500.0, 11_000.0])),
                       at) for at in equity_times]
    return [*trades, *equities]


def at(report: Report) -> tuple[float, str]:
    return (report.closed_at, report.trade_id) if isinstance(report, Trade) else (report.observed_at, "")


def run(reports: list[Report]) -> RiskEngine:
    evaluator = Evaluator()
    for spec in (*PAUSING, *SCOPED):
        evaluator.install(spec)
    engine = RiskEngine(ManualClock(NOW), defaults=LIMITS, breakers=evaluator)
    engine.report_equity("t", "a1", BASELINE, BASELINE_AT)
    for r in reports:
        if isinstance(r, Trade):
            engine.report_trade("t", "a1", ClosedTrade(r.trade_id, r.symbol, "binance", Side.SELL, r.pnl, r.closed_at))
        else:
            engine.report_equity("t", "a1", r.equity, r.observed_at)
    return engine


def verdicts(engine: RiskEngine) -> dict[str, object]:
    """What the timestamps determine: the state the rules read and every rule's verdict on it."""
    s = engine.traders["t"]
    out: dict[str, object] = {
        "current_equity": s.current_equity, "peak_equity": s.peak_equity, "day_start_equity": s.day_start_equity,
        "consecutive_losses": s.consecutive_losses, "trades": [t.trade_id for t in s.recent_trades],
        "loss_breaches": sorted(b.code.name for b in checks.loss_breaches(s, LIMITS)),
        "streak_breach": checks.streak_breach(s, LIMITS) is not None,
    }
    for spec in (*PAUSING, *SCOPED):
        compiled = engine.breakers.get(spec.id)  # type: ignore[union-attr]
        assert compiled is not None
        trig = compiled.evaluate(s, compiled.params, NOW, compiled.scope)
        out[spec.name] = None if trig is None else trig.values
    return out


def oracle(reports: list[Report]) -> dict[str, object]:
    """The same from the README's definitions, computed from the set of reports alone."""
    trades = sorted((r for r in reports if isinstance(r, Trade)), key=at)
    equities = sorted((r for r in reports if isinstance(r, Equity)), key=at)
    current = equities[-1].equity if equities else BASELINE
    peak = max([BASELINE, *(e.equity for e in equities)])

    def streak(ts: list[Trade]) -> int:
        n = 0
        for t in ts:
            n = 0 if t.pnl > 0 else n + (t.pnl < 0)
        return n

    def window_losses(ts: list[Trade], minutes: float) -> int:
        return sum(1 for t in ts if t.pnl < 0 and t.closed_at > NOW - minutes * 60.0)

    eth = [t for t in trades if t.symbol == "ETHUSDT"]
    return {
        "current_equity": current, "peak_equity": peak, "consecutive_losses": streak(trades),
        "trades": [t.trade_id for t in trades],
        "guard": window_losses(trades, 60) >= 3, "streak": streak(trades) >= 4, "floor": current < 9_000.0,
        "drawdown": (peak - current) / peak > 0.11, "daily": (BASELINE - current) / BASELINE > 0.07,
        "eth-guard": window_losses(eth, 30) >= 2, "eth-streak": streak(eth) >= 2,
        "streak_breach": streak(trades) >= 3,
    }


@settings(max_examples=400, deadline=None)
@given(report_sets().flatmap(lambda rs: st.tuples(st.just(rs), st.permutations(rs))))
def test_arrival_order_changes_no_verdict_the_timestamps_determine(drawn: tuple[list[Report], list[Report]]) -> None:
    reports, arrival = drawn
    in_time_order = run(sorted(reports, key=at))
    shuffled = run(arrival)

    expected, got = verdicts(in_time_order), verdicts(shuffled)
    truth = oracle(reports)

    assert got == expected
    for name in ("current_equity", "peak_equity", "consecutive_losses", "trades", "streak_breach"):
        assert got[name] == truth[name], name
    for spec in (*PAUSING, *SCOPED):
        assert (got[spec.name] is not None) == truth[spec.name], spec.name
    breached = bool(got["loss_breaches"]) or bool(got["streak_breach"]) or any(
        got[spec.name] is not None for spec in PAUSING)
    decision, _ = shuffled.can_trade("t", "a1", BUY)
    assert not (breached and decision.allowed)
