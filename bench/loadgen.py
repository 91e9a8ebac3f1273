"""The benchmark's workload, the servers it drives and the load generators that drive them.

- Workload: one account with a full risk configuration (every seed field) and 20 symbol configurations,
  100 enabled circuit breakers (none firing), one trader with equity and two open positions, and a full
  order intent (symbol, exchange, side, quantity, price, leverage, stop, volatility).
- Servers: the real sidecar (`tradeguard serve`, via tests/support/sidecar.spawn_sidecar) and the bare
  baseline (bench/baseline_server.py), each a subprocess, with CPU-time and RSS read from /proc.
- `closed_loop`: a multi-process grpc.aio client. Each process opens one channel (one HTTP/2 connection)
  and keeps `inflight / procs` calls in flight (a task per slot awaiting its call, then the next one).
  Requests are pre-serialized and responses are not parsed (the method is called with bytes in and
  bytes out), so the client spends its CPU on gRPC only. All processes warm up, then measure the same
  wall-clock window. Latency = the call as the client sees it (perf_counter around the await).
- `h2load`: nghttp2's C load generator speaking gRPC over h2c (POST, length-prefixed body, te: trailers):
  closed loop with `-m` streams, or open loop with `--rps`. It costs a fraction of the Python client's CPU.
  It sees HTTP status only (grpc-status is in the trailers), so correctness is checked with the Python
  client before every measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tradeguard.v1 import admin_service_pb2 as ad  # noqa: E402
from tradeguard.v1 import admin_service_pb2_grpc as adg  # noqa: E402
from tradeguard.v1 import risk_service_pb2 as rs  # noqa: E402
from tradeguard.v1 import risk_service_pb2_grpc as rsg  # noqa: E402
from tradeguard.v1 import types_pb2 as t  # noqa: E402

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CAN_TRADE = "/tradeguard.v1.RiskService/CanTrade"
REPORT_EQUITY = "/tradeguard.v1.RiskService/ReportEquity"

# ---- workload -----------------------------------------------------------------------------------

ACCOUNT = "bench-account"
TRADER = "bench-trader"
EQUITY = 10_000.0
SYMBOLS = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT", "DOTUSDT",
    "LINKUSDT", "MATICUSDT", "LTCUSDT", "TRXUSDT", "ATOMUSDT", "UNIUSDT", "XLMUSDT", "ETCUSDT", "FILUSDT",
    "APTUSDT", "NEARUSDT",
]


def risk_config(symbols: int = 20) -> t.RiskConfiguration:
    """The seed's low_risk configuration, every field set, with `symbols` symbol configurations."""
    cfg = json_format.ParseDict({
        "config_id": "bench",
        "account_id": ACCOUNT,
        "is_active": True,
        "daily_max_drawdown_percentage": 2.0,
        "weekly_max_drawdown_percentage": 5.0,
        "monthly_max_drawdown_percentage": 10.0,
        "max_drawdown_percentage": 20.0,
        "stop_trading_minutes": 30,
        "consecutive_loss_threshold": 3,
        "cooling_off_period_minutes": 120,
        "max_position_size_percentage": 5.0,
        "risk_per_trade_percentage": 0.5,
        "max_correlated_exposure_percentage": 10.0,
        "volatility_adjustment_factor": 0.8,
        "market_regime_thresholds": {"high": 0.05, "extreme": 0.1},
        "position_max_drawdown_percentage": 3.0,
        "position_trailing_stop_multiplier": 1.5,
        "max_order_notional": 100_000.0,
        # No throttle (max_orders_per_window): at benchmark rates (thousands of orders per second from one
        # trader) any realistic throttle denies, and the throttle's cost grows with the orders in its window.
    }, t.RiskConfiguration())
    for i, symbol in enumerate(SYMBOLS[:symbols]):
        cfg.symbol_configs.add(symbol=symbol, max_position_size_percentage=3.0 + i % 3, max_leverage=5.0 + i % 5,
                               position_max_drawdown_percentage=2.0, risk_per_trade_percentage=0.3)
    return cfg


# A realistic mix (as bench/breakers_micro.py): account-level conditions, unscoped and scoped, trade windows,
# order rate, positions. Thresholds are far from the workload's state: none fires. The order_rate breakers are
# scoped to SOLUSDT (the benchmark orders BTCUSDT, so they are skipped): unscoped, any realistic order_rate
# breaker fires at benchmark rates, and its cost grows with the orders in its window (see bench/README.md).
BREAKER_TEMPLATES: list[tuple[str, dict[str, float], list[str]]] = [
    ("max_drawdown", {"threshold": 0.5}, []),
    ("daily_loss", {"threshold": 0.5}, ["BTCUSDT", "ETHUSDT"]),
    ("consecutive_losses", {"count": 50}, []),
    ("consecutive_losses", {"count": 50}, ["BTCUSDT"]),
    ("loss_streak_in_window", {"trade_limit": 50, "lookback_minutes": 60}, ["BTCUSDT"]),
    ("equity_floor", {"value": 1.0}, []),
    ("order_rate", {"max_orders": 10_000, "window_seconds": 60}, ["SOLUSDT"]),
    ("position_drawdown", {"threshold": 0.5}, []),
    ("max_drawdown", {"threshold": 0.5}, ["SOLUSDT"]),
    ("position_drawdown", {"threshold": 0.5}, ["ETHUSDT"]),
]


def breakers(n: int = 100) -> list[t.CircuitBreaker]:
    out = []
    for i in range(n):
        condition, params, symbols = BREAKER_TEMPLATES[i % len(BREAKER_TEMPLATES)]
        parameters = Struct()
        parameters.update(params)
        out.append(t.CircuitBreaker(name=f"bench_{i:03d}", description="benchmark breaker", account_id=ACCOUNT,
                                    condition=condition, action="pause_trading", parameters=parameters,
                                    symbols=symbols, enabled=True))
    return out


def order() -> t.OrderIntent:
    return t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.001, price=50_000.0,
                         leverage=2.0, reduce_only=False, stop_price=49_000.0, volatility=0.02)


def positions() -> list[t.Position]:
    return [
        t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.002, entry_price=50_000.0,
                   mark_price=50_100.0, leverage=2.0),
        t.Position(symbol="ETHUSDT", exchange="binance", side=t.SIDE_SELL, quantity=0.1, entry_price=3_000.0,
                   mark_price=2_990.0, leverage=1.0),
    ]


def can_trade_request(with_order: bool) -> rs.CanTradeRequest:
    req = rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT)
    if with_order:
        req.order.CopyFrom(order())
    return req


def report_equity_request() -> rs.ReportEquityRequest:
    # observed_at unset = now, so every report is fresh (not stale) and moves the state.
    return rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=EQUITY)


@dataclass
class Prepared:
    """What `prepare` set up, and what it could not."""

    configs: int = 0
    symbol_configs: int = 0
    breakers: int = 0
    notes: list[str] = field(default_factory=list)
    can_trade_response: bytes = b""
    report_equity_response: bytes = b""


def prepare(address: str, *, config: bool, breaker_count: int, with_order: bool) -> Prepared:
    """Set the workload up over the public API (AdminService + RiskService) and check one answer."""
    out = Prepared()
    with grpc.insecure_channel(address) as ch:
        admin, risk = adg.AdminServiceStub(ch), rsg.RiskServiceStub(ch)
        if config:
            cfg = risk_config()
            admin.SaveConfig(ad.SaveConfigRequest(config=cfg), timeout=10)
            out.configs, out.symbol_configs = 1, len(cfg.symbol_configs)
        for b in breakers(breaker_count):
            try:
                admin.CreateBreaker(ad.CreateBreakerRequest(breaker=b), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                    out.notes.append(f"CreateBreaker answers UNIMPLEMENTED ({exc.details()}): "  # type: ignore[attr-defined]
                                     "measured without breakers")
                    break
                raise
            out.breakers += 1
        risk.ReportEquity(report_equity_request(), timeout=10)
        risk.ReportPositions(rs.ReportPositionsRequest(trader_id=TRADER, account_id=ACCOUNT, positions=positions()),
                             timeout=10)
        eq = risk.ReportEquity(report_equity_request(), timeout=10)
        out.report_equity_response = eq.SerializeToString()
        reply = risk.CanTrade(can_trade_request(with_order), timeout=10)
        if not reply.allowed or reply.would_deny or reply.actions:
            raise RuntimeError(f"benchmark workload is not a plain 'allowed' decision:\n{reply}")
        out.can_trade_response = reply.SerializeToString()
    return out


def verify(address: str, calls: Sequence[tuple[str, bytes]]) -> None:
    """Each call of the mix answers OK (h2load and the closed loop do not look at the answers)."""
    with grpc.insecure_channel(address) as ch:
        for method, body in calls:
            ch.unary_unary(method)(body, timeout=10)


# ---- servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess: the sidecar or the baseline."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """user + system CPU time of the process (all its threads) so far."""
        fields_ = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / CLK_TCK

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_address(listen: str) -> None:
    """Benchmarks bind loopback or unix: only."""
    if listen.startswith("unix:"):
        return
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"refusing {listen!r}: the benchmark binds loopback or unix: addresses only")


def start_sidecar(workdir: Path, name: str, listen: str, args: Sequence[str], env: dict[str, str] | None = None
                  ) -> Server:
    from tests.support.sidecar import spawn_sidecar

    check_address(listen)
    sp = spawn_sidecar(workdir, "--listen", listen, *args, env=env, name=name, timeout=60.0)
    return Server(name, sp.proc, sp.address, sp.log_path)


def start_baseline(workdir: Path, name: str, listen: str, args: Sequence[str] = ()) -> Server:
    check_address(listen)
    ready = workdir / f"{name}.ready"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    log_path = workdir / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).with_name("baseline_server.py")), "--listen", listen,
           "--ready-file", str(ready), *args]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 30.0
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"baseline did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.02)
    return Server(name, proc, ready.read_text().strip(), log_path)


# ---- results ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One measurement window."""

    calls: int
    seconds: float
    latencies_us: list[float]
    errors: dict[str, int]
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    tool: str = "py"

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        lat = self.latencies_us
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def p999(self) -> float:
        return self.pct(99.9)

    @property
    def server_cpu_us_per_call(self) -> float:
        return self.server_cpu_s / self.calls * 1e6 if self.calls else float("nan")

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def median_result(results: Sequence[Result]) -> Result:
    """The round with the median RPS (its own percentiles: they belong together)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


# ---- the Python closed loop -----------------------------------------------------------------------


def _worker(conn: Connection, address: str, calls: list[tuple[str, bytes]], inflight: int, max_calls: int,
            use_uvloop: bool) -> None:
    """One client process: `inflight` tasks over one channel; reports latencies of the measured window."""
    if use_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(_client(conn, address, calls, inflight, max_calls))


async def _client(conn: Connection, address: str, calls: list[tuple[str, bytes]], inflight: int,
                  max_calls: int) -> None:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        methods = [(channel.unary_unary(m), body) for m, body in calls]
        window = [float("inf"), float("inf")]  # measuring [start, end) in perf_counter seconds
        latencies = array("d")
        errors: dict[str, int] = {}
        done = [0]

        async def slot(offset: int) -> None:
            n = len(methods)
            i = offset
            while True:
                call, body = methods[i % n]
                i += 1
                started = clock()
                if started >= window[1] or done[0] >= max_calls:
                    return
                try:
                    await call(body, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if started >= window[0]:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                if started >= window[0]:
                    latencies.append(clock() - started)
                    done[0] += 1

        tasks = [asyncio.create_task(slot(k)) for k in range(inflight)]
        conn.send("ready")
        start_at, duration = await loop.run_in_executor(None, conn.recv)  # wall clock (time.time)
        start = clock() + (start_at - time.time())
        window[0], window[1] = start, start + duration
        await asyncio.sleep(max(0.0, start - clock()))
        cpu0 = sum(os.times()[:2])
        await asyncio.gather(*tasks)
        cpu1 = sum(os.times()[:2])
    conn.send({"latencies": latencies.tobytes(), "errors": errors, "cpu": cpu1 - cpu0,
               "measured": min(duration, (clock() - start))})


def closed_loop(server: Server | None, address: str, calls: list[tuple[str, bytes]], inflight: int, procs: int,
                duration: float, warmup: float, max_calls: int = 10_000_000, use_uvloop: bool = True) -> Result:
    """`inflight` calls in flight in total, spread over `procs` client processes (at most `inflight`)."""
    procs = max(1, min(procs, inflight))
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for k in range(procs):
        share = inflight // procs + (1 if k < inflight % procs else 0)
        parent, child = ctx.Pipe()
        # rotate the mix per process so that a 1:1 mix stays 1:1 across processes
        mix = calls[k % len(calls):] + calls[:k % len(calls)]
        w = ctx.Process(target=_worker, args=(child, address, mix, share, max_calls // procs, use_uvloop),
                        daemon=True)
        w.start()
        pipes.append(parent)
        workers.append(w)
    try:
        for p in pipes:
            if not p.poll(60):
                raise RuntimeError("load generator process did not start")
            p.recv()
        start_at = time.time() + warmup
        for p in pipes:
            p.send((start_at, duration))
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = server.cpu_seconds() if server else 0.0
        t0 = time.perf_counter()
        # until the window ends, or earlier when every process has made its max_calls
        while time.perf_counter() - t0 < duration and not all(p.poll(0) for p in pipes):
            time.sleep(min(0.05, max(0.0, duration - (time.perf_counter() - t0))))
        cpu1 = server.cpu_seconds() if server else 0.0
        elapsed = time.perf_counter() - t0
        lat: list[float] = []
        errors: dict[str, int] = {}
        client_cpu = 0.0
        measured = []
        for p in pipes:
            if not p.poll(duration + 120):
                raise RuntimeError("load generator process did not report")
            r = p.recv()
            a = array("d")
            a.frombytes(r["latencies"])
            lat.extend(x * 1e6 for x in a)
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            client_cpu += r["cpu"]
            measured.append(r["measured"])
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    lat.sort()
    seconds = max(measured) if measured else elapsed
    return Result(len(lat), seconds, lat, errors, cpu1 - cpu0, client_cpu)


# ---- h2load ---------------------------------------------------------------------------------------


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(body)) + body


def h2load(server: Server | None, address: str, method: str, body: bytes, *, clients: int = 1, streams: int = 1,
           duration: float = 5.0, warmup: float = 1.0, rps: float | None = None) -> Result:
    """h2load over one or more h2c connections; closed loop (`streams` per connection) or open loop (`rps`)."""
    with tempfile.TemporaryDirectory(prefix="tg-h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(grpc_frame(body))
        log = Path(tmp) / "log"
        cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{duration:g}",
               "--warm-up-time", f"{warmup:g}", "-d", str(data), "--log-file", str(log),
               "-H", "content-type: application/grpc", "-H", "te: trailers"]
        if rps is not None:
            cmd += ["--rps", f"{max(1.0, rps / clients):g}"]
        if address.startswith("unix:"):
            cmd += ["-B", address, f"http://localhost{method}"]
        else:
            cmd += [f"http://{address}{method}"]
        t0 = time.time()
        cpu0 = server.cpu_seconds() if server else 0.0
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120, check=False)
        cpu1 = server.cpu_seconds() if server else 0.0
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed: {proc.stdout}\n{proc.stderr}")
        measure_from = (t0 + warmup) * 1e6
        lat: list[float] = []
        errors: dict[str, int] = {}
        for line in log.read_text().splitlines():
            start_us, status, elapsed_us = line.split("\t")[:3]
            if float(start_us) < measure_from:
                continue
            if status != "200":
                errors[f"HTTP_{status}"] = errors.get(f"HTTP_{status}", 0) + 1
                continue
            lat.append(float(elapsed_us))
        m = re.search(r"finished in ([\d.]+)(m?s)", proc.stdout)
        seconds = duration if m is None else float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    lat.sort()
    # server CPU was read around warm-up + measurement: scale to the measured share
    share = duration / (duration + warmup)
    return Result(len(lat), min(seconds, duration), lat, errors, (cpu1 - cpu0) * share, 0.0, tool="h2load")


def fmt_us(x: float) -> str:
    return "nan" if x != x else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    r = median_result(results)
    return {"rps": r.rps, "p50": r.p50, "p99": r.p99, "p999": r.p999, "failed": sum(x.failed for x in results),
            "cpu_us": statistics.median(x.server_cpu_us_per_call for x in results)}
