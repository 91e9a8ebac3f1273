"""Issue 18: 1,000 idle Sessions held open cost the sidecar little: its RSS and another client's CanTrade p50.

One `tradeguard serve` (memory, metrics off, uvloop). Phase A: no sessions; phase B: N sessions opened (each declared
with an `open` message, then idle) from a separate client process; in each phase another client measures CanTrade
(1 in flight, `--calls` calls, after a warm-up) and the sidecar's RSS is read from /proc. Phases alternate A, B, A,
B... for `--rounds`; prints the medians and the ratios B / A (target: within 10 %).

    .venv/bin/python bench/idle_sessions.py [--sessions 1000] [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import loadgen as lg

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t


def _holder(conn: Connection, address: str, sessions: int) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_hold(conn, address, sessions))


async def _hold(conn: Connection, address: str, sessions: int) -> None:
    """Open `sessions` Sessions (a few channels, as many bots' connections would be several), declare each, then
    wait until told to close them cleanly."""
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, sessions // 100))]
    calls = []
    for i in range(sessions):
        call = channels[i % len(channels)].stream_stream("/tradeguard.v1.RiskService/Session")()
        await call.write(rs.SessionRequest(request_id=1, open=rs.SessionOpen(
            trader_id=f"idle-{i}", account_id="idle-acct", on_disconnect=t.TRADING_STATE_HALTED)).SerializeToString())
        calls.append(call)
    for call in calls:
        await call.read()  # SessionOpened
    conn.send("open")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    for call in calls:
        await call.done_writing()
    for call in calls:
        await call.read()
    for ch in channels:
        await ch.close()
    conn.send("closed")


async def _measure(address: str, calls: int) -> float:
    async with grpc.aio.insecure_channel(address) as ch:
        method = ch.unary_unary(lg.CAN_TRADE)
        body = lg.can_trade_request(False).SerializeToString()
        for _ in range(200):
            await method(body, timeout=10)
        lat = []
        for _ in range(calls):
            started = time.perf_counter()
            await method(body, timeout=10)
            lat.append((time.perf_counter() - started) * 1e6)
    return statistics.median(lat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="tg-idle-") as tmp:
        sidecar = lg.start_sidecar(Path(tmp), "sidecar", "127.0.0.1:0",
                                   ["--database-url", "memory", "--no-enable-persistence", "--metrics-listen", "",
                                    "--http-listen", "", "--uvloop"])
        try:
            lg.prepare(sidecar.address, config=True, breaker_count=0, with_order=False)
            rows: dict[str, list[tuple[float, float]]] = {"none": [], "idle": []}
            ctx = mp.get_context("spawn")
            for _ in range(args.rounds):
                rss = sidecar.rss_bytes() / 2**20
                rows["none"].append((uvloop.run(_measure(sidecar.address, args.calls)), rss))
                parent, child = ctx.Pipe()
                holder = ctx.Process(target=_holder, args=(child, sidecar.address, args.sessions), daemon=True)
                holder.start()
                if not parent.poll(120) or parent.recv() != "open":
                    raise RuntimeError("the sessions did not open")
                time.sleep(0.5)
                rss = sidecar.rss_bytes() / 2**20
                rows["idle"].append((uvloop.run(_measure(sidecar.address, args.calls)), rss))
                parent.send("close")
                parent.poll(120)
                holder.join(30)
            print(f"bench/idle_sessions.py: {args.sessions} idle sessions, {args.calls} CanTrade per phase, "
                  f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
            for name, values in rows.items():
                print(f"  {name:5s}: CanTrade p50 " + ", ".join(f"{p:.0f}" for p, _ in values) + " µs; RSS "
                      + ", ".join(f"{r:.1f}" for _, r in values) + " MiB")
            p50 = statistics.median(p for p, _ in rows["idle"]) / statistics.median(p for p, _ in rows["none"])
            rss_ratio = statistics.median(r for _, r in rows["idle"]) / statistics.median(r for _, r in rows["none"])
            print(f"  idle / none: CanTrade p50 {p50:.3f}, RSS {rss_ratio:.3f} (target: each within 1.10)")
        finally:
            sidecar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
