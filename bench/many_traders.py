"""Many distinct trader ids (issue 21, "Bounded traders"): N ids, each reported once, against one sidecar with idle
eviction on; its RSS sampled all along, and the traders it holds in memory.

    .venv/bin/python bench/many_traders.py                          # 1,000,000 ids, SQLite, idle 5 s
    .venv/bin/python bench/many_traders.py --traders 200000 --store postgresql --idle 5

The sidecar (`tradeguard serve` subprocess, production defaults, metrics on) stores on a fresh SQLite file (single
mode: an evicted trader is read back by its next call) or a fresh PostgreSQL database (cluster mode: the lease is
released, the next call claims it), with `--trader-idle-evict-seconds` = --idle and `--max-traders` = --max-traders.
Each id gets one ReportEquity (with --can-trade, also one CanTrade right after). Before the run one trader is paused
(HALTED until resumed) and one is reported: after the run (once both have been idle for --idle) the paused one
must still be HALTED and the other's next call must see its equity, peak and daily PnL as reported (it was evicted
and is loaded back). RSS: /proc/<pid>/statm every 0.5 s; traders in memory: tradeguard_traders_in_memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import loadgen as lg
from run import fresh_database, pg_url

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

ACCOUNT = "acct-many"
METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")


def metric(address: str, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return None if m is None else float(m.group(1))


def client(address: str, first: int, count: int, inflight: int, can_trade: bool, out: multiprocessing.Queue) -> None:
    """One client process: ids first..first+count-1, `inflight` calls in flight; puts (calls, failures by code)."""

    async def run() -> tuple[int, dict[str, int]]:
        failures: dict[str, int] = {}
        calls = 0
        async with grpc.aio.insecure_channel(address) as ch:
            report = ch.unary_unary("/tradeguard.v1.RiskService/ReportEquity")
            ask = ch.unary_unary("/tradeguard.v1.RiskService/CanTrade")
            next_id = first
            end = first + count

            async def slot() -> None:
                nonlocal next_id, calls
                while next_id < end:
                    i = next_id
                    next_id += 1
                    trader = f"t-{i}"
                    try:
                        await report(rs.ReportEquityRequest(trader_id=trader, account_id=ACCOUNT,
                                                            equity=10_000.0 + i % 100).SerializeToString(),
                                     timeout=30)
                        calls += 1
                        if can_trade:
                            await ask(rs.CanTradeRequest(trader_id=trader, account_id=ACCOUNT).SerializeToString(),
                                      timeout=30)
                            calls += 1
                    except grpc.aio.AioRpcError as exc:
                        failures[exc.code().name] = failures.get(exc.code().name, 0) + 1

            await asyncio.gather(*(slot() for _ in range(inflight)))
        return calls, failures

    out.put(asyncio.run(run()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="N distinct trader ids with idle eviction: sidecar RSS and traders")
    p.add_argument("--traders", type=int, default=1_000_000)
    p.add_argument("--idle", type=float, default=5.0, help="--trader-idle-evict-seconds of the sidecar")
    p.add_argument("--max-traders", type=int, default=100_000)
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--inflight", type=int, default=32, help="calls in flight per client process")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--can-trade", action="store_true", help="one CanTrade after each ReportEquity")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tg-many-"))
    try:
        with contextlib.ExitStack() as stack:
            if args.store == "postgresql":
                url = pg_url(stack.enter_context(fresh_database()))
            else:
                url = f"sqlite:///{workdir / 'store.db'}"
            sidecar = lg.start_sidecar(workdir, "many", "127.0.0.1:0", [
                "--database-url", url, "--enable-persistence", "--metrics-listen", "127.0.0.1:0",
                "--http-listen", "", "--trader-idle-evict-seconds", str(args.idle),
                "--max-traders", str(args.max_traders)])
            stack.callback(sidecar.stop)
            m = METRICS_LINE.search(sidecar.log())
            assert m is not None, "no metrics address in the sidecar's log"
            metrics = m.group(1)
            with grpc.insecure_channel(sidecar.address) as ch:
                risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
                risk.ReportEquity(rs.ReportEquityRequest(trader_id="paused", account_id=ACCOUNT, equity=5_000))
                admin.PauseTrading(ad.PauseTradingRequest(trader_id="paused", account_id=ACCOUNT,
                                                          trading_state=t.TRADING_STATE_HALTED, reason="bench"))
                risk.ReportEquity(rs.ReportEquityRequest(trader_id="probe", account_id=ACCOUNT, equity=8_000))
                before = risk.ReportEquity(rs.ReportEquityRequest(trader_id="probe", account_id=ACCOUNT,
                                                                  equity=7_600)).state
            rss0 = sidecar.rss_bytes()
            samples: list[tuple[float, int]] = []
            in_memory: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                n = 0
                while not stop.wait(0.5):
                    with contextlib.suppress(OSError):
                        samples.append((time.monotonic(), sidecar.rss_bytes()))
                    n += 1
                    if n % 4 == 0:
                        with contextlib.suppress(Exception):
                            value = metric(metrics, "tradeguard_traders_in_memory")
                            if value is not None:
                                in_memory.append(value)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            print(f"sidecar pid {sidecar.pid}; store {args.store}; {args.traders} ids, idle eviction after "
                  f"{args.idle:g} s, max_traders {args.max_traders}; {args.procs} x {args.inflight} in flight; "
                  f"RSS at start {rss0 / 2**20:.1f} MiB", flush=True)
            t0 = time.monotonic()
            ctx = multiprocessing.get_context("spawn")
            out: multiprocessing.Queue = ctx.Queue()
            share = -(-args.traders // args.procs)
            procs = [ctx.Process(target=client, args=(sidecar.address, i * share,
                                                      min(share, args.traders - i * share), args.inflight,
                                                      args.can_trade, out)) for i in range(args.procs)]
            for proc in procs:
                proc.start()
            last = t0
            while any(proc.is_alive() for proc in procs):
                time.sleep(1.0)
                if time.monotonic() - last >= 30:
                    last = time.monotonic()
                    rss = samples[-1][1] if samples else 0
                    print(f"  {last - t0:6.0f} s: RSS {rss / 2**20:.1f} MiB, traders in memory "
                          f"{in_memory[-1] if in_memory else float('nan'):.0f}", flush=True)
            results = [out.get() for _ in procs]
            for proc in procs:
                proc.join()
            seconds = time.monotonic() - t0
            calls = sum(r[0] for r in results)
            failures: dict[str, int] = {}
            for _calls, f in results:
                for code, n in f.items():
                    failures[code] = failures.get(code, 0) + n
            rss_run_end = sidecar.rss_bytes()
            time.sleep(args.idle + 3.0)  # every id idle now: the last ones evicted
            with grpc.insecure_channel(sidecar.address) as ch:
                risk = rsg.RiskServiceStub(ch)
                loaded_start = metric(metrics, "tradeguard_traders_loaded_total") or 0.0
                paused = risk.GetRiskState(rs.GetRiskStateRequest(trader_id="paused", account_id=ACCOUNT)).state
                loaded_before = metric(metrics, "tradeguard_traders_loaded_total") or 0.0
                after = risk.GetRiskState(rs.GetRiskStateRequest(trader_id="probe", account_id=ACCOUNT)).state
                loaded_after = metric(metrics, "tradeguard_traders_loaded_total") or 0.0
            stop.set()
            sampler.join()
            rss_end = sidecar.rss_bytes()
            peak = max([rss for _t, rss in samples] + [rss0, rss_end])
            evicted = metric(metrics, "tradeguard_traders_evicted_total")
            rejected = metric(metrics, "tradeguard_traders_rejected_total")
            held = metric(metrics, "tradeguard_traders_in_memory")
            print(f"\n{args.traders} ids, {calls} calls in {seconds:.0f} s ({calls / seconds:.0f}/s); failed calls: "
                  f"{sum(failures.values())} {failures or ''}")
            print(f"RSS start {rss0 / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, at the end of the load "
                  f"{rss_run_end / 2**20:.1f} MiB, end (all idle) {rss_end / 2**20:.1f} MiB")
            print(f"traders in memory: peak {max(in_memory, default=float('nan')):.0f}, end {held:.0f}; evicted "
                  f"{evicted:.0f}, loaded back {loaded_after:.0f}, rejected (max_traders) {rejected:.0f}")
            same = (after.current_equity, after.peak_equity, after.daily_pnl) == (
                before.current_equity, before.peak_equity, before.daily_pnl)
            print(f"probe trader (evicted, then asked): equity {after.current_equity:g}, peak {after.peak_equity:g}, "
                  f"daily pnl {after.daily_pnl:g} -> {'as reported' if same else 'DIFFERENT: ' + str(before)}; "
                  f"loaded back by that call: {'yes' if loaded_after > loaded_before else 'NO'}")
            print(f"paused trader: {t.TradingState.Name(paused.trading_state)}, "
                  f"{'still in memory (never evicted)' if loaded_before == loaded_start else 'WAS EVICTED'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
