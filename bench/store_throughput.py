"""How many state changes per second the store's writer keeps up with on PostgreSQL.

A state change is what the engine enqueues on every report: a snapshot (coalesced per trader, upserted)
and a history row (inserted). Everything runs on one event loop, as in the sidecar.

    .venv/bin/python bench/store_throughput.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--seconds 5] [--traders 10]

It works in a scratch database created next to the one in --url, dropped at the end. Printed:
- capacity: N changes queued up front, then the writer drains them (batches of 500), in changes/s;
- baseline: the same with batch_max=1 (one transaction per change), and the ratio;
- paced: changes offered at fixed rates for --seconds (the loop idle in between, as a server between
  requests): handled/s and the backlog left (an unbounded queue: does the writer keep up?), the event
  loop's lag and the enqueue cost meanwhile; then the share of history rows dropped with the default backlog
  (`queue_size`, HISTORY_BACKLOG_ROWS).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from dataclasses import replace

import psycopg
from sqlalchemy.engine import make_url

from tradeguard_server.engine.snapshot import PauseRecord, StateRecord
from tradeguard_server.engine.types import ClosedTrade, DecisionCode, Position, Side, TradingState
from tradeguard_server.store.migrate import migrate
from tradeguard_server.store.store import HISTORY_BACKLOG_ROWS, RiskStore


def sample_state(i: int, now: float) -> StateRecord:
    """A realistic trader: two positions, one pause, 20 recent trades."""
    return StateRecord(
        trader_id=f"trader-{i}", account_id=f"acct-{i % 10}", equity_reported=True, current_equity=10_000.0 + i,
        peak_equity=11_000.0, day_start_equity=10_500.0, week_start_equity=10_400.0, month_start_equity=10_300.0,
        day_start=now - 3600, week_start=now - 86_400, month_start=now - 864_000, last_equity_at=now,
        pauses=(PauseRecord(TradingState.REDUCING, now + 1800, DecisionCode.DAILY_LOSS_LIMIT,
                            "DAILY_LOSS_LIMIT: loss=5.40% limit=5.00% equity=9460.00", "limit", now),),
        consecutive_losses=2,
        positions=(Position("BTCUSDT", Side.BUY, 0.5, 60_000.0, 61_000.0, "binance", 3.0, 1.2),
                   Position("ETHUSDT", Side.SELL, 4.0, 3_000.0, 2_950.0, "binance", 2.0, 1.8)),
        volatility=(("BTCUSDT", 1.2), ("ETHUSDT", 1.8)),
        recent_trades=tuple(ClosedTrade(f"t{i}-{k}", "BTCUSDT", "binance", Side.SELL, -5.0 + k, now - k)
                            for k in range(20)),
        updated_at=now, version=1,
    )


class Changes:
    """Successive changes of `traders` traders, round robin: a new equity and version each time."""

    def __init__(self, traders: int) -> None:
        now = time.time()
        self.base = [sample_state(i, now) for i in range(traders)]
        self.n = 0

    def next(self) -> StateRecord:
        self.n += 1
        rec = self.base[self.n % len(self.base)]
        return replace(rec, version=self.n + 1, current_equity=rec.current_equity + self.n % 7,
                       updated_at=rec.updated_at + self.n * 1e-3)


async def capacity(url: str, traders: int, changes: int, batch_max: int) -> float:
    """Changes/s the writer drains when they are all queued before it starts."""
    store = RiskStore(url, queue_size=changes, batch_max=batch_max)
    source = Changes(traders)
    for _ in range(changes):
        store.enqueue_state(source.next(), "equity_report", None)
    await store.start()
    await store.load()  # waits for connect + migrate, so only writing is timed
    started = time.perf_counter()
    await store.flush()
    elapsed = time.perf_counter() - started
    assert store.rows_written["history"] == changes
    await store.close(10.0)
    return changes / elapsed


async def paced(url: str, traders: int, seconds: float, rate: float, queue_size: int) -> dict[str, float]:
    """Changes offered at a fixed rate (in 1 ms ticks; the loop idles in between, as a server between
    requests) while the writer runs. The writer keeps up when the backlog at the end stays small."""
    store = RiskStore(url, queue_size=queue_size)
    await store.start()
    await store.load()
    source = Changes(traders)
    lags: list[float] = []
    enqueue_ns: list[int] = []
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        while source.n < int(elapsed * rate):
            rec = source.next()
            t0 = time.perf_counter_ns()
            store.enqueue_state(rec, "equity_report", None)
            enqueue_ns.append(time.perf_counter_ns() - t0)
        wake_at = time.perf_counter() + 0.001
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - wake_at)  # how late the loop woke up (epoll rounds up to 1 ms)
    window = time.perf_counter() - started
    written = store.rows_written["history"] + store.dropped_history
    backlog = store.queue_depth
    await store.flush()
    out = {
        "offered": source.n / window,
        "written": written / window,
        "backlog": float(backlog),
        "dropped": float(store.dropped_history),
        "lag_p99_ms": statistics.quantiles(lags, n=100)[98] * 1000,
        "lag_max_ms": max(lags) * 1000,
        "enqueue_p99_us": statistics.quantiles(enqueue_ns, n=100)[98] / 1000,
        "enqueue_max_us": max(enqueue_ns) / 1000,
        "latency_ms": store.last_persist_latency_ms,
    }
    await store.close(30.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--traders", type=int, default=10)
    parser.add_argument("--rates", type=float, nargs="+", default=[10_000.0, 20_000.0, 30_000.0, 40_000.0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    admin = make_url(args.url).set(drivername="postgresql")
    admin_dsn = admin.render_as_string(hide_password=False)
    name = f"tg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        with psycopg.connect(admin.set(database=name).render_as_string(hide_password=False)) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {args.traders} traders, {args.seconds:.0f}s runs")
        batched = asyncio.run(capacity(url, args.traders, 100_000, batch_max=500))
        single = asyncio.run(capacity(url, args.traders, 2_000, batch_max=1))
        print(f"capacity  batch_max=500: {batched:>9,.0f} changes/s (snapshot upsert + history row each)")
        print(f"baseline  batch_max=1:   {single:>9,.0f} changes/s  -> batching x{batched / single:.1f}")
        print(f"offered at a fixed rate, the loop idle in between ({args.seconds:.0f}s each):")
        for rate in args.rates:
            p = asyncio.run(paced(url, args.traders, args.seconds, rate, queue_size=10_000_000))
            print(f"  {rate:>7,.0f}/s, unbounded queue: handled {p['written']:>7,.0f}/s, backlog at the end "
                  f"{p['backlog']:>7,.0f}; loop lag p99 {p['lag_p99_ms']:.1f} ms (max {p['lag_max_ms']:.0f}); "
                  f"enqueue p99 {p['enqueue_p99_us']:.1f} us (max {p['enqueue_max_us']:.0f})")
            d = asyncio.run(paced(url, args.traders, args.seconds, rate, queue_size=HISTORY_BACKLOG_ROWS))
            print(f"  {rate:>7,.0f}/s, default backlog ({HISTORY_BACKLOG_ROWS:,} rows): "
                  f"{d['dropped'] / max(d['offered'] * args.seconds, 1):.1%} of history rows dropped")
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
