"""Micro-benchmark: µs per CanTrade-style breaker evaluation with 100 enabled breakers on one account.

Prints the cost of one `Evaluator.evaluate` call (nothing firing, the steady state) and of a full
`RiskEngine.can_trade` with and without the 100 breakers, so the ratio is measured in the same run.

    .venv/bin/python bench/breakers_micro.py
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass, field

from tradeguard_server.engine.breakers import Evaluator
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.types import ClosedTrade, OrderIntent, Position, Side

T0 = 1_767_268_800.0
ACCOUNT = "acct"
TRADER = "bot"
ORDER = OrderIntent("BTCUSDT", Side.BUY, 0.001, 50_000.0, exchange="binance")


@dataclass
class Spec:
    id: str
    name: str
    condition: str
    action: str
    parameters: dict[str, object]
    account_id: str = ACCOUNT
    symbols: list[str] | None = None
    exchanges: list[str] | None = None
    enabled: bool = True
    extra: dict[str, object] = field(default_factory=dict)


# A realistic mix: account-level conditions unscoped and scoped, trade windows, order rate, positions.
TEMPLATES: list[tuple[str, dict[str, object], list[str] | None]] = [
    ("max_drawdown", {"threshold": 0.5}, None),
    ("daily_loss", {"threshold": 0.5}, ["BTCUSDT", "ETHUSDT"]),
    ("consecutive_losses", {"count": 50}, None),
    ("consecutive_losses", {"count": 50}, ["BTCUSDT"]),
    ("loss_streak_in_window", {"trade_limit": 50, "lookback_minutes": 60}, ["BTCUSDT"]),
    ("equity_floor", {"value": 1.0}, None),
    ("order_rate", {"max_orders": 5_000, "window_seconds": 60}, None),
    ("position_drawdown", {"threshold": 0.5}, None),
    ("max_drawdown", {"threshold": 0.5}, ["SOLUSDT"]),
    ("position_drawdown", {"threshold": 0.5}, ["ETHUSDT"]),
]


def specs(n: int) -> list[Spec]:
    out = []
    for i in range(n):
        condition, params, symbols = TEMPLATES[i % len(TEMPLATES)]
        out.append(Spec(f"b{i:03d}", f"breaker_{i:03d}", condition, "pause_trading", dict(params), symbols=symbols))
    return out


def make_engine(breakers: int) -> RiskEngine:
    clock = ManualClock(T0)
    evaluator = Evaluator()
    evaluator.load(specs(breakers))
    engine = RiskEngine(clock, defaults=Limits(), breakers=evaluator if breakers else None)
    engine.report_equity(TRADER, ACCOUNT, 10_000.0, None)
    engine.report_positions(TRADER, ACCOUNT, [
        Position("BTCUSDT", Side.BUY, 0.01, 50_000.0, 49_900.0, exchange="binance"),
        Position("ETHUSDT", Side.SELL, 0.5, 3_000.0, 3_010.0, exchange="binance"),
    ])
    for i in range(20):
        clock.advance(30.0)
        pnl = -5.0 if i % 3 else 7.0
        engine.report_trade(TRADER, ACCOUNT, ClosedTrade(f"t{i}", "BTCUSDT", "binance", Side.SELL, pnl, clock.now()))
    return engine


def per_call_us(fn: object, number: int) -> float:
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=7, number=number)) / number * 1e6


def main() -> None:
    number = 20_000
    engine = make_engine(100)
    evaluator = engine.breakers
    assert isinstance(evaluator, Evaluator)
    st = engine.traders[TRADER]
    limits = engine.limits_for(ACCOUNT)
    now = engine.clock.now()
    pairs = [(ORDER.symbol, ORDER.exchange)]

    assert not evaluator.evaluate(st, limits, now, True, pairs), "benchmark breakers must not fire"
    evaluate_us = per_call_us(lambda: evaluator.evaluate(st, limits, now, True, pairs), number)
    no_order_us = per_call_us(lambda: evaluator.evaluate(st, limits, now, True, ()), number)
    with_breakers = per_call_us(lambda: engine.can_trade(TRADER, ACCOUNT, ORDER), number)
    baseline_engine = make_engine(0)
    baseline = per_call_us(lambda: baseline_engine.can_trade(TRADER, ACCOUNT, ORDER), number)

    print("breakers on the account:            100 (none firing)")
    print(f"Evaluator.evaluate, CanTrade(order): {evaluate_us:8.2f} µs  ({evaluate_us * 10:.0f} ns per breaker)")
    print(f"Evaluator.evaluate, CanTrade():      {no_order_us:8.2f} µs  (scoped breakers skipped)")
    print(f"RiskEngine.can_trade, no breakers:   {baseline:8.2f} µs")
    print(f"RiskEngine.can_trade, 100 breakers:  {with_breakers:8.2f} µs  (x{with_breakers / baseline:.2f})")


if __name__ == "__main__":
    main()
