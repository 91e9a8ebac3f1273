"""CanTrade latency while the history retention prunes a large history, against the same load with the pruner idle,
in ONE run (README "History retention and restore"; bench/README.md).

    .venv/bin/python bench/retention.py [--rows 300000] [--traders 100] [--rounds 3] [--seconds 6]
                                        [--inflight 4] [--batch 1000] [--pause-factor F] [--database-url URL]

1. A fresh PostgreSQL database (or --database-url, SQLite too) gets `--rows` history rows 30 days old, spread over
   `--traders` traders, inserted directly with SQL (PostgreSQL: one INSERT ... SELECT generate_series).
2. A real sidecar runs in a child process (uvloop, the store on that database, retention idle: the bench starts
   the pruner's run itself, through the sidecar's own Pruner with history_retention_days=1).
3. The load, from this process (grpc.aio, uvloop): `--inflight` CanTrade calls (no order) in flight, plus one
   ReportEquity in 10 calls (the store's writer writes history rows while the pruner deletes).
4. `--rounds` rounds under that load, each an idle window of `--seconds`, then a window of `--seconds` while the
   pruner runs (started at the window's start, stopped after its batch in progress at the window's end; the next
   round's run goes on with the rows left). Printed: p50 / p99 / p99.9 of CanTrade in each window, the ratio
   pruning / idle per round, its median and the pooled one, and the rows the pruner deleted per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "server", ROOT / "client" / "python"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

ACCOUNT = "bench-account"
TRADER = "bench-trader"
DAY = 86_400.0


def serve(url: str, batch: int, pause_factor: float | None, conn: Connection) -> None:
    """Child process: a sidecar on `url`; on "prune" it runs its pruner once (history_retention_days=1)."""
    import logging

    import uvloop

    from tradeguard_server.settings import load_settings
    from tradeguard_server.sidecar import Sidecar
    from tradeguard_server.store import retention
    from tradeguard_server.store.retention import RetentionPolicy

    if pause_factor is not None:
        retention.PAUSE_FACTOR = pause_factor  # the pause between batches, in batch durations
    logging.basicConfig(level=logging.WARNING)
    sys.setswitchinterval(0.001)  # as `tradeguard serve` does: the store's threads must not starve behind the loop

    async def main() -> None:
        settings = load_settings({}, {
            "listen": "127.0.0.1:0", "database_url": url, "enable_persistence": True, "dev_open_admin": True,
            "metrics_listen": "", "http_listen": "", "history_retention_days": 0, "trade_retention_days": 0,
            "breaker_event_retention_days": 0})
        sidecar = Sidecar(settings)
        address = await sidecar.start()
        pruner = sidecar.pruner
        assert pruner is not None
        pruner.policy = RetentionPolicy(history_days=1, trade_days=0, event_days=0, batch_size=batch)
        conn.send(address)
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Any] | None = None
        started = 0.0
        with contextlib.suppress(EOFError):
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "prune":  # a run starts (it goes on until "halt")
                    started = time.perf_counter()
                    task = loop.create_task(pruner.run_once())
                    conn.send("started")
                elif command == "halt" and task is not None:  # the run ends after its current batch
                    pruner._stop.set()  # the bench pauses the sidecar's own pruner
                    await task
                    pruner._stop.clear()
                    conn.send({"pruned": pruner.pruned["risk_state_history"], "seconds": time.perf_counter() - started,
                               "batches": pruner.batches["risk_state_history"]})
        await sidecar.stop()

    uvloop.run(main())


def fill(url: str, rows: int, traders: int) -> float:
    """Insert `rows` history rows 30 days old (full rows, as a writer's first row of a trader); seconds taken."""
    from sqlalchemy import create_engine, insert, text

    from tradeguard_server.store.migrate import migrate
    from tradeguard_server.store.retention import HISTORY

    migrate(url)
    state = {"trader_id": "x", "account_id": ACCOUNT, "equity_reported": True, "current_equity": 10_000.0,
             "peak_equity": 10_000.0, "day_start_equity": 10_000.0, "week_start_equity": 10_000.0,
             "month_start_equity": 10_000.0, "day_start": 0.0, "week_start": 0.0, "month_start": 0.0,
             "last_equity_at": None, "consecutive_losses": 0, "updated_at": 0.0, "version": 1,
             "daily_order_notional": 0.0, "daily_orders": 0, "tag": "bench.1", "pauses": [], "positions": [],
             "volatility": {}, "symbol_stats": [], "pending_orders": []}
    old = time.time() - 30 * DAY
    engine = create_engine(url)
    began = time.perf_counter()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(
                    "INSERT INTO risk_state_history (recorded_at, trader_id, account_id, trading_state, "
                    "current_equity, drawdown_pct, daily_pnl, reason, state) "
                    "SELECT to_timestamp(:old + g), 'old-' || (g % :traders), :account, 'ACTIVE', 10000, 0, 0, 'old', "
                    "CAST(:state AS json) FROM generate_series(1, :rows) AS g"),
                    {"old": old, "traders": traders, "account": ACCOUNT, "state": json.dumps(state), "rows": rows})
            else:
                chunk = 10_000
                for start in range(0, rows, chunk):
                    conn.execute(insert(HISTORY), [
                        {"recorded_at": old + g, "trader_id": f"old-{g % traders}", "account_id": ACCOUNT,
                         "trading_state": "ACTIVE", "current_equity": 10_000.0, "drawdown_pct": 0.0,
                         "daily_pnl": 0.0, "paused_until": None, "reason": "old", "trace_id": None, "state": state}
                        for g in range(start, min(rows, start + chunk))])
            if conn.dialect.name == "postgresql":
                conn.execute(text("ANALYZE risk_state_history"))
    finally:
        engine.dispose()
    return time.perf_counter() - began


async def window(address: str, seconds: float, inflight: int) -> list[float]:
    """CanTrade latencies (s) over `seconds` with `inflight` callers; every 10th call of a caller is a
    ReportEquity (not timed)."""
    import grpc

    from tradeguard.v1 import risk_service_pb2 as rs

    # Without an order: an allowed order would become a pending order, and thousands of them (no ReportOrder in this
    # load) would make every history row carry a list that grows without end.
    can_trade = rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT).SerializeToString()
    clock = time.perf_counter
    samples: list[float] = []
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary("/tradeguard.v1.RiskService/CanTrade")
        report = ch.unary_unary("/tradeguard.v1.RiskService/ReportEquity")
        deadline = clock() + seconds

        async def caller(i: int) -> None:
            n = 0
            while clock() < deadline:
                n += 1
                if n % 10 == 0:
                    equity = 10_000.0 + (n % 7) - i
                    await report(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT,
                                                        equity=equity).SerializeToString(), timeout=10)
                    continue
                began = clock()
                await call(can_trade, timeout=10)
                samples.append(clock() - began)

        await asyncio.gather(*(caller(i) for i in range(inflight)))
    return samples


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return (s[len(s) // 2] * 1e6, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6,
            s[min(len(s) - 1, int(len(s) * 0.999))] * 1e6)


async def drive(parent: Connection, seconds: float, inflight: int, rounds: int) -> dict[str, Any]:
    """`rounds` x (an idle window, then a window while the pruner runs, stopped at the window's end)."""
    import grpc

    from tradeguard.v1 import risk_service_pb2 as rs
    from tradeguard.v1 import risk_service_pb2_grpc as rsg

    address = parent.recv()
    async with grpc.aio.insecure_channel(address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=10_000.0))
    await window(address, 1.0, inflight)  # warm-up
    out: dict[str, Any] = {"idle": [], "pruning": [], "runs": []}
    for _ in range(rounds):
        out["idle"].append(await window(address, seconds, inflight))
        parent.send("prune")
        parent.recv()
        out["pruning"].append(await window(address, seconds, inflight))
        parent.send("halt")
        out["runs"].append(parent.recv())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--traders", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--pause-factor", type=float, default=None,
                    help="pause between batches in batch durations (default: the pruner's PAUSE_FACTOR)")
    ap.add_argument("--database-url", default="", help="default: a fresh PostgreSQL database, dropped after")
    args = ap.parse_args()
    import uvloop

    with contextlib.ExitStack() as stack:
        url = args.database_url
        if not url:
            from tests.support.databases import temporary_postgres_database

            url = stack.enter_context(temporary_postgres_database("tg_bench_retention"))
        filled = fill(url, args.rows, args.traders)
        print(f"filled {args.rows:,} history rows 30 days old over {args.traders} traders in {filled:.1f}s")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(url, args.batch, args.pause_factor, child), daemon=True)
        proc.start()
        child.close()
        try:
            out = uvloop.run(drive(parent, args.seconds, args.inflight, args.rounds))
        finally:
            parent.close()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    print(f"\nCanTrade, {args.inflight} in flight (+1 ReportEquity in 10), {args.rounds} rounds of an idle and a "
          f"pruning {args.seconds:g}s window")
    print(f"{'window':<16} {'calls':>8} {'p50 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9}   ratio p50 / p99")
    ratios50, ratios99 = [], []
    for i, (idle, pruning) in enumerate(zip(out["idle"], out["pruning"], strict=True)):
        i50, i99, i999 = quantiles(idle)
        r50, r99, r999 = quantiles(pruning)
        ratios50.append(r50 / i50)
        ratios99.append(r99 / i99)
        print(f"{f'{i + 1} idle':<16} {len(idle):>8,} {i50:>9,.0f} {i99:>9,.0f} {i999:>9,.0f}")
        deleted = out["runs"][i]["pruned"] - (out["runs"][i - 1]["pruned"] if i else 0)
        print(f"{f'{i + 1} pruning':<16} {len(pruning):>8,} {r50:>9,.0f} {r99:>9,.0f} {r999:>9,.0f}   "
              f"{r50 / i50:.2f}x / {r99 / i99:.2f}x   ({deleted:,} rows deleted in this window)")
    idle_all = [x for w in out["idle"] for x in w]
    pruning_all = [x for w in out["pruning"] for x in w]
    i50, i99, i999 = quantiles(idle_all)
    r50, r99, r999 = quantiles(pruning_all)
    print(f"{'all idle':<16} {len(idle_all):>8,} {i50:>9,.0f} {i99:>9,.0f} {i999:>9,.0f}")
    print(f"{'all pruning':<16} {len(pruning_all):>8,} {r50:>9,.0f} {r99:>9,.0f} {r999:>9,.0f}   "
          f"{r50 / i50:.2f}x / {r99 / i99:.2f}x")
    print(f"\nratio pruning / idle: median of the rounds p50 {statistics.median(ratios50):.2f}x, "
          f"p99 {statistics.median(ratios99):.2f}x; pooled p50 {r50 / i50:.2f}x, p99 {r99 / i99:.2f}x")
    last = out["runs"][-1]
    busy = sum(r["seconds"] for r in out["runs"])
    print(f"pruner: {last['pruned']:,} rows deleted in {last['batches']} batches of <= {args.batch} in {busy:.1f}s "
          f"of runs: {last['pruned'] / busy:,.0f} rows/s (a window with no rows left to delete measures nothing: "
          "raise --rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
