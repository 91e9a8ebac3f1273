"""Pure-engine micro-benchmark: µs per RiskEngine.can_trade, in process, no gRPC.

    .venv/bin/python bench/engine_micro.py [--calls 100000] [--no-breakers]

Workload: bench/run.py's "full" scenario (the seed configuration with every field set and 20 symbol
configurations, built by the real config path, `limits_from_config`; 100 enabled breakers, none firing;
a trader with equity and two open positions; a full order intent) plus the order lifecycle of issue 16:
every pre-trade control configured (order and position quantity, open orders, price collar with a fresh
reference price, duplicate window, allowed/blocked symbols, a trading window, daily notional and orders,
the fill throttle) and 100 pending orders. Every order asked about is allowed, so it becomes a pending
order too; after each timed call an untimed ReportOrder cancels it, so 100 stay pending. The orders
rotate over 1,000 quantities (an equal order within the duplicate window would be denied). Each call is
timed alone (perf_counter_ns) and p50 / p99 / p99.9 / mean are printed, for:

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

from dataclasses import replace

import loadgen as lg

from tradeguard_server.api.config_rules import limits_from_config
from tradeguard_server.api.convert import order_from_msg, position_from_msg
from tradeguard_server.engine.types import OrderIntent, OrderStatus, PriceMark
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


PENDING = 100  # pending orders the trader holds throughout
ROTATION = 1_000  # distinct order quantities asked about in turn


def controls_config() -> Any:
    """bench/run.py's configuration with every pre-trade control of issue 16 set, none binding."""
    cfg = lg.risk_config()
    cfg.max_order_quantity = 1e6
    cfg.max_position_quantity = 1e9
    cfg.max_open_orders = 10_000
    cfg.price_collar_percentage = 50.0
    cfg.reference_price_max_age_seconds = 86_400
    cfg.duplicate_order_window_ms = 1
    cfg.allowed_symbols.extend(lg.SYMBOLS)
    cfg.blocked_symbols.append("LUNAUSDT")
    cfg.trading_windows.add(start="00:00", end="24:00")
    cfg.max_daily_notional = 1e15
    cfg.max_daily_orders = 1_000_000_000
    cfg.max_fills_per_window = 1_000_000
    cfg.pending_order_ttl_seconds = 86_400
    cfg.max_position_size_percentage = 100.0  # the pending orders must fit (as before, nothing binds)
    cfg.max_correlated_exposure_percentage = 100.0
    for sym in cfg.symbol_configs:
        sym.max_position_size_percentage = 100.0
    return cfg


def build(with_breakers: bool) -> tuple[Sidecar, str]:
    """A Sidecar object (not started: no sockets) with the benchmark workload installed."""
    settings = load_settings({}, {"enable_persistence": False, "metrics_listen": "", "http_listen": "",
                                   "listen": "127.0.0.1:0"})
    sc = Sidecar(settings, clock=SteppingClock())
    engine = sc.engine
    engine.set_account_limits(lg.ACCOUNT, limits_from_config(controls_config(), engine.defaults))
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
    order = order_from_msg(lg.order())
    engine.report_prices(lg.ACCOUNT, [PriceMark(order.symbol, order.price, engine.clock.now())])
    for i in range(PENDING):  # resting orders, a little apart in quantity (not duplicates)
        resting = replace(order, quantity=order.quantity * (0.5 + i * 1e-4))
        decision, _st = engine.can_trade(lg.TRADER, lg.ACCOUNT, resting, f"resting-{i}")
        assert decision.allowed, decision.reason
    return sc, note


def rotation(order: OrderIntent) -> list[OrderIntent]:
    return [replace(order, quantity=order.quantity * (1.0 + i * 1e-6)) for i in range(ROTATION)]


class _Spec:
    def __init__(self, id: str, name: str, account_id: str, condition: str, action: str,
                 parameters: dict[str, Any], symbols: list[str] | None) -> None:
        self.id, self.name, self.account_id, self.condition, self.action = id, name, account_id, condition, action
        self.parameters, self.symbols, self.exchanges, self.enabled = parameters, symbols, None, True


CONTROLS = ("symbol_permission", "trading_window", "duplicate_order", "price_collar", "order_quantity", "daily_orders",
            "daily_notional", "open_orders", "position_quantity", "fill_rate")
REFERENCE_LOOPS = 300


def _reference_work() -> float:
    total = 0.0
    for i in range(REFERENCE_LOOPS):
        total += i * 1.0001
    return total


def timed(fn: Callable[[], object], calls: int, after: Callable[[], object] | None = None) -> list[float]:
    """µs of each call of `fn`, sorted; `after` runs untimed after each call."""
    for _ in range(min(calls, 5_000)):  # warm-up
        fn()
        if after is not None:
            after()
    clock = time.perf_counter_ns
    out = [0.0] * calls
    for i in range(calls):
        t0 = clock()
        fn()
        out[i] = (clock() - t0) / 1000.0
        if after is not None:
            after()
    out.sort()
    return out


class Orders:
    """The orders asked about in turn, and the untimed cancel that keeps PENDING pending."""

    def __init__(self, sc: Sidecar, order: OrderIntent) -> None:
        self.engine = sc.engine
        self.persistence = sc.persistence
        self.persistence._snap_scheduled = True  # (see flush) - no event loop runs here to schedule it
        self.orders = rotation(order)
        self.n = 0
        self.last = ""

    def next_id(self) -> str:
        self.n += 1
        self.last = f"bench-{self.n}"
        return self.last

    def ask(self) -> object:
        return self.engine.can_trade(lg.TRADER, lg.ACCOUNT, self.orders[self.n % ROTATION], self.next_id())

    def cancel(self) -> None:
        self.engine.report_order(lg.TRADER, lg.ACCOUNT, self.last, OrderStatus.CANCELLED, 0.0, 0.0)
        self.flush()

    def flush(self) -> None:
        """The snapshot of the order bookkeeping, as the server takes it: after the call, once per turn of its
        event loop (persistence.Persistence.flush_bookkeeping), not inside the call."""
        self.persistence.flush_bookkeeping()
        self.persistence._snap_scheduled = True


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

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

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
    gc.collect()
    gc.freeze()  # as `tradeguard serve` does once started: the start-up objects are not scanned again
    engine, risk = sc.engine, sc.risk
    req = lg.can_trade_request(True)
    order = order_from_msg(req.order)
    asks = Orders(sc, order)
    decision, _st = asks.ask()  # type: ignore[misc]
    assert decision.allowed and not decision.would_deny, decision
    asks.cancel()
    st = engine.traders[lg.TRADER]
    assert len(st.orders) == PENDING and all(c.status.name != "SKIPPED" for c in decision.checks
                                             if c.name in CONTROLS), [c for c in decision.checks if c.name in CONTROLS]
    print(f"workload: full order, {len(engine.limits_for(lg.ACCOUNT).symbols)} symbol limits, {note}, "
          f"every pre-trade control, {len(st.orders)} pending orders; {args.calls} calls each; "
          f"python {sys.version.split()[0]}")
    # The VM's speed drifts by up to 1.5x between minutes (noisy neighbours): a fixed pure-Python workload,
    # timed in the same run, shows which speed this run had. `engine/reference` is comparable across runs.
    ref = report("reference", timed(_reference_work, args.calls))
    eng = report("engine", timed(asks.ask, args.calls, asks.cancel))
    persistence = sc.persistence

    def snapshot() -> None:
        persistence._unsnapped[lg.TRADER] = engine.traders[lg.TRADER]
        persistence.flush_bookkeeping()

    report("snapshot", timed(snapshot, args.calls))
    print(f"engine/reference p50 ratio {eng['p50'] / ref['p50']:.2f} (reference = {REFERENCE_LOOPS} float "
          "multiply-adds in a Python loop)")
    ctx = _Ctx()
    def service_call() -> object:
        req.order.quantity = asks.orders[asks.n % ROTATION].quantity
        req.order.client_order_id = asks.next_id()
        return drive(lambda: risk.can_trade(req, ctx))()  # type: ignore[arg-type]

    report("service", timed(service_call, args.calls, asks.cancel))
    handler = risk.handler(None).service(_Details(lg.CAN_TRADE))  # type: ignore[arg-type]
    assert handler is not None and handler.unary_unary is not None
    behavior, serialize = handler.unary_unary, handler.response_serializer
    assert serialize is not None

    req.order.client_order_id = ""  # the sidecar names each order (and the cancel after it uses that name)
    raws = []
    for i in range(ROTATION):
        req.order.quantity = asks.orders[i].quantity
        raws.append(req.SerializeToString())
    pending = engine.traders[lg.TRADER].orders

    def full() -> object:
        asks.n += 1
        raw = raws[asks.n % ROTATION]
        answer = serialize(drive(lambda: behavior(raw, ctx))())
        asks.last = next(reversed(pending))
        return answer

    report("handler", timed(full, args.calls, asks.cancel))
    # the same handler with admission in front, as the sidecar registers it (api/admission.py; not overloaded)
    from tradeguard_server.api.admission import HOT, admission_from_settings

    admitted = admission_from_settings(sc.settings).wrap({"CanTrade": handler}, HOT)["CanTrade"].unary_unary
    assert admitted is not None

    def full_admitted() -> object:
        asks.n += 1
        raw = raws[asks.n % ROTATION]
        answer = serialize(drive(lambda: admitted(raw, ctx))())
        asks.last = next(reversed(pending))
        return answer

    report("admitted", timed(full_admitted, args.calls, asks.cancel))
    report("handler", timed(full, args.calls, asks.cancel))  # again: the two rows back to back, drift shows
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
