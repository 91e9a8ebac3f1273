"""Pure-engine micro-benchmark: µs per RiskEngine.can_trade, in process, no gRPC.

    .venv/bin/python bench/engine_micro.py [--calls 100000] [--no-breakers]

Workload (the same as bench/run.py's "full" scenario): the seed configuration with every field set and
20 symbol configurations (built by the real config path, `limits_from_config`), 100 enabled breakers
(engine.breakers.Evaluator, none firing; skipped when engine/breakers is absent), a trader with equity and
two open positions, and a full order intent. Each call is timed alone (perf_counter_ns) and p50 / p99 /
p99.9 / mean are printed, for:

- engine:   RiskEngine.can_trade(trader, account, order)                     (target: p50 <= 20 µs)
- service:  RiskService.can_trade on the parsed request (validation + engine + CanTradeResponse)
- handler:  the whole method handler the sidecar registers, raw request bytes in, response bytes out
            (dispatch + parse + service + serialize) - everything but the gRPC framework
- equity:   RiskService.report_equity (a state change: engine, breakers, change listeners, response)

The garbage collector stays on (as in the server), so its pauses show in p99.9.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen as lg

from tradeguard_server.api.config_rules import limits_from_config
from tradeguard_server.api.convert import order_from_msg, position_from_msg
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar


class SteppingClock:
    """Time moves 200 µs per reading (one reading per call): 5,000 orders per simulated second, so the
    order-rate limit's window (1 s) and the order_rate breakers (10,000 per 60 s) stay in steady state."""

    __slots__ = ("_now",)

    def __init__(self) -> None:
        self._now = time.time()

    def now(self) -> float:
        self._now += 0.0002
        return self._now


def build(with_breakers: bool) -> tuple[Sidecar, str]:
    """A Sidecar object (not started: no sockets) with the benchmark workload installed."""
    settings = load_settings({}, {"enable_persistence": False, "metrics_listen": "", "listen": "127.0.0.1:0"})
    sc = Sidecar(settings, clock=SteppingClock())
    engine = sc.engine
    engine.set_account_limits(lg.ACCOUNT, limits_from_config(lg.risk_config(), engine.defaults))
    note = "no breakers"
    if with_breakers:
        try:
            from tradeguard_server.engine.breakers import Evaluator
        except ImportError:
            note = "engine/breakers absent: measured without breakers"
        else:
            evaluator = engine.breakers
            if evaluator is None:
                evaluator = engine.breakers = Evaluator()
            specs = []
            for i, b in enumerate(lg.breakers(100)):
                specs.append(_Spec(f"b{i:03d}", b.name, b.account_id, b.condition, b.action,
                                   {k: v for k, v in b.parameters.items()}, list(b.symbols) or None))
            for spec in specs:
                evaluator.install(spec)
            note = f"{len(specs)} breakers"
    engine.report_equity(lg.TRADER, lg.ACCOUNT, lg.EQUITY, None)
    engine.report_positions(lg.TRADER, lg.ACCOUNT, [position_from_msg(p) for p in lg.positions()])
    engine.report_equity(lg.TRADER, lg.ACCOUNT, lg.EQUITY, None)
    return sc, note


class _Spec:
    def __init__(self, id: str, name: str, account_id: str, condition: str, action: str,
                 parameters: dict[str, Any], symbols: list[str] | None) -> None:
        self.id, self.name, self.account_id, self.condition, self.action = id, name, account_id, condition, action
        self.parameters, self.symbols, self.exchanges, self.enabled = parameters, symbols, None, True


REFERENCE_LOOPS = 300


def _reference_work() -> float:
    total = 0.0
    for i in range(REFERENCE_LOOPS):
        total += i * 1.0001
    return total


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(min(calls, 5_000)):  # warm-up
        fn()
    clock = time.perf_counter_ns
    out = [0.0] * calls
    for i in range(calls):
        t0 = clock()
        fn()
        out[i] = (clock() - t0) / 1000.0
    out.sort()
    return out


def drive(coro_fn: Callable[[], Any]) -> Callable[[], object]:
    """Run a coroutine that never suspends (the handlers do not) without an event loop round trip."""

    def run() -> object:
        coro = coro_fn()
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("handler suspended")

    return run


class _Ctx:
    """Just enough ServicerContext for a handler that succeeds."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"aborted: {args}")


def report(name: str, lat: list[float]) -> dict[str, float]:
    n = len(lat)
    row = {"p50": lat[n // 2], "p99": lat[int(n * 0.99)], "p999": lat[int(n * 0.999)], "mean": statistics.fmean(lat)}
    print(f"{name:<10} p50 {row['p50']:7.1f} µs   p99 {row['p99']:7.1f} µs   p99.9 {row['p999']:7.1f} µs   "
          f"mean {row['mean']:7.1f} µs", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="µs per RiskEngine.can_trade (full order, 20 symbols, 100 breakers)")
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--breakers", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    sc, note = build(args.breakers)
    engine, risk = sc.engine, sc.risk
    req = lg.can_trade_request(True)
    order = order_from_msg(req.order)
    decision, _st = engine.can_trade(lg.TRADER, lg.ACCOUNT, order)
    assert decision.allowed and not decision.would_deny, decision
    print(f"workload: full order, {len(engine.limits_for(lg.ACCOUNT).symbols)} symbol limits, {note}; "
          f"{args.calls} calls each; python {sys.version.split()[0]}")
    # The VM's speed drifts by up to 1.5x between minutes (noisy neighbours): a fixed pure-Python workload,
    # timed in the same run, shows which speed this run had. `engine/reference` is comparable across runs.
    ref = report("reference", timed(_reference_work, args.calls))
    eng = report("engine", timed(lambda: engine.can_trade(lg.TRADER, lg.ACCOUNT, order), args.calls))
    print(f"engine/reference p50 ratio {eng['p50'] / ref['p50']:.2f} (reference = {REFERENCE_LOOPS} float "
          "multiply-adds in a Python loop)")
    ctx = _Ctx()
    report("service", timed(drive(lambda: risk.can_trade(req, ctx)), args.calls))  # type: ignore[arg-type]
    handler = risk.handler(None).service(_Details(lg.CAN_TRADE))  # type: ignore[arg-type]
    assert handler is not None and handler.unary_unary is not None
    behavior, serialize = handler.unary_unary, handler.response_serializer
    raw = req.SerializeToString()
    assert serialize is not None

    def full() -> object:
        return serialize(drive(lambda: behavior(raw, ctx))())

    report("handler", timed(full, args.calls))
    eq = lg.report_equity_request()
    report("equity", timed(drive(lambda: risk.report_equity(eq, ctx)), args.calls))  # type: ignore[arg-type]
    # A full collection runs on the event loop; `tradeguard serve` freezes what start-up made (gc.freeze).
    before = _full_collection_ms()
    gc.freeze()
    print(f"gc         full collection {before:.1f} ms with the start-up objects, {_full_collection_ms():.2f} ms "
          "after gc.freeze()")
    gc.unfreeze()
    return 0


def _full_collection_ms() -> float:
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - t0) * 1000.0


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


if __name__ == "__main__":
    sys.exit(main())
