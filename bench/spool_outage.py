"""RSS and the local spool through a long PostgreSQL outage under load (issue 21, must-show 2).

    .venv/bin/python bench/spool_outage.py                       # 600 s outage (the issue's 10 minutes)
    .venv/bin/python bench/spool_outage.py --outage-seconds 120  # shorter
    .venv/bin/python bench/spool_outage.py --no-spool            # the same without the spool: the backlog in memory

A `tradeguard serve` process on PostgreSQL (a fresh database, dropped at the end) behind a loopback TCP proxy
(bench/run.py's TcpProxy; the machine's PostgreSQL is never stopped). Bots report equity (an alert breaker fires on
every other report), trades (a new id each) and orders (allowed, then cancelled) for `--before-seconds` with the
database up, then through `--outage-seconds` of outage, then the proxy is restored and the replay timed.

Printed: the sidecar's RSS (VmRSS from /proc) at the start of the outage, its peak and at the end of the outage
and after the replay; the spool's records and bytes (read from the file); calls per second; trades and breaker
events acknowledged vs in the database afterwards (exactly once). Every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import loadgen as lg
import psycopg
from run import TcpProxy, fresh_database, pg_url

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

ACCT = "acct"
FLOOR = 9_990.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def spool_facts(path: Path) -> tuple[int, int]:
    """(records, payload bytes) in the spool file; (0, 0) before it exists."""
    if not path.exists():
        return 0, 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        depth, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        return int(depth), int(size)
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        conn.close()


class Sampler:
    """RSS and spool size once a second, in a thread (the load runs on the event loop)."""

    def __init__(self, pid: int, spool: Path) -> None:
        self.pid, self.spool = pid, spool
        self.samples: list[tuple[float, float, int, int]] = []  # (t, rss MiB, spool records, spool bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            depth, size = spool_facts(self.spool)
            self.samples.append((time.monotonic(), rss_mib(self.pid), depth, size))
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def between(self, start: float, end: float) -> list[tuple[float, float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


class Load:
    def __init__(self) -> None:
        self.trades: set[tuple[str, str]] = set()
        self.events: set[str] = set()
        self.calls = 0
        self.failed = 0


async def bots(address: str, load: Load, seconds: float, n: int, tag: str) -> None:
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as ch:
        risk = rsg.RiskServiceStub(ch)

        async def bot(i: int) -> None:
            trader, step = f"bot-{i}", 0
            while time.monotonic() < deadline:
                step += 1
                try:
                    equity = 10_000.0 + step % 50 if step % 2 else FLOOR - 10.0
                    reply = await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=ACCT,
                                                                           equity=equity), timeout=5)
                    load.events.update(e.id for e in reply.breaker_events)
                    trade_id = f"{tag}-{trader}-{step}"
                    await risk.ReportTrade(rs.ReportTradeRequest(
                        trader_id=trader, account_id=ACCT, trade_id=trade_id, symbol="BTCUSDT", exchange="binance",
                        side=t.SIDE_BUY, realized_pnl=0.5), timeout=5)
                    load.trades.add((trader, trade_id))
                    coid = f"{tag}-{trader}-o{step}"
                    order = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.001,
                                          price=50_000.0, client_order_id=coid)
                    decision = await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=ACCT, order=order),
                                                   timeout=5)
                    if decision.allowed:
                        await risk.ReportOrder(rs.ReportOrderRequest(trader_id=trader, account_id=ACCT,
                                                                     client_order_id=coid,
                                                                     status=t.ORDER_STATUS_CANCELLED), timeout=5)
                    load.calls += 4
                except grpc.aio.AioRpcError:
                    load.failed += 1

        await asyncio.gather(*(bot(i) for i in range(n)))


async def setup(address: str, traders: int) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=ACCT, config_id="c1", is_active=True, max_position_size_percentage=100.0,
            daily_max_drawdown_percentage=50.0)))
        breaker = t.CircuitBreaker(name="floor", account_id=ACCT, condition="equity_floor", action="alert")
        breaker.parameters.update({"value": FLOOR})
        await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
        for i in range(traders):  # claimed (cluster mode) while the database answers
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id=f"bot-{i}", account_id=ACCT, equity=10_000.0))


def database_counts(db: str) -> tuple[set[tuple[str, str]], set[str], int]:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as conn:
        trades = {(str(a), str(b)) for a, b in conn.execute("SELECT trader_id, trade_id FROM trade_reports")}
        n_trades = conn.execute("SELECT count(*) FROM trade_reports").fetchone()
        events = {str(r[0]) for r in conn.execute("SELECT id FROM circuit_breaker_events")}
    return trades, events, int(n_trades[0]) if n_trades else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outage-seconds", type=float, default=600.0)
    p.add_argument("--before-seconds", type=float, default=20.0, help="load with the database up first")
    p.add_argument("--traders", type=int, default=8, help="bots, one closed loop each")
    p.add_argument("--spool", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-spool: spool_path off (the backlog stays in memory, as before issue 21)")
    p.add_argument("--spool-max-bytes", type=int, default=256 << 20)
    p.add_argument("--replay-timeout", type=float, default=900.0)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)

    out: dict[str, Any] = {"outage_s": args.outage_seconds, "traders": args.traders, "spool": args.spool}
    with tempfile.TemporaryDirectory(prefix="tg-spool-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        spool = workdir / "spool.db"
        db = stack.enter_context(fresh_database())
        proxy = TcpProxy(("127.0.0.1", 5432), "refuse")
        port = proxy.start()
        stack.callback(proxy.close)
        sidecar = lg.start_sidecar(workdir, "spool-sidecar", "127.0.0.1:0", [
            "--database-url", pg_url(db, port), "--metrics-listen", "", "--http-listen", "", "--dev-open-admin",
            "--spool-path", str(spool) if args.spool else "off", "--spool-max-bytes", str(args.spool_max_bytes),
            "--control-state-stale-action", "serve", "--drain-timeout-s", "5"])
        stack.callback(sidecar.stop)
        asyncio.run(setup(sidecar.address, args.traders))
        sampler = Sampler(sidecar.proc.pid, spool).start()
        stack.callback(sampler.stop)
        load = Load()
        asyncio.run(bots(sidecar.address, load, args.before_seconds, args.traders, "up"))
        t_cut = time.monotonic()
        rss_cut = rss_mib(sidecar.proc.pid)
        proxy.cut()
        calls_before = load.calls
        asyncio.run(bots(sidecar.address, load, args.outage_seconds, args.traders, "down"))
        t_end = time.monotonic()
        rss_end = rss_mib(sidecar.proc.pid)
        depth_end, bytes_end = spool_facts(spool)
        proxy.restore()
        replay_done = None
        while time.monotonic() - t_end < args.replay_timeout:
            trades, events, n_trades = database_counts(db)
            if trades >= load.trades and events >= load.events:
                replay_done = time.monotonic() - t_end
                break
            time.sleep(0.5)
        trades, events, n_trades = database_counts(db)
        rss_after = rss_mib(sidecar.proc.pid)
        sampler.stop()
        during = sampler.between(t_cut, t_end)
        peak = max(during, key=lambda s: s[1]) if during else (0.0, 0.0, 0, 0)
        spool_peak = max((s[3] for s in during), default=0)
        out.update({
            "rss_mib": {"outage_start": round(rss_cut, 1), "outage_peak": round(peak[1], 1),
                        "outage_end": round(rss_end, 1), "after_replay": round(rss_after, 1)},
            "spool_end": {"records": depth_end, "bytes": bytes_end}, "spool_peak_bytes": spool_peak,
            "calls_per_s_outage": round((load.calls - calls_before) / args.outage_seconds, 1),
            "failed_calls": load.failed, "replay_s": None if replay_done is None else round(replay_done, 1),
            "trades_acked": len(load.trades), "trades_stored": n_trades,
            "trades_missing": len(load.trades - trades), "events_acked": len(load.events),
            "events_missing": len(load.events - events),
            "rss_timeline": [(round(s[0] - t_cut), round(s[1], 1), s[2], s[3]) for s in sampler.samples][::10],
        })
    print(f"outage {args.outage_seconds:.0f} s, {args.traders} bots, spool {'on' if args.spool else 'OFF'}: "
          f"{out['calls_per_s_outage']} calls/s during the outage, {out['failed_calls']} failed")
    print(f"RSS MiB: outage start {out['rss_mib']['outage_start']}, peak {out['rss_mib']['outage_peak']}, "
          f"end {out['rss_mib']['outage_end']}, after the replay {out['rss_mib']['after_replay']}")
    print(f"spool at the end of the outage: {depth_end} records, {bytes_end / 2**20:.1f} MiB payload "
          f"(peak {spool_peak / 2**20:.1f} MiB); replayed in {out['replay_s']} s")
    print(f"trades acked {out['trades_acked']} / stored {out['trades_stored']} (missing {out['trades_missing']}); "
          f"breaker events acked {out['events_acked']} (missing {out['events_missing']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
