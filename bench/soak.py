"""Soak: at least 1M CanTrade calls against one sidecar; its RSS after warm-up, during and at the end.

    .venv/bin/python bench/soak.py                      # 1,000,000 calls, PostgreSQL store + metrics on
    .venv/bin/python bench/soak.py --calls 200000 --memory --equity-every 0

The sidecar (`tradeguard serve` subprocess) gets bench/run.py's full workload: the seed configuration with
20 symbol configurations, 100 breakers, a trader with equity and positions, and full order intents. By
default the store is a fresh PostgreSQL database (created here and dropped at the end) and metrics are on.
Every `--equity-every` CanTrade calls one ReportEquity is interleaved, so the state changes and the store
writes all along (0 = CanTrade only). The load is bench/loadgen.py's closed loop (2 client processes,
`--inflight` calls in flight), run in chunks; after a warm-up of `--warmup-calls` the RSS is read from
/proc/<pid>/statm, then after every chunk. Growth = (end - start) / start. Target: <= 5 %.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen as lg
from run import fresh_database, pg_url, store_facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="≥ 1M CanTrade calls; sidecar RSS at start and end")
    p.add_argument("--calls", type=int, default=1_000_000, help="CanTrade calls after warm-up (default 1M)")
    p.add_argument("--warmup-calls", type=int, default=50_000)
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--equity-every", type=int, default=10, help="one ReportEquity per N CanTrade (0 = none)")
    p.add_argument("--memory", action="store_true", help="no database (default: a fresh PostgreSQL database)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-seconds", type=float, default=7200.0, help="bound on the whole soak")
    args = p.parse_args(argv)
    can_trade = (lg.CAN_TRADE, lg.can_trade_request(True).SerializeToString())
    calls = [can_trade]
    if args.equity_every > 0:
        calls = [can_trade] * args.equity_every + [(lg.REPORT_EQUITY, lg.report_equity_request().SerializeToString())]
    share = len(calls) / sum(1 for m, _ in calls if m == lg.CAN_TRADE)  # total calls per CanTrade call
    workdir = Path(tempfile.mkdtemp(prefix="tg-soak-"))
    deadline = time.monotonic() + args.max_seconds
    try:
        with contextlib.ExitStack() as stack:
            db = None if args.memory else stack.enter_context(fresh_database())
            sidecar_args = ["--metrics-listen", "127.0.0.1:0" if args.metrics else "", "--http-listen", ""]
            sidecar_args += ["--database-url", "memory", "--no-enable-persistence"] if db is None else [
                "--database-url", pg_url(db)]
            sidecar = lg.start_sidecar(workdir, "soak", "127.0.0.1:0", sidecar_args)
            stack.callback(sidecar.stop)
            prepared = lg.prepare(sidecar.address, config=True, breaker_count=100, with_order=True)
            print(f"sidecar pid {sidecar.pid} on {sidecar.address}; store: "
                  f"{'memory' if db is None else 'PostgreSQL ' + db}; metrics {'on' if args.metrics else 'off'}; "
                  f"breakers {prepared.breakers}; mix: {len(calls) - 1 if args.equity_every else 1} CanTrade"
                  f"{' : 1 ReportEquity' if args.equity_every else ''}; {args.inflight} in flight, "
                  f"{args.procs} client processes", flush=True)
            for note in prepared.notes:
                print("note:", note)
            warm = lg.closed_loop(sidecar, sidecar.address, calls, args.inflight, args.procs, 3600.0, 0.5,
                                  max_calls=int(args.warmup_calls * share))
            rss0 = sidecar.rss_bytes()
            print(f"warm-up: {warm.calls} calls, {warm.rps:.0f}/s; RSS at start {rss0 / 2**20:.1f} MiB", flush=True)
            done_ct = 0
            failed = 0
            chunk = -(-args.calls // args.chunks)
            t0 = time.monotonic()
            while done_ct < args.calls and time.monotonic() < deadline:
                want = min(chunk, args.calls - done_ct)
                r = lg.closed_loop(sidecar, sidecar.address, calls, args.inflight, args.procs,
                                   max(1.0, deadline - time.monotonic()), 0.2, max_calls=int(want * share) + 2)
                ct = round(r.calls / share)
                done_ct += ct
                failed += r.failed
                rss = sidecar.rss_bytes()
                print(f"  {done_ct:>9} CanTrade ({r.calls} calls, {r.rps:.0f}/s, p50 {r.p50:.0f} µs, "
                      f"p99 {r.p99:.0f} µs, failed {r.failed}): "
                      f"RSS {rss / 2**20:.1f} MiB ({(rss - rss0) / rss0 * 100:+.2f} %)",
                      flush=True)
                if sidecar.proc.poll() is not None:
                    print(f"sidecar exited with {sidecar.proc.returncode}")
                    break
            rss1 = sidecar.rss_bytes()
            growth = (rss1 - rss0) / rss0 * 100
            print(f"\nCanTrade calls after warm-up: {done_ct} in {time.monotonic() - t0:.0f} s; failed calls: {failed}")
            verdict = "MISSED" if growth > 5.0 else "MET" if done_ct >= 1_000_000 else "n/a: fewer than 1M calls"
            print(f"RSS start {rss0 / 2**20:.1f} MiB, end {rss1 / 2**20:.1f} MiB, growth {growth:+.2f} % "
                  f"(target <= 5 %: {verdict})")
            if db is not None:
                print("store:", store_facts(db))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
