"""CanTrade over HTTP/JSON next to CanTrade over gRPC, 1 in flight, against the same `tradeguard serve`.

    .venv/bin/python bench/http_micro.py                  # 5 rounds x 2000 calls each way
    .venv/bin/python bench/http_micro.py --rounds 3 --calls 5000 --no-order

One sidecar (memory only, metrics off, uvloop) serves both listeners; one trader with equity reported. Each round
runs the gRPC client (grpc.aio, one channel) and the HTTP client (aiohttp, one keep-alive connection, the JSON a
curl user would send) one after the other, swapping which goes first, each call awaited before the next (1 in
flight). Printed: p50 / p90 / p99 per transport and the ratio HTTP / gRPC of the medians over rounds. The
clients run in this process, so each latency includes its client's own cost (protobuf vs JSON encoding).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

BIN = Path(sys.executable).parent
ORDER = {"symbol": "BTCUSDT", "exchange": "binance", "side": "SIDE_BUY", "quantity": 0.01, "price": 50_000}


@contextlib.contextmanager
def sidecar() -> Iterator[tuple[str, str]]:
    """`tradeguard serve` on 127.0.0.1:0 (gRPC) and 127.0.0.1:0 (HTTP): yields both addresses."""
    with tempfile.TemporaryDirectory() as tmp:
        ready, log_path = Path(tmp) / "ready", Path(tmp) / "log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEGUARD_", "DB_"))}
        cmd = [str(BIN / "tradeguard"), "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--metrics-listen", "", "--database-url", "memory", "--no-enable-persistence", "--dev-open-admin",
               "--ready-file", str(ready)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            deadline = time.monotonic() + 30
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar did not start:\n{log_path.read_text()}")
                time.sleep(0.02)
            found = re.search(r"HTTP API on http://(\S+) ", log_path.read_text())
            if found is None:
                raise RuntimeError(f"no HTTP listener:\n{log_path.read_text()}")
            yield ready.read_text().strip(), found.group(1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


async def timed(call: Callable[[], Awaitable[None]], calls: int) -> list[float]:
    for _ in range(max(50, calls // 10)):  # warm-up: connections, caches
        await call()
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        await call()
        samples.append(clock() - started)
    return samples


async def run(rounds: int, calls: int, with_order: bool) -> None:
    with sidecar() as (grpc_address, http_address):
        async with grpc.aio.insecure_channel(grpc_address) as channel, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1)
        ) as session:
            risk = rsg.RiskServiceStub(channel)
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-1", equity=100_000))
            order = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000)
            request = rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1", order=order if with_order else None)
            body = {"trader_id": "bot-1", "account_id": "acct-1", **({"order": ORDER} if with_order else {})}
            payload = json.dumps(body).encode()
            url = f"http://{http_address}/v1/risk/can-trade"
            headers = {"Content-Type": "application/json"}

            async def grpc_call() -> None:
                reply = await risk.CanTrade(request)
                assert reply.allowed

            async def http_call() -> None:
                async with session.post(url, data=payload, headers=headers) as reply:
                    assert reply.status == 200
                    assert (await reply.json())["allowed"] is True

            results: dict[str, list[dict[str, float]]] = {"gRPC": [], "HTTP": []}
            for i in range(rounds):
                order_of = [("gRPC", grpc_call), ("HTTP", http_call)]
                for name, call in order_of if i % 2 == 0 else reversed(order_of):
                    results[name].append(percentiles(await timed(call, calls)))
    print(f"CanTrade {'with' if with_order else 'without'} an order, 1 in flight, {rounds} rounds x {calls} calls "
          f"(median over rounds, microseconds; client in this process)")
    print(f"{'transport':<10}{'p50':>10}{'p90':>10}{'p99':>10}")
    medians: dict[str, dict[str, float]] = {}
    for name, per_round in results.items():
        medians[name] = {q: statistics.median(r[q] for r in per_round) for q in ("p50", "p90", "p99")}
        m = medians[name]
        print(f"{name:<10}{m['p50']:>10.1f}{m['p90']:>10.1f}{m['p99']:>10.1f}")
    print(f"ratio HTTP/gRPC p50: {medians['HTTP']['p50'] / medians['gRPC']['p50']:.2f}x   "
          f"p99: {medians['HTTP']['p99'] / medians['gRPC']['p99']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-order", action="store_true", help="CanTrade without an order intent")
    opts = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(opts.rounds, opts.calls, not opts.no_order))


if __name__ == "__main__":
    main()
