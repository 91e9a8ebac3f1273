"""Issue 18: 1,000 idle Sessions held open cost the sidecar little: its RSS and another client's CanTrade p50.

Each round starts a **fresh** `tradeguard serve` (memory, metrics off, uvloop): phase A, no sessions: another client
measures CanTrade (1 in flight, `--calls` calls, after a warm-up) and the sidecar's RSS is read from /proc; phase B,
N sessions opened (each declared with an `open` message, then idle) from a separate client process: the same
measurements. A fresh process per round, because memory a round's sessions used stays with the process after they
close (the allocator keeps it), so a second round's "none" would not be none.

The same round also holds N idle streams open on the bare framework (`baseline_server.py`: a grpc.aio server with
TradeGuard's proto and a Session that answers a constant; no TradeGuard in it) and reads its RSS before and after:
that is what grpc.aio and gRPC core themselves keep per open stream, whoever serves it. Prints the medians, the
ratios B / A (target: within 1.10) and both per-session costs.

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
from typing import Any

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


def _hold_open(address: str, sessions: int) -> tuple[Any, Connection]:
    """Start the holder process and wait until its sessions are open (and answered)."""
    parent, child = mp.get_context("spawn").Pipe()
    holder = mp.get_context("spawn").Process(target=_holder, args=(child, address, sessions), daemon=True)
    holder.start()
    if not parent.poll(120) or parent.recv() != "open":
        raise RuntimeError("the sessions did not open")
    return holder, parent


def _close(holder: Any, parent: Connection) -> None:
    parent.send("close")
    parent.poll(120)
    holder.join(30)


def _settled_rss(server: lg.Server) -> float:
    """The server's RSS in MiB once it stopped moving (read every 0.1 s until two reads agree, at most 3 s)."""
    last = server.rss_bytes()
    for _ in range(30):
        time.sleep(0.1)
        now = server.rss_bytes()
        if now == last:
            break
        last = now
    return float(last) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import uvloop

    rows: dict[str, list[tuple[float, float]]] = {"none": [], "idle": []}
    bare: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="tg-idle-") as tmp:
        for round_no in range(args.rounds):
            sidecar = lg.start_sidecar(Path(tmp), f"sidecar{round_no}", "127.0.0.1:0",
                                       ["--database-url", "memory", "--no-enable-persistence", "--metrics-listen", "",
                                        "--http-listen", "", "--uvloop"])
            try:
                lg.prepare(sidecar.address, config=True, breaker_count=0, with_order=False)
                p50 = uvloop.run(_measure(sidecar.address, args.calls))
                rows["none"].append((p50, _settled_rss(sidecar)))
                holder, parent = _hold_open(sidecar.address, args.sessions)
                rss = _settled_rss(sidecar)
                rows["idle"].append((uvloop.run(_measure(sidecar.address, args.calls)), rss))
                _close(holder, parent)
            finally:
                sidecar.stop()
            base = lg.start_baseline(Path(tmp), f"bare{round_no}", "127.0.0.1:0")
            try:
                holder, parent = _hold_open(base.address, 10)  # warm: the framework's first streams
                _close(holder, parent)
                before = _settled_rss(base)
                holder, parent = _hold_open(base.address, args.sessions)
                bare.append((before, _settled_rss(base)))
                _close(holder, parent)
            finally:
                base.stop()
    print(f"bench/idle_sessions.py: {args.sessions} idle sessions, {args.calls} CanTrade per phase, "
          f"{args.rounds} rounds (a fresh sidecar each), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, values in rows.items():
        print(f"  sidecar {name:5s}: CanTrade p50 " + ", ".join(f"{p:.0f}" for p, _ in values) + " µs; RSS "
              + ", ".join(f"{r:.1f}" for _, r in values) + " MiB")
    print("  bare framework: RSS " + ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in bare) + " MiB")
    p50 = statistics.median(i[0] / n[0] for n, i in zip(rows["none"], rows["idle"], strict=True))
    rss_ratio = statistics.median(i[1] / n[1] for n, i in zip(rows["none"], rows["idle"], strict=True))
    side_kib = statistics.median((i[1] - n[1]) * 1024 / args.sessions
                                 for n, i in zip(rows["none"], rows["idle"], strict=True))
    bare_kib = statistics.median((b - a) * 1024 / args.sessions for a, b in bare)
    none_rss = statistics.median(r for _, r in rows["none"])
    print(f"  idle / none (median of per-round ratios): CanTrade p50 {p50:.3f}, RSS {rss_ratio:.3f} "
          f"(target: each within 1.10)")
    print(f"  per idle session: sidecar {side_kib:.1f} KiB, bare framework {bare_kib:.1f} KiB "
          f"(TradeGuard's own: {side_kib - bare_kib:.1f} KiB); the framework alone adds "
          f"{bare_kib * args.sessions / 1024 / none_rss * 100:.0f} % of the sidecar's RSS without sessions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
