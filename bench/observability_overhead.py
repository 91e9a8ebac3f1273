"""CanTrade latency and throughput with observability off, metrics on, and metrics + tracing on.

    .venv/bin/python bench/observability_overhead.py [--calls 3000] [--seconds 2] [--concurrency 16] [--rounds 3]

Each configuration runs in its own server process (a real `Sidecar` on 127.0.0.1:0, uvloop, memory
only); the client (grpc.aio, uvloop) runs here. Rounds interleave the configurations (off, metrics,
metrics+tracing, off, ...) so drift hits them alike; the median over rounds is printed, with the ratio
against "off" measured in the same run. Tracing uses a BatchSpanProcessor with an exporter that
discards spans (the OTLP exporter's network cost is in its own thread and not measured).

A second table times the metrics handler wrapper alone (no gRPC): the per-call cost it adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "server", ROOT / "client" / "python"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"metrics_listen": "", "http_listen": "", "tracing": False},
    "metrics": {"metrics_listen": "127.0.0.1:0", "http_listen": "", "tracing": False},
    "metrics+tracing": {"metrics_listen": "127.0.0.1:0", "http_listen": "", "tracing": True},
}


def serve(overrides: dict[str, Any], conn: Connection) -> None:
    """Child process: run a sidecar until the parent closes the pipe."""
    import logging

    import uvloop
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from tradeguard_server.observability.tracing import setup_tracing
    from tradeguard_server.settings import load_settings
    from tradeguard_server.sidecar import Sidecar

    class DiscardExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        settings = load_settings({}, {"listen": "127.0.0.1:0", "enable_persistence": False, **overrides})
        sidecar = Sidecar(settings)
        if sidecar.tracing is not None:
            sidecar.tracing = setup_tracing(processor=BatchSpanProcessor(DiscardExporter()))
        address = await sidecar.start()
        conn.send(address)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(EOFError):  # the parent closes the pipe when it is done
            while True:  # each message asks for this process's CPU time so far (all threads)
                await loop.run_in_executor(None, conn.recv_bytes)
                conn.send(time.process_time())
        await sidecar.stop()

    uvloop.run(main())


def server_cpu(conn: Connection) -> float:
    conn.send_bytes(b"cpu")
    value: float = conn.recv()
    return value


async def measure(conn: Connection, calls: int, seconds: float, concurrency: int) -> tuple[float, ...]:
    """p50 and p99 µs of sequential calls, server CPU µs per call, and calls/s with `concurrency` callers."""
    import grpc

    from tradeguard.v1 import risk_service_pb2 as rs
    from tradeguard.v1 import risk_service_pb2_grpc as rsg
    from tradeguard.v1 import types_pb2 as t

    address = conn.recv()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = rsg.RiskServiceStub(ch)
        await stub.ReportEquity(rs.ReportEquityRequest(trader_id="bench", account_id="acct", equity=100_000.0))
        order = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000.0)
        request = rs.CanTradeRequest(trader_id="bench", account_id="acct", order=order)
        for _ in range(500):
            await stub.CanTrade(request)
        samples = []
        clock = time.perf_counter
        cpu_before = server_cpu(conn)
        for _ in range(calls):
            started = clock()
            await stub.CanTrade(request)
            samples.append(clock() - started)
        cpu_per_call = (server_cpu(conn) - cpu_before) / calls * 1e6
        samples.sort()
        p50 = samples[len(samples) // 2] * 1e6
        p99 = samples[int(len(samples) * 0.99)] * 1e6

        done = 0
        deadline = clock() + seconds

        async def caller() -> None:
            nonlocal done
            while clock() < deadline:
                await stub.CanTrade(request)
                done += 1

        started = clock()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        rate = done / (clock() - started)
    return p50, p99, cpu_per_call, rate


def run_config(name: str, args: argparse.Namespace) -> tuple[float, ...]:
    import uvloop

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(CONFIGS[name], child), daemon=True)
    proc.start()
    child.close()
    try:
        return uvloop.run(measure(parent, args.calls, args.seconds, args.concurrency))
    finally:
        parent.close()
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()


def wrapper_cost(n: int = 200_000) -> tuple[float, float]:
    """µs per call of a bare awaited handler and of the same handler wrapped by PrometheusMetrics.timed (CanTrade)."""
    from tradeguard.v1 import risk_service_pb2 as rs
    from tradeguard.v1 import types_pb2 as t
    from tradeguard_server.observability.metrics import PrometheusMetrics

    reply = rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED)

    async def handler(_request: Any, _context: Any) -> Any:
        return reply

    timed = PrometheusMetrics().timed("CanTrade", handler)

    async def loop(fn: Any) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await fn(None, None)
        return (time.perf_counter() - started) / n * 1e6

    async def both() -> tuple[float, float]:
        await loop(timed)
        bare = min([await loop(handler) for _ in range(3)])
        wrapped = min([await loop(timed) for _ in range(3)])
        return bare, wrapped

    return asyncio.run(both())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per round (p50 / p99)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the throughput run per round")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers in the throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name in CONFIGS:
            results[name].append(run_config(name, args))

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[name])

    print(f"CanTrade, client and server in separate processes on one host; median of {args.rounds} rounds")
    print(f"{'config':<17}{'p50 µs':>9}{'p99 µs':>9}{'srv CPU µs':>12}{'calls/s':>9}"
          f"{'p50 x':>8}{'CPU x':>8}{'rate x':>8}")
    base = [med("off", i) for i in range(4)]
    for name in CONFIGS:
        p50, p99, cpu, rate = (med(name, i) for i in range(4))
        print(f"{name:<17}{p50:>9.1f}{p99:>9.1f}{cpu:>12.1f}{rate:>9.0f}"
              f"{p50 / base[0]:>8.3f}{cpu / base[2]:>8.3f}{rate / base[3]:>8.3f}")
    print("srv CPU = server process CPU time (all threads) per sequential call; x = ratio to 'off'")
    bare, wrapped = wrapper_cost()
    print("\nmetrics wrapper alone (CanTrade: histogram observe + latency gauge + decision counter)")
    print(f"bare handler {bare:.3f} µs/call, wrapped {wrapped:.3f} µs/call, added {wrapped - bare:.3f} µs/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
